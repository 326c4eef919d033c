"""Projection screening (crypto.stats): exact, sound, and what the key holders can be asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto import EncryptedVector, Preset, PublicContext, SecretContext, encrypt, wire
from crypto import stats as S
from crypto.ckks import add_coefficients, encode_coefficients

PRESET = Preset.AGGREGATION
SPEC = PRESET.spec
Q = SPEC.data_moduli[0]
N = SPEC.poly_degree


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate(PRESET)


@pytest.fixture(scope="module")
def server(secret: SecretContext) -> PublicContext:
    return PublicContext.from_bytes(secret.public().to_bytes())


def _projections(server: PublicContext, secret: SecretContext, uploads: list[EncryptedVector],
                 round_: int = 1, reps: int | None = None, length: int | None = None
                 ) -> tuple[S.ScreenParameters, S.Challenge, np.ndarray]:
    length = length or uploads[0].length
    params = S.screen_parameters(PRESET, length, 10.0)
    ch = S.new_challenge(round_, uploads, reps or params.repetitions)
    v = S.combine(PRESET, S.server_projections(server, uploads, ch), S.holder_projections(secret, ch))
    return params, ch, v


def test_parameters_follow_the_written_argument() -> None:
    p = S.screen_parameters(PRESET, 1_000_000, 10.0)
    # 3-point lemma needs r >= 40; Paley-Zygmund at theta = 1/4 for 2^-41 needs 137
    assert p.repetitions == math.ceil(41 / -math.log2(1 - 0.75**2 / 3)) == 137
    assert (1 - 0.75**2 / 3) ** p.repetitions <= 2.0**-41
    # Parseval: ||m|| = Delta sqrt(2/N) ||x|| (+ noise), Hoeffding factor for 2^-40 / r
    assert p.honest_coefficient_norm > SPEC.scale * math.sqrt(2 / N) * 10.0
    alpha_w = math.sqrt(2 * (41 * math.log(2) + math.log(2 * 137)))
    assert 2 * (alpha_w * 2 * p.threshold * math.sqrt(p.dimension) + p.flood) < Q  # no wrap
    assert S.screen_parameters(PRESET, 11_200_000, 50.0).repetitions == 137  # ResNet-10M fits
    assert p.certified_norm == pytest.approx(23.5 * 10.0, rel=0.1)
    assert p.sketch_relative_error == pytest.approx(math.sqrt(2 / 137))
    with pytest.raises(ValueError, match="norm_bound"):
        S.screen_parameters(PRESET, 1_000_000, 1e6)
    with pytest.raises(ValueError, match="single-prime"):
        S.screen_parameters(Preset.SCREENING, 1000, 1.0)


def test_projections_are_the_exact_inner_products_plus_bounded_flooding(
        server: PublicContext, secret: SecretContext) -> None:
    rng = np.random.default_rng(0)
    xs = [(rng.standard_normal(9000) * 0.01).astype(np.float32) for _ in range(3)]
    uploads = [encrypt(secret, x) for x in xs]
    params, ch, v = _projections(server, secret, uploads, reps=64)
    # Independent oracle: the plaintext coefficients of the same values (encoding only),
    # projected on the same z; the difference is encryption noise plus the flood.
    for i, x in enumerate(xs):
        padded = np.zeros(uploads[0].chunk_count * SPEC.values_per_chunk)
        padded[: x.size] = x
        m = encode_coefficients(PRESET, padded).reshape(-1).astype(np.float64)
        z = S.directions(ch).T
        exact = m @ z
        noise_bound = params.flood + 20 * math.sqrt(m.size) * 8  # flood + 8 sigma of <z, e>
        assert np.abs(v[i] - exact).max() <= noise_bound
    assert np.abs(v).max() < S.screen_parameters(PRESET, 9000, 10.0).threshold


def test_projections_stay_exact_across_full_blocks_of_z(
        server: PublicContext, secret: SecretContext) -> None:
    # 9 chunks: one full block of z (8 * N terms, in 2048-term float32 products) and a
    # partial one; values near the preset bound make the limbs of c0 and a*s as large as
    # they get. The combined projections must still be the plaintext's, up to noise + flood.
    rng = np.random.default_rng(7)
    length = 8 * SPEC.values_per_chunk + 100
    x = rng.uniform(-SPEC.value_bound, SPEC.value_bound, length).astype(np.float32)
    upload = encrypt(secret, x)
    ch = S.new_challenge(2, [upload], 40)
    v = S.combine(PRESET, S.server_projections(server, [upload], ch), S.holder_projections(secret, ch))
    padded = np.zeros(upload.chunk_count * SPEC.values_per_chunk)
    padded[:length] = x
    exact = encode_coefficients(PRESET, padded).reshape(-1).astype(np.float64) @ S.directions(ch).T
    assert np.abs(v[0] - exact).max() <= 2**S.FLOOD_BITS + 20 * math.sqrt(padded.size) * 8
    # a peer's c0 may be anything reduced, all-zero chunks included: projected, not a crash
    blob = wire.encode(upload)
    head = wire.HEADER_BYTES + 32  # header and seed; then c0
    zeros = wire.decode(blob[:head] + bytes(len(blob) - head), server, expected_length=length,
                        max_bytes=len(blob))
    ch = S.new_challenge(3, [zeros], 40)
    assert S.server_projections(server, [zeros], ch) == [[0] * 40]


def test_server_projections_are_exact_integers_for_any_reduced_c0(server: PublicContext,
                                                                 secret: SecretContext) -> None:
    # A peer chooses c0 freely (any coefficient below q passes the wire check). Its projection
    # must be <z_k, centred(INTT(c0))> mod q exactly, computed here with Python integers: no
    # float32 product may round. The worst case is a vector aligned with z (which no uploader
    # can know; the test does): repetition 0 sees every coefficient at the largest digits
    # 2^13 - 1 in all four places, with z's sign. Also the centred range's extremes, and random
    # values. 9 chunks: a full block of z and one more.
    from crypto._seal import ntt_forward, ntt_inverse  # the reference NTT (tests/crypto/test_seal.py)

    rng = np.random.default_rng(11)
    chunks, reps, nonce = 9, 40, bytes(range(32))
    length = (chunks - 1) * SPEC.values_per_chunk + 1
    upload = encrypt(secret, np.zeros(length, np.float32))
    z = S.directions(S.new_challenge(5, [upload], reps, nonce=nonce)).astype(np.int64)
    big = sum(((1 << 13) - 1) << (14 * j) for j in range(4))  # < (q - 1) / 2
    assert big <= Q // 2
    y = np.where(z[0] >= 0, big, -big).reshape(chunks, N)
    y[7] = rng.integers(-(Q // 2), Q // 2, size=N, dtype=np.int64)
    y[8, ::2], y[8, 1::2] = Q // 2, -(Q // 2)  # the extremes of the centred range
    reduced = np.where(y < 0, y + Q, y).astype(np.uint64)
    c0 = ntt_forward(reduced, Q)
    assert np.array_equal(ntt_inverse(c0, Q), reduced)
    blob = wire.encode(upload)
    head = wire.HEADER_BYTES + 32  # header and seed; then c0, 7 bytes per coefficient (LE)
    width = (Q.bit_length() + 7) // 8
    packed = c0.astype("<u8").view(np.uint8).reshape(chunks, N, 8)[:, :, :width].tobytes()
    assert len(blob) == head + len(packed)
    crafted = wire.decode(blob[:head] + packed, server, expected_length=length, max_bytes=len(blob))
    ch = S.new_challenge(5, [crafted], reps, nonce=nonce)
    flat = [int(v) for v in y.reshape(-1)]
    exact = [sum(int(zk) * v for zk, v in zip(z[k], flat, strict=True) if zk) % Q for k in range(reps)]
    assert S.server_projections(server, [crafted], ch) == [exact]


def test_honest_key_holders_agree_bit_for_bit_and_the_flood_is_keyed(
        server: PublicContext, secret: SecretContext) -> None:
    uploads = [encrypt(secret, np.full(5000, 0.01, np.float32)) for _ in range(2)]
    ch = S.new_challenge(3, uploads, 40)
    again = SecretContext.from_bytes(secret.to_bytes())  # another trainer, same key
    a, b = S.holder_projections(secret, ch), S.holder_projections(again, ch)
    assert a == b
    def t(rows: list[list[int]]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(row) for row in rows)

    lie = t([[x + 1 for x in row] for row in a])
    values, liars = S.reconcile({"1": t(a), "2": t(b), "3": lie}, 2)
    assert values == t(a) and liars == {"3"}
    assert S.reconcile({"1": t(a), "2": t([[0] * 40] * 2)}, 2)[0] is None
    other = SecretContext.generate(PRESET)
    assert S.holder_projections(other, ch) != a


def test_colluding_key_holders_need_f_plus_one_identical_answers() -> None:
    """Two colluders agree on a lie; with f = 2 an answer needs 3 identical votes, so their
    pair never decides, and once the honest trainers answer too the truth is the one with 3."""
    truth, lie = ((), (1, 2, 3)), ((), (4, 5, 6))
    assert S.reconcile({"a": lie, "b": lie}, 2) == (lie, frozenset())  # f = 1: the old hole
    assert S.reconcile({"a": lie, "b": lie, "c": truth}, 3)[0] is None  # ask everyone
    values, liars = S.reconcile({"a": lie, "b": lie, "c": truth, "d": truth, "e": truth}, 3)
    assert values == truth and liars == {"a", "b"}
    assert S.reconcile({"a": lie, "b": truth}, 1)[0] is None  # a tie decides nothing
    with pytest.raises(ValueError):
        S.reconcile({"a": truth}, 0)


def test_tags_pin_each_seed_to_one_nonce_and_z_ignores_the_seed_set(
        server: PublicContext, secret: SecretContext) -> None:
    uploads = [encrypt(secret, np.full(3000, 0.01, np.float32)) for _ in range(3)]
    nonce, other_nonce = b"\x01" * 32, b"\x02" * 32
    ch = S.new_challenge(4, uploads, S.repetitions(), nonce=nonce)
    tags = [S.upload_tag(secret, 4, S.commitment(4, nonce), 3000, sd) for sd in ch.seeds]
    assert S.bound_seeds(SecretContext.from_bytes(secret.to_bytes()), ch, tags) == [True] * 3
    # the same seeds asked with another nonce, in another round or with swapped tags: unbound
    assert S.bound_seeds(secret, S.new_challenge(4, uploads, S.repetitions(), nonce=other_nonce),
                         tags) == [False] * 3
    assert S.bound_seeds(secret, S.new_challenge(5, uploads, S.repetitions(), nonce=nonce),
                         tags) == [False] * 3
    assert S.bound_seeds(secret, ch, [tags[1], tags[0], tags[2]]) == [False, False, True]
    # the same seeds under another length (a holder told another model size): unbound too
    other_length = S.Challenge(4, S.repetitions(), 2000, nonce, ch.seeds)
    assert other_length.z_seed != ch.z_seed
    assert S.bound_seeds(secret, other_length, tags) == [False] * 3
    # a subset of the round's uploads gets the very same z: no second view of any upload
    sub = S.new_challenge(4, uploads[1:], S.repetitions(), nonce=nonce)
    assert sub.z_seed == ch.z_seed
    assert S.holder_projections(secret, sub) == S.holder_projections(secret, ch)[1:]
    with pytest.raises(TypeError):  # the server holds a public context: it cannot tag
        S.upload_tag(server, 4, S.commitment(4, nonce), 3000, ch.seeds[0])  # type: ignore[arg-type]
    assert S.repetitions() == 137 == S.screen_parameters(PRESET, 3000, 50.0).repetitions


def test_sketch_estimates_norms_and_distances_within_the_stated_error(
        server: PublicContext, secret: SecretContext) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(20000) * 0.02
    xs = [base + rng.standard_normal(20000) * 0.01 * (k + 1) for k in range(4)]
    uploads = [encrypt(secret, x.astype(np.float32)) for x in xs]
    params, _, v = _projections(server, secret, uploads)
    assert S.check_projections(v, params) == [None] * 4
    sketch = S.sketch_statistics(v, params)
    tol = 4 * params.sketch_relative_error  # 4 standard deviations
    for i in range(4):
        want = float(xs[i] @ xs[i])
        assert abs(sketch.sq_norms[i] - want) <= tol * want
        for j in range(i + 1, 4):
            d = xs[i] - xs[j]
            assert abs(sketch.sq_dists[i, j] - d @ d) <= tol * (d @ d)


def _crafted(secret: SecretContext, rng: np.random.Generator, kind: str, length: int,
             params: S.ScreenParameters) -> EncryptedVector:
    """An update an attacker (who holds the key) could upload, with out-of-bound content."""
    chunks = -(-length // SPEC.values_per_chunk)
    honest = rng.standard_normal(length) * rng.uniform(1e-3, 0.05)
    enc = encrypt(secret, honest.astype(np.float32))
    delta = np.zeros((chunks, N), dtype=np.int64)
    t = params.threshold
    if kind == "coefficient":  # a wrap target anywhere, padding region included
        for _ in range(int(rng.integers(1, 4))):
            c, k = int(rng.integers(chunks)), int(rng.integers(N))
            delta[c, k] = int(rng.integers(2 * t + 1, Q // 2)) * int(rng.choice([-1, 1]))
    elif kind == "padding":  # slot values in the padding, sized beyond the certified norm
        slots = np.zeros(chunks * SPEC.values_per_chunk)
        pad = np.arange(length, slots.size)
        where = rng.choice(pad, size=int(rng.integers(1, min(50, pad.size))), replace=False)
        scale = params.certified_norm * rng.uniform(1.05, 1e3) / math.sqrt(where.size)
        slots[where] = rng.standard_normal(where.size) * scale
        slots[where] *= params.certified_norm * 1.05 / max(float(np.linalg.norm(slots[where])), 1e-300) \
            if rng.random() < 0.3 else 1.0
        delta = encode_coefficients(PRESET, slots)
    elif kind == "spread":  # every coefficient small, the norm just beyond the certificate
        g = rng.standard_normal((chunks, N))
        target = params.certified_norm * SPEC.scale * math.sqrt(2 / N) * rng.uniform(1.01, 10)
        delta = np.rint(g / np.linalg.norm(g) * target).astype(np.int64)
    elif kind == "shift":  # half the modulus on every NTT value of c0 (constant polynomial)
        delta[:, 0] = (Q - 1) // 2
    else:  # uniform garbage
        delta = rng.integers(-(Q // 2), Q // 2, size=(chunks, N), dtype=np.int64)
    return add_coefficients(enc, delta)


def test_a_thousand_crafted_out_of_bound_updates_never_pass(
        server: PublicContext, secret: SecretContext) -> None:
    rng = np.random.default_rng(7)
    length = 3000  # one chunk, 1096 padding values
    params = S.screen_parameters(PRESET, length, 10.0)
    kinds = ["coefficient", "padding", "spread", "shift", "garbage"]
    passes, total = 0, 0
    for batch in range(5):
        uploads = [_crafted(secret, rng, kinds[(batch * 200 + k) % 5], length, params)
                   for k in range(200)]
        ch = S.new_challenge(batch + 1, uploads, params.repetitions)
        v = S.combine(PRESET, S.server_projections(server, uploads, ch), S.holder_projections(secret, ch))
        verdicts = S.check_projections(v, params)
        passes += sum(r is None for r in verdicts)
        total += len(verdicts)
    assert total == 1000 and passes == 0


def test_honest_updates_at_the_norm_bound_are_never_rejected(
        server: PublicContext, secret: SecretContext) -> None:
    rng = np.random.default_rng(3)
    length = 3000
    params = S.screen_parameters(PRESET, length, 10.0)
    uploads = []
    for k in range(200):
        x = rng.standard_normal(length) if k % 2 else np.where(rng.random(length) < 0.01, 1.0, 0.0)
        x = x / np.linalg.norm(x) * 10.0 * rng.uniform(0.5, 1.0)  # at or below B = 10
        uploads.append(encrypt(secret, np.clip(x, -16, 16).astype(np.float32)))
    ch = S.new_challenge(1, uploads, params.repetitions)
    v = S.combine(PRESET, S.server_projections(server, uploads, ch), S.holder_projections(secret, ch))
    assert S.check_projections(v, params) == [None] * 200
    # the stated margin: honest projections stay well inside the threshold
    assert np.abs(v).max() < params.threshold / 2


def test_a_challenge_is_bound_to_the_round_and_the_nonce_not_the_seed_order(secret: SecretContext) -> None:
    uploads = [encrypt(secret, np.ones(100, np.float32)) for _ in range(2)]
    a = S.new_challenge(1, uploads, 40, rng=lambda n: b"\x01" * n)
    assert S.new_challenge(1, uploads, 40, rng=lambda n: b"\x01" * n).z_seed == a.z_seed
    assert S.new_challenge(2, uploads, 40, rng=lambda n: b"\x01" * n).z_seed != a.z_seed
    assert S.new_challenge(1, uploads, 40, rng=lambda n: b"\x02" * n).z_seed != a.z_seed
    assert S.new_challenge(1, uploads, 41, rng=lambda n: b"\x01" * n).z_seed != a.z_seed
    # reordering (or subsetting) the seeds gives no second z for an upload
    assert S.new_challenge(1, uploads[::-1], 40, rng=lambda n: b"\x01" * n).z_seed == a.z_seed
    assert a.commitment == S.commitment(1, b"\x01" * 32) != S.commitment(2, b"\x01" * 32)
    with pytest.raises(ValueError, match="distinct"):
        S.Challenge(1, 40, 100, b"\x00" * 32, (a.seeds[0], a.seeds[0]))
    with pytest.raises(ValueError, match="seeded"):
        S.new_challenge(1, [secret.public().encrypt(np.ones(100, np.float32))], 40)
