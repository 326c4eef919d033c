"""FedAvg arithmetic shared by plaintext and encrypted rounds (pure functions).

Weights are integers that sum to a fixed denominator ``WEIGHT_DENOMINATOR`` (K). Under CKKS
the server keeps the global model as ``K * G`` and adds ``sum_i w_i * update_i`` each round:
integer weights cost no multiplicative level and the denominator never changes, so the
encrypted global model stays a plain sum. Plaintext rounds use the same integer weights so both
modes compute the same model. Rounding each client's share ``n_i / sum(n)`` to a multiple of
``1/K`` changes it by at most ``1/(2K)`` (0.012 % with K = 4096).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "UPDATE_VALUE_BOUND",
    "WEIGHT_DENOMINATOR",
    "apply_update",
    "capped_counts",
    "integer_weights",
    "weighted_update",
    "weights_within_cap",
]

WEIGHT_DENOMINATOR = 4096

UPDATE_VALUE_BOUND = 4.0
"""Largest magnitude of one update coordinate under CKKS. Trainers clip to it before
encrypting (honest DP-SGD updates stay far below it); the encrypted screening sizes its
masks and modulus headroom for it."""


def integer_weights(counts: Sequence[int], total: int = WEIGHT_DENOMINATOR) -> npt.NDArray[np.int64]:
    """Split ``total`` into integer weights proportional to ``counts`` (largest remainder).

    The weights sum to exactly ``total``; a client with a positive count keeps a weight of at
    least 1 when ``total`` allows it. Ties are broken by position, so the result is
    deterministic.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("counts must be a non-empty 1-D sequence")
    if np.any(c < 0) or not np.all(np.isfinite(c)) or c.sum() <= 0:
        raise ValueError("counts must be finite, non-negative and not all zero")
    exact = c / c.sum() * total
    w = np.floor(exact).astype(np.int64)
    remainder = int(total - w.sum())
    order = np.argsort(-(exact - w), kind="stable")
    w[order[:remainder]] += 1
    # Keep every contributing client in the average when the denominator allows it.
    for i in np.flatnonzero((w == 0) & (c > 0)):
        j = int(np.argmax(w))
        if w[j] > 1:
            w[j] -= 1
            w[i] += 1
    out: npt.NDArray[np.int64] = w
    return out


def weighted_update(
    updates: Sequence[npt.NDArray[np.float32]], weights: Sequence[int]
) -> npt.NDArray[np.float64]:
    """``sum_i weights[i] * updates[i]`` (not yet divided by the denominator), in float64."""
    if len(updates) != len(weights) or not updates:
        raise ValueError("need as many weights as updates, and at least one")
    acc = np.zeros(updates[0].shape, dtype=np.float64)
    for u, w in zip(updates, weights, strict=True):
        acc += float(w) * u.astype(np.float64, copy=False)
    return acc


def apply_update(
    global_model: npt.NDArray[np.float32],
    weighted_sum: npt.NDArray[np.float64],
    denominator: int = WEIGHT_DENOMINATOR,
) -> npt.NDArray[np.float32]:
    """Return ``global_model + weighted_sum / denominator`` as a new float32 vector."""
    return (global_model.astype(np.float64) + weighted_sum / denominator).astype(np.float32)


def capped_counts(counts: Sequence[int], cap: float) -> list[int]:
    """Declared sample counts with each clipped to ``floor(cap * median)`` of the set.

    The cap bounds how much one party's declared count can dominate an aggregate (and, in an
    attribution group, how close a weighted sum comes to one update alone). The median is of
    the set being aggregated, so any subset aggregated later is capped by its own median.
    """
    if not counts or cap < 1:
        raise ValueError("need at least one count and cap >= 1")
    limit = max(1, int(cap * float(np.median(np.asarray(counts, dtype=np.float64)))))
    return [min(int(c), limit) for c in counts]


def weights_within_cap(weights: Sequence[int], cap: float) -> bool:
    """Whether integer weights could come from :func:`capped_counts` and :func:`integer_weights`.

    Rounding moves a weight by at most one, hence the slack: ``max <= cap * (median + 1) + 1``.
    """
    if not weights:
        return False
    med = float(np.median(np.asarray(weights, dtype=np.float64)))
    return max(weights) <= cap * (med + 1) + 1
