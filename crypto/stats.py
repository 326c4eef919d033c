"""Encrypted statistics for the poisoning filters, revealed as single scalars.

Protocol (DESIGN.md section 3, "screen")
-----------------------------------------
1. **Server** (holds a :class:`~crypto.ckks.PublicContext` of
   :attr:`~crypto.ckks.Preset.SCREENING`): :func:`compute_statistics` takes the
   clients' :class:`~crypto.ckks.EncryptedVector` updates (and optionally a reference
   vector such as the encrypted global model or an aggregate) and, for each requested
   statistic, sums *lazy* slot-wise ciphertext products over all chunks into ONE
   ciphertext -- no relinearisation, no rescale, no Galois keys, so it has 3
   polynomials at scale Delta^2. It then adds a fresh random mask whose slots sum to
   exactly zero, with amplitude ``2**mask_bits`` times the largest possible slot value
   (as a fresh public-key encryption, which also re-randomises the ciphertext).
2. **Key holders** (a small quorum of trainers, holding the
   :class:`~crypto.ckks.SecretContext`): :func:`decrypt_scalars` decrypts each masked
   ciphertext and returns only the sum of its slots -- the statistic. Every individual
   slot they see is dominated by the mask, so they learn one scalar per statistic.
3. **Server**: :func:`reconcile` compares the key holders' answers (honest holders
   return bit-identical values) and names holders who disagree with a strict majority.
   :func:`assemble` turns the agreed values into norm / distance / inner-product arrays.

Statistics
----------
* squared norm ``||x_i||^2``;
* squared distance ``||x_i - x_j||^2``, computed from the true difference of the
  ciphertexts (as cheap as an inner product, and no cancellation error);
* inner product ``<x_i, r>`` with a reference ``r``.

Precision: relative error ~1e-5 or better for the values of fedguard updates
(``|x|`` in 1e-3..1e-1 and at least a few thousand values); see the tests.

Bounds: ``value_bound`` must bound ``|x|`` of every element of the client vectors
(and ``reference_bound`` of the reference). They set the mask amplitude and are
checked against the modulus: Delta^2 * slot bound * (1 + 2^mask_bits) must stay below a
quarter of the 88-bit modulus, or :func:`compute_statistics` refuses.
"""

from __future__ import annotations

import enum
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from crypto import _seal
from crypto.ckks import (
    Context,
    EncryptedVector,
    MaskedStatistic,
    Preset,
    SecretContext,
    _public_of,
)
from crypto.wire import decode_statistic, encode_statistic
from federation.errors import KeyMismatch

__all__ = [
    "ScreeningRequest",
    "ScreeningValues",
    "StatKind",
    "StatLabel",
    "assemble",
    "compute_statistics",
    "decrypt_scalars",
    "reconcile",
]

_MASK_GRID_BITS: Final = 40  # mask values are integers times 2^(e-40): exact zero sums


class StatKind(enum.Enum):
    """What a masked statistic measures."""

    SQUARED_NORM = "squared-norm"
    SQUARED_DISTANCE = "squared-distance"
    INNER_PRODUCT = "inner-product"


@dataclass(frozen=True)
class StatLabel:
    """Which statistic a masked ciphertext holds (kept by the server, never sent).

    ``i`` indexes the client vectors; ``j`` is the second vector of a distance
    (``i < j``) and ``None`` otherwise (inner products are with the reference).
    """

    kind: StatKind
    i: int
    j: int | None = None


@dataclass(frozen=True)
class ScreeningRequest:
    """The server's side of one screening round.

    Attributes
    ----------
    labels:
        One label per statistic, in order. The server keeps these.
    statistics:
        The masked ciphertexts, same order; send :meth:`blobs` to the key holders.
    shared_randomness:
        Pairs ``(i, j)`` whose ciphertexts share randomness in some chunk (one is a
        copy or replay of the other). Their distance statistic is incomplete: reject
        those updates rather than trusting it.
    """

    labels: tuple[StatLabel, ...]
    statistics: tuple[MaskedStatistic, ...]
    shared_randomness: tuple[tuple[int, int], ...] = field(default=())

    def blobs(self) -> list[bytes]:
        """Wire envelopes of :attr:`statistics`, for :func:`decrypt_scalars`."""
        return [encode_statistic(s) for s in self.statistics]


def _zero_sum_mask(
    slots: int, amplitude: float, rng: Callable[[int], bytes]
) -> npt.NDArray[np.complex128]:
    """Complex mask, real and imaginary parts each ~uniform in [-A, A], real sum exactly 0.

    Values are integers times a power of two, so their float64 sum is exact; the last
    ``(sum mod slots)`` units are spread one per slot, keeping every slot near-uniform.
    """
    exponent = math.floor(math.log2(amplitude))
    unit = 2.0 ** (exponent - _MASK_GRID_BITS)
    half = 1 << _MASK_GRID_BITS
    parts = []
    for _ in range(2):
        raw = np.frombuffer(rng(8 * slots), dtype="<u8")
        ints = (raw % np.uint64(2 * half)).astype(np.int64) - half
        total = int(ints.sum())
        quotient, remainder = divmod(total, slots)
        ints -= quotient
        ints[:remainder] -= 1
        parts.append(ints.astype(np.float64) * unit)
    return parts[0] + 1j * parts[1]


_OPS: Final = {
    StatKind.SQUARED_NORM: _seal.OP_SQUARE,
    StatKind.SQUARED_DISTANCE: _seal.OP_DIFF_SQUARE,
    StatKind.INNER_PRODUCT: _seal.OP_PRODUCT,
}


def compute_statistics(
    ctx: Context,
    vectors: Sequence[EncryptedVector],
    *,
    reference: EncryptedVector | None = None,
    norms: bool = True,
    distances: bool = True,
    inner: bool = True,
    value_bound: float = 1.0,
    reference_bound: float | None = None,
    mask_bits: int = 20,
    rng: Callable[[int], bytes] = os.urandom,
    progress: Callable[[int, int], None] | None = None,
) -> ScreeningRequest:
    """Masked encrypted statistics of client updates (server side, no secret key).

    Parameters
    ----------
    ctx:
        Context of the :attr:`~crypto.ckks.Preset.SCREENING` key (the server's public one).
    vectors:
        The clients' encrypted updates: same key, preset and length.
    reference:
        Optional vector for the inner products (e.g. the encrypted global model).
    norms, distances, inner:
        Which statistics to compute; ``inner`` needs ``reference``. Order of the result:
        all norms, then distances ``(i, j), i < j`` in row order, then inner products.
    value_bound:
        Bound on ``|x|`` of every client value (public, e.g. from the clipping norm).
    reference_bound:
        Bound on ``|r|`` of the reference values; defaults to ``value_bound``. For a
        weighted sum pass ``value_bound * total weight`` (or a tighter true bound).
    mask_bits:
        Mask amplitude over the largest possible slot value, in bits (>= 8).
    rng:
        Source of uniformly random bytes for the masks (a CSPRNG; parameter for tests).
    progress:
        Optional callback ``(chunks done, chunks total)``.

    Raises
    ------
    KeyMismatch
        A vector belongs to another key or the context is not SCREENING.
    ValueError
        Bounds do not fit the modulus, inconsistent lengths, nothing requested.
    """
    public = _public_of(ctx)
    if public.preset is not Preset.SCREENING:
        raise KeyMismatch("encrypted statistics need the SCREENING preset")
    vectors = list(vectors)
    operands = [*vectors, *([reference] if reference is not None else [])]
    if not vectors:
        raise ValueError("need at least one vector")
    for v in operands:
        if not isinstance(v, EncryptedVector):
            raise TypeError("expected EncryptedVector items")
        if v.preset is not public.preset or v.fingerprint != public.fingerprint:
            raise KeyMismatch("a vector was made under another key or preset")
        if v.length != vectors[0].length:
            raise ValueError("vectors have different lengths")
    if inner and reference is None:
        inner = False
    if not (norms or distances or inner):
        raise ValueError("no statistic requested")
    if mask_bits < 8:
        raise ValueError("mask_bits must be at least 8")
    if not (value_bound > 0 and math.isfinite(value_bound)):
        raise ValueError("value_bound must be positive")
    ref_bound = value_bound if reference_bound is None else reference_bound
    if not (ref_bound > 0 and math.isfinite(ref_bound)):
        raise ValueError("reference_bound must be positive")

    n = len(vectors)
    labels: list[StatLabel] = []
    if norms:
        labels += [StatLabel(StatKind.SQUARED_NORM, i) for i in range(n)]
    if distances:
        labels += [
            StatLabel(StatKind.SQUARED_DISTANCE, i, j) for i in range(n) for j in range(i + 1, n)
        ]
    if inner:
        labels += [StatLabel(StatKind.INNER_PRODUCT, i) for i in range(n)]

    spec = public.preset.spec
    chunks = vectors[0].chunk_count
    slot_bound = {
        StatKind.SQUARED_NORM: chunks * value_bound**2,
        StatKind.SQUARED_DISTANCE: chunks * (2 * value_bound) ** 2,
        StatKind.INNER_PRODUCT: chunks * value_bound * ref_bound,
    }
    modulus_bits = sum(math.log2(q) for q in spec.data_moduli)
    for label in labels:
        bound = slot_bound[label.kind]
        need = 2 * spec.scale_bits + math.log2(bound * (1 + 2.0**mask_bits)) + 2
        if need > modulus_bits - 1:
            raise ValueError(
                f"{label.kind.value}: slot bound {bound:.3g} with a 2^{mask_bits} mask needs "
                f"{need:.1f} bits, the modulus has {modulus_bits - 1:.1f}; lower value_bound "
                "or mask_bits"
            )

    plan = [(_OPS[lab.kind], lab.i, _second_operand(lab, n)) for lab in labels]
    masks = [
        _zero_sum_mask(spec.slots, slot_bound[lab.kind] * 2.0**mask_bits, rng) for lab in labels
    ]
    seal_operands: list[_seal.Operand] = [(v._c0, v._c1_block) for v in operands]
    polys, degenerate = _seal.lazy_statistics(
        public._keys, seal_operands, plan, masks, spec.scale, chunks, progress=progress
    )
    statistics = tuple(MaskedStatistic(public.preset, public.fingerprint, 2, p) for p in polys)
    shared = sorted((lab.i, lab.j) for lab in (labels[k] for k in degenerate) if lab.j is not None)
    return ScreeningRequest(tuple(labels), statistics, tuple(shared))


def _second_operand(label: StatLabel, n: int) -> int:
    if label.kind is StatKind.INNER_PRODUCT:
        return n  # the reference is appended after the n client vectors
    return label.i if label.j is None else label.j


def decrypt_scalars(secret_ctx: SecretContext, masked_stat_blobs: Sequence[bytes]) -> list[float]:
    """Key-holder side: decrypt masked statistics and return each one's slot sum.

    Each blob is validated as a statistic envelope of our key (2 or 3 polynomials,
    coefficients in range) before SEAL sees it. The mask's slots sum to zero, so the
    sum is the statistic; the individual slots are never returned.

    Raises
    ------
    TypeError
        If ``secret_ctx`` is not a :class:`~crypto.ckks.SecretContext`.
    InvalidCiphertext
        If a blob is malformed (its ``reason`` says why).
    """
    if not isinstance(secret_ctx, SecretContext):
        raise TypeError("decrypting statistics needs a SecretContext")
    spec = secret_ctx.preset.spec
    out: list[float] = []
    for blob in masked_stat_blobs:
        stat = decode_statistic(blob, secret_ctx)
        slots = secret_ctx._keys.decrypt_polys(stat._polys, spec.scale**stat.scale_power)
        out.append(math.fsum(slots.tolist()))
    return out


def reconcile(
    answers: Mapping[str, Sequence[float]], rel_tol: float = 1e-6, *, abs_tol: float = 0.0
) -> tuple[list[float], frozenset[str]]:
    """Agree on each statistic from several key holders' answers; name the liars.

    Honest key holders decrypt the same ciphertexts with the same code and return
    (bit-)identical values, so a tight tolerance is right. Per statistic, the value
    with the most holders within tolerance wins if those holders are a strict majority;
    everyone else is a liar. Without a strict majority (e.g. a quorum of 2 that
    disagrees) the value is NaN and every holder of that statistic is reported: they
    conflict and nobody can tell which one lied -- ask another holder.

    A holder whose answer has the wrong length (not the most common one) or a
    non-finite value is a liar for every statistic.

    Returns
    -------
    (list of float, frozenset of str)
        Agreed values (NaN where undecided) and the holders to distrust.
    """
    if not answers:
        raise ValueError("no answers")
    if rel_tol < 0 or abs_tol < 0:
        raise ValueError("tolerances must be non-negative")
    lengths = Counter(len(v) for v in answers.values())
    count = max(lengths.items(), key=lambda kv: (kv[1], kv[0]))[0]
    liars: set[str] = set()
    valid: dict[str, list[float]] = {}
    for holder, values in answers.items():
        vals = [float(v) for v in values]
        if len(vals) != count or not all(math.isfinite(v) for v in vals):
            liars.add(holder)
        else:
            valid[holder] = vals
    voters = len(answers)
    agreed: list[float] = []
    for k in range(count):
        pairs = [(h, v[k]) for h, v in valid.items()]

        def close(a: float, b: float) -> bool:
            return abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), abs_tol)

        best: list[tuple[str, float]] = []
        for _, candidate in pairs:
            support = [(h, v) for h, v in pairs if close(v, candidate)]
            if len(support) > len(best):
                best = support
        if 2 * len(best) > voters:
            members = {h for h, _ in best}
            agreed.append(float(np.median([v for _, v in best])))
            liars.update(h for h, _ in pairs if h not in members)
        else:
            agreed.append(math.nan)
            liars.update(h for h, _ in pairs)
    return agreed, frozenset(liars)


@dataclass(frozen=True)
class ScreeningValues:
    """Plaintext statistics in array form (NaN where not computed or not agreed).

    Attributes
    ----------
    squared_norms:
        ``(n,)``.
    squared_distances:
        ``(n, n)``, symmetric, zero diagonal.
    inner_products:
        ``(n,)`` with the reference.
    """

    squared_norms: npt.NDArray[np.float64]
    squared_distances: npt.NDArray[np.float64]
    inner_products: npt.NDArray[np.float64]


def assemble(labels: Sequence[StatLabel], values: Sequence[float], n: int) -> ScreeningValues:
    """Place reconciled scalars (in label order) into arrays for the filters."""
    if len(labels) != len(values):
        raise ValueError("one value per label")
    norms = np.full(n, np.nan)
    dist = np.full((n, n), np.nan)
    np.fill_diagonal(dist, 0.0)
    inner = np.full(n, np.nan)
    for label, value in zip(labels, values, strict=True):
        if label.kind is StatKind.SQUARED_NORM:
            norms[label.i] = value
        elif label.kind is StatKind.SQUARED_DISTANCE:
            assert label.j is not None
            dist[label.i, label.j] = dist[label.j, label.i] = value
        else:
            inner[label.i] = value
    return ScreeningValues(norms, dist, inner)
