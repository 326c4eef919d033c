"""Local training on one client: plain SGD or DP-SGD (Poisson sampling, clipping, Gaussian noise).

The private path is the sampled Gaussian mechanism that the accountants in
:mod:`federation.privacy` analyse, step for step:

* every step draws a Poisson sample: each local record is in the batch independently with
  probability ``q = batch_size / n`` (so batches vary in size and may be empty);
* each record's gradient is clipped to L2 norm ``max_grad_norm`` (C);
* the clipped gradients are summed, Gaussian noise N(0, (sigma·C)²) is added to every coordinate,
  and the sum is divided by the *expected* batch size ``q·n`` (never by the realised size,
  which would leak it);
* SGD with momentum then consumes this noisy gradient (post-processing).

An empty Poisson batch is still a step of the mechanism: its release is pure noise. We take
that noise-only step (and count it) instead of skipping it. Skipping would make "this batch
was empty" observable through an exactly-unchanged model, an event whose probability depends
on whether a given record is present and which the accountant does not model.

Per-sample gradients ("grad-sample modes", chosen by :attr:`DPPlan.grad_sample_mode`):

``fused`` (default for models made of ``Linear``/``Conv2d`` layers)
    One forward pass with activation hooks and one ``torch.autograd.grad`` call for the
    layer outputs only, so autograd never computes the (unclipped) weight gradients it would
    throw away. Linear layers get their per-sample norms by the ghost-norm identity
    ``‖g aᵀ‖ = ‖g‖·‖a‖`` and their clipped sum as one matmul; convolutions materialise
    per-sample gradients from unfolded activations (cheap for small CNNs).
``hooks``, ``ghost``, ``functorch``
    Opacus' own ``GradSampleModule`` (hooks), ``GradSampleModuleFastGradientClipping``
    (ghost clipping, two backward passes), and Opacus' functorch path; kept for comparison
    (``simulations/bench_dp.py``) and for layers ``fused`` does not know.

Randomness: the non-private shuffle follows ``seed``. The private path's Poisson sampling and
noise must be secret; they come from OS entropy unless :attr:`DPPlan.secure_rng` is switched
off (tests and benchmarks only: a public seed lets anyone subtract the noise).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from federation.errors import ConfigError
from federation.privacy import poisson_schedule

__all__ = [
    "GRAD_SAMPLE_MODES",
    "DPPlan",
    "EvalResult",
    "GradSampleMode",
    "TrainResult",
    "evaluate",
    "make_dp_compatible",
    "resolve_grad_sample_mode",
    "train_local",
]

GradSampleMode = Literal["auto", "fused", "hooks", "ghost", "functorch"]
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "fused", "hooks", "ghost", "functorch")

# Opacus' clipping convention: factor = min(1, C / (‖g‖ + 1e-6)).
_CLIP_EPS = 1e-6


@dataclass(frozen=True)
class DPPlan:
    """How to privatise local training.

    Attributes
    ----------
    noise_multiplier:
        sigma, the ratio of the Gaussian noise's standard deviation to ``max_grad_norm``
        (dimensionless, > 0).
    max_grad_norm:
        C, the per-sample L2 clipping bound (in gradient units, > 0).
    grad_sample_mode:
        How per-sample gradients are computed; ``auto`` picks ``fused`` when the model
        is made only of layers it supports, else Opacus ``hooks``. All modes give the same
        clipped sum up to float rounding.
    secure_rng:
        Draw Poisson sampling and noise from OS entropy (default). ``False`` derives them
        from the ``seed`` passed to :func:`train_local` — reproducible, but whoever knows
        the seed can remove the noise: tests and benchmarks only.
    """

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: GradSampleMode = "auto"
    secure_rng: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(
                "dp.noise_multiplier", f"must be finite and > 0, got {self.noise_multiplier!r}"
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(
                "dp.max_grad_norm", f"must be finite and > 0, got {self.max_grad_norm!r}"
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                "dp.grad_sample_mode",
                f"must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}",
            )


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train_local` did.

    Attributes
    ----------
    num_examples:
        Local training set size n.
    steps:
        Optimizer steps taken. Under DP these are the mechanism's steps, empty Poisson
        batches included: exactly the ``steps`` to record in the privacy ledger.
    sample_rate:
        q = batch_size / n (capped at 1): the Poisson rate under DP, the nominal batch
        fraction otherwise.
    mean_loss:
        Mean training cross-entropy (nats) over the examples processed, measured before
        each step's update. Not privatised: releasing it is outside the (ε, δ) guarantee.
    seconds:
        Wall-clock time of the training loop.
    noise_multiplier:
        sigma used, or ``None`` for non-private training.
    """

    num_examples: int
    steps: int
    sample_rate: float
    mean_loss: float
    seconds: float
    noise_multiplier: float | None
    grad_sample_mode: str | None = None
    empty_batches: int = 0


@dataclass(frozen=True)
class EvalResult:
    """Loss (mean cross-entropy, nats), accuracy (fraction in [0, 1]) and sample count."""

    loss: float
    accuracy: float
    num_examples: int


# --------------------------------------------------------------------------------------------
# model checks


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` that DP-SGD can train (BatchNorm replaced by GroupNorm).

    Uses Opacus' ``ModuleValidator.fix``. Call it where the model is *built*, so that the
    server and every client share the same architecture; :func:`train_local` refuses
    models that still contain BatchNorm rather than silently training another model.
    """
    from opacus.validators import ModuleValidator

    fixed: nn.Module = ModuleValidator.fix(model)
    return fixed


def _check_dp_model(model: nn.Module) -> None:
    bn = [
        name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if bn:
        raise ConfigError(
            "dp",
            f"the model has BatchNorm layers ({', '.join(bn)}), which mix examples within a "
            "batch and so break per-sample clipping; build the model through "
            "clients.training.make_dp_compatible(model) (BatchNorm -> GroupNorm) for every "
            "party, or train without DP",
        )


def _check_data(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2 or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"x must be Nx..., y must be N; got x {x.shape}, y {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("no training examples")
    return _as_tensor(x, np.float32), _as_tensor(y, np.int64)


def _as_tensor(a: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if not arr.flags.writeable:
        # The data loader shares read-only arrays; torch cannot wrap those without warning.
        # We never write to them, but copying is the only warning-free way.
        arr = arr.copy()
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------------------------
# per-sample clipped gradient sums


ClipFn = Callable[[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], float]]
"""(x_batch, y_batch) -> (clipped per-sample gradient sum per trainable param, loss sum)."""


def _clip_and_sum(per_sample: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Clip materialised per-sample gradients (each Bxshape) to norm C and sum them."""
    b = per_sample[0].shape[0]
    sq = torch.zeros(b, dtype=per_sample[0].dtype)
    for g in per_sample:
        sq += g.reshape(b, -1).pow(2).sum(1)
    coef = (max_grad_norm / (sq.sqrt() + _CLIP_EPS)).clamp(max=1.0)
    return [(coef @ g.reshape(b, -1)).view(g.shape[1:]) for g in per_sample]


# Chunk of samples per bmm when materialising convolution per-sample gradients: keeps the
# unfolded activations in cache (measured: 2-3x faster than one batch-wide bmm at B >= 128).
_CONV_CHUNK = 16


def _conv2d_per_sample_weight_grads(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of a ``groups=1`` Conv2d, flattened: B x (Cout·Cin·kh·kw).

    ``a`` is the layer input BxCinxHxW, ``g`` the gradient of the summed loss with respect to
    the layer output BxCoutxHoxWo.
    """
    b, cin = a.shape[0], a.shape[1]
    cout, ho, wo = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = m.kernel_size
    sh, sw = m.stride
    dh, dw = m.dilation
    if isinstance(m.padding, str):
        raise NotImplementedError("string padding")
    ph, pw = int(m.padding[0]), int(m.padding[1])
    if cin == 1:
        # One grouped convolution (one group per sample): the input plays the image and the
        # output gradient the kernel; stride and dilation swap roles.
        out = F.conv2d(
            a.reshape(1, b, a.shape[2], a.shape[3]),
            g.reshape(b * cout, 1, ho, wo),
            padding=(ph, pw),
            stride=(dh, dw),
            dilation=(sh, sw),
            groups=b,
        )
        return out[:, :, :kh, :kw].reshape(b, cout * kh * kw)
    # Channels-last strided view of the padded input (no im2col call: F.unfold is several
    # times slower here), copied chunk by chunk into BxLx(kh·kw·Cin) and multiplied.
    ap = F.pad(a, (pw, pw, ph, ph)) if (ph or pw) else a
    acl = ap.permute(0, 2, 3, 1).contiguous()
    s0, s1, s2, s3 = acl.stride()
    out_chunks = []
    for start in range(0, b, _CONV_CHUNK):
        stop = min(b, start + _CONV_CHUNK)
        cols = (
            acl[start:stop]
            .as_strided(
                (stop - start, ho, wo, kh, kw, cin),
                (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3),
            )
            .reshape(stop - start, ho * wo, kh * kw * cin)
        )
        gw = torch.bmm(g[start:stop].reshape(stop - start, cout, ho * wo), cols)
        out_chunks.append(gw.view(stop - start, cout, kh, kw, cin).permute(0, 1, 4, 2, 3))
    return torch.cat(out_chunks).reshape(b, cout * cin * kh * kw)


class _Fused:
    """Single-backward per-sample clipping for models built from Linear and Conv2d layers."""

    SUPPORTED = (nn.Linear, nn.Conv2d)

    def __init__(self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float) -> None:
        self.model = model
        self.c = max_grad_norm
        self.layers: list[nn.Module] = []
        covered: set[int] = set()
        for _name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in self.SUPPORTED:
                raise NotImplementedError(f"fused mode does not support {type(m).__name__}")
            if isinstance(m, nn.Conv2d) and (
                m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)
            ):
                raise NotImplementedError(
                    "fused mode supports Conv2d with groups=1, numeric zero padding"
                )
            self.layers.append(m)
            covered.update(id(p) for p in own)
        if covered != {id(p) for p in params}:
            raise NotImplementedError(
                "fused mode: some trainable parameters are outside Linear/Conv2d"
            )
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int, int]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        self.params = params

    def _hook(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        inp = inputs[0].detach()  # shares the version counter with the live input
        self._records.append((module, inp, output, inp._version, output._version))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        self._records = []
        try:
            logits = self.model(xb)
            loss_sum = F.cross_entropy(logits, yb, reduction="sum")
            records = self._records
        finally:
            self._records = []
        if len(records) != len(self.layers) or len({id(r[0]) for r in records}) != len(records):
            raise NotImplementedError("fused mode needs each layer called exactly once per forward")
        for layer, inp, out, in_version, out_version in records:
            if inp._version != in_version or out._version != out_version:
                raise ConfigError(
                    "dp",
                    f"the model modifies the input or output of {type(layer).__name__} in place "
                    "(e.g. ReLU(inplace=True)); per-sample gradients need those tensors intact: "
                    "use inplace=False",
                )
        backprops = torch.autograd.grad(loss_sum, [r[2] for r in records])
        b = xb.shape[0]
        sq = torch.zeros(b, dtype=logits.dtype)
        pending: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        # First pass: per-sample squared norms (and what the second pass needs).
        for (m, a, *_), g in zip(records, backprops, strict=True):
            if isinstance(m, nn.Linear):
                a3 = a.reshape(b, -1, a.shape[-1])
                g3 = g.reshape(b, -1, g.shape[-1])
                if a3.shape[1] == 1:
                    a2, g2 = a3[:, 0], g3[:, 0]
                    gsq = g2.pow(2).sum(1)
                    if m.weight.requires_grad:
                        sq += a2.pow(2).sum(1) * gsq
                        pending.append((m, "lin_w", a2, g2))
                    if m.bias is not None and m.bias.requires_grad:
                        sq += gsq
                        pending.append((m, "b", g2, g2))
                else:
                    if m.weight.requires_grad:
                        gw = torch.einsum("nto,nti->noi", g3, a3).reshape(b, -1)
                        sq += torch.linalg.vector_norm(gw, dim=1).pow(2)
                        pending.append((m, "w", gw, gw))
                    if m.bias is not None and m.bias.requires_grad:
                        gb = g3.sum(1)
                        sq += gb.pow(2).sum(1)
                        pending.append((m, "b", gb, gb))
            else:
                assert isinstance(m, nn.Conv2d)
                g4 = g.reshape(b, g.shape[1], g.shape[2], g.shape[3])
                if m.weight.requires_grad:
                    gw = _conv2d_per_sample_weight_grads(m, a, g4)  # B x Cout·Cin·kh·kw
                    sq += torch.linalg.vector_norm(gw, dim=1).pow(2)
                    pending.append((m, "w", gw, gw))
                if m.bias is not None and m.bias.requires_grad:
                    gb = g4.sum((2, 3))
                    sq += gb.pow(2).sum(1)
                    pending.append((m, "b", gb, gb))
        coef = (self.c / (sq.sqrt() + _CLIP_EPS)).clamp(max=1.0)
        # Second pass: clipped sums, one matmul per parameter.
        clipped: dict[int, torch.Tensor] = {}
        for m, kind, u, v in pending:
            weight = cast(torch.Tensor, m.weight)
            if kind == "lin_w":
                clipped[id(weight)] = (v * coef[:, None]).t() @ u
            elif kind == "w":
                clipped[id(weight)] = (coef @ u.reshape(b, -1)).view_as(weight)
            else:
                clipped[id(m.bias)] = coef @ u
        return [clipped[id(p)] for p in self.params], float(loss_sum.item())


@contextlib.contextmanager
def _quiet_hooks() -> Iterator[None]:
    # Opacus registers full backward hooks; torch warns that they fire on module outputs when
    # the input needs no gradient, which is exactly the case we want (first layer's input).
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        yield


class _OpacusHooks:
    """Opacus' GradSampleModule: per-sample gradients by module hooks (plus the usual grads)."""

    def __init__(
        self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float, *, functorch: bool
    ) -> None:
        from opacus.grad_sample import GradSampleModule

        self.gsm = GradSampleModule(
            model, batch_first=True, loss_reduction="sum", strict=True, force_functorch=functorch
        )
        self.params = params
        self.c = max_grad_norm

    def close(self) -> None:
        self.gsm._close()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        loss_sum = F.cross_entropy(self.gsm(xb), yb, reduction="sum")
        with _quiet_hooks():
            loss_sum.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
        per_sample = [p.grad_sample for p in self.params]  # type: ignore[attr-defined]
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        return _clip_and_sum(per_sample, self.c), float(loss_sum.item())


class _OpacusGhost:
    """Opacus ghost clipping: norms from a first backward, clipped sum from a second one."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.gsm = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="sum",
            strict=True,
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )
        self.params = params

    def close(self) -> None:
        self.gsm._close()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        for p in self.params:
            p.grad = None
        losses = F.cross_entropy(self.gsm(xb), yb, reduction="none")
        with _quiet_hooks():
            losses.sum().backward(retain_graph=True)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        coef = self.gsm.get_clipping_coef()
        for p in self.params:
            p.grad = None
        self.gsm.disable_hooks()
        try:
            with _quiet_hooks():
                (losses * coef).sum().backward()
        finally:
            self.gsm.enable_hooks()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad = None
        return [g.detach() for g in grads], float(losses.detach().sum().item())


def resolve_grad_sample_mode(
    model: nn.Module, mode: GradSampleMode = "auto", probe: torch.Tensor | None = None
) -> str:
    """The concrete grad-sample mode ``auto`` picks for ``model``: ``fused`` or ``hooks``.

    ``fused`` needs every trainable parameter in a plain ``Linear``/``Conv2d`` layer, each
    called once per forward. Layer types are checked statically; the rest only by a
    forward/backward pass on ``probe`` (a couple of inputs), when given. A model that changes
    a layer's input or output in place is refused with :class:`ConfigError` (no mode,
    Opacus' included, gets its per-sample gradients right).
    """
    if mode != "auto":
        return mode
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        fused = _Fused(model, params, 1.0)
    except NotImplementedError:
        return "hooks"
    try:
        if probe is not None:  # label 0 exists for any classifier
            fused(probe, torch.zeros(probe.shape[0], dtype=torch.int64))
    except NotImplementedError:
        return "hooks"
    finally:
        fused.close()
    return "fused"


def _make_clipper(
    model: nn.Module, params: list[nn.Parameter], plan: DPPlan, probe: torch.Tensor | None = None
) -> tuple[str, ClipFn, Callable[[], None]]:
    mode = resolve_grad_sample_mode(model, plan.grad_sample_mode, probe)
    fn: _Fused | _OpacusHooks | _OpacusGhost
    if mode == "fused":
        fn = _Fused(model, params, plan.max_grad_norm)
    elif mode == "hooks":
        fn = _OpacusHooks(model, params, plan.max_grad_norm, functorch=False)
    elif mode == "functorch":
        fn = _OpacusHooks(model, params, plan.max_grad_norm, functorch=True)
    else:
        fn = _OpacusGhost(model, params, plan.max_grad_norm)
    return mode, fn, fn.close


# --------------------------------------------------------------------------------------------
# training and evaluation


def _check_hparams(epochs: int, batch_size: int, lr: float, momentum: float) -> None:
    if epochs < 0:
        raise ConfigError("train.local_epochs", f"must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ConfigError("train.batch_size", f"must be >= 1, got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError("train.lr", f"must be finite and > 0, got {lr}")
    if not (0 <= momentum < 1):
        raise ConfigError("train.momentum", f"must be in [0, 1), got {momentum}")


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    dp: DPPlan | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``; the model's own parameter objects are updated.

    Parameters
    ----------
    model:
        The model; its parameters are updated in place (no wrapper is left behind, so
        ``federation.tasks.flatten_params(model)`` reflects the training).
    x, y:
        float32 inputs NxCxHxW, already normalised, and int64 labels N.
    epochs:
        Local epochs. Non-private: full shuffled passes. DP: ``ceil(n / batch_size)``
        Poisson-sampled steps each (see :func:`federation.privacy.poisson_schedule`).
    batch_size:
        Mini-batch size; under DP the *expected* batch size (q = batch_size / n).
    lr, momentum:
        SGD learning rate and momentum.
    seed:
        Seeds the non-private shuffle (and the DP randomness only if
        ``dp.secure_rng`` is off).
    dp:
        ``None`` for plain SGD, else a :class:`DPPlan`.

    Returns
    -------
    TrainResult
        Under DP, ``steps`` and ``sample_rate`` are what the privacy ledger must record.
    """
    _check_hparams(epochs, batch_size, lr, momentum)
    xt, yt = _check_data(x, y)
    n = xt.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    was_training = model.training
    model.train()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    t0 = time.perf_counter()
    try:
        if dp is None:
            steps, loss_total, seen = _train_plain(model, opt, xt, yt, epochs, batch_size, seed)
            mode, empty = None, 0
            q = min(1.0, batch_size / n)
        else:
            _check_dp_model(model)
            q, steps_per_epoch = poisson_schedule(n, batch_size)
            mode, clip_fn, close = _make_clipper(model, params, dp, probe=xt[:2])
            try:
                steps, loss_total, seen, empty = _train_dp(
                    opt, params, clip_fn, xt, yt, epochs * steps_per_epoch, q, dp, seed
                )
            finally:
                close()
    finally:
        model.train(was_training)
        for p in params:
            p.grad = None
    seconds = time.perf_counter() - t0
    return TrainResult(
        num_examples=n,
        steps=steps,
        sample_rate=q,
        mean_loss=loss_total / seen if seen else float("nan"),
        seconds=seconds,
        noise_multiplier=None if dp is None else dp.noise_multiplier,
        grad_sample_mode=mode,
        empty_batches=empty,
    )


def _train_plain(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    xt: torch.Tensor,
    yt: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
) -> tuple[int, float, int]:
    n = xt.shape[0]
    gen = torch.Generator().manual_seed(seed)
    steps, loss_total, seen = 0, 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            opt.step()
            steps += 1
            loss_total += float(loss.item()) * idx.numel()
            seen += idx.numel()
    return steps, loss_total, seen


def _train_dp(
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    clip_fn: ClipFn,
    xt: torch.Tensor,
    yt: torch.Tensor,
    total_steps: int,
    q: float,
    dp: DPPlan,
    seed: int,
) -> tuple[int, float, int, int]:
    n = xt.shape[0]
    gen = torch.Generator()
    gen.manual_seed(secrets.randbits(63) if dp.secure_rng else (seed * 1_000_003 + 17) % (2**63))
    expected_batch = q * n
    noise_std = dp.noise_multiplier * dp.max_grad_norm
    loss_total, seen, empty = 0.0, 0, 0
    for _ in range(total_steps):
        if q >= 1.0:
            idx = torch.arange(n)
        else:
            idx = (torch.rand(n, generator=gen) < q).nonzero().squeeze(1)
        if idx.numel() == 0:
            # Empty Poisson batch: the clipped sum is exactly zero; the noise still goes out.
            sums = [torch.zeros_like(p) for p in params]
            empty += 1
        else:
            sums, loss_sum = clip_fn(xt[idx], yt[idx])
            loss_total += loss_sum
            seen += idx.numel()
        for p, s in zip(params, sums, strict=True):
            noisy = s.detach().reshape(p.shape).clone()
            if noise_std > 0:
                noisy.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=noise_std)
            p.grad = noisy.div_(expected_batch)
        opt.step()
    return total_steps, loss_total, seen, empty


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024
) -> EvalResult:
    """Mean cross-entropy (nats) and accuracy of ``model`` on ``(x, y)``; ``model`` is unchanged."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt, yt = _check_data(x, y)
    was_training = model.training
    model.eval()
    try:
        loss_total, correct = 0.0, 0
        for start in range(0, xt.shape[0], batch_size):
            xb, yb = xt[start : start + batch_size], yt[start : start + batch_size]
            logits = model(xb)
            loss_total += float(F.cross_entropy(logits, yb, reduction="sum").item())
            correct += int((logits.argmax(1) == yb).sum().item())
    finally:
        model.train(was_training)
    n = int(xt.shape[0])
    return EvalResult(loss=loss_total / n, accuracy=correct / n, num_examples=n)
