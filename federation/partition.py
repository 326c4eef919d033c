"""Split a dataset between clients: IID, label-skewed Dirichlet, and pathological shards.

Every partitioner is a pure function of its arguments: it takes sizes or a label array and a
seed, and returns one sorted ``int64`` index array per client. The arrays are disjoint and
together hold every sample index exactly once; the same arguments always give the same split.

The CLI and run config name a partitioner with a short string, parsed by
:func:`parse_partition` into a :class:`PartitionSpec`:

- ``iid``: a uniform random split; part sizes differ by at most one;
- ``dirichlet:ALPHA``: per class, shares drawn from Dirichlet(ALPHA); small ALPHA, more skew;
- ``shards:K``: sort by label, cut into ``n_parts * K`` shards, deal K shards to each part.

Bad values raise :class:`~federation.errors.ConfigError` naming the config key:
``partition`` for the partition string and its parameters, ``num-clients`` for the number of
parts, ``seed`` for the seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from federation.errors import ConfigError

__all__ = [
    "DIRICHLET_MAX_TRIES",
    "DIRICHLET_MIN_SIZE",
    "PARTITION_HELP",
    "PartitionKind",
    "PartitionSpec",
    "dirichlet",
    "iid",
    "parse_partition",
    "partition",
    "shards",
    "split_test_iid",
]

PARTITION_HELP: Final = "allowed: iid | dirichlet:ALPHA (ALPHA > 0) | shards:K (K ≥ 1 integer)"
"""What :func:`parse_partition` accepts, quoted in its errors."""

DIRICHLET_MIN_SIZE: Final = 10
"""Default least number of samples per part for :func:`dirichlet` (as in Flower Datasets)."""

DIRICHLET_MAX_TRIES: Final = 100
"""Dirichlet draws tried before the deterministic fix-up tops small parts up."""

_KEY: Final = "partition"
_KEY_PARTS: Final = "num-clients"
_KEY_SEED: Final = "seed"

IndexArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if not _is_int(seed) or seed < 0:
        raise ConfigError(_KEY_SEED, f"must be a non-negative integer, got {seed!r}")


def _check_parts(n_samples: int, n_parts: int) -> None:
    if not _is_int(n_parts) or n_parts < 1:
        raise ConfigError(_KEY_PARTS, f"must be an integer ≥ 1, got {n_parts!r}")
    if n_parts > n_samples:
        raise ConfigError(
            _KEY_PARTS, f"{n_parts} parts but only {n_samples} samples; every part needs one"
        )


def _check_labels(labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _finish(parts: Sequence[npt.NDArray[np.integer]]) -> list[IndexArray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------------------------


def iid(n_samples: int, n_parts: int, seed: int) -> list[IndexArray]:
    """Split ``range(n_samples)`` uniformly at random into ``n_parts`` parts.

    Parameters
    ----------
    n_samples:
        Number of samples to split.
    n_parts:
        Number of parts (clients), ``1 ≤ n_parts ≤ n_samples``.
    seed:
        Non-negative seed; the same seed gives the same split.

    Returns
    -------
    list of numpy.ndarray
        ``n_parts`` sorted ``int64`` index arrays whose sizes differ by at most one.

    Raises
    ------
    ConfigError
        ``num-clients`` out of range or a bad ``seed``.
    """
    if not _is_int(n_samples) or n_samples < 0:
        raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
    _check_parts(n_samples, n_parts)
    _check_seed(seed)
    perm = np.random.default_rng(seed).permutation(n_samples)
    return _finish(np.array_split(perm, n_parts))


def split_test_iid(n_test: int, n_parts: int, seed: int) -> list[IndexArray]:
    """Give each client a disjoint IID slice of the official test set.

    The slices cover the test set exactly once, so the sample-weighted mean of the clients'
    test accuracies equals the accuracy on the whole test set. Same as :func:`iid`.
    """
    return iid(n_test, n_parts, seed)


def _dirichlet_sizes(
    class_sizes: npt.NDArray[np.int64], n_parts: int, alpha: float, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """One draw: how many samples of each class go to each part, shape (n_classes, n_parts)."""
    # A tiny alpha can underflow to an all-zero (NaN) row; that class then goes to the last part.
    props = np.nan_to_num(rng.dirichlet(np.full(n_parts, alpha), size=len(class_sizes)))
    # Cumulative cut points per class, as in the usual ``np.split(idx, cumsum(p)[:-1] * n)``.
    cuts = (np.cumsum(props, axis=1) * class_sizes[:, None]).astype(np.int64)
    cuts[:, -1] = class_sizes
    return np.diff(cuts, axis=1, prepend=0)


def dirichlet(
    labels: npt.ArrayLike,
    n_parts: int,
    alpha: float,
    seed: int,
    min_size: int = DIRICHLET_MIN_SIZE,
) -> list[IndexArray]:
    """Label-skewed split: each class is shared out by proportions drawn from Dirichlet(alpha).

    For every class, the class's (shuffled) samples are cut into ``n_parts`` runs whose lengths
    follow one draw of ``Dirichlet(alpha, ..., alpha)`` (Hsu et al., 2019; the same scheme as
    Flower Datasets' ``DirichletPartitioner`` without self-balancing). Small ``alpha`` gives each
    client few classes; large ``alpha`` approaches IID. If a part gets fewer than ``min_size``
    samples, the proportions are drawn again, up to :data:`DIRICHLET_MAX_TRIES` times; after
    that a deterministic fix-up moves samples one at a time from the largest part to the
    smallest until every part has ``min_size``.

    Parameters
    ----------
    labels:
        1-D integer class labels; index ``i`` is sample ``i``.
    n_parts:
        Number of parts (clients), ``1 ≤ n_parts`` and ``n_parts * min_size ≤ len(labels)``.
    alpha:
        Concentration, finite and ``> 0``.
    seed:
        Non-negative seed.
    min_size:
        Least number of samples in every part, ``≥ 1``.

    Returns
    -------
    list of numpy.ndarray
        ``n_parts`` sorted ``int64`` index arrays, each of length ≥ ``min_size``.

    Raises
    ------
    ConfigError
        A bad ``partition`` parameter (``alpha``, ``min_size``), ``num-clients`` or ``seed``.
    """
    y = _check_labels(labels)
    n = len(y)
    _check_parts(n, n_parts)
    _check_seed(seed)
    if (
        not isinstance(alpha, int | float | np.floating)
        or isinstance(alpha, bool)
        or not (math.isfinite(alpha) and alpha > 0)
    ):
        raise ConfigError(_KEY, f"dirichlet ALPHA must be finite and > 0, got {alpha!r}")
    if not _is_int(min_size) or min_size < 1:
        raise ConfigError(_KEY, f"dirichlet minimum part size must be ≥ 1, got {min_size!r}")
    if n_parts * min_size > n:
        raise ConfigError(
            _KEY_PARTS,
            f"{n_parts} parts of at least {min_size} samples need {n_parts * min_size}, "
            f"but only {n} samples exist",
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    class_sizes = np.array([len(ix) for ix in by_class], dtype=np.int64)

    for _ in range(DIRICHLET_MAX_TRIES):
        sizes = _dirichlet_sizes(class_sizes, n_parts, float(alpha), rng)
        if sizes.sum(axis=0).min() >= min_size:
            break

    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for ix, row in zip(by_class, sizes, strict=True):
        for part, chunk in zip(parts, np.split(ix, np.cumsum(row)[:-1]), strict=True):
            part.extend(chunk.tolist())

    # Deterministic fix-up. Feasible because n ≥ n_parts * min_size: while some part is short,
    # the largest part has more than min_size, so it can give one sample and stay valid.
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    while counts.min() < min_size:
        small, large = int(np.argmin(counts)), int(np.argmax(counts))
        parts[small].append(parts[large].pop())
        counts[small] += 1
        counts[large] -= 1
    return _finish([np.array(p, dtype=np.int64) for p in parts])


def shards(
    labels: npt.ArrayLike, n_parts: int, shards_per_part: int, seed: int
) -> list[IndexArray]:
    """Pathological non-IID split (McMahan et al., 2017): deal label-sorted shards.

    The samples are shuffled, stably sorted by label, cut into ``n_parts * shards_per_part``
    contiguous shards of near-equal size (differing by at most one), and each part is dealt
    ``shards_per_part`` shards at random. A part thus sees about ``shards_per_part`` labels
    (more only where a shard straddles a label boundary).

    Parameters
    ----------
    labels:
        1-D integer class labels.
    n_parts:
        Number of parts (clients), ``≥ 1``.
    shards_per_part:
        Shards per part ``K ≥ 1``; ``n_parts * K`` must not exceed the number of samples.
    seed:
        Non-negative seed.

    Returns
    -------
    list of numpy.ndarray
        ``n_parts`` sorted ``int64`` index arrays.

    Raises
    ------
    ConfigError
        A bad ``partition`` parameter (``K``, too many shards), ``num-clients`` or ``seed``.
    """
    y = _check_labels(labels)
    n = len(y)
    _check_parts(n, n_parts)
    _check_seed(seed)
    if not _is_int(shards_per_part) or shards_per_part < 1:
        raise ConfigError(_KEY, f"shards K must be an integer ≥ 1, got {shards_per_part!r}")
    n_shards = n_parts * shards_per_part
    if n_shards > n:
        raise ConfigError(
            _KEY,
            f"shards:{shards_per_part} with {n_parts} parts makes {n_shards} shards, "
            f"more than the {n} samples",
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(order, n_shards)
    dealt = rng.permutation(n_shards).reshape(n_parts, shards_per_part)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in dealt])


# --------------------------------------------------------------------------------------------
# The CLI spelling
# --------------------------------------------------------------------------------------------


class PartitionKind(StrEnum):
    """The partitioners :func:`partition` knows."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition string: the kind and its one parameter.

    Attributes
    ----------
    kind:
        Which partitioner.
    alpha:
        Dirichlet concentration (finite, > 0) for ``dirichlet``; ``None`` otherwise.
    shards:
        Shards per part (integer ≥ 1) for ``shards``; ``None`` otherwise.

    ``str(spec)`` is the canonical string, and ``parse_partition(str(spec)) == spec``.

    Raises
    ------
    ConfigError
        On construction, if the parameter is missing, not allowed, or given to the wrong kind.
    """

    kind: PartitionKind
    alpha: float | None = None
    shards: int | None = None

    def __post_init__(self) -> None:
        try:
            kind = PartitionKind(self.kind)
        except ValueError:
            raise ConfigError(_KEY, f"unknown kind {self.kind!r}; {PARTITION_HELP}") from None
        object.__setattr__(self, "kind", kind)
        alpha, k = self.alpha, self.shards
        if kind is PartitionKind.DIRICHLET:
            ok = (
                isinstance(alpha, int | float)
                and not isinstance(alpha, bool)
                and math.isfinite(alpha)
                and alpha > 0
            )
            if not ok or k is not None:
                raise ConfigError(_KEY, f"dirichlet needs ALPHA > 0 only; {PARTITION_HELP}")
            object.__setattr__(self, "alpha", float(alpha))  # type: ignore[arg-type]
        elif kind is PartitionKind.SHARDS:
            if not _is_int(k) or k < 1 or alpha is not None:  # type: ignore[operator]
                raise ConfigError(_KEY, f"shards needs an integer K ≥ 1 only; {PARTITION_HELP}")
            object.__setattr__(self, "shards", int(k))  # type: ignore[arg-type]
        elif alpha is not None or k is not None:
            raise ConfigError(_KEY, f"iid takes no parameter; {PARTITION_HELP}")

    def __str__(self) -> str:
        if self.kind is PartitionKind.DIRICHLET:
            return f"dirichlet:{self.alpha!r}"
        if self.kind is PartitionKind.SHARDS:
            return f"shards:{self.shards}"
        return "iid"


_INT_RE: Final = re.compile(r"[0-9]+")
_FLOAT_RE: Final = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_partition(text: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``shards:K`` (case and surrounding blanks ignored).

    Raises
    ------
    ConfigError
        Key ``partition``; the message quotes the input and lists what is allowed.
    """
    if not isinstance(text, str):
        raise ConfigError(_KEY, f"must be a string, got {text!r}; {PARTITION_HELP}")
    kind, sep, arg = text.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    bad = ConfigError(_KEY, f"{text!r} is not a partition; {PARTITION_HELP}")
    if kind == PartitionKind.IID and not sep:
        return PartitionSpec(PartitionKind.IID)
    if kind == PartitionKind.DIRICHLET and _FLOAT_RE.fullmatch(arg):
        alpha = float(arg)
        if math.isfinite(alpha) and alpha > 0:
            return PartitionSpec(PartitionKind.DIRICHLET, alpha=alpha)
    if kind == PartitionKind.SHARDS and _INT_RE.fullmatch(arg) and int(arg) >= 1:
        return PartitionSpec(PartitionKind.SHARDS, shards=int(arg))
    raise bad


def partition(
    spec: PartitionSpec | str, labels: npt.ArrayLike, n_parts: int, seed: int
) -> list[IndexArray]:
    """Split samples with the partitioner that ``spec`` names.

    ``dirichlet`` uses a minimum part size of ``min(DIRICHLET_MIN_SIZE, len(labels) // n_parts)``
    so that small datasets with many clients still split.

    Parameters
    ----------
    spec:
        A :class:`PartitionSpec` or its string form.
    labels:
        1-D integer labels (only their count matters for ``iid``).
    n_parts:
        Number of parts (clients).
    seed:
        Non-negative seed.

    Returns
    -------
    list of numpy.ndarray
        ``n_parts`` sorted, disjoint ``int64`` index arrays covering every sample.

    Raises
    ------
    ConfigError
        Bad spec, ``num-clients`` or ``seed``.
    """
    if isinstance(spec, str):
        spec = parse_partition(spec)
    y = _check_labels(labels)
    if spec.kind is PartitionKind.IID:
        return iid(len(y), n_parts, seed)
    if spec.kind is PartitionKind.DIRICHLET and spec.alpha is not None:
        _check_parts(len(y), n_parts)
        min_size = min(DIRICHLET_MIN_SIZE, len(y) // n_parts)
        return dirichlet(y, n_parts, spec.alpha, seed, min_size=min_size)
    if spec.kind is PartitionKind.SHARDS and spec.shards is not None:
        return shards(y, n_parts, spec.shards, seed)
    raise ConfigError(_KEY, f"inconsistent {spec!r}; {PARTITION_HELP}")  # PartitionSpec forbids
