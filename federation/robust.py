"""Poisoned-update filtering: pure decisions over per-client scalar statistics.

Who sees what
-------------
In encrypted mode the server holds only ciphertexts. It can never look at an update, so every
filter here decides from a handful of **scalar statistics per client** that the screen phase
(DESIGN.md §3) computes under CKKS and a quorum of key holders decrypts as masked slot sums:

* ``sq_norms[i]      = ||u_i||²``
* ``pair_sq_dists[i, j] = ||u_i - u_j||²``

These scalars, and the decisions derived from them, are what the server operator and the
key holders learn about a client in a round; nothing else about the update is revealed.
In plaintext mode :func:`stats_from_plain` produces the same statistics from arrays, so one
code path decides in both modes (and the plaintext version is the test oracle for the
encrypted one).

The pair distances carry the whole Gram matrix, ``<u_i, u_j> = (||u_i||² + ||u_j||² -
||u_i - u_j||²) / 2``, so cosines between clients cost no extra ciphertext products.

Filters
-------
Each filter is a pure function ``UpdateStats -> tuple[Verdict, ...]`` (one verdict per client,
in ``stats.client_ids`` order). :func:`screen` runs the chosen filters **side by side on the
same statistics** and accepts a client only if every chosen filter accepts it. Each filter is
built so that outliers cannot move the verdicts of the others (medians, nearest-neighbour
sums), which is what makes side-by-side composition safe; a filter that depended on a mean
would let one boosted attacker get honest clients rejected.

* ``norm``      reject ``||u_i|| > k * median_j ||u_j||`` (default ``k = 3``).
* ``multikrum`` Krum scores from the pair distances; keep the ``n - f`` lowest (on the
  updates' directions when DP is on, see :func:`multikrum_filter`).
* ``cosine``    reject when the median cosine of ``u_i`` to the other updates is below a
  threshold (default ``0``: pointing against the consensus), or, in a round with a measurable
  consensus, is an outlier indistinguishable from no agreement at all (pure noise).
* ``none``      accept everyone.

Every filter rejects a client whose statistics are not finite (NaN/Inf). Client order never
changes any client's decision: all reductions are over sorted multisets and ties are broken by
client id, not by position.

Defence names and their parser live in :mod:`federation.config` (``DEFENSES``,
``parse_defenses``); the aggregation rule is :mod:`federation.aggregation`.

Nothing in this module mutates its inputs, does I/O, or imports Flower at import time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from federation.config import parse_defenses  # the one home of defence names and their parser

__all__ = [
    "CONSISTENCY_RTOL",
    "DEFAULT_COSINE_THRESHOLD",
    "DEFAULT_NORM_K",
    "DUPLICATE_RATIO",
    "NO_AGREEMENT_Z",
    "ClientId",
    "Decision",
    "UpdateStats",
    "Verdict",
    "angular_sq_dists",
    "cosine_filter",
    "cosine_floor",
    "decide",
    "gram_matrix",
    "inconsistent_clients",
    "krum_scores",
    "max_krum_f",
    "multikrum_filter",
    "near_duplicates",
    "no_filter",
    "noise_cosine_sd",
    "norm_filter",
    "pairwise_cosines",
    "resolve_max_malicious",
    "screen",
    "stats_from_plain",
]

ClientId: TypeAlias = int | str
"""A client's identity in a round (Flower node id or partition id)."""

FloatArray: TypeAlias = npt.NDArray[np.float64]

DEFAULT_NORM_K: Final[float] = 3.0
"""Norm filter threshold, as a multiple of the median update norm.

Why 3: with equal local epochs, honest update norms differ mostly through the number of
local steps (client data size under a Dirichlet split) and DP noise; the norm grows
sub-linearly in the number of steps, so honest clients sit within about 2x of the median.
3x leaves that margin and still bounds what a norm-aware attacker can hide: its boost is
capped at ~3x a typical update instead of the ~n/f (5-10x) model replacement needs.
"""

DEFAULT_COSINE_THRESHOLD: Final[float] = 0.0
"""Cosine filter threshold: reject updates whose median cosine to the others is below it.

Why 0: a negative median cosine means the update points against what most other clients
agree on (sign flip, inner-product manipulation). Honest non-IID updates with DP noise can
have small positive cosines to each other, so a positive threshold would reject honest
clients; 0 only rejects updates that actively oppose the majority.
"""

NO_AGREEMENT_Z: Final[float] = 3.0
"""How far above zero, in standard deviations of a signal-free update's cosine
(:func:`noise_cosine_sd`), a cosine score must be to count as agreement.

Why 3: an update of pure noise (the ``gaussian`` attack: as long as an honest update, carrying
nothing) has a cosine score that is zero up to that standard deviation, so it stays below 3 of
them with probability ~0.999; honest updates in a round with a measurable consensus sit far
above it. The rule built on it (``cosine:no-agreement`` in :func:`cosine_filter`) also asks the
score to be an outlier of the round, so an honest client is never rejected for scoring low when
all scores are low (strong DP noise, very non-IID data)."""

CONSISTENCY_RTOL: Final[float] = 1e-6
"""Relative slack of :func:`inconsistent_clients`. Why 1e-6: plaintext and sketch statistics
are exact up to float64 rounding (~1e-12 relative), so anything beyond 1e-6 is not noise."""


# --------------------------------------------------------------------------- statistics


def _frozen_f64(value: npt.ArrayLike, name: str, shape: tuple[int, ...]) -> FloatArray:
    """A read-only float64 copy of ``value`` with exactly ``shape``."""
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class UpdateStats:
    """The scalar statistics of one round's updates that the filters may use.

    Arrays are stored as read-only float64 copies, so an ``UpdateStats`` never aliases (or
    lets anyone change) the caller's arrays. Values may be NaN/Inf (they come from hostile
    updates); the filters reject such clients. Shapes and structure are validated here.

    Parameters
    ----------
    client_ids:
        Distinct client ids (``int`` or ``str``), one per update; index ``i`` of every array
        refers to ``client_ids[i]``.
    sq_norms:
        ``(n,)`` squared L2 norms ``||u_i||²`` (units: squared parameter units).
    pair_sq_dists:
        ``(n, n)`` squared distances ``||u_i - u_j||²``: symmetric with a zero diagonal (build
        it from the ``n (n - 1) / 2`` upper-triangle values), or ``None`` if not computed.
    rejected:
        Clients already rejected by the producer of the statistics, with the reason (e.g.
        ``"statistic:wraparound"`` from the encrypted soundness check). :func:`screen`
        rejects them and runs the filters on the others only, so a rejected update cannot
        move any median or neighbour sum.
    sketch_repetitions:
        ``r`` when the statistics are estimated from ``r`` random projections; 0 when exact.
    dim:
        The updates' length ``d`` (0: not known); with ``sketch_repetitions`` it sets how
        precisely a cosine is known (:func:`noise_cosine_sd`).
    """

    client_ids: tuple[ClientId, ...]
    sq_norms: FloatArray
    pair_sq_dists: FloatArray | None = None
    rejected: Mapping[ClientId, str] = field(default_factory=dict)
    sketch_repetitions: int = 0
    dim: int = 0

    def __post_init__(self) -> None:
        # numpy integer ids (e.g. from an index array) become plain ints, for JSON and order.
        ids = tuple(int(c) if isinstance(c, np.integer) else c for c in self.client_ids)
        for cid in ids:
            if isinstance(cid, bool) or not isinstance(cid, (int, str)):
                raise TypeError(f"client ids must be int or str, got {cid!r}")
        if len(set(ids)) != len(ids):
            raise ValueError("client ids must be distinct")
        n = len(ids)
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "sq_norms", _frozen_f64(self.sq_norms, "sq_norms", (n,)))
        if self.pair_sq_dists is not None:
            dists = _frozen_f64(self.pair_sq_dists, "pair_sq_dists", (n, n))
            if not np.array_equal(dists, dists.T, equal_nan=True):
                raise ValueError("pair_sq_dists must be symmetric")
            if np.any(np.diag(dists) != 0.0):
                raise ValueError("pair_sq_dists must have a zero diagonal")
            object.__setattr__(self, "pair_sq_dists", dists)
        rejected = {int(c) if isinstance(c, np.integer) else c: str(r)
                    for c, r in self.rejected.items()}
        if any(c not in ids for c in rejected):
            raise ValueError("rejected names a client that is not in client_ids")
        object.__setattr__(self, "rejected", MappingProxyType(rejected))

    def subset(self, keep: Sequence[int]) -> UpdateStats:
        """The statistics of the clients at positions ``keep`` (nothing rejected)."""
        idx = list(keep)
        pick = np.array(idx, dtype=np.intp)
        dists = None if self.pair_sq_dists is None else self.pair_sq_dists[np.ix_(pick, pick)]
        return UpdateStats(tuple(self.client_ids[i] for i in idx), self.sq_norms[pick], dists,
                           sketch_repetitions=self.sketch_repetitions, dim=self.dim)

    @property
    def n(self) -> int:
        """Number of clients."""
        return len(self.client_ids)


def stats_from_plain(
    updates: Sequence[npt.ArrayLike],
    ids: Sequence[ClientId],
) -> UpdateStats:
    """Compute :class:`UpdateStats` from plaintext updates (plaintext mode; test oracle).

    Every statistic is computed by its definition in float64: ``||u_i||²``,
    ``||u_i - u_j||²`` from the difference (not from the Gram identity, which cancels
    catastrophically for close updates).

    Parameters
    ----------
    updates:
        One update per client, all the same shape (flattened here). Not modified.
    ids:
        Client ids, aligned with ``updates``.

    Returns
    -------
    UpdateStats
        Pair distances are always included.
    """
    if len(updates) != len(ids):
        raise ValueError(f"{len(updates)} updates but {len(ids)} ids")
    flat = [np.asarray(u, dtype=np.float64).ravel() for u in updates]
    sizes = {v.size for v in flat}
    if len(sizes) > 1:
        raise ValueError(f"updates differ in size: {sorted(sizes)}")
    n = len(flat)
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.array([float(np.dot(v, v)) for v in flat], dtype=np.float64)
        dists = np.zeros((n, n), dtype=np.float64)
        for i in range(n):
            for j in range(i + 1, n):
                diff = flat[i] - flat[j]
                dists[i, j] = dists[j, i] = float(np.dot(diff, diff))
    return UpdateStats(tuple(ids), sq, dists, dim=int(next(iter(sizes), 0)))


def gram_matrix(stats: UpdateStats) -> FloatArray:
    """Inner products ``<u_i, u_j>`` recovered from norms and pair distances.

    ``<a, b> = (||a||² + ||b||² - ||a - b||²) / 2``; the diagonal is ``||u_i||²``.
    Needs ``stats.pair_sq_dists``.
    """
    if stats.pair_sq_dists is None:
        raise ValueError("the Gram matrix needs pair_sq_dists")
    s = stats.sq_norms
    with np.errstate(over="ignore", invalid="ignore"):
        gram: FloatArray = (s[:, None] + s[None, :] - stats.pair_sq_dists) / 2.0
    return gram


def pairwise_cosines(stats: UpdateStats) -> FloatArray:
    """Cosine similarity of every pair of updates, from the statistics alone.

    Returns an ``(n, n)`` matrix; entries are clipped to ``[-1, 1]`` (CKKS noise can push
    them slightly outside) and are NaN where a cosine is undefined (a zero or non-finite
    norm, a non-finite distance). Needs ``stats.pair_sq_dists``.
    """
    gram = gram_matrix(stats)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        norms = np.sqrt(np.where(stats.sq_norms >= 0.0, stats.sq_norms, np.nan))
        denom = norms[:, None] * norms[None, :]
        cos = np.where(denom > 0.0, gram / np.where(denom > 0.0, denom, 1.0), np.nan)
        cos = np.where(np.isfinite(cos), np.clip(cos, -1.0, 1.0), np.nan)
    out: FloatArray = cos.astype(np.float64)
    return out


def angular_sq_dists(stats: UpdateStats) -> FloatArray:
    """Squared distances between the unit-normalised updates, ``2 (1 - cos_ij)``.

    From the statistics alone (no extra ciphertext products); NaN where a cosine is undefined,
    zero diagonal. Needs ``stats.pair_sq_dists``.
    """
    dists: FloatArray = 2.0 * (1.0 - pairwise_cosines(stats))
    np.fill_diagonal(dists, 0.0)
    return dists


def krum_scores(pair_sq_dists: npt.ArrayLike, f: int) -> FloatArray:
    """Krum score of each client: the sum of its ``n - f - 2`` smallest squared distances.

    Non-finite distances count as ``+inf``. The sum runs over the sorted distances, so the
    score of a client does not depend on the order of the others (bit for bit). With
    ``n - f - 2 < 1`` every score is 0 (Krum has nothing to compare).

    Parameters
    ----------
    pair_sq_dists:
        ``(n, n)`` squared distances, zero diagonal (the diagonal is ignored).
    f:
        Assumed number of attackers.
    """
    dists = np.array(pair_sq_dists, dtype=np.float64)
    n = dists.shape[0]
    if dists.shape != (n, n):
        raise ValueError(f"pair_sq_dists must be square, got {dists.shape}")
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    k = n - f - 2
    scores = np.zeros(n, dtype=np.float64)
    if k < 1:
        return scores
    # a negative squared distance is impossible: it counts as unknown (+inf), never as 0
    dists = np.where(np.isfinite(dists) & (dists >= 0.0), dists, np.inf)
    for i in range(n):
        row = np.sort(np.delete(dists[i], i))
        scores[i] = float(np.sum(row[:k]))
    return scores


# --------------------------------------------------------------------------- verdicts


def _freeze_scores(scores: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({k: float(v) for k, v in scores.items()})


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


@dataclass(frozen=True)
class Verdict:
    """One filter's verdict on one client.

    ``reasons`` names the failed rule when rejected (``"norm>3.0*median"``) and may carry a
    note when accepted (``"multikrum:degraded..."``); ``scores`` holds the numbers behind it.
    """

    client_id: ClientId
    accepted: bool
    reasons: tuple[str, ...] = ()
    scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", tuple(self.reasons))
        object.__setattr__(self, "scores", _freeze_scores(self.scores))


@dataclass(frozen=True)
class Decision:
    """The screen's final word on one client in one round.

    Attributes
    ----------
    client_id:
        Whose update.
    accepted:
        True when every chosen filter accepted it.
    weight:
        The client's sample count if accepted, else 0: the integer weight of its
        ciphertext in the aggregate.
    reasons:
        Why: the failed rules of every filter that rejected it, plus notes such as a
        degraded Multi-Krum. Empty for a plain accept.
    scores:
        The numbers behind the verdict (norm, median norm, Krum score, median cosine, ...).
    """

    client_id: ClientId
    accepted: bool
    weight: int
    reasons: tuple[str, ...] = ()
    scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", tuple(self.reasons))
        object.__setattr__(self, "scores", _freeze_scores(self.scores))

    def to_record(self) -> dict[str, object]:
        """A JSON-ready dict for ``metrics.jsonl`` and the audit log (non-finite as text)."""
        return {
            "client_id": self.client_id,
            "accepted": self.accepted,
            "weight": self.weight,
            "reasons": list(self.reasons),
            "scores": {k: _json_float(v) for k, v in sorted(self.scores.items())},
        }


def _id_key(cid: ClientId) -> tuple[int, int | str]:
    """Total order on mixed int/str ids, used only to break exact ties."""
    return (0, cid) if isinstance(cid, int) else (1, cid)


def _finite(x: FloatArray) -> npt.NDArray[np.bool_]:
    return np.isfinite(x)


# --------------------------------------------------------------------------- filters


def no_filter(stats: UpdateStats) -> tuple[Verdict, ...]:
    """``none``: accept every client (no statistics read)."""
    return tuple(Verdict(cid, True) for cid in stats.client_ids)


def norm_filter(stats: UpdateStats, *, k: float = DEFAULT_NORM_K) -> tuple[Verdict, ...]:
    """``norm``: reject updates longer than ``k`` times the median update norm.

    The median is taken over the finite norms of the round, so up to half the clients can
    be arbitrarily large without moving it. A client is rejected with
    ``"norm>{k}*median"`` when ``||u_i|| > k * median``, or ``"norm:non-finite"`` when its
    squared norm is NaN/Inf or negative (impossible: :func:`screen` rejects such statistics as
``statistic:inconsistent`` before any filter runs).

    Parameters
    ----------
    stats:
        Needs ``sq_norms`` only.
    k:
        Threshold multiple, ``> 0`` (default :data:`DEFAULT_NORM_K`).
    """
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"norm k must be a positive finite number, got {k}")
    finite = _finite(stats.sq_norms) & (stats.sq_norms >= 0.0)
    norms = np.sqrt(np.where(finite, stats.sq_norms, 0.0))
    median = float(np.median(norms[finite])) if finite.any() else math.nan
    limit = k * median
    out: list[Verdict] = []
    for i, cid in enumerate(stats.client_ids):
        if not finite[i]:
            out.append(Verdict(cid, False, ("norm:non-finite",), {"norm_median": median}))
            continue
        norm = float(norms[i])
        ratio = norm / median if median > 0 else (0.0 if norm == 0 else math.inf)
        scores = {"norm": norm, "norm_median": median, "norm_ratio": ratio}
        if norm > limit:
            out.append(Verdict(cid, False, (f"norm>{float(k)!r}*median",), scores))
        else:
            out.append(Verdict(cid, True, (), scores))
    return tuple(out)


def max_krum_f(n: int) -> int:
    """The most attackers Krum tolerates among ``n`` updates: largest ``f`` with ``n > 2f + 2``.

    0 when ``n < 5``. It is also the default ``f`` when ``max-malicious`` is -1 (automatic).
    """
    return max(0, (n - 3) // 2)


def resolve_max_malicious(max_malicious: int, n: int) -> int:
    """The ``f`` a round with ``n`` updates assumes: ``max-malicious``, or -1 for :func:`max_krum_f`.

    The one rule the filters (Krum's ``f``) and the screen (``f + 1`` agreeing key holders)
    both read.
    """
    return max_malicious if max_malicious >= 0 else max_krum_f(n)


def _effective_f(n: int, f: int) -> int:
    """Largest ``f' <= f`` with ``n > 2 f' + 2`` (0 when even ``f' = 0`` fails)."""
    if n > 2 * f + 2:
        return f
    return max_krum_f(n)


def multikrum_filter(
    stats: UpdateStats, *, f: int, angular: bool = False, selection: str = "top"
) -> tuple[Verdict, ...]:
    """``multikrum``: keep the ``m = n - f`` clients with the lowest Krum scores.

    ``angular=True`` scores on :func:`angular_sq_dists` (the updates' directions) instead of
    the Euclidean distances. This is the choice under DP: there an honest update is mostly
    Gaussian noise whose size grows with the client's number of local steps, so Euclidean
    Krum ranks clients by data size and drops the largest, most informative ones (measured:
    -4 points at ε = 8 with 20 clients, no attacker). Directions are scale-free; the ``norm``
    filter is then what bounds an update's size.

    Krum (Blanchard et al., 2017) scores client ``i`` by the sum of its ``n - f - 2``
    smallest squared distances to the others: an update inside the honest cloud has close
    neighbours, an outlier does not. The guarantee needs ``n > 2f + 2``.

    By construction Multi-Krum **always drops f clients**, even in an all-honest round
    (then it drops the ``f`` least typical ones); that is the price of not knowing who the
    attackers are, and it costs little because the dropped updates are redundant.

    Degrading gracefully: when ``n <= 2f + 2`` the largest ``f' < f`` with ``n > 2f' + 2``
    is used instead (``f' = 0`` keeps everyone), and every client's reasons carry the note
    ``"multikrum:degraded(n=.., f=..->..)"``. Clients with a non-finite squared norm, or no
    finite distance to anyone, are rejected as ``"multikrum:non-finite"`` and take no part;
    other non-finite distances count as ``+inf``. Ties in score are broken by client id,
    never by position.

    ``selection="threshold"`` is the score-threshold variant the server uses: a client is
    dropped (``"multikrum:outlier"``) only when its score is an outlier among the round's
    scores (above ``median + 3 * 1.4826 * MAD``) and, on directions, its nearest neighbours
    point away from it on average (mean angular squared distance above 2, i.e. negative
    cosine, beyond :func:`cosine_floor`); at most ``f`` of them, highest first. An
    all-honest round then loses nobody instead of always ``f``.

    Parameters
    ----------
    stats:
        Needs ``pair_sq_dists`` (and ``sq_norms`` for the finiteness check).
    f:
        Assumed number of attackers, ``>= 0``.
    selection:
        ``"top"`` (keep the ``n - f`` best) or ``"threshold"`` (drop only outliers).
    """
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f must be an int >= 0, got {f!r}")
    if selection not in ("top", "threshold"):
        raise ValueError(f"selection must be 'top' or 'threshold', got {selection!r}")
    if stats.pair_sq_dists is None:
        raise ValueError("multikrum needs pair_sq_dists")
    n_all = stats.n
    dists = angular_sq_dists(stats) if angular else stats.pair_sq_dists
    valid = _finite(stats.sq_norms)
    if n_all > 1:
        any_finite_peer = np.array(
            [bool(np.any(np.delete(_finite(dists[i]), i))) for i in range(n_all)]
        )
        valid &= any_finite_peer
    idx = np.flatnonzero(valid)
    n = int(idx.size)
    f_eff = _effective_f(n, f)
    note: tuple[str, ...] = ()
    if f_eff != f:
        note = (f"multikrum:degraded(n={n}<=2f+2, f={f}->{f_eff})",)
    scores = krum_scores(dists[np.ix_(idx, idx)], f_eff)
    keep = n - f_eff
    dropped_reason = "multikrum:not-selected"
    if selection == "threshold" and n >= 3:
        med = float(np.median(scores))
        mad = float(np.median(np.abs(scores - med)))
        cut = med + 3.0 * 1.4826 * mad
        k = n - f_eff - 2
        if angular and k >= 1:
            # on directions, also require that the nearest neighbours point away on average
            # (mean angular distance beyond orthogonal, 2, by more than the statistics' error):
            # an honest update that is mostly noise is orthogonal to everyone, never opposed
            cut = max(cut, 2.0 * (1.0 - cosine_floor(stats)) * k)
        outliers = int(np.sum(scores > cut))
        keep = n - min(f_eff, outliers)
        dropped_reason = "multikrum:outlier"
    elif selection == "threshold":
        keep = n
    order = sorted(range(n), key=lambda r: (scores[r], _id_key(stats.client_ids[idx[r]])))
    rank = {int(idx[r]): pos for pos, r in enumerate(order)}
    score_of = {int(idx[r]): float(scores[r]) for r in range(n)}
    out: list[Verdict] = []
    for i, cid in enumerate(stats.client_ids):
        if not valid[i]:
            out.append(Verdict(cid, False, ("multikrum:non-finite", *note)))
            continue
        sc = {"krum_score": score_of[i], "krum_rank": float(rank[i]), "krum_f": float(f_eff),
              "krum_angular": float(angular)}
        if rank[i] < keep:
            out.append(Verdict(cid, True, note, sc))
        else:
            out.append(Verdict(cid, False, (dropped_reason, *note), sc))
    return tuple(out)


def noise_cosine_sd(stats: UpdateStats) -> float:
    """Standard deviation of the cosine between a signal-free update (independent noise) and
    any fixed update, as ``stats`` measure it; 0 when neither ``dim`` nor sketches are known.

    Exactly computed, the cosine of a random direction in ``d`` dimensions with a fixed one
    has variance ``1/d``; a sketch from ``r`` random projections adds ``~1/r`` (the estimator's
    own error for independent vectors, the scale :func:`cosine_floor` uses).
    """
    var = (1.0 / stats.dim if stats.dim > 0 else 0.0) + (
        1.0 / stats.sketch_repetitions if stats.sketch_repetitions > 0 else 0.0)
    return math.sqrt(var)


def _robust_low_cut(scores: Sequence[float]) -> float:
    """``median - 3 * 1.4826 * MAD`` of ``scores``: below it a score is an outlier of the
    round (``-inf`` with fewer than three scores: no majority to be an outlier of)."""
    if len(scores) < 3:
        return -math.inf
    arr = np.asarray(scores, dtype=np.float64)
    med = float(np.median(arr))
    return med - 3.0 * 1.4826 * float(np.median(np.abs(arr - med)))


def _noise_aware_cut(scores: Sequence[float], threshold: float) -> float:
    """``min(threshold, median - 3 * 1.4826 * MAD)`` of the clients' cosine scores.

    When every update is mostly noise (strong DP noise, tiny clients), honest cosines
    scatter around 0 and a fixed threshold of 0 would reject about half of them at random.
    A score then only counts as "against the consensus" if it is also an outlier among
    the scores (beyond three robust standard deviations). Attackers are a minority, so
    the median and MAD are decided by honest clients.
    """
    if len(scores) < 3:
        return threshold
    return min(threshold, _robust_low_cut(scores))


def cosine_filter(
    stats: UpdateStats, *, threshold: float = DEFAULT_COSINE_THRESHOLD, floor: float | None = None
) -> tuple[Verdict, ...]:
    """``cosine``: reject updates that point against the consensus.

    **Reference.** With pair distances (the default in every mode) the score of client
    ``i`` is the *median* of its cosines to every other update, recovered from the Gram
    identity at no extra ciphertext cost. This is robust: cosines are scale-free, so a
    boosted attacker cannot drag the reference, and the median over peers is decided by
    the honest majority as long as attackers are fewer than half. The obvious alternative,
    the cosine to the round's mean update, is *not* robust: one update boosted x100
    becomes the mean, after which every honest client looks like it disagrees.

    A client is rejected with ``"cosine<{threshold}"`` when its score is below
    ``threshold`` *and* an outlier among the round's scores (see :func:`_noise_aware_cut`:
    with heavily noised updates, honest cosines scatter around 0), or ``"cosine:non-finite"``
    when its statistics are NaN/Inf.

    **No agreement.** An update of pure noise (as long as an honest one, pointing nowhere)
    has a score of ~0 and would pass a threshold of 0, diluting the aggregate. When the round
    has a measurable consensus (median score above ``NO_AGREEMENT_Z`` standard deviations of a
    signal-free update's cosine, :func:`noise_cosine_sd`), a client whose score is below that
    level, nearer to 0 than to the round's median, *and* an outlier among the round's scores is
    rejected with
    ``"cosine:no-agreement"``. Both conditions protect honest clients: with strong DP noise or
    very non-IID data the median is low or the scores scatter, and nobody is rejected for it.

    Undefined cosines (zero-length updates) are left out of the median; a client with no
    defined cosine (a zero update, or alone in the round) is accepted with the note
    ``"cosine:undefined"``: it cannot steer the aggregate's direction. With fewer than three
    clients there is no majority to agree with (two opposed updates reject each other).

    Parameters
    ----------
    stats:
        Needs ``pair_sq_dists`` (every producer in fedguard computes them).
    threshold:
        In ``[-1, 1]`` (default :data:`DEFAULT_COSINE_THRESHOLD`).
    floor:
        The lowest the noise-aware cut may go: it can never drift into admitting an update
        that points against the consensus by more than the statistics' own error. ``None``
        (default) keeps the plain noise-aware cut; :func:`screen` passes
        :func:`cosine_floor` of the statistics.
    """
    if not (-1.0 <= threshold <= 1.0):
        raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold}")
    reason = f"cosine<{float(threshold)!r}"
    finite_norm = _finite(stats.sq_norms)
    out: list[Verdict] = []
    if stats.pair_sq_dists is None:
        raise ValueError("cosine needs pair_sq_dists")
    cos = pairwise_cosines(stats)
    scores: dict[int, tuple[float, float]] = {}
    for i in range(len(stats.client_ids)):
        if not finite_norm[i]:
            continue
        peers = np.delete(cos[i], i)
        peers = peers[np.isfinite(peers)]
        if peers.size:
            scores[i] = (float(np.median(peers)), float(np.min(peers)))
    values = [v[0] for v in scores.values()]
    outlier = _robust_low_cut(values)
    cut = threshold if len(values) < 3 else min(threshold, outlier)  # _noise_aware_cut
    if floor is not None:
        cut = max(cut, min(floor, threshold))
    level = NO_AGREEMENT_Z * noise_cosine_sd(stats)
    median = float(np.median(values)) if values else 0.0
    consensus = level > 0.0 and len(values) >= 3 and median > level
    # nearer to no agreement (0) than to the round's (median): a weakly agreeing honest
    # client (non-IID data) is below the noise level of a sketch but not this close to 0
    level = min(level, median / 2.0)
    for i, cid in enumerate(stats.client_ids):
        if not finite_norm[i]:
            out.append(Verdict(cid, False, ("cosine:non-finite",)))
            continue
        if i not in scores:
            out.append(Verdict(cid, True, ("cosine:undefined",)))
            continue
        score, lowest = scores[i]
        sc = {"cosine": score, "cosine_min": lowest, "cosine_cut": cut}
        if score < cut:
            out.append(Verdict(cid, False, (reason,), sc))
        elif consensus and score < level and score < outlier:
            sc["cosine_agreement_level"] = level
            out.append(Verdict(cid, False, ("cosine:no-agreement",), sc))
        else:
            out.append(Verdict(cid, True, (), sc))
    return tuple(out)


# --------------------------------------------------------------------------- composition


def _normalise_defenses(defenses: Sequence[str] | str) -> tuple[str, ...]:
    return parse_defenses(defenses if isinstance(defenses, str) else ",".join(defenses))


def _sample_count_list(
    stats: UpdateStats, sample_counts: Sequence[int] | Mapping[ClientId, int]
) -> list[int]:
    if isinstance(sample_counts, Mapping):
        missing = [cid for cid in stats.client_ids if cid not in sample_counts]
        if missing:
            raise ValueError(f"no sample count for clients {missing}")
        counts = [sample_counts[cid] for cid in stats.client_ids]
    else:
        counts = list(sample_counts)
        if len(counts) != stats.n:
            raise ValueError(f"{len(counts)} sample counts for {stats.n} clients")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
            raise ValueError(f"sample counts must be ints >= 0, got {c!r}")
    return [int(c) for c in counts]


DUPLICATE_RATIO: Final[float] = 1e-4
"""Two updates from different clients whose squared distance is below this fraction of the
smaller of *their own* squared norms (distance under 1 % of the smaller update) are
near-duplicates: evidence of collusion (colluders that send one update have distance ~0 and
would look the most central to Krum). Why 1e-4: honest updates differ by their own data, batch
sampling and DP noise, so two of them at 1 % of their size would need a cosine above 0.99995;
one plaintext under two encryptions differs only by CKKS noise and the screen's flooding,
~1e-8 of it. Why the pair's own norms and not distances to the other clients: any scale taken
from the rest of the round moves with the rest of the round. A round-wide median of distances
called every honest pair a duplicate when two garbage uploads came among six; a per-client
median of distances still did with three clients, one of them boosted (its distance is half of
each honest client's two). A client's own norm depends on nobody else. Euclidean, not
angular: a boosted copy of a direction is the norm filter's business, not a duplicate."""


def near_duplicates(stats: UpdateStats, *, ratio: float = DUPLICATE_RATIO) -> set[int]:
    """Positions of clients whose update nearly duplicates another client's.

    Pair ``(i, j)`` is a near-duplicate when ``||u_i - u_j||² <= ratio * min(||u_i||², ||u_j||²)``
    (see :data:`DUPLICATE_RATIO`); two zero updates are duplicates of each other. Needs
    ``pair_sq_dists`` and at least two clients.
    """
    if stats.pair_sq_dists is None or stats.n < 2:
        return set()
    dists, norms = stats.pair_sq_dists, stats.sq_norms
    out: set[int] = set()
    for i in range(stats.n):
        for j in range(i + 1, stats.n):
            scale = min(norms[i], norms[j])
            if np.isfinite(dists[i, j]) and np.isfinite(scale) and dists[i, j] <= ratio * scale:
                out.update((i, j))
    return out


def cosine_floor(stats: UpdateStats) -> float:
    """Lowest cosine cut :func:`screen` allows: 0 for exact statistics, ``-1/sqrt(r)`` for
    sketches from ``r`` projections (one standard deviation of a sketched cosine)."""
    r = stats.sketch_repetitions
    return -1.0 / math.sqrt(r) if r > 0 else 0.0


def inconsistent_clients(stats: UpdateStats, *, rtol: float = CONSISTENCY_RTOL) -> set[int]:
    """Positions of clients whose statistics no real vectors can have (evidence, not noise).

    A squared norm below ``-rtol * scale`` (``scale`` = the largest finite squared norm), a
    squared distance below it, or a pair that breaks the triangle inequality
    ``|a - b| <= ||u_i - u_j|| <= a + b`` (``a, b`` the two norms) by more than
    ``rtol * (a + b)``. A client is blamed for a pair violation when it violates with at least
    half of the other clients (one impossible value cannot make honest clients look bad);
    a negative squared norm is always its own client's fault.
    """
    n = stats.n
    sq = stats.sq_norms
    finite = np.isfinite(sq)
    scale = float(np.max(np.abs(sq[finite]))) if finite.any() else 0.0
    slack = rtol * scale
    bad = {i for i in range(n) if finite[i] and sq[i] < -slack}
    if stats.pair_sq_dists is None or n < 2:
        return bad
    d = stats.pair_sq_dists
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(np.where(sq >= 0.0, sq, np.nan))
        dist = np.sqrt(np.where(d >= 0.0, d, np.nan))
    for i in range(n):
        if i in bad or not finite[i]:
            continue
        violations = 0
        for j in range(n):
            if j == i or not (finite[j] and np.isfinite(d[i, j])):
                continue
            a_, b_ = float(norms[i]), float(norms[j])
            if d[i, j] < -slack or math.isnan(a_) or math.isnan(b_):
                violations += 1
                continue
            tol = rtol * (a_ + b_) + math.sqrt(slack)
            if not abs(a_ - b_) - tol <= float(dist[i, j]) <= a_ + b_ + tol:
                violations += 1
        if 2 * violations >= n - 1 and violations > 0:
            bad.add(i)
    return bad


def screen(
    stats: UpdateStats,
    sample_counts: Sequence[int] | Mapping[ClientId, int],
    defenses: Sequence[str] | str,
    *,
    f: int,
    norm_k: float = DEFAULT_NORM_K,
    cosine_threshold: float = DEFAULT_COSINE_THRESHOLD,
    angular_krum: bool = False,
    krum_selection: str = "top",
    duplicates: bool = False,
    floored_cosine: bool = False,
) -> list[Decision]:
    """Decide who is accepted this round, and with what weight.

    Clients in ``stats.rejected`` and clients whose statistics are impossible
    (:func:`inconsistent_clients`: ``"statistic:inconsistent"``) are rejected first; the
    chosen filters then run side by side on the statistics of the remaining clients only. A
    client is accepted only if every chosen filter accepts it, and its reasons and scores are
    the union of theirs (in canonical filter order). Permuting the clients permutes the result
    and changes no client's decision.

    Parameters
    ----------
    stats:
        The round's statistics: ``sq_norms`` for ``norm``, also ``pair_sq_dists`` for
        ``multikrum`` and ``cosine``.
    sample_counts:
        Client-reported sample counts, aligned with ``stats.client_ids`` or keyed by id.
        They become the integer aggregation weights of accepted clients; they are not
        verified here (the screen does not bound a lying count).
    defenses:
        Defence names (or the raw ``--defense`` text); see
        :func:`federation.config.parse_defenses`.
    f:
        Assumed number of attackers (Multi-Krum's ``f``), ``>= 0``.
    norm_k, cosine_threshold:
        Thresholds of the ``norm`` and ``cosine`` filters.
    angular_krum:
        Multi-Krum on directions (see :func:`multikrum_filter`).
    krum_selection:
        ``"top"`` or ``"threshold"`` (see :func:`multikrum_filter`).
    duplicates:
        Reject near-duplicate updates of different clients (:func:`near_duplicates`) as
        ``"collusion:near-duplicate"`` before the filters run.
    floored_cosine:
        Keep the cosine cut at or above :func:`cosine_floor` of the statistics.

    The fedguard server uses the rule that never punishes size alone: directions
    (``angular_krum``), score thresholds (``krum_selection="threshold"``), duplicates as
    evidence, and a cosine cut that cannot fall below :func:`cosine_floor`.

    Returns
    -------
    list[Decision]
        One per client, in ``stats.client_ids`` order.
    """
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f must be an int >= 0, got {f!r}")
    chosen = _normalise_defenses(defenses)
    counts = _sample_count_list(stats, sample_counts)
    pre: dict[int, str] = {i: stats.rejected[c] for i, c in enumerate(stats.client_ids)
                           if c in stats.rejected}
    if chosen:  # with no filter, nothing is screened
        rest = [i for i in range(stats.n) if i not in pre]
        for k in inconsistent_clients(stats.subset(rest)):
            pre[rest[k]] = "statistic:inconsistent"
        if duplicates:
            rest = [i for i in range(stats.n) if i not in pre]
            for k in near_duplicates(stats.subset(rest)):
                pre[rest[k]] = "collusion:near-duplicate"
    keep = [i for i in range(stats.n) if i not in pre]
    runners: dict[str, Callable[[UpdateStats], tuple[Verdict, ...]]] = {
        "none": no_filter,
        "norm": lambda s: norm_filter(s, k=norm_k),
        "multikrum": lambda s: multikrum_filter(s, f=f, angular=angular_krum,
                                                selection=krum_selection),
        "cosine": lambda s: cosine_filter(s, threshold=cosine_threshold,
                                          floor=cosine_floor(s) if floored_cosine else None),
    }
    sub = stats.subset(keep)
    results = [runners[name](sub) for name in chosen] if keep else []
    position = {i: k for k, i in enumerate(keep)}
    decisions: list[Decision] = []
    for i, cid in enumerate(stats.client_ids):
        if i in pre:
            decisions.append(Decision(cid, False, 0, (pre[i],), {}))
            continue
        verdicts = [res[position[i]] for res in results]
        accepted = all(v.accepted for v in verdicts)
        reasons = tuple(r for v in verdicts for r in v.reasons)
        scores: dict[str, float] = {}
        for v in verdicts:
            scores.update(v.scores)
        decisions.append(Decision(cid, accepted, counts[i] if accepted else 0, reasons, scores))
    return decisions


def decide(
    stats: UpdateStats,
    sample_counts: Sequence[int] | Mapping[ClientId, int],
    defenses: Sequence[str] | str,
    *,
    f: int,
) -> list[Decision]:
    """The fedguard server's rule: :func:`screen` with the choices that never punish size.

    The one home of those choices (the round loop calls this): Multi-Krum on directions
    (``angular_krum``) dropping only score outliers (``krum_selection="threshold"``),
    near-duplicate updates of different clients rejected as collusion evidence
    (``duplicates``; this is what catches the published min-max / min-sum attacks, whose
    colluders all send one vector), and a cosine cut that cannot fall below the statistics'
    own error (``floored_cosine``).

    With no defence (``defenses`` empty or ``"none"``) only ``stats.rejected`` is applied:
    under encryption those are the uploads that failed the validity check (``statistic:*``),
    which runs whether or not a filter is chosen (docs/threat-model.md). Every other client
    is accepted with its sample count as weight.

    Parameters
    ----------
    stats, sample_counts, defenses, f:
        As for :func:`screen`.
    """
    return screen(stats, sample_counts, defenses, f=f, angular_krum=True,
                  krum_selection="threshold", duplicates=True, floored_cosine=True)
