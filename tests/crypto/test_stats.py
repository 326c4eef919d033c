"""Encrypted screening statistics: equal to plaintext, masked slots, reconciliation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto import ckks, stats, wire
from crypto.ckks import EncryptedVector, Preset, PublicContext, SecretContext
from crypto.stats import StatKind
from federation.errors import InvalidCiphertext, KeyMismatch

N_CLIENTS = 4
LENGTH = 6000  # three chunks of 2048 slots


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate(Preset.SCREENING)


@pytest.fixture(scope="module")
def server(secret: SecretContext) -> PublicContext:
    return PublicContext.from_bytes(secret.public().to_bytes())


@pytest.fixture(scope="module")
def updates() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    base = rng.uniform(-0.05, 0.05, LENGTH)
    out = [
        (base + rng.uniform(1e-3, 1e-1, LENGTH) * rng.choice([-1, 1], LENGTH)).astype(np.float32)
        for _ in range(N_CLIENTS)
    ]
    out[-1] = (out[-1] * 0.1).astype(np.float32)  # a small one: relative precision matters
    return out


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.random.default_rng(12).uniform(-0.1, 0.1, LENGTH).astype(np.float32)


@pytest.fixture(scope="module")
def uploads(
    secret: SecretContext, server: PublicContext, updates: list[np.ndarray]
) -> list[EncryptedVector]:
    """What the server holds: trainers' seeded uploads, decoded from the wire."""
    max_bytes = wire.encoded_size(Preset.SCREENING, LENGTH, seeded=False)
    return [
        wire.decode(
            wire.encode(ckks.encrypt(secret, u)),
            server,
            expected_length=LENGTH,
            max_bytes=max_bytes,
        )
        for u in updates
    ]


@pytest.fixture(scope="module")
def request_(
    server: PublicContext, uploads: list[EncryptedVector], reference: np.ndarray
) -> stats.ScreeningRequest:
    ref = ckks.encrypt(server, reference)  # e.g. the server-side encrypted global model
    return stats.compute_statistics(server, uploads, reference=ref, value_bound=0.2)


def _truth(labels: tuple[stats.StatLabel, ...], xs: list[np.ndarray], r: np.ndarray) -> list[float]:
    x = [v.astype(np.float64) for v in xs]
    out = []
    for lab in labels:
        if lab.kind is StatKind.SQUARED_NORM:
            out.append(float(x[lab.i] @ x[lab.i]))
        elif lab.kind is StatKind.SQUARED_DISTANCE:
            assert lab.j is not None
            d = x[lab.i] - x[lab.j]
            out.append(float(d @ d))
        else:
            out.append(float(x[lab.i] @ r.astype(np.float64)))
    return out


def test_labels_cover_all_statistics_in_order(request_: stats.ScreeningRequest) -> None:
    kinds = [lab.kind for lab in request_.labels]
    n = N_CLIENTS
    assert (
        kinds
        == [StatKind.SQUARED_NORM] * n
        + [StatKind.SQUARED_DISTANCE] * (n * (n - 1) // 2)
        + [StatKind.INNER_PRODUCT] * n
    )
    assert [(lab.i, lab.j) for lab in request_.labels if lab.j is not None] == [
        (i, j) for i in range(n) for j in range(i + 1, n)
    ]
    assert request_.shared_randomness == ()
    # One ciphertext per statistic, lazy products: three polynomials.
    assert all(s.polynomial_count == 3 and s.scale_power == 2 for s in request_.statistics)


def test_encrypted_statistics_equal_plaintext(
    secret: SecretContext,
    request_: stats.ScreeningRequest,
    updates: list[np.ndarray],
    reference: np.ndarray,
) -> None:
    got = stats.decrypt_scalars(secret, request_.blobs())
    want = _truth(request_.labels, updates, reference)
    norms = {i: math.sqrt(float(u.astype(np.float64) @ u)) for i, u in enumerate(updates)}
    r_norm = float(np.linalg.norm(reference.astype(np.float64)))
    for lab, g, w in zip(request_.labels, got, want, strict=True):
        if lab.kind is StatKind.INNER_PRODUCT:
            # Relative to the Cauchy-Schwarz scale |x| |r| (what a cosine filter divides by).
            assert abs(g - w) <= 1e-4 * norms[lab.i] * r_norm, lab
        else:
            assert abs(g - w) <= 1e-4 * abs(w), lab
    values = stats.assemble(request_.labels, got, N_CLIENTS)
    assert np.allclose(values.squared_distances, values.squared_distances.T)
    assert np.all(np.diag(values.squared_distances) == 0)
    assert values.squared_norms.shape == values.inner_products.shape == (N_CLIENTS,)


def test_a_key_holder_sees_only_mask_dominated_slots(
    secret: SecretContext,
    request_: stats.ScreeningRequest,
    updates: list[np.ndarray],
    uploads: list[EncryptedVector],
) -> None:
    """The decrypted slot vector of a distance: uncorrelated with the true per-slot terms,
    each slot dominated by the mask, and only the sum carries the statistic."""
    k = next(i for i, lab in enumerate(request_.labels) if lab.kind is StatKind.SQUARED_DISTANCE)
    lab = request_.labels[k]
    assert lab.j is not None
    stat = wire.decode_statistic(request_.blobs()[k], secret)
    slots = secret._keys.decrypt_polys(stat._polys, Preset.SCREENING.spec.scale**2)
    diff = updates[lab.i].astype(np.float64) - updates[lab.j].astype(np.float64)
    padded = np.zeros(3 * 2048)
    padded[:LENGTH] = diff**2
    per_slot = padded.reshape(3, 2048).sum(axis=0)  # the true slot values before masking
    assert abs(np.corrcoef(slots, per_slot)[0, 1]) < 0.15
    assert np.median(np.abs(slots)) > 2**15 * per_slot.max()
    assert math.fsum(slots.tolist()) == pytest.approx(float(diff @ diff), rel=1e-4)
    # Fresh masks: the same statistic computed twice decrypts to different slots.
    assert (lab.i, lab.j) == (0, 1)
    again = stats.compute_statistics(secret, uploads[:2], norms=False, distances=True, inner=False,
                                     value_bound=0.2)
    slots2 = secret._keys.decrypt_polys(again.statistics[0]._polys, Preset.SCREENING.spec.scale**2)
    assert abs(np.corrcoef(slots, slots2)[0, 1]) < 0.15
    assert np.mean(np.abs(slots2 - slots)) > 2**15 * per_slot.max()


def test_zero_sum_mask_is_exact_and_uniform() -> None:
    rng = np.random.default_rng(1)
    mask = stats._zero_sum_mask(2048, 2.0**30, lambda n: rng.bytes(n))
    assert math.fsum(mask.real.tolist()) == 0.0 and float(np.sum(mask.real)) == 0.0
    assert np.abs(mask.real).max() <= 2.0**30 * 1.01 and np.abs(mask.imag).max() <= 2.0**30 * 1.01
    assert abs(mask.real.mean()) < 1e-9 * 2**30
    assert mask.real.std() == pytest.approx(2.0**30 / math.sqrt(3), rel=0.1)
    assert abs(np.corrcoef(mask.real, mask.imag)[0, 1]) < 0.1


def test_statistics_need_the_screening_preset_and_bounds_that_fit(
    secret: SecretContext, server: PublicContext, uploads: list[EncryptedVector]
) -> None:
    agg = SecretContext.generate(Preset.AGGREGATION)
    with pytest.raises(KeyMismatch):
        stats.compute_statistics(agg, [ckks.encrypt(agg, np.ones(10, np.float32))], inner=False)
    other = SecretContext.generate(Preset.SCREENING)
    with pytest.raises(KeyMismatch):
        stats.compute_statistics(other, uploads, inner=False)
    with pytest.raises(ValueError, match="bits"):
        stats.compute_statistics(server, uploads, value_bound=1e6)
    with pytest.raises(ValueError):
        stats.compute_statistics(server, [])
    with pytest.raises(ValueError):
        stats.compute_statistics(server, uploads, norms=False, distances=False, inner=False)
    short = ckks.encrypt(server, np.ones(10, np.float32))
    with pytest.raises(ValueError):
        stats.compute_statistics(server, [uploads[0], short])


def test_a_replayed_upload_is_reported_not_fatal(
    secret: SecretContext, server: PublicContext, uploads: list[EncryptedVector]
) -> None:
    replay = [uploads[0], uploads[1], uploads[0]]  # client 2 resends client 0's ciphertext
    req = stats.compute_statistics(server, replay, norms=True, distances=True, value_bound=0.2)
    assert req.shared_randomness == ((0, 2),)
    got = stats.decrypt_scalars(secret, req.blobs())
    labels = list(req.labels)
    assert got[labels.index(stats.StatLabel(StatKind.SQUARED_DISTANCE, 0, 2))] == pytest.approx(
        0.0, abs=1e-5
    )
    assert got[0] == pytest.approx(got[2], rel=1e-7)  # same ciphertext, different masks


def test_decrypt_scalars_validates_blobs_and_needs_the_secret(
    secret: SecretContext, server: PublicContext, request_: stats.ScreeningRequest
) -> None:
    blobs = request_.blobs()
    with pytest.raises(TypeError):
        stats.decrypt_scalars(server, blobs[:1])  # type: ignore[arg-type]
    with pytest.raises(InvalidCiphertext) as info:
        stats.decrypt_scalars(secret, [blobs[0][:-1]])
    assert info.value.reason == "truncated"
    other = SecretContext.generate(Preset.SCREENING)
    with pytest.raises(InvalidCiphertext) as info:
        stats.decrypt_scalars(other, blobs[:1])
    assert info.value.reason == "key-mismatch"


# -- reconciliation --------------------------------------------------------------------


def test_a_lying_key_holder_is_caught(
    secret: SecretContext, request_: stats.ScreeningRequest
) -> None:
    honest = stats.decrypt_scalars(secret, request_.blobs())
    holder_b = SecretContext.from_bytes(secret.to_bytes())  # another trainer, same key
    honest_b = stats.decrypt_scalars(holder_b, request_.blobs())
    assert honest_b == honest  # bit-identical
    lie = list(honest)
    lie[3] *= 1.01
    values, liars = stats.reconcile({"a": honest, "b": honest_b, "c": lie})
    assert liars == {"c"} and values == honest
    # Quorum of two that disagrees: both reported, value unknown.
    values, liars = stats.reconcile({"a": honest, "c": lie})
    assert liars == {"a", "c"} and math.isnan(values[3])
    assert values[:3] == honest[:3]
    # Quorum of two that agrees: nobody.
    assert stats.reconcile({"a": honest, "b": honest_b}) == (honest, frozenset())


def test_reconcile_rules() -> None:
    good = [1.0, 2.0, 3.0]
    # Colluding liars who agree with each other are still outvoted by a majority.
    values, liars = stats.reconcile(
        {"h1": good, "h2": good, "h3": good, "l1": [1.0, 9.0, 3.0], "l2": [1.0, 9.0, 3.0]}
    )
    assert values == good and liars == {"l1", "l2"}
    # 2 against 2: no majority, everyone on that statistic reported.
    values, liars = stats.reconcile({"a": good, "b": good, "c": [1, 5, 3], "d": [1, 5, 3]})
    assert math.isnan(values[1]) and values[0] == 1.0 and liars == {"a", "b", "c", "d"}
    # Malformed answers (wrong length, NaN, infinity) are liars, and still count as voters:
    # a value needs a strict majority of everyone asked.
    bad = {"d": [1.0, 2.0], "e": [1.0, math.nan, 3.0], "f": [math.inf] * 3}
    values, liars = stats.reconcile({"a": good, "b": good, "c": good, "g": good, **bad})
    assert values == good and liars == {"d", "e", "f"}
    values, liars = stats.reconcile({"a": good, "b": good, "c": good, **bad})
    assert all(math.isnan(v) for v in values) and liars == {"a", "b", "c", "d", "e", "f"}
    # Tolerances.
    values, liars = stats.reconcile({"a": [1.0], "b": [1.0 + 1e-9], "c": [1.1]}, rel_tol=1e-6)
    assert liars == {"c"}
    values, liars = stats.reconcile({"a": [0.0], "b": [1e-12]}, abs_tol=1e-9)
    assert liars == frozenset()
    with pytest.raises(ValueError):
        stats.reconcile({})
