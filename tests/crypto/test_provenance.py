"""An aggregate's c1 is bound to the seeds and weights of the uploads it sums."""

from __future__ import annotations

import numpy as np

from crypto import Preset, SecretContext, add, encrypt, weighted_sum
from crypto.provenance import SeedSum, c1_matches, matches, seed_sum, upload_seed

SK = SecretContext.generate(Preset.AGGREGATION)
PK = SK.public()
RNG = np.random.default_rng(3)
UPS = [encrypt(SK, (RNG.standard_normal(5000) * 1e-2).astype(np.float32)) for _ in range(4)]
SEEDS = [upload_seed(u) for u in UPS]


def test_a_weighted_sum_matches_its_seeds_and_nothing_else() -> None:
    total = weighted_sum(PK, UPS, [5, 6, 7, 8])
    assert c1_matches(PK, total, SEEDS, [5, 6, 7, 8])
    assert not c1_matches(PK, total, SEEDS, [5, 6, 7, 9])  # other weights
    assert not c1_matches(PK, total, SEEDS[:3], [5, 6, 7])  # a smaller sum
    assert not c1_matches(PK, total, [*SEEDS[:3], SEEDS[0]], [5, 6, 7, 8])  # an upload twice
    assert not c1_matches(PK, PK.encrypt(np.zeros(5000, np.float32)), SEEDS, [5, 6, 7, 8])
    assert not c1_matches(PK, UPS[0], SEEDS[:1], [1])  # a seeded upload is not an aggregate
    other = SecretContext.generate(Preset.AGGREGATION).public()
    assert not c1_matches(other, total, SEEDS, [5, 6, 7, 8])


def test_the_sum_grows_incrementally_and_survives_a_round_trip() -> None:
    first = weighted_sum(PK, UPS[:2], [1, 2])
    both = add(PK, first, weighted_sum(PK, UPS[2:], [3, 4]))
    base = seed_sum(PK, 5000, SEEDS[:2], [1, 2])
    assert base is not None and matches(first, base)
    kept = SeedSum.from_bytes(base.to_bytes(), PK, 5000)
    grown = seed_sum(PK, 5000, SEEDS[2:], [3, 4], kept)
    assert grown is not None and grown.count == 4 and matches(both, grown)
    assert SeedSum.from_bytes(base.to_bytes(), PK, 9000) is None  # another length
    assert seed_sum(PK, 5000, SEEDS[:1], [True]) is None  # a bool is not a weight
