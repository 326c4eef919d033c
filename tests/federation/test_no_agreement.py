"""The cosine filter's no-agreement rule: updates of pure noise are rejected, honest ones never
for scoring low together (DP noise, non-IID data)."""

from __future__ import annotations

import numpy as np

from federation.robust import (
    UpdateStats,
    cosine_filter,
    cosine_floor,
    noise_cosine_sd,
    screen,
    stats_from_plain,
)

D = 20_000
NOISE_REASONS = {("cosine<0.0",), ("cosine:no-agreement",)}


def _round(rng: np.random.Generator, n_honest: int, n_noise: int, signal: float,
           spread: float = 0.0) -> list[np.ndarray]:
    """Honest updates: a shared direction (length ``signal``) plus unit noise per client,
    optionally turned by a client-specific direction (``spread``: non-IID); attackers: noise
    as long as an honest update."""
    common = rng.standard_normal(D)
    common *= signal / np.linalg.norm(common)
    honest = []
    for _ in range(n_honest):
        own = rng.standard_normal(D)
        own /= np.linalg.norm(own)
        skew = rng.standard_normal(D)
        skew *= spread / np.linalg.norm(skew)
        honest.append(common + own + skew)
    length = float(np.median([np.linalg.norm(u) for u in honest]))
    noise = [rng.standard_normal(D) for _ in range(n_noise)]
    return honest + [v * (length / np.linalg.norm(v)) for v in noise]


def _rejected(stats: UpdateStats) -> dict[int | str, tuple[str, ...]]:
    return {v.client_id: v.reasons for v in cosine_filter(stats, floor=cosine_floor(stats))
            if not v.accepted}


def test_pure_noise_is_rejected_when_the_honest_clients_agree() -> None:
    rng = np.random.default_rng(0)
    no_agreement = 0
    for trial in range(40):
        stats = stats_from_plain(_round(rng, 4, 2, signal=1.5), list(range(6)))
        rejected = _rejected(stats)
        assert set(rejected) == {4, 5} and set(rejected.values()) <= NOISE_REASONS, trial
        no_agreement += sum(r == ("cosine:no-agreement",) for r in rejected.values())
    # a noise score is positive about half the time: the old rule (below 0) let those in
    assert no_agreement >= 20


def test_sketched_statistics_use_their_own_precision() -> None:
    # the same round seen through 137 projections: a noise cosine is known to ~1/sqrt(137)
    rng = np.random.default_rng(1)
    exact = stats_from_plain(_round(rng, 4, 2, signal=1.5), list(range(6)))
    sketched = UpdateStats(exact.client_ids, exact.sq_norms, exact.pair_sq_dists,
                           sketch_repetitions=137)
    assert noise_cosine_sd(exact) == (1 / D) ** 0.5
    assert abs(noise_cosine_sd(sketched) - (1 / 137) ** 0.5) < 1e-4
    assert set(_rejected(sketched)) == {4, 5}


def test_honest_clients_are_never_rejected_for_low_agreement() -> None:
    rng = np.random.default_rng(2)
    for trial in range(50):
        # strong DP noise: every cosine is tiny (signal 0.05 against unit noise) ...
        weak = stats_from_plain(_round(rng, 10, 0, signal=0.05), list(range(10)))
        # ... very non-IID clients: each turned away from the others by its own data
        skewed = stats_from_plain(_round(rng, 10, 0, signal=1.0, spread=1.5), list(range(10)))
        assert ("cosine:no-agreement",) not in _rejected(weak).values(), trial
        assert _rejected(skewed) == {}, trial


def test_screen_reports_the_reason() -> None:
    rng = np.random.default_rng(3)
    ups = _round(rng, 5, 2, signal=1.5)
    decisions = screen(stats_from_plain(ups, list(range(7))), [10] * 7, "norm,cosine", f=1,
                       floored_cosine=True)
    reasons = {d.client_id: d.reasons for d in decisions if not d.accepted}
    assert set(reasons) == {5, 6} and all(set(r) & {"cosine<0.0", "cosine:no-agreement"}
                                          for r in reasons.values())


def test_a_weakly_agreeing_honest_client_is_kept_under_sketches() -> None:
    # non-IID: one client agrees half as much as the others; sketched, its score (~0.19) is
    # below 3/sqrt(137) but far from 0: kept, also when colluders tighten the consensus
    rng = np.random.default_rng(4)
    for trial in range(30):
        ups = _round(rng, 6, 0, signal=0.7)
        common = np.mean(ups, axis=0)
        own = rng.standard_normal(D)
        ups.append(0.5 * common + own / np.linalg.norm(own))  # half the others' agreement
        ups += [common + 0.05 * np.linalg.norm(common) * rng.standard_normal(D) / np.sqrt(D)
                for _ in range(3)]
        exact = stats_from_plain(ups, list(range(10)))
        sketched = UpdateStats(exact.client_ids, exact.sq_norms, exact.pair_sq_dists,
                               sketch_repetitions=137)
        assert 6 not in _rejected(sketched), trial
