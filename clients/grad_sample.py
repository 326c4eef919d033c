"""Per-sample clipped gradient sums for DP-SGD: the fused engine and its Opacus adapters.

:func:`make_clipper` returns a function from a batch to the sum of its per-example gradients,
each clipped to L2 norm C — the quantity DP-SGD adds noise to (see :mod:`clients.training`).
The loss is the task's (per example), so nothing here assumes classification.

Grad-sample modes:

``fused`` (default for models made of ``Linear``/``Conv2d`` layers)
    One forward pass with activation hooks and one ``torch.autograd.grad`` call for the
    layer outputs only, so autograd never computes the (unclipped) weight gradients it would
    throw away. Linear layers get their per-sample norms by the ghost-norm identity
    ``‖g aᵀ‖ = ‖g‖·‖a‖`` and their clipped sum as one matmul; convolutions materialise
    per-sample gradients from unfolded activations (cheap for small CNNs).
    GroupNorm's affine parameters get theirs from the normalised input (``Σ g·x̂``, ``Σ g``).
    Not covered: every other parameterised layer (LayerNorm, Embedding, ...); a model with
    one of them falls back to ``hooks`` as a whole (``fedguard bench models`` measures the
    cost on the GroupNorm ResNet tasks).
``hooks``, ``ghost``, ``functorch``
    Opacus' own ``GradSampleModule`` (hooks), ``GradSampleModuleFastGradientClipping``
    (ghost clipping, two backward passes), and Opacus' functorch path.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from federation.errors import ConfigError

__all__ = [
    "GRAD_SAMPLE_MODES",
    "ClipFn",
    "GradSampleMode",
    "PerExampleLoss",
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
    """Single-backward per-sample clipping for models built from Linear, Conv2d, GroupNorm."""

    SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)

    def __init__(
        self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float,
        loss: PerExampleLoss,
    ) -> None:
        self.model = model
        self.c = max_grad_norm
        self.loss = loss
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
                "fused mode: some trainable parameters are outside Linear/Conv2d/GroupNorm"
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
        sq = torch.zeros(b, dtype=loss_sum.dtype)
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
            elif isinstance(m, nn.GroupNorm):
                # y = x̂·w + b per channel, x̂ the group-normalised input: the per-sample weight
                # gradient is Σ_spatial g·x̂, the bias gradient Σ_spatial g (B x C each).
                xhat = F.group_norm(a, m.num_groups, eps=m.eps).reshape(b, m.num_channels, -1)
                g3 = g.reshape(b, m.num_channels, -1)
                if m.weight is not None and m.weight.requires_grad:
                    gw = (g3 * xhat).sum(2)
                    sq += gw.pow(2).sum(1)
                    pending.append((m, "w", gw, gw))
                if m.bias is not None and m.bias.requires_grad:
                    gb = g3.sum(2)
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
