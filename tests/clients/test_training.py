"""Local training: DP-SGD clips per sample exactly, survives empty Poisson batches, updates the
caller's own parameters, and refuses BatchNorm."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clients import grad_sample
from clients.grad_sample import GradSampleMode, fused_plan, ghost_is_cheaper, make_clipper
from clients.training import (
    DPPlan,
    EvalResult,
    TrainResult,
    evaluate,
    make_dp_compatible,
    resolve_grad_sample_mode,
    train_local,
)
from federation.errors import ConfigError
from federation.tasks import build_model, flatten_params


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


class OddNet(nn.Module):
    """Strided, dilated, padded and bias-free convolutions, and a Linear over a sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(
            4, 6, (3, 2), stride=(1, 2), dilation=(2, 1), padding=(1, 0), bias=False
        )
        self.c3 = nn.Conv2d(6, 5, 3, stride=2, dilation=2)
        self.seq = nn.Linear(5, 7)
        self.head = nn.Linear(21, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        h = h.flatten(2).transpose(1, 2)  # B x T x 5
        h = torch.tanh(self.seq(h)[:, :3])
        return self.head(h.flatten(1))  # type: ignore[no-any-return]


class GroupNormNet(nn.Module):
    """A residual GroupNorm block as in the ResNet tasks (the fused engine's GroupNorm path)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.n1 = nn.GroupNorm(4, 8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.n2 = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.n1(self.c1(x)))
        h = torch.relu(self.n2(self.c2(h)) + h)
        return self.head(h.mean((2, 3)))  # type: ignore[no-any-return]


def _reference_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float
) -> torch.Tensor:
    """Per-sample gradients one by one, clipped with Opacus' rule min(1, C / (norm + 1e-6))."""
    total = None
    for i in range(x.shape[0]):
        model.zero_grad()
        torch.autograd.backward(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum"))
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
        g = g * min(1.0, c / (float(g.norm()) + 1e-6))
        total = g if total is None else total + g
    model.zero_grad()
    assert total is not None
    return total


@pytest.mark.parametrize(
    ("mode", "net"),
    [
        ("fused", "fashion-cnn"),
        ("fused", "odd"),  # fused's own geometry handling
        ("fused", "groupnorm"),
        ("hooks", "groupnorm"),
        ("hooks", "fashion-cnn"),
        ("ghost", "fashion-cnn"),
        ("functorch", "fashion-cnn"),
    ],
)
def test_every_grad_sample_mode_gives_the_exact_clipped_sum(mode: str, net: str) -> None:
    torch.manual_seed(0)
    if net == "odd":
        model: nn.Module = OddNet()
        x, y = torch.randn(9, 1, 23, 21), torch.randint(0, 10, (9,))
    elif net == "groupnorm":
        model = GroupNormNet()
        with torch.no_grad():  # non-trivial affine parameters
            for m in model.modules():
                if isinstance(m, nn.GroupNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        x, y = torch.randn(10, 1, 9, 9), torch.randint(0, 10, (10,))
    else:
        model = build_model("fashion-mnist", 0)
        x, y = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    c = 0.3  # small enough that most samples are clipped
    params = list(model.parameters())
    loss = lambda m, xb, yb: F.cross_entropy(m(xb), yb, reduction="none")  # noqa: E731
    _, clip, close = make_clipper(model, params, cast(GradSampleMode, mode), c, loss)
    try:
        sums, loss_sum = clip(x, y)
    finally:
        close()
    got = torch.cat([s.reshape(-1) for s in sums])
    want = _reference_clipped_sum(model, x, y, c)
    assert float((got - want).norm() / want.norm()) < 1e-5
    with torch.no_grad():
        want_loss = F.cross_entropy(model(x), y, reduction="sum").item()
    assert loss_sum == pytest.approx(want_loss, rel=1e-5)
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in params)


def test_auto_mode_picks_fused_for_our_model_and_hooks_otherwise() -> None:
    assert resolve_grad_sample_mode(build_model("fashion-mnist", 0)) == "fused"
    assert resolve_grad_sample_mode(build_model("resnet-1m", 0)) == "fused"  # GroupNorm covered
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    assert resolve_grad_sample_mode(other) == "hooks"
    x, y = _data(40)
    before = flatten_params(other).copy()
    r = train_local(
        other, x, y, epochs=1, batch_size=8, lr=0.1, momentum=0.0, seed=0, dp=DPPlan(1.0, 1.0)
    )
    assert r.grad_sample_mode == "hooks" and not np.array_equal(before, flatten_params(other))


def test_in_place_activations_are_refused_clearly() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    x, y = _data(6)
    with pytest.raises(ConfigError, match="inplace=False"):
        train_local(
            model, x, y, epochs=1, batch_size=3, lr=0.1, momentum=0.0, seed=0, dp=DPPlan(1.0, 1.0)
        )


def test_dp_training_updates_the_callers_parameters_in_place() -> None:
    model = build_model("fashion-mnist", 0)
    params_before = list(model.parameters())
    flat_before = flatten_params(model).copy()
    x, y = _data(300)
    r = train_local(
        model, x, y, epochs=2, batch_size=32, lr=0.05, momentum=0.9, seed=1, dp=DPPlan(1.0, 1.0)
    )
    assert isinstance(r, TrainResult)
    assert all(a is b for a, b in zip(params_before, model.parameters(), strict=True))
    assert type(model).__name__ == "FashionCNN"
    assert not any(k.startswith("_module.") for k in model.state_dict())
    flat = flatten_params(model)
    assert flat.shape == flat_before.shape and np.isfinite(flat).all()
    assert not np.array_equal(flat, flat_before)
    assert (r.num_examples, r.steps, r.sample_rate) == (300, 2 * 10, 32 / 300)
    assert r.noise_multiplier == 1.0 and np.isfinite(r.mean_loss)
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_seeded_dp_is_reproducible_but_secure_dp_is_not_seeded() -> None:
    x, y = _data(100)

    def run(plan: DPPlan, seed: int) -> np.ndarray:
        m = build_model("fashion-mnist", 0)
        train_local(m, x, y, epochs=1, batch_size=20, lr=0.1, momentum=0.0, seed=seed, dp=plan)
        return flatten_params(m)

    seeded = DPPlan(1.0, 1.0, secure_rng=False)
    np.testing.assert_array_equal(run(seeded, 3), run(seeded, 3))
    secure = DPPlan(1.0, 1.0)
    a, b = run(secure, 3), run(secure, 3)
    assert a.shape == b.shape and not np.array_equal(a, b)  # noise does not follow the seed


def test_tiny_client_empty_poisson_batches_stay_finite_and_count_as_steps() -> None:
    x, y = _data(3)
    model = build_model("fashion-mnist", 0)
    before = flatten_params(model).copy()
    r = train_local(
        model,
        x,
        y,
        epochs=20,
        batch_size=1,
        lr=0.05,
        momentum=0.9,
        seed=0,
        dp=DPPlan(1.0, 1.0, secure_rng=False),
    )
    assert r.sample_rate == pytest.approx(1 / 3)
    assert r.steps == 20 * 3  # every Poisson draw is a step of the mechanism, empty or not
    assert r.empty_batches > 0  # P(empty) = (2/3)^3 per step
    after = flatten_params(model)
    assert np.isfinite(after).all() and not np.array_equal(after, before)
    assert np.isfinite(r.mean_loss)


def test_empty_batch_still_releases_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every Poisson draw comes out empty (the sampler's uniforms are all 1 > q). Each step
    # must still add N(0, (sigma*C)^2) noise, as the analysed mechanism does; skipping it
    # would leak emptiness and leave the model exactly unchanged.
    monkeypatch.setattr(torch, "rand", lambda n, generator=None: torch.ones(n))
    x, y = _data(50)
    model = build_model("fashion-mnist", 0)
    before = flatten_params(model).copy()
    r = train_local(
        model,
        x[:50],
        y[:50],
        epochs=1,
        batch_size=1,
        lr=0.01,
        momentum=0.0,
        seed=0,
        dp=DPPlan(2.0, 1.0, secure_rng=False),
    )
    assert r.empty_batches == r.steps == 50
    moved = np.abs(flatten_params(model) - before)
    # Only noise moved the model, and it touches every coordinate.
    assert (moved > 0).all()


def test_batchnorm_is_refused_clearly_and_fixable() -> None:
    bn_model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    x, y = _data(20)
    with pytest.raises(ConfigError, match=r"BatchNorm.*make_dp_compatible"):
        train_local(
            bn_model,
            x,
            y,
            epochs=1,
            batch_size=10,
            lr=0.1,
            momentum=0.0,
            seed=0,
            dp=DPPlan(1.0, 1.0),
        )
    fixed = make_dp_compatible(bn_model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    r = train_local(
        fixed, x, y, epochs=1, batch_size=10, lr=0.1, momentum=0.0, seed=0, dp=DPPlan(1.0, 1.0)
    )
    assert np.isfinite(flatten_params(fixed)).all() and r.steps == 2
    # Non-private training of the BatchNorm model is fine.
    train_local(bn_model, x, y, epochs=1, batch_size=10, lr=0.1, momentum=0.0, seed=0)


def test_non_private_training_learns_and_evaluate_reports() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400).astype(np.int64)
    x = rng.standard_normal((400, 1, 28, 28)).astype(np.float32) * 0.3
    for i, label in enumerate(y):  # a learnable signal: a bright bar whose row is the label
        x[i, 0, 2 * label + 3 : 2 * label + 6, 6:22] += 2.0
    model = build_model("fashion-mnist", 0)
    start = evaluate(model, x, y)
    r = train_local(model, x, y, epochs=3, batch_size=32, lr=0.05, momentum=0.9, seed=0)
    end = evaluate(model, x, y, batch_size=64)
    assert isinstance(end, EvalResult) and end.num_examples == 400
    assert r.noise_multiplier is None and r.steps == 3 * 13 and r.grad_sample_mode is None
    assert end.loss < start.loss and end.accuracy > max(0.5, start.accuracy)
    assert 0.0 <= end.accuracy <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"epochs": -1}, "train.local_epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"lr": 0.0}, "train.lr"),
        ({"momentum": 1.0}, "train.momentum"),
    ],
)
def test_bad_hyperparameters_name_the_key(kwargs: dict[str, float], key: str) -> None:
    x, y = _data(4)
    args: dict[str, float] = {"epochs": 1, "batch_size": 2, "lr": 0.1, "momentum": 0.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_local(build_model("fashion-mnist", 0), x, y, **args)  # type: ignore[arg-type]


def test_read_only_arrays_from_the_data_loader_are_accepted() -> None:
    x, y = _data(16)
    x.setflags(write=False)
    y.setflags(write=False)
    model = build_model("fashion-mnist", 0)
    train_local(model, x, y, epochs=1, batch_size=8, lr=0.1, momentum=0.0, seed=0)
    train_local(
        model, x, y, epochs=1, batch_size=8, lr=0.1, momentum=0.0, seed=0, dp=DPPlan(1.0, 1.0)
    )
    assert evaluate(model, x, y).num_examples == 16


def test_bad_dp_plans_and_data_are_refused() -> None:
    for sigma, c in [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1.0, 0.0)]:
        with pytest.raises(ConfigError):
            DPPlan(sigma, c)
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        DPPlan(1.0, 1.0, "magic")  # type: ignore[arg-type]
    x, y = _data(4)
    with pytest.raises(ValueError):
        train_local(
            build_model("fashion-mnist", 0),
            x,
            y[:3],
            epochs=1,
            batch_size=2,
            lr=0.1,
            momentum=0.0,
            seed=0,
        )
    with pytest.raises(ValueError):
        evaluate(build_model("fashion-mnist", 0), x[:0], y[:0])


# --------------------------------------------------------------------------------------------
# the fused engine against Opacus' hooks: every geometry, both per-layer methods, real steps


class MixedNet(nn.Module):
    """Layers that the fused engine sends to ghost norm and to materialisation, with strided,
    padded, dilated, grouped and depthwise convolutions, GroupNorm and sequence Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, stride=2, padding=1)  # T=36 d=27 p=32: per-sample
        self.n1 = nn.GroupNorm(4, 32)
        self.c2 = nn.Conv2d(32, 64, 3, stride=2, padding=2, dilation=2)  # T=9: ghost
        self.c3 = nn.Conv2d(64, 64, 3, padding=1, groups=4, bias=False)  # grouped: per-sample
        self.c4 = nn.Conv2d(64, 64, 3, padding=1, groups=64)  # depthwise: per-sample
        self.seq1 = nn.Linear(64, 48)  # T=9 d=64 p=48: ghost
        self.seq2 = nn.Linear(48, 2)  # T=9 d=48 p=2: per-sample
        self.head = nn.Linear(18, 10)  # T=1: ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.n1(self.c1(x)))
        h = torch.relu(self.c2(h))
        h = torch.tanh(self.c4(torch.relu(self.c3(h))) + h)
        s = h.flatten(2).transpose(1, 2)  # B x 9 x 64
        s = self.seq2(torch.tanh(self.seq1(s)))  # B x 9 x 2
        return self.head(s.flatten(1))  # type: ignore[no-any-return]


def _small_resnet() -> nn.Module:
    from federation.resnet import ResNetGN

    model = ResNetGN((16, 32, 64), blocks=1, groups=4)
    with torch.no_grad():  # non-trivial GroupNorm affine parameters
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _ce(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(m(xb), yb, reduction="none")


@pytest.mark.parametrize(("net", "keep_floats"), [("mixed", None), ("mixed", 0), ("odd", None),
                                                ("resnet", None), ("resnet", 0)])
def test_fused_clipped_sums_equal_opacus_hooks(
    net: str, keep_floats: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if keep_floats is not None:  # no memory for per-sample gradients: book-keeping everywhere
        monkeypatch.setattr(grad_sample, "PER_SAMPLE_KEEP_FLOATS", keep_floats)
    torch.manual_seed(1)
    if net == "mixed":
        model: nn.Module = MixedNet()
        x = torch.randn(12, 3, 12, 12)
    elif net == "odd":
        model = OddNet()
        x = torch.randn(12, 1, 23, 21)
    else:
        model = _small_resnet()
        x = torch.randn(12, 3, 8, 8)
    y = torch.randint(0, 10, (12,))
    params = list(model.parameters())
    sums = {}
    for mode in ("fused", "hooks"):
        concrete, clip, close = make_clipper(model, params, mode, 0.2, _ce)
        try:
            got, loss_sum = clip(x, y)
        finally:
            close()
        assert concrete == mode
        sums[mode] = (torch.cat([s.reshape(-1) for s in got]), loss_sum)
    (fused, fused_loss), (hooks, hooks_loss) = sums["fused"], sums["hooks"]
    assert fused.shape == hooks.shape
    assert float((fused - hooks).norm() / hooks.norm()) < 1e-5
    assert fused_loss == pytest.approx(hooks_loss, rel=1e-6)
    assert float(fused.norm()) <= 12 * 0.2 * (1 + 1e-5)  # each of the 12 terms has norm <= C


def test_fused_plan_mixes_ghost_norm_and_materialisation_by_cost() -> None:
    plan = {layer.name: layer for layer in fused_plan(MixedNet(), (torch.randn(2, 3, 12, 12),
                                                                   torch.randint(0, 10, (2,))))}
    methods = {name: layer.method for name, layer in plan.items()}
    assert methods == {"c1": "per-sample", "n1": "per-channel", "c2": "ghost", "c3": "per-sample",
                       "c4": "per-sample", "seq1": "ghost", "seq2": "per-sample", "head": "ghost"}
    assert (plan["c2"].positions, plan["c2"].fan_in, plan["c2"].fan_out) == (9, 32 * 9, 64)
    assert (plan["c3"].fan_in, plan["c3"].fan_out) == (16 * 9, 16)  # per group
    for layer in plan.values():
        if layer.kind != "GroupNorm":
            ghost = layer.method == "ghost"
            assert ghost == (ghost_is_cheaper(layer.positions, layer.fan_in, layer.fan_out)
                             and layer.name not in ("c3", "c4"))
    # The 1 M-parameter ResNet at 32x32: early stages materialised, the 8x8 stage by ghost norm.
    big = fused_plan(build_model("resnet-1m", 0), (torch.randn(2, 3, 32, 32),
                                                   torch.randint(0, 10, (2,))))
    by_t = {(layer.positions, layer.method) for layer in big if layer.kind == "Conv2d"}
    assert (1024, "per-sample") in by_t and (64, "ghost") in by_t
    assert not any(m == "ghost" for t, m in by_t if t == 1024)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        fused_plan(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
                   (torch.randn(2, 4), torch.randint(0, 4, (2,))))


def test_fused_dp_sgd_steps_match_opacus_hooks() -> None:
    # Same public seed: the same Poisson batches and noise, so the two engines must take the
    # same DP-SGD steps; the models may differ only by float rounding.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int64)
    finals = {}
    for mode in ("fused", "hooks"):
        torch.manual_seed(0)
        model = _small_resnet()
        start = flatten_params(model).copy()
        r = train_local(model, x, y, epochs=1, batch_size=12, lr=0.5, momentum=0.9, seed=5,
                        dp=DPPlan(0.5, 0.3, mode, secure_rng=False))
        assert r.grad_sample_mode == mode and r.steps == 4
        finals[mode] = flatten_params(model)
    moved = finals["hooks"] - start
    assert np.linalg.norm(moved) > 1e-2  # the steps did something
    assert np.linalg.norm(finals["fused"] - finals["hooks"]) < 1e-4 * np.linalg.norm(moved)
