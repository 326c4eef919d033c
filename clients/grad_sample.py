"""Per-sample clipped gradient sums for DP-SGD: the fused engine and its Opacus adapters.

:func:`make_clipper` returns a function from a batch to the sum of its per-example gradients,
each clipped to L2 norm C — the quantity DP-SGD adds noise to (see :mod:`clients.training`).
The loss is the task's (per example), so nothing here assumes classification.

Grad-sample modes:

``fused`` (default for models made of ``Linear``/``Conv2d``/``GroupNorm`` layers)
    One forward pass with activation hooks and one ``torch.autograd.grad`` call for the
    layer outputs only, so autograd never computes the (unclipped) weight gradients it would
    throw away. Per layer, the per-sample squared norms come either from ghost norm
    (``‖Σ_t a_t g_tᵀ‖² = ⟨A Aᵀ, G Gᵀ⟩``, Gram matrices of the layer's inputs and output
    gradients) or from per-sample weight gradients materialised by one convolution call,
    whichever costs less (:func:`ghost_is_cheaper`, the "mixed ghost norm" rule); each
    parameter's clipped sum is then ``coef @ per_sample`` where materialised, else one
    book-keeping product ``(c ⊙ G)ᵀ A`` — the layer's ordinary weight gradient with every
    sample's output gradient scaled by its clipping coefficient. No second backward pass.
    Convolutions may have any stride, zero padding, dilation and groups (ghost norm only for
    ``groups=1``). GroupNorm's affine parameters get theirs from the normalised input
    (``Σ g·x̂``, ``Σ g``). :func:`fused_plan` tells which method each layer gets.
    Not covered: every other parameterised layer (LayerNorm, Embedding, ...) and string
    padding / non-zero padding modes; a model with one of them falls back to ``hooks`` as a
    whole.
``hooks``, ``ghost``, ``functorch``
    Opacus' own ``GradSampleModule`` (hooks), ``GradSampleModuleFastGradientClipping``
    (ghost clipping, two backward passes), and Opacus' functorch path.

All modes give the same clipped sum up to float rounding; tests hold ``fused`` to Opacus'
``hooks``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torch.nn.grad as nn_grad
from torch import nn

from federation.errors import ConfigError

__all__ = [
    "GRAD_SAMPLE_MODES",
    "PER_SAMPLE_KEEP_FLOATS",
    "ClipFn",
    "FusedLayer",
    "GradSampleMode",
    "PerExampleLoss",
    "fused_plan",
    "ghost_is_cheaper",
    "make_clipper",
    "resolve_grad_sample_mode",
]

GradSampleMode = Literal["auto", "fused", "hooks", "ghost", "functorch"]
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "fused", "hooks", "ghost", "functorch")

# Opacus' clipping convention: factor = min(1, C / (‖g‖ + 1e-6)).
_CLIP_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# per-sample clipped gradient sums


ClipFn = Callable[[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], float]]
"""(x_batch, y_batch) -> (clipped per-sample gradient sum per trainable param, loss sum)."""

PerExampleLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(model, x_batch, y_batch) -> per-example losses, shape (B,): the task's forward and loss."""


def _clip_and_sum(per_sample: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Clip materialised per-sample gradients (each Bxshape) to norm C and sum them."""
    b = per_sample[0].shape[0]
    sq = torch.zeros(b, dtype=per_sample[0].dtype)
    for g in per_sample:
        sq += g.reshape(b, -1).pow(2).sum(1)
    coef = (max_grad_norm / (sq.sqrt() + _CLIP_EPS)).clamp(max=1.0)
    return [(coef @ g.reshape(b, -1)).view(g.shape[1:]) for g in per_sample]


PER_SAMPLE_KEEP_FLOATS = 1 << 26
"""Floats (4 bytes each) of materialised per-sample gradients kept per batch for the clipped sum.

Past this budget (256 MB) a materialised layer keeps only its norms, and its clipped sum is
recomputed by book-keeping (one weighted weight-gradient call): same result, bounded memory
(the 11 M-parameter ResNet at batch 64 would otherwise hold about 1 GB).
"""


def ghost_is_cheaper(positions: int, fan_in: int, fan_out: int) -> bool:
    """Whether ghost norm beats materialising per-sample gradients for one layer.

    A layer whose per-sample weight gradient is ``Σ_t a_t g_tᵀ`` over ``T = positions``
    (the output positions of a convolution, the steps of a Linear applied to a sequence), with
    ``a_t`` of length ``d = fan_in`` (``Cin/groups · kh · kw`` for a convolution) and ``g_t``
    of length ``p = fan_out``, has the per-sample squared norm ``⟨A Aᵀ, G Gᵀ⟩`` (A is T x d,
    G is T x p). Ghost norm costs ``T²·(d + p)`` multiply-adds per sample and never holds a
    d x p matrix per sample; materialising costs ``T·d·p`` and writes ``d·p`` floats per
    sample. Ghost wins when ``T·(d + p) < d·p``. This is the "mixed ghost norm" idea of Bu et
    al. (2022) with the cost of our kernels: their ``2T² < d·p`` sends a ResNet's 16x16 stage
    (T = 256, d = 1152, p = 128) to ghost norm, where materialising measured 2.4x faster here.
    A sample's gradient (T = 1) always goes to ghost norm: ``‖g aᵀ‖ = ‖g‖·‖a‖``.
    """
    return positions * (fan_in + fan_out) < fan_in * fan_out


@dataclass(frozen=True)
class FusedLayer:
    """How the fused engine treats one parameterised layer (see :func:`fused_plan`).

    Attributes
    ----------
    name:
        The layer's qualified name in the model (``features.3.conv1``).
    kind:
        ``Linear``, ``Conv2d`` or ``GroupNorm``.
    method:
        ``ghost`` (norm from Gram matrices, clipped sum by one weighted weight-gradient
        product, the book-keeping trick), ``per-sample`` (per-sample weight gradients
        materialised once, used for the norm and the clipped sum) or ``per-channel``
        (GroupNorm's affine parameters: ``B x C`` per-sample gradients, always cheap).
    positions, fan_in, fan_out:
        T, d and p of :func:`ghost_is_cheaper` for this layer at the probed input size.
    """

    name: str
    kind: str
    method: Literal["ghost", "per-sample", "per-channel"]
    positions: int
    fan_in: int
    fan_out: int


def _conv_args(m: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    if isinstance(m.padding, str):  # refused in _Fused.__init__
        raise NotImplementedError("string padding")
    return (
        (int(m.stride[0]), int(m.stride[1])),
        (int(m.padding[0]), int(m.padding[1])),
        (int(m.dilation[0]), int(m.dilation[1])),
    )


def _conv_weight_grad(
    m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, weight_shape: Sequence[int], groups: int
) -> torch.Tensor:
    """The weight gradient of a convolution with ``m``'s geometry (one oneDNN call)."""
    stride, padding, dilation = _conv_args(m)
    out: torch.Tensor = nn_grad.conv2d_weight(  # type: ignore[no-untyped-call]
        a, list(weight_shape), g, stride, padding, dilation, groups
    )
    return out


def _conv_per_sample(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients, B x (Cout·Cin/groups·kh·kw) in the weight's layout.

    One weight-gradient call of a convolution whose groups are (sample, group) pairs: the batch
    is folded into the channels, so each sample's input channels meet only its own output
    gradient. Handles stride, padding, dilation and groups as the layer does.
    """
    b = a.shape[0]
    w = m.weight
    if m.in_channels == 1:
        # One input channel (a first layer on grey images): a single grouped convolution of
        # the input by the output gradients, one group per sample, with stride and dilation
        # swapped, measured 2x faster than the weight-gradient call. The result may overhang
        # the kernel by up to stride-1 rows and columns: cropped.
        (sh, sw), (ph, pw), (dh, dw) = _conv_args(m)
        kh, kw = m.kernel_size
        out = F.conv2d(a.reshape(1, b, a.shape[2], a.shape[3]),
                       g.reshape(b * g.shape[1], 1, g.shape[2], g.shape[3]),
                       padding=(ph, pw), stride=(dh, dw), dilation=(sh, sw), groups=b)
        return out[:, :, :kh, :kw].reshape(b, -1)
    folded = _conv_weight_grad(
        m,
        a.reshape(1, b * a.shape[1], a.shape[2], a.shape[3]),
        g.reshape(1, b * g.shape[1], g.shape[2], g.shape[3]),
        (b * w.shape[0], *w.shape[1:]),
        b * m.groups,
    )
    return folded.reshape(b, -1)


def _conv_patches(m: nn.Conv2d, a: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """The input patch of every output position: B x (Ho·Wo) x (kh·kw·Cin), groups=1 only.

    A strided view of the padded, channels-last input, copied once (F.unfold measured several
    times slower). Column order differs from the weight's layout; Gram matrices do not care.
    """
    b, cin = a.shape[0], a.shape[1]
    kh, kw = m.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = _conv_args(m)
    ap = F.pad(a, (pw, pw, ph, ph)) if (ph or pw) else a
    acl = ap.permute(0, 2, 3, 1).contiguous()
    s0, s1, s2, s3 = acl.stride()
    return acl.as_strided(
        (b, ho, wo, kh, kw, cin), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3)
    ).reshape(b, ho * wo, kh * kw * cin)


Finish = Callable[[torch.Tensor], torch.Tensor]
"""coef (B,) -> the clipped sum of one parameter, Σ_i coef_i · grad_i."""


class _Fused:
    """Single-backward per-sample clipping for models built from Linear, Conv2d, GroupNorm.

    One forward with hooks that keep each layer's input a and output; one autograd call for
    the gradients g of the layer outputs only (autograd never forms the unclipped weight
    gradients). Then, per layer, the per-sample squared norms by ghost norm or materialisation
    (:func:`ghost_is_cheaper`), the clipping coefficients, and each parameter's clipped sum:
    ``coef @ per_sample`` where materialised, else the book-keeping product — the layer's
    ordinary weight gradient with every sample's g scaled by its coefficient,
    ``Σ_i c_i A_iᵀ G_i = (c ⊙ A)ᵀ G``, one call, no second backward.
    """

    SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)

    def __init__(
        self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float,
        loss: PerExampleLoss,
    ) -> None:
        self.model = model
        self.c = max_grad_norm
        self.loss = loss
        self.layers: list[nn.Module] = []
        self.names: dict[int, str] = {}
        covered: set[int] = set()
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in self.SUPPORTED:
                raise NotImplementedError(f"fused mode does not support {type(m).__name__}")
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise NotImplementedError("fused mode supports Conv2d with numeric zero padding")
            self.layers.append(m)
            self.names[id(m)] = name
            covered.update(id(p) for p in own)
        if covered != {id(p) for p in params}:
            raise NotImplementedError(
                "fused mode: some trainable parameters are outside Linear/Conv2d/GroupNorm"
            )
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int, int]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        self.params = params
        self.plan: list[FusedLayer] = []

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
            loss_sum = self.loss(self.model, xb, yb).sum()
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
        self._sq = torch.zeros(b, dtype=loss_sum.dtype)
        self._kept = 0
        finish: dict[int, Finish] = {}
        plan: list[FusedLayer] = []
        # First pass: per-sample squared norms, and how each clipped sum will be formed.
        for (m, a, *_), g in zip(records, backprops, strict=True):
            if isinstance(m, nn.Linear):
                plan.append(self._linear(m, a, g, finish))
            elif isinstance(m, nn.Conv2d):
                plan.append(self._conv(m, a, g, finish))
            else:
                assert isinstance(m, nn.GroupNorm)
                plan.append(self._group_norm(m, a, g, finish))
        coef = (self.c / (self._sq.sqrt() + _CLIP_EPS)).clamp(max=1.0)
        self.plan = plan
        # Second pass: each parameter's clipped sum.
        clipped = [finish[id(p)](coef).view_as(p) for p in self.params]
        return clipped, float(loss_sum.item())

    def _materialised(self, per_sample: torch.Tensor, fallback: Finish) -> Finish:
        """Add the norms of B x k per-sample gradients; keep them for the sum if memory allows."""
        self._sq += torch.linalg.vector_norm(per_sample, dim=1).square()  # no B x k temporary
        if self._kept + per_sample.numel() > PER_SAMPLE_KEEP_FLOATS:
            return fallback
        self._kept += per_sample.numel()
        return lambda coef: coef @ per_sample

    def _bias(self, per_sample: torch.Tensor) -> Finish:
        self._sq += torch.linalg.vector_norm(per_sample, dim=1).square()
        return lambda coef: coef @ per_sample

    def _linear(
        self, m: nn.Linear, a: torch.Tensor, g: torch.Tensor, finish: dict[int, Finish]
    ) -> FusedLayer:
        b = a.shape[0]
        a3 = a.reshape(b, -1, a.shape[-1])  # B x T x d
        g3 = g.reshape(b, -1, g.shape[-1])  # B x T x p
        t, d, p = a3.shape[1], a3.shape[2], g3.shape[2]
        ghost = ghost_is_cheaper(t, d, p)

        def book_keeping(coef: torch.Tensor) -> torch.Tensor:
            return (g3 * coef[:, None, None]).reshape(-1, p).t() @ a3.reshape(-1, d)

        if m.weight.requires_grad:
            if t == 1:
                self._sq += a3[:, 0].pow(2).sum(1) * g3[:, 0].pow(2).sum(1)
                finish[id(m.weight)] = book_keeping
            elif ghost:
                gram = torch.bmm(a3, a3.transpose(1, 2)) * torch.bmm(g3, g3.transpose(1, 2))
                self._sq += gram.sum((1, 2))
                finish[id(m.weight)] = book_keeping
            else:
                per_sample = torch.einsum("nto,nti->noi", g3, a3).reshape(b, -1)
                finish[id(m.weight)] = self._materialised(per_sample, book_keeping)
        if m.bias is not None and m.bias.requires_grad:
            finish[id(m.bias)] = self._bias(g3.sum(1))
        return FusedLayer(self.names[id(m)], "Linear", "ghost" if ghost else "per-sample", t, d, p)

    def _conv(
        self, m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, finish: dict[int, Finish]
    ) -> FusedLayer:
        b, cout, ho, wo = g.shape
        kh, kw = m.kernel_size
        t, d, p = ho * wo, (m.in_channels // m.groups) * kh * kw, cout // m.groups
        # Ghost norm is written for groups=1 (a grouped layer's Gram matrices are per group).
        ghost = m.groups == 1 and ghost_is_cheaper(t, d, p)
        weight = m.weight

        def book_keeping(coef: torch.Tensor) -> torch.Tensor:
            return _conv_weight_grad(m, a, g * coef[:, None, None, None], weight.shape, m.groups)

        if weight.requires_grad:
            if ghost:
                cols = _conv_patches(m, a, ho, wo)
                g2 = g.reshape(b, cout, t)
                gram = torch.bmm(cols, cols.transpose(1, 2))
                del cols
                self._sq += (gram * torch.bmm(g2.transpose(1, 2), g2)).sum((1, 2))
                finish[id(weight)] = book_keeping
            else:
                finish[id(weight)] = self._materialised(_conv_per_sample(m, a, g), book_keeping)
        if m.bias is not None and m.bias.requires_grad:
            finish[id(m.bias)] = self._bias(g.sum((2, 3)))
        return FusedLayer(self.names[id(m)], "Conv2d", "ghost" if ghost else "per-sample", t, d, p)

    def _group_norm(
        self, m: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor, finish: dict[int, Finish]
    ) -> FusedLayer:
        # y = x̂·w + b per channel, x̂ the group-normalised input: the per-sample weight
        # gradient is Σ_spatial g·x̂, the bias gradient Σ_spatial g (B x C each).
        b = a.shape[0]
        g3 = g.reshape(b, m.num_channels, -1)
        if m.weight is not None and m.weight.requires_grad:
            xhat = F.group_norm(a, m.num_groups, eps=m.eps).reshape(b, m.num_channels, -1)
            finish[id(m.weight)] = self._bias((g3 * xhat).sum(2))
        if m.bias is not None and m.bias.requires_grad:
            finish[id(m.bias)] = self._bias(g3.sum(2))
        return FusedLayer(self.names[id(m)], "GroupNorm", "per-channel", g3.shape[2], 1,
                          m.num_channels)


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
        self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float,
        loss: PerExampleLoss, *, functorch: bool,
    ) -> None:
        from opacus.grad_sample import GradSampleModule

        self.gsm = GradSampleModule(
            model, batch_first=True, loss_reduction="sum", strict=True, force_functorch=functorch
        )
        self.params = params
        self.c = max_grad_norm
        self.loss = loss

    def close(self) -> None:
        self.gsm._close()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        loss_sum = self.loss(self.gsm, xb, yb).sum()
        with _quiet_hooks():
            torch.autograd.backward(loss_sum)
        per_sample = [p.grad_sample for p in self.params]  # type: ignore[attr-defined]
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        return _clip_and_sum(per_sample, self.c), float(loss_sum.item())


class _OpacusGhost:
    """Opacus ghost clipping: norms from a first backward, clipped sum from a second one."""

    def __init__(
        self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float,
        loss: PerExampleLoss,
    ) -> None:
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
        self.loss = loss

    def close(self) -> None:
        self.gsm._close()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        for p in self.params:
            p.grad = None
        losses = self.loss(self.gsm, xb, yb)
        with _quiet_hooks():
            torch.autograd.backward(losses.sum(), retain_graph=True)
        coef = self.gsm.get_clipping_coef()
        for p in self.params:
            p.grad = None
        self.gsm.disable_hooks()
        try:
            with _quiet_hooks():
                torch.autograd.backward((losses * coef).sum())
        finally:
            self.gsm.enable_hooks()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad = None
        return [g.detach() for g in grads], float(losses.detach().sum().item())


def resolve_grad_sample_mode(
    model: nn.Module,
    mode: GradSampleMode = "auto",
    probe: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss: PerExampleLoss | None = None,
) -> str:
    """The concrete grad-sample mode ``auto`` picks for ``model``: ``fused`` or ``hooks``.

    ``fused`` needs every trainable parameter in a ``Linear``/``Conv2d``/``GroupNorm`` layer, each
    called once per forward. Layer types are checked statically; the rest only by a
    forward/backward pass on ``probe`` (a couple of inputs and their targets) under ``loss``
    (default: cross-entropy of ``model(x)``), when given. A model that changes a layer's input
    or output in place is refused with :class:`ConfigError` (no mode, Opacus' included, gets
    its per-sample gradients right). Layers outside ``Linear``/``Conv2d``/``GroupNorm``
    (LayerNorm, embeddings) make ``auto`` fall back to Opacus ``hooks`` for the whole model.
    """
    if mode != "auto":
        return mode
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        fused = _Fused(model, params, 1.0, loss or _default_loss)
    except NotImplementedError:
        return "hooks"
    try:
        if probe is not None:
            fused(*probe)
    except NotImplementedError:
        return "hooks"
    finally:
        fused.close()
    return "fused"


def fused_plan(
    model: nn.Module,
    probe: tuple[torch.Tensor, torch.Tensor],
    loss: PerExampleLoss | None = None,
) -> list[FusedLayer]:
    """How the fused engine treats each parameterised layer of ``model`` at ``probe``'s size.

    Runs the engine once on ``probe`` (a few inputs and their targets; ``loss`` defaults to
    cross-entropy of ``model(x)``) and returns one :class:`FusedLayer` per layer, in forward
    order. The method depends on the input size (T), not on the batch size. Raises
    ``NotImplementedError`` naming the reason when ``model`` is outside the fused engine.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = _Fused(model, params, 1.0, loss or _default_loss)
    try:
        fused(*probe)
    finally:
        fused.close()
    return list(fused.plan)


def _default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def make_clipper(
    model: nn.Module,
    params: list[nn.Parameter],
    mode: GradSampleMode,
    max_grad_norm: float,
    loss: PerExampleLoss,
    probe: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[str, ClipFn, Callable[[], None]]:
    """A per-sample clipper for ``model``: ``(concrete mode, clip function, close)``.

    The clip function maps a batch ``(x, y)`` to the sum over examples of each example's
    gradient of ``loss`` clipped to L2 norm ``max_grad_norm`` (one tensor per parameter in
    ``params``), and the batch's summed loss. ``close()`` removes every hook it installed.
    """
    concrete = resolve_grad_sample_mode(model, mode, probe, loss)
    fn: _Fused | _OpacusHooks | _OpacusGhost
    if concrete == "fused":
        fn = _Fused(model, params, max_grad_norm, loss)
    elif concrete == "hooks":
        fn = _OpacusHooks(model, params, max_grad_norm, loss, functorch=False)
    elif concrete == "functorch":
        fn = _OpacusHooks(model, params, max_grad_norm, loss, functorch=True)
    else:
        fn = _OpacusGhost(model, params, max_grad_norm, loss)
    return concrete, fn, fn.close
