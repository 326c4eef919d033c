"""CKKS recipes: presets, contexts (capabilities as types), round trips, exact weighted sums."""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import _seal, ckks, wire
from crypto.ckks import Preset, PublicContext, SecretContext
from federation.errors import CryptoError, KeyMismatch

# Max abs error of one fresh encryption of values in [-0.1, 0.1] (measured noise std:
# AGGREGATION 5.5e-7 symmetric / 2.6e-6 public-key; SCREENING 2.2e-6 / 1.0e-5).
ROUND_TRIP_ATOL = {Preset.AGGREGATION: 5e-5, Preset.SCREENING: 2e-4}


@pytest.fixture(scope="module", params=list(Preset), ids=lambda p: p.id)
def keys(request: pytest.FixtureRequest) -> tuple[SecretContext, PublicContext]:
    secret = SecretContext.generate(request.param)
    # The server's context arrives as bytes: exercise that path.
    return secret, PublicContext.from_bytes(secret.public().to_bytes())


@pytest.fixture(scope="module")
def agg() -> SecretContext:
    return SecretContext.generate(Preset.AGGREGATION)


def _values(rng: np.random.Generator, n: int, low: float = 1e-3, high: float = 1e-1) -> np.ndarray:
    """fedguard-like update values: |x| in [low, high], random signs, float32."""
    out: np.ndarray = (rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    return out


# -- presets ---------------------------------------------------------------------------


def test_presets_have_stable_unique_ids_and_are_found_by_id() -> None:
    ids = [p.id for p in Preset]
    assert ids == ["agg-4096-v1", "scr-4096-v1"]
    for preset in Preset:
        assert Preset.from_id(preset.id) is preset
    with pytest.raises(ValueError, match="unknown"):
        Preset.from_id("agg-8192-v9")


def test_preset_specs_are_what_seal_builds() -> None:
    for preset in Preset:
        spec = preset.spec
        ring = _seal.ring(spec.poly_degree, spec.key_moduli)
        assert ring.data_moduli == spec.data_moduli
        # 128-bit security at N=4096 allows 109 bits of total modulus.
        assert sum(q.bit_length() for q in spec.key_moduli) <= 109
        # A full-weight, full-bound plaintext stays below a quarter of the modulus.
        modulus = float(np.prod([float(q) for q in spec.data_moduli]))
        assert spec.scale * spec.value_bound * spec.max_multiplier <= modulus / 4
    assert Preset.AGGREGATION.spec.values_per_chunk == 4096  # complex packing
    assert Preset.SCREENING.spec.values_per_chunk == 2048
    assert Preset.AGGREGATION.spec.coefficient_bytes == (7,)
    assert Preset.SCREENING.spec.coefficient_bytes == (7, 4)


# -- contexts --------------------------------------------------------------------------


def _packed_poly_bytes(moduli: tuple[int, ...], degree: int) -> int:
    """The documented wire size of one polynomial: each prime's residues at ceil(bits/8) bytes."""
    return degree * sum((q.bit_length() + 7) // 8 for q in moduli)


def test_fingerprint_is_shared_by_secret_and_public_and_survives_bytes(
    keys: tuple[SecretContext, PublicContext],
) -> None:
    secret, public = keys
    assert re.fullmatch(r"[0-9a-f]{16}", secret.fingerprint)
    assert public.fingerprint == secret.fingerprint == secret.public().fingerprint
    # It identifies the key: another (valid) public key under the same preset has another one.
    raw = bytearray(public.to_bytes())
    head = 4 + 1 + 16  # magic, version, preset id; then the first key coefficient (7 bytes)
    raw[head : head + 7] = (0 if any(raw[head : head + 7]) else 1).to_bytes(7, "little")
    assert PublicContext.from_bytes(bytes(raw)).fingerprint != public.fingerprint
    again = SecretContext.from_bytes(secret.to_bytes())
    assert again.fingerprint == secret.fingerprint and again.preset is secret.preset
    assert public == secret.public()
    other = SecretContext.generate(secret.preset)
    assert other.fingerprint != secret.fingerprint


def test_public_context_cannot_decrypt_and_holds_no_secret_key(
    keys: tuple[SecretContext, PublicContext],
) -> None:
    secret, public = keys
    # A type difference, not a flag.
    assert not hasattr(public, "decrypt") and not hasattr(PublicContext, "decrypt")
    assert isinstance(public._keys, _seal.PublicKeys)
    assert not isinstance(public._keys, _seal.SecretKeys)
    assert not hasattr(public._keys, "_sk") and not hasattr(public._keys, "_decryptor")
    enc = public.encrypt(np.ones(10, np.float32))
    assert np.max(np.abs(secret.decrypt(enc) - 1.0)) < 1e-3
    with pytest.raises(TypeError, match="SecretContext"):
        ckks.decrypt(public, enc)  # type: ignore[arg-type]
    # Its bytes do not contain the secret key, nor any 32-byte piece of it.
    spec = secret.preset.spec
    head = 4 + 1 + 16
    sk_len = _packed_poly_bytes(spec.key_moduli, spec.poly_degree)
    sk_bytes = secret.to_bytes()[head : head + sk_len]
    pub_bytes = public.to_bytes()
    assert len(pub_bytes) == head + 2 * sk_len
    assert sk_bytes not in pub_bytes
    assert all(sk_bytes[k : k + 32] not in pub_bytes for k in range(0, sk_len - 32, 997))
    # The secret key loaded back from the secret bytes is the one in use.
    again = SecretContext.from_bytes(secret.to_bytes())
    assert np.max(np.abs(again.decrypt(enc) - 1.0)) < 1e-3


def test_secret_context_never_shows_key_material(agg: SecretContext) -> None:
    text = repr(agg) + str(agg)
    assert "redacted" in text and agg.fingerprint in text
    blob = agg.to_bytes()
    assert blob[30:46].hex() not in text
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(agg)
    public = pickle.loads(pickle.dumps(agg.public()))
    assert public == agg.public()


def test_contexts_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError):
        PublicContext(object(), Preset.AGGREGATION, None, b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SecretContext(object(), None, b"", None)  # type: ignore[arg-type]


def test_malformed_context_bytes_are_rejected(agg: SecretContext) -> None:
    public = agg.public().to_bytes()
    secret = agg.to_bytes()
    for bad in (b"", public[:-1], public + b"\0", b"XXXX" + public[4:], public[:5] + b"x" * 16):
        with pytest.raises(CryptoError):
            PublicContext.from_bytes(bad)
    for bad in (b"", secret[:-1], secret + b"\0", public, b"FGSK\x01" + public[5:]):
        with pytest.raises(CryptoError):
            SecretContext.from_bytes(bad)
    # A coefficient at its prime's value is out of range.
    q = Preset.AGGREGATION.spec.key_moduli[0]
    tampered = bytearray(public)
    tampered[21:28] = q.to_bytes(7, "little")
    with pytest.raises(CryptoError, match="range"):
        PublicContext.from_bytes(bytes(tampered))
    # Secret key of one pair with the public key of another.
    other = SecretContext.generate(Preset.AGGREGATION).to_bytes()
    sk_len = _packed_poly_bytes(Preset.AGGREGATION.spec.key_moduli, 4096)
    spliced = secret[: 21 + sk_len] + other[21 + sk_len :]
    with pytest.raises(CryptoError, match="do not match") as info:
        SecretContext.from_bytes(spliced)
    assert secret[21:40].hex() not in str(info.value)


# -- encryption round trips ------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 2047, 2049, 4095, 4097, 100_003])
def test_round_trip_odd_lengths(keys: tuple[SecretContext, PublicContext], length: int) -> None:
    secret, public = keys
    rng = np.random.default_rng(length)
    x = rng.uniform(-0.1, 0.1, length).astype(np.float32)
    per = secret.preset.spec.values_per_chunk
    for ctx in (secret, public):  # trainers' seeded encryption and public-key encryption
        enc = ckks.encrypt(ctx, x)
        assert enc.length == length and enc.chunk_count == -(-length // per)
        assert enc.seeded is (ctx is secret) and enc.multiplier == 1
        assert enc.fingerprint == secret.fingerprint and enc.preset is secret.preset
        y = ckks.decrypt(secret, enc)
        assert y.dtype == np.float32 and y.shape == (length,)
        assert np.max(np.abs(y - x)) < ROUND_TRIP_ATOL[secret.preset]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    length=st.integers(1, 9000),
    magnitude=st.sampled_from([1e-3, 1e-1, 1.0, 16.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(agg: SecretContext, length: int, magnitude: float, seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-magnitude, magnitude, length).astype(np.float32)
    y = ckks.decrypt(agg, ckks.encrypt(agg, x))
    assert np.max(np.abs(y - x)) < 5e-5 + 1e-6 * magnitude


def test_encrypt_rejects_bad_vectors(agg: SecretContext) -> None:
    cases: list[tuple[np.ndarray, type[Exception]]] = [
        (np.array([1.0, np.nan], np.float32), ValueError),
        (np.array([np.inf], np.float32), ValueError),
        (np.array([17.0], np.float32), ValueError),  # above value_bound
        (np.zeros((2, 2), np.float32), ValueError),
        (np.zeros(0, np.float32), ValueError),
        (np.arange(4), TypeError),
    ]
    for bad, exc in cases:
        with pytest.raises(exc):
            ckks.encrypt(agg, bad)
    with pytest.raises(TypeError):
        ckks.encrypt(agg, [0.5])  # type: ignore[arg-type]


def test_seeded_upload_differs_each_time_and_tampering_gives_garbage(agg: SecretContext) -> None:
    x = np.full(100, 0.05, np.float32)
    a, b = wire.encode(ckks.encrypt(agg, x)), wire.encode(ckks.encrypt(agg, x))
    seed = slice(57, 89)  # the documented envelope layout (crypto/wire.py)
    assert a[seed] != b[seed] and a[89:] != b[89:]
    assert np.max(np.abs(ckks.decrypt(agg, wire.decode(a, agg, expected_length=100, max_bytes=len(a))) - x)) < 1e-3
    tampered = bytearray(a)
    tampered[60] ^= 0x01  # another seed expands to another c1: decryption gives garbage, no crash
    back = wire.decode(bytes(tampered), agg, expected_length=100, max_bytes=len(a))
    assert np.max(np.abs(ckks.decrypt(agg, back) - x)) > 1.0


# -- linear operations -----------------------------------------------------------------


@pytest.mark.parametrize("preset", list(Preset), ids=lambda p: p.id)
def test_encrypted_fedavg_of_100_updates_matches_plaintext(preset: Preset) -> None:
    """FedAvg = sum(w_i x_i) / sum(w_i), weights = sample counts, divided after decryption."""
    secret = SecretContext.generate(preset)
    server = PublicContext.from_bytes(secret.public().to_bytes())
    rng = np.random.default_rng(7)
    length = 5000  # 2-3 chunks
    updates = [_values(rng, length) for _ in range(100)]
    weights = [int(w) for w in rng.integers(50, 1000, size=100)]
    enc = [ckks.encrypt(secret, u) for u in updates]
    total = ckks.weighted_sum(server, enc, weights)
    assert total.multiplier == sum(weights) and not total.seeded
    got = ckks.decrypt(secret, total).astype(np.float64) / sum(weights)
    want = np.average(np.array(updates, np.float64), axis=0, weights=weights)
    err = np.abs(got - want)
    assert err.max() <= 1e-4 * np.abs(want).max()
    assert np.linalg.norm(err) <= 1e-4 * np.linalg.norm(want)
    # Per-element relative error too, for same-sign updates (no cancellation to zero).
    positive = [np.abs(u) for u in updates[:20]]
    total = ckks.weighted_sum(server, [ckks.encrypt(secret, u) for u in positive], weights[:20])
    got = ckks.decrypt(secret, total).astype(np.float64) / sum(weights[:20])
    want = np.average(np.array(positive, np.float64), axis=0, weights=weights[:20])
    assert np.max(np.abs(got - want) / want) <= 1e-4


def _c0_on_the_wire(enc: ckks.EncryptedVector) -> np.ndarray:
    """Every chunk's ``c0`` coefficients, ``(chunks, primes, N)`` as Python ints, read from the
    envelope by the layout crypto/wire.py's docstring publishes (not from the object)."""
    blob = wire.encode(enc)
    spec = enc.preset.spec
    seeded = blob[6] & 1
    (chunks,) = struct.unpack_from("<I", blob, 40)
    widths = [(q.bit_length() + 7) // 8 for q in spec.data_moduli]
    n = spec.poly_degree
    row = n * sum(widths)  # one polynomial: per prime, N little-endian coefficients
    start = wire.HEADER_BYTES + (32 if seeded else 0)
    out = []
    for c in range(chunks):
        pos, primes = start + c * (1 if seeded else 2) * row, []  # c0 first, then c1 if it travels
        for width in widths:
            raw = np.frombuffer(blob, np.uint8, n * width, pos).reshape(n, width).astype(object)
            primes.append(sum(raw[:, k] << (8 * k) for k in range(width)))
            pos += n * width
        out.append(primes)
    return np.array(out, dtype=object)


def test_add_and_weights_are_exact_modular_multiples(agg: SecretContext) -> None:
    rng = np.random.default_rng(3)
    x, y = _values(rng, 9000), _values(rng, 9000)
    ex, ey = ckks.encrypt(agg, x), ckks.encrypt(agg.public(), y)
    s = ckks.add(agg.public(), ex, ey)
    assert np.max(np.abs(ckks.decrypt(agg, s) - (x + y))) < 1e-4
    # Large weights take the float-quotient path of the modular multiply: still exact.
    w = 2**20 + 12345
    big = ckks.weighted_sum(agg, [ex], [w])
    small = ckks.weighted_sum(agg, [ex], [1])
    q = np.array(agg.preset.spec.data_moduli, dtype=object).reshape(-1, 1)
    expect = (_c0_on_the_wire(small) * w) % q
    assert np.array_equal(_c0_on_the_wire(big), expect)
    assert np.max(np.abs(ckks.decrypt(agg, big) / w - x)) < 1e-5
    # Zero weights drop a vector.
    only_y = ckks.weighted_sum(agg, [ex, ey], [0, 3])
    assert np.max(np.abs(ckks.decrypt(agg, only_y) / 3 - y)) < 1e-4


def test_weighted_sum_validates_its_inputs(agg: SecretContext) -> None:
    x = ckks.encrypt(agg, np.ones(10, np.float32))
    short = ckks.encrypt(agg, np.ones(9, np.float32))
    with pytest.raises(ValueError):
        ckks.weighted_sum(agg, [], [])
    with pytest.raises(ValueError):
        ckks.weighted_sum(agg, [x, x], [1])
    with pytest.raises(ValueError):
        ckks.weighted_sum(agg, [x, short], [1, 1])
    with pytest.raises(ValueError):
        ckks.weighted_sum(agg, [x], [0])
    with pytest.raises(ValueError):
        ckks.weighted_sum(agg, [x], [-1])
    with pytest.raises(TypeError):
        ckks.weighted_sum(agg, [x], [0.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ckks.weighted_sum(agg, [x], [True])
    limit = agg.preset.spec.max_multiplier
    with pytest.raises(ValueError, match="exceeds"):
        ckks.weighted_sum(agg, [x, x], [limit, 1])
    half = ckks.weighted_sum(agg, [x], [limit // 2])
    with pytest.raises(ValueError, match="exceeds"):  # multipliers compose
        ckks.weighted_sum(agg, [half], [3])


def test_ciphertexts_of_other_keys_or_presets_never_mix(agg: SecretContext) -> None:
    other = SecretContext.generate(Preset.AGGREGATION)
    screening = SecretContext.generate(Preset.SCREENING)
    x = np.ones(10, np.float32)
    mine, theirs = ckks.encrypt(agg, x), ckks.encrypt(other, x)
    with pytest.raises(KeyMismatch):
        ckks.decrypt(other, mine)
    with pytest.raises(KeyMismatch):
        ckks.add(agg, mine, theirs)
    with pytest.raises(KeyMismatch):
        ckks.decrypt(agg, ckks.encrypt(screening, x))
    assert "fingerprint" in repr(mine) and "redacted" not in repr(mine)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_processes_do_not_share_seal_scratch_files(agg: SecretContext) -> None:
    x = np.random.default_rng(9).uniform(-0.1, 0.1, 20_000).astype(np.float32)
    enc = ckks.encrypt(agg, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
        pid = os.fork()
    if pid == 0:  # child: decrypt concurrently with the parent, never return into pytest
        code = 1
        try:
            ok = all(np.max(np.abs(ckks.decrypt(agg, enc) - x)) < 1e-4 for _ in range(10))
            code = 0 if ok else 1
        finally:
            os._exit(code)
    ok = all(np.max(np.abs(ckks.decrypt(agg, enc) - x)) < 1e-4 for _ in range(10))
    _, status = os.waitpid(pid, 0)
    assert ok and status == 0


def test_bulk_reads_out_of_seal_equal_the_one_by_one_reads(
        agg: SecretContext, monkeypatch: pytest.MonkeyPatch) -> None:
    # Coefficients leave SEAL through its own (zstd) save, decompressed by the zstd inside
    # SEAL's module; without that symbol they are read one at a time. Both must agree, for
    # key material, encodings and SEAL's inverse NTT (the screening's projections).
    from crypto import stats

    values = np.random.default_rng(4).uniform(-1, 1, 3 * agg.preset.spec.values_per_chunk)
    upload = ckks.encrypt(agg, values[:9000].astype(np.float32))
    challenge = stats.new_challenge(1, [upload], 40)

    def everything() -> tuple[bytes, np.ndarray, list[list[int]], list[list[int]]]:
        again = SecretContext.from_bytes(agg.to_bytes())  # reads nothing out; checks the keys
        fresh = SecretContext.generate(Preset.SCREENING)  # reads both keys out of SEAL
        assert PublicContext.from_bytes(fresh.public().to_bytes()) == fresh.public()
        assert np.max(np.abs(ckks.decrypt(fresh, ckks.encrypt(fresh, values[:50].astype(
            np.float32))) - values[:50])) < ROUND_TRIP_ATOL[Preset.SCREENING]
        return (again.to_bytes(), ckks.encode_coefficients(agg.preset, values),
                stats.server_projections(agg.public(), [upload], challenge),
                stats.holder_projections(again, challenge))

    assert _seal._zstd() is not None  # this build exports it: the bulk path is the one in use
    bulk = everything()
    monkeypatch.setattr(_seal, "_zstd", lambda: None)
    one_by_one = everything()
    assert bulk[0] == one_by_one[0] and np.array_equal(bulk[1], one_by_one[1])
    assert bulk[2] == one_by_one[2] and bulk[3] == one_by_one[3]
    # and SEAL's inverse NTT is the numpy reference transform
    q = agg.preset.spec.data_moduli[0]
    coeffs = ckks.encode_coefficients(agg.preset, values)
    assert np.array_equal(
        _seal.ntt_inverse(_seal.ntt_forward(np.mod(coeffs, q).astype(np.uint64), q), q),
        np.mod(coeffs, q).astype(np.uint64))
