"""federation.partition: properties of the partitioners and the partition-string parser."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from federation import partition as P
from federation.errors import ConfigError

FAST = settings(max_examples=60, deadline=None)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def labels_and_parts(draw: st.DrawFn, max_n: int = 400, max_parts: int = 20) -> tuple:
    n_classes = draw(st.integers(1, 10))
    n = draw(st.integers(1, max_n))
    labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    n_parts = draw(st.integers(1, min(n, max_parts)))
    return labels, n_parts


def assert_exact_cover(parts: list[np.ndarray], n: int, n_parts: int) -> None:
    assert len(parts) == n_parts
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------
# iid
# ------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 2000), data=st.data(), seed=seeds)
def test_iid_cover_balance_determinism(n: int, data: st.DataObject, seed: int) -> None:
    n_parts = data.draw(st.integers(1, min(n, 50)))
    parts = P.iid(n, n_parts, seed)
    assert_exact_cover(parts, n, n_parts)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert same(parts, P.iid(n, n_parts, seed))


@FAST
@given(n=st.integers(50, 500), n_parts=st.integers(2, 10), seed=seeds)
def test_iid_other_seed_other_split(n: int, n_parts: int, seed: int) -> None:
    assert not same(P.iid(n, n_parts, seed), P.iid(n, n_parts, seed + 1))


@FAST
@given(n=st.integers(1, 500), data=st.data(), seed=seeds)
def test_split_test_iid_weighted_accuracy_is_global(n: int, data: st.DataObject, seed: int) -> None:
    n_parts = data.draw(st.integers(1, min(n, 20)))
    correct = np.random.default_rng(seed).random(n) < 0.7
    parts = P.split_test_iid(n, n_parts, seed)
    assert_exact_cover(parts, n, n_parts)
    weighted = sum(len(p) * correct[p].mean() for p in parts) / n
    assert math.isclose(weighted, correct.mean(), rel_tol=1e-12, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------
# dirichlet
# ------------------------------------------------------------------------------------------


@FAST
@given(
    lp=labels_and_parts(),
    alpha=st.floats(1e-3, 1e3),
    min_size=st.integers(1, 10),
    seed=seeds,
)
def test_dirichlet_cover_min_size_determinism(
    lp: tuple, alpha: float, min_size: int, seed: int
) -> None:
    labels, n_parts = lp
    assume(n_parts * min_size <= len(labels))
    before = labels.copy()
    parts = P.dirichlet(labels, n_parts, alpha, seed, min_size=min_size)
    assert_exact_cover(parts, len(labels), n_parts)
    assert min(len(p) for p in parts) >= min_size
    assert same(parts, P.dirichlet(labels, n_parts, alpha, seed, min_size=min_size))
    np.testing.assert_array_equal(labels, before)  # pure


@FAST
@given(seed=seeds, alpha=st.sampled_from([0.1, 0.5, 1.0]))
def test_dirichlet_other_seed_other_split(seed: int, alpha: float) -> None:
    labels = np.arange(300) % 10
    assert not same(P.dirichlet(labels, 5, alpha, seed), P.dirichlet(labels, 5, alpha, seed + 1))


def test_dirichlet_fix_up_fills_every_part() -> None:
    # With alpha this small, resampling almost never gives 20 parts of >= 10: the fix-up must.
    labels = np.arange(200) % 10
    parts = P.dirichlet(labels, 20, 1e-3, seed=3, min_size=10)
    assert_exact_cover(parts, 200, 20)
    assert all(len(p) == 10 for p in parts)
    assert same(parts, P.dirichlet(labels, 20, 1e-3, seed=3, min_size=10))


def test_dirichlet_tiny_alpha_does_not_break() -> None:
    labels = np.arange(500) % 10
    parts = P.dirichlet(labels, 5, 1e-300, seed=0, min_size=1)
    assert_exact_cover(parts, 500, 5)


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.repeat(np.arange(10), 600)

    def classes_per_part(alpha: float) -> float:
        parts = P.dirichlet(labels, 10, alpha, seed=7)
        return float(
            np.mean([np.sum(np.bincount(labels[p], minlength=10) >= 0.05 * len(p)) for p in parts])
        )

    skewed, mild, flat = classes_per_part(0.05), classes_per_part(1.0), classes_per_part(1e4)
    assert skewed < mild < flat
    assert flat == 10


# ------------------------------------------------------------------------------------------
# shards
# ------------------------------------------------------------------------------------------


@FAST
@given(lp=labels_and_parts(), k=st.integers(1, 4), seed=seeds)
def test_shards_cover_determinism(lp: tuple, k: int, seed: int) -> None:
    labels, n_parts = lp
    assume(n_parts * k <= len(labels))
    parts = P.shards(labels, n_parts, k, seed)
    assert_exact_cover(parts, len(labels), n_parts)
    assert same(parts, P.shards(labels, n_parts, k, seed))


@FAST
@given(
    counts=st.lists(st.integers(1, 60), min_size=2, max_size=10),
    n_parts=st.integers(1, 10),
    k=st.integers(1, 3),
    seed=seeds,
)
def test_shards_limit_labels_per_part(counts: list[int], n_parts: int, k: int, seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    n_shards = n_parts * k
    assume(n_shards <= len(labels))
    # A shard no longer than the smallest class straddles at most one label boundary.
    assume(math.ceil(len(labels) / n_shards) <= min(counts))
    for p in P.shards(labels, n_parts, k, seed):
        assert len(np.unique(labels[p])) <= 2 * k


@FAST
@given(per_class=st.integers(1, 5), n_parts=st.integers(1, 10), k=st.integers(1, 3), seed=seeds)
def test_shards_exactly_k_labels_when_classes_divide(
    per_class: int, n_parts: int, k: int, seed: int
) -> None:
    # n_parts * k shards over n_parts * k classes of equal size: every shard is one class.
    labels = np.repeat(np.arange(n_parts * k), per_class)
    for p in P.shards(labels, n_parts, k, seed):
        assert len(np.unique(labels[p])) == k
        assert len(p) == k * per_class


# ------------------------------------------------------------------------------------------
# parsing and dispatch
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "alpha", "k", "canonical"),
    [
        ("iid", "iid", None, None, "iid"),
        (" IID ", "iid", None, None, "iid"),
        ("dirichlet:0.5", "dirichlet", 0.5, None, "dirichlet:0.5"),
        ("dirichlet:1", "dirichlet", 1.0, None, "dirichlet:1.0"),
        ("Dirichlet: .1", "dirichlet", 0.1, None, "dirichlet:0.1"),
        ("dirichlet:1e-3", "dirichlet", 1e-3, None, "dirichlet:0.001"),
        ("shards:2", "shards", None, 2, "shards:2"),
        ("shards:007", "shards", None, 7, "shards:7"),
    ],
)
def test_parse_partition(
    text: str, kind: str, alpha: float | None, k: int | None, canonical: str
) -> None:
    spec = P.parse_partition(text)
    assert spec.kind == kind and isinstance(spec.kind, P.PartitionKind)
    assert spec.alpha == alpha and spec.shards == k
    assert str(spec) == canonical
    assert P.parse_partition(str(spec)) == spec


@given(alpha=st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False))
@FAST
def test_dirichlet_spec_round_trips(alpha: float) -> None:
    spec = P.PartitionSpec(P.PartitionKind.DIRICHLET, alpha=alpha)
    assert P.parse_partition(str(spec)) == spec


@given(k=st.integers(1, 10**6))
@FAST
def test_shards_spec_round_trips(k: int) -> None:
    assert P.parse_partition(f"shards:{k}") == P.PartitionSpec(P.PartitionKind.SHARDS, shards=k)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "iid:1",
        "iid:",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:1e999",
        "dirichlet:abc",
        "dirichlet:0.5:1",
        "shards",
        "shards:0",
        "shards:-2",
        "shards:1.5",
        "shards:2.0",
        "shards:+2",
        "shards:1_0",
        "random",
        "label-skew:2",
        "dirichlet 0.5",
    ],
)
def test_parse_partition_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(P.PARTITION_HELP)) as info:
        P.parse_partition(text)
    assert info.value.key == "partition"
    assert repr(text) in str(info.value)


def test_parse_partition_rejects_non_string() -> None:
    with pytest.raises(ConfigError) as info:
        P.parse_partition(0.5)  # type: ignore[arg-type]
    assert info.value.key == "partition"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "dirichlet"},
        {"kind": "dirichlet", "alpha": 0.0},
        {"kind": "dirichlet", "alpha": math.inf},
        {"kind": "dirichlet", "alpha": 0.5, "shards": 2},
        {"kind": "shards"},
        {"kind": "shards", "shards": 0},
        {"kind": "shards", "shards": 1.5},
        {"kind": "iid", "alpha": 0.5},
        {"kind": "bogus"},
    ],
)
def test_spec_constructor_validates(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        P.PartitionSpec(**kwargs)
    assert info.value.key == "partition"


def test_partition_dispatch() -> None:
    labels = np.arange(1000) % 10
    assert same(P.partition("iid", labels, 7, 1), P.iid(1000, 7, 1))
    assert same(P.partition("dirichlet:0.3", labels, 7, 1), P.dirichlet(labels, 7, 0.3, 1))
    spec = P.parse_partition("shards:3")
    assert same(P.partition(spec, labels, 7, 1), P.shards(labels, 7, 3, 1))


def test_partition_dirichlet_small_data_many_clients() -> None:
    # 30 samples, 10 clients: the default minimum of 10 cannot hold, 3 each can.
    labels = np.arange(30) % 3
    parts = P.partition("dirichlet:0.1", labels, 10, 0)
    assert_exact_cover(parts, 30, 10)
    assert min(len(p) for p in parts) >= 3


# ------------------------------------------------------------------------------------------
# validation names the key
# ------------------------------------------------------------------------------------------

LABELS = np.arange(100) % 10


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda: P.iid(10, 0, 0), "num-clients"),
        (lambda: P.iid(10, 11, 0), "num-clients"),
        (lambda: P.iid(10, 2.0, 0), "num-clients"),
        (lambda: P.iid(10, 2, -1), "seed"),
        (lambda: P.split_test_iid(5, 6, 0), "num-clients"),
        (lambda: P.dirichlet(LABELS, 0, 0.5, 0), "num-clients"),
        (lambda: P.dirichlet(LABELS, 101, 0.5, 0), "num-clients"),
        (lambda: P.dirichlet(LABELS, 11, 0.5, 0), "num-clients"),  # 11 * 10 > 100
        (lambda: P.dirichlet(LABELS, 5, 0.0, 0), "partition"),
        (lambda: P.dirichlet(LABELS, 5, -0.5, 0), "partition"),
        (lambda: P.dirichlet(LABELS, 5, math.nan, 0), "partition"),
        (lambda: P.dirichlet(LABELS, 5, math.inf, 0), "partition"),
        (lambda: P.dirichlet(LABELS, 5, 0.5, 0, min_size=0), "partition"),
        (lambda: P.shards(LABELS, 0, 2, 0), "num-clients"),
        (lambda: P.shards(LABELS, 10, 0, 0), "partition"),
        (lambda: P.shards(LABELS, 34, 3, 0), "partition"),  # 102 shards > 100 samples
        (lambda: P.partition("shards:11", LABELS, 10, 0), "partition"),
        (lambda: P.partition("dirichlet:0.5", LABELS, 200, 0), "num-clients"),
    ],
)
def test_validation_names_the_key(call: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()  # type: ignore[operator]
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_public_surface() -> None:
    for name in P.__all__:
        assert hasattr(P, name), name
