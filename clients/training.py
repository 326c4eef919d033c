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

Per-sample clipped gradients come from :mod:`clients.grad_sample` (the fused engine, or
Opacus' hooks for layers it does not cover); the loss and the metrics come from the task
(:class:`federation.tasks.Task`), so nothing here assumes images, classes or accuracy.

Randomness: the non-private shuffle follows ``seed``. The private path's Poisson sampling and
noise must be secret; they come from OS entropy unless :attr:`DPPlan.secure_rng` is switched
off (tests and benchmarks only: a public seed lets anyone subtract the noise).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from clients.grad_sample import (
    GRAD_SAMPLE_MODES,
    ClipFn,
    GradSampleMode,
    PerExampleLoss,
    make_clipper,
    resolve_grad_sample_mode,
)
from federation.errors import ConfigError
from federation.privacy import poisson_schedule
from federation.tasks import FASHION_MNIST, Task

__all__ = [
    "GRAD_SAMPLE_MODES",
    "DPPlan",
    "EvalResult",
    "GradSampleMode",
    "TrainResult",
    "evaluate",
    "make_dp_compatible",
    "resolve_grad_sample_mode",
    "task_loss",
    "train_local",
]



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
        Mean training loss (the task's; cross-entropy in nats for classifiers) over the
        examples processed, measured before each step's update. Not privatised: releasing
        it is outside the (ε, δ) guarantee.
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
    """Mean loss, mean of every task metric, and the sample count.

    Attributes
    ----------
    loss:
        Mean of the task's per-example loss (cross-entropy in nats for classifiers).
    num_examples:
        Examples evaluated.
    metrics:
        Mean of each per-example metric the task defines (``accuracy`` in [0, 1] for the
        bundled classifiers; ``mse`` in target units squared for regression).
    primary_metric:
        The name of the metric a run reports per round.
    """

    loss: float
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    primary_metric: str = "accuracy"

    @property
    def primary(self) -> float:
        """The value of :attr:`primary_metric`."""
        return self.metrics[self.primary_metric]

    @property
    def accuracy(self) -> float:
        """The ``accuracy`` metric (``KeyError`` for a task that does not define one)."""
        return self.metrics["accuracy"]


def task_loss(task: Task) -> PerExampleLoss:
    """The per-example loss of ``task`` as the DP engine calls it: ``(model, x, y) -> (B,)``."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = task.loss(task.forward(model, x), y)
        if out.ndim != 1 or out.shape[0] != x.shape[0]:
            raise ConfigError(
                "task",
                f"task {task.name!r}: loss must return one value per example, shape "
                f"({x.shape[0]},), got {tuple(out.shape)}",
            )
        return out

    return loss


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
    if x.ndim < 2 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be Nx..., y must be Nx...; got x {x.shape}, y {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("no training examples")
    y_dtype: type[np.generic] = np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32
    return _as_tensor(x, np.float32), _as_tensor(y, y_dtype)


def _as_tensor(a: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if not arr.flags.writeable:
        # The data loader shares read-only arrays; torch cannot wrap those without warning.
        # We never write to them, but copying is the only warning-free way.
        arr = arr.copy()
    return torch.from_numpy(arr)


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
    task: Task = FASHION_MNIST,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``; the model's own parameter objects are updated.

    Parameters
    ----------
    model:
        The model; its parameters are updated in place (no wrapper is left behind, so
        ``federation.tasks.flatten_params(model)`` reflects the training).
    x, y:
        float32 inputs ``(N, ...)`` and targets ``(N, ...)`` (int64 labels or float32 values),
        as the task's ``load_data`` returns them.
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
    task:
        Supplies the per-example loss and the input transform (default: the Fashion-MNIST
        classifier's cross-entropy).

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
    loss_fn = task_loss(task)
    t0 = time.perf_counter()
    try:
        if dp is None:
            steps, loss_total, seen = _train_plain(model, opt, xt, yt, epochs, batch_size, seed,
                                                     loss_fn)
            mode, empty = None, 0
            q = min(1.0, batch_size / n)
        else:
            _check_dp_model(model)
            q, steps_per_epoch = poisson_schedule(n, batch_size)
            mode, clip_fn, close = make_clipper(
                model, params, dp.grad_sample_mode, dp.max_grad_norm, loss_fn, probe=(xt[:2], yt[:2])
            )
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
    loss_fn: PerExampleLoss,
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
            loss = loss_fn(model, xb, yb).mean()
            torch.autograd.backward(loss)
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
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024,
    task: Task = FASHION_MNIST,
) -> EvalResult:
    """Mean loss and mean of every metric of ``task`` for ``model`` on ``(x, y)``.

    ``model`` is unchanged. Raises ``ConfigError`` (key ``task``) if the task's metrics lack its
    primary metric or a metric is not one finite value per example.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt, yt = _check_data(x, y)
    was_training = model.training
    model.eval()
    try:
        loss_total = 0.0
        sums: dict[str, float] = {}
        for start in range(0, xt.shape[0], batch_size):
            xb, yb = xt[start : start + batch_size], yt[start : start + batch_size]
            out = task.forward(model, xb)
            losses = task.loss(out, yb)
            if losses.shape != (xb.shape[0],):
                raise ConfigError(
                    "task",
                    f"task {task.name!r}: loss must return one value per example, shape "
                    f"({xb.shape[0]},), got {tuple(losses.shape)}",
                )
            loss_total += float(losses.sum().item())
            for name, values in task.metrics(out, yb).items():
                if values.shape != (xb.shape[0],):
                    raise ConfigError(
                        "task",
                        f"task {task.name!r}: metric {name!r} must give one value per example, "
                        f"shape ({xb.shape[0]},), got {tuple(values.shape)}",
                    )
                sums[name] = sums.get(name, 0.0) + float(values.sum().item())
    finally:
        model.train(was_training)
    n = int(xt.shape[0])
    if task.primary_metric not in sums:
        raise ConfigError(
            "task",
            f"task {task.name!r}: primary_metric {task.primary_metric!r} is not among its "
            f"metrics {sorted(sums)}",
        )
    means = {k: v / n for k, v in sums.items()}
    for name, value in [("loss", loss_total / n), *means.items()]:
        if not math.isfinite(value):
            raise ConfigError("task", f"task {task.name!r}: {name} is not finite ({value!r})")
    return EvalResult(loss=loss_total / n, num_examples=n, metrics=means,
                      primary_metric=task.primary_metric)
