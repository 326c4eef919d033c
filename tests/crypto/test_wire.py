"""Wire envelopes: round trips, sizes, and a catalogue of malformed inputs, each rejected
with its reason, before SEAL parses anything, without a crash or a hang."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import ckks, wire
from crypto.ckks import EncryptedVector, Preset, PublicContext, SecretContext
from federation.errors import InvalidCiphertext

LENGTH = 5000  # two AGGREGATION chunks, three SCREENING chunks
BIG = 10**9

# The header layout as crypto/wire.py's docstring publishes it (little-endian, 57 bytes); written
# out here independently, so a change of the wire format fails these tests instead of following.
HEADER = struct.Struct("<4sBBBB16s8sIB3sIQIB")
# Field positions in the header's tuple.
MAGIC, VERSION, KIND, FLAGS, POLYS, PRESET, FINGERPRINT, DEGREE, SCALE = range(9)
RESERVED, CHUNKS, VALUES, MULTIPLIER, RESERVED2 = range(9, 14)


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate(Preset.AGGREGATION)


@pytest.fixture(scope="module")
def server(secret: SecretContext) -> PublicContext:
    return PublicContext.from_bytes(secret.public().to_bytes())


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.1, 0.1, LENGTH).astype(np.float32)


@pytest.fixture(scope="module")
def seeded(secret: SecretContext, x: np.ndarray) -> bytes:
    return wire.encode(ckks.encrypt(secret, x))


@pytest.fixture(scope="module")
def full(server: PublicContext, x: np.ndarray) -> bytes:
    return wire.encode(ckks.encrypt(server, x))


def _fields(blob: bytes) -> list[object]:
    return list(HEADER.unpack_from(blob))


def _with(blob: bytes, **changes: object) -> bytes:
    names = {
        "magic": MAGIC,
        "version": VERSION,
        "kind": KIND,
        "flags": FLAGS,
        "polys": POLYS,
        "preset": PRESET,
        "fingerprint": FINGERPRINT,
        "degree": DEGREE,
        "scale": SCALE,
        "reserved": RESERVED,
        "chunks": CHUNKS,
        "values": VALUES,
        "multiplier": MULTIPLIER,
        "reserved2": RESERVED2,
    }
    fields = _fields(blob)
    for name, value in changes.items():
        fields[names[name]] = value
    return HEADER.pack(*fields) + blob[wire.HEADER_BYTES :]


def _reason(
    blob: bytes | bytearray | memoryview,
    ctx: PublicContext | SecretContext,
    expected_length: int | None = None,
    max_bytes: int = BIG,
) -> str:
    with pytest.raises(InvalidCiphertext) as info:
        wire.decode(blob, ctx, expected_length=expected_length, max_bytes=max_bytes)
    assert info.value.reason in wire.REASONS
    return info.value.reason


# -- round trips and sizes -------------------------------------------------------------


@pytest.mark.parametrize("preset", list(Preset), ids=lambda p: p.id)
def test_round_trip_and_exact_sizes(preset: Preset) -> None:
    sk = SecretContext.generate(preset)
    pk = PublicContext.from_bytes(sk.public().to_bytes())
    v = np.random.default_rng(1).uniform(-0.1, 0.1, 10_001).astype(np.float32)
    for enc in (ckks.encrypt(sk, v), ckks.encrypt(pk, v)):
        blob = wire.encode(enc)
        assert len(blob) == wire.encoded_size(preset, v.size, seeded=enc.seeded)
        back = wire.decode(blob, pk, expected_length=v.size, max_bytes=len(blob))
        assert back.seeded == enc.seeded and back.length == v.size
        assert back.chunk_count == enc.chunk_count and back.multiplier == enc.multiplier
        # the envelope carries every coefficient of c0 and c1 (or c1's seed): the decoded
        # ciphertext re-encodes to the same bytes, and decrypts to the vector
        assert wire.encode(back) == blob
        plain = ckks.decrypt(sk, back)
        assert np.array_equal(plain, ckks.decrypt(sk, enc))
        assert np.max(np.abs(plain - v)) < 2e-4


def test_the_header_is_the_published_layout(seeded: bytes, full: bytes) -> None:
    assert HEADER.size == wire.HEADER_BYTES == 57
    for blob, flags in ((seeded, 1), (full, 0)):
        fields = _fields(blob)
        assert fields[MAGIC] == b"FGCT" and fields[VERSION] == wire.FORMAT_VERSION
        assert (fields[KIND], fields[FLAGS], fields[POLYS]) == (1, flags, 2)
        assert fields[PRESET].rstrip(b"\0").decode() == Preset.AGGREGATION.id
        assert fields[VALUES] == LENGTH and fields[MULTIPLIER] == 1


def test_bytes_per_value_versus_float32() -> None:
    n = 1_000_000
    agg_seeded = wire.encoded_size(Preset.AGGREGATION, n, seeded=True) / n
    agg_full = wire.encoded_size(Preset.AGGREGATION, n, seeded=False) / n
    scr_seeded = wire.encoded_size(Preset.SCREENING, n, seeded=True) / n
    assert agg_seeded < 7.05 and agg_seeded / 4 < 1.8  # trainer upload: 1.75x float32
    assert agg_full < 14.1  # aggregate download: 3.5x
    assert scr_seeded < 22.1  # 5.5x


def test_bytes_like_inputs_are_accepted(secret: SecretContext, seeded: bytes) -> None:
    for blob in (bytearray(seeded), memoryview(seeded)):
        enc = wire.decode(blob, secret, expected_length=LENGTH, max_bytes=BIG)
        assert enc.seeded and enc.length == LENGTH


def test_aggregate_round_trip_keeps_multiplier(
    secret: SecretContext, server: PublicContext, seeded: bytes, x: np.ndarray
) -> None:
    a = wire.decode(seeded, server, expected_length=LENGTH, max_bytes=BIG)
    total = ckks.weighted_sum(server, [a, a], [600, 400])
    back = wire.decode(wire.encode(total), secret, expected_length=LENGTH, max_bytes=BIG)
    assert back.multiplier == 1000
    assert np.max(np.abs(ckks.decrypt(secret, back) / 1000 - x)) < 1e-5


# -- the catalogue of malformed envelopes ----------------------------------------------


def test_truncated_at_many_points(server: PublicContext, seeded: bytes, full: bytes) -> None:
    for blob in (seeded, full):
        cuts = [*range(0, wire.HEADER_BYTES + 40), *range(wire.HEADER_BYTES, len(blob), 997)]
        for cut in cuts:
            assert _reason(blob[:cut], server) == "truncated", cut


def test_random_bytes(server: PublicContext) -> None:
    rng = np.random.default_rng(5)
    for size in (1, 3, 4, 56, 57, 58, 1000, 100_000):
        assert _reason(rng.bytes(size), server) == "bad-magic"


def test_too_large_is_refused_before_parsing(server: PublicContext, seeded: bytes) -> None:
    assert _reason(seeded, server, max_bytes=len(seeded) - 1) == "too-large"
    assert _reason(b"\0" * 1000, server, max_bytes=999) == "too-large"
    with pytest.raises(ValueError):
        wire.decode(seeded, server, expected_length=None, max_bytes=0)


def test_header_fields(server: PublicContext, seeded: bytes, full: bytes) -> None:
    cases = {
        "bad-magic": _with(seeded, magic=b"FGCX"),
        "unsupported-version": _with(seeded, version=2),
        "wrong-kind": _with(seeded, kind=2),
        "bad-header": _with(seeded, flags=0x03),
        "missing-polynomials": _with(seeded, polys=1),
        "extra-polynomials": _with(full, polys=3),
        "unknown-preset": _with(seeded, preset=b"agg-8192-v7".ljust(16, b"\0")),
        "bad-scale": _with(seeded, scale=2),
        "bad-degree": _with(seeded, degree=8192),
        "empty": _with(seeded, values=0, chunks=0),
        "bad-multiplier": _with(seeded, multiplier=0),
    }
    for reason, blob in cases.items():
        assert _reason(blob, server) == reason, reason
    assert _reason(_with(full, polys=255), server) == "extra-polynomials"
    assert _reason(_with(seeded, reserved=b"\0\1\0"), server) == "bad-header"
    assert _reason(_with(seeded, reserved2=7), server) == "bad-header"
    assert _reason(_with(seeded, kind=0), server) == "wrong-kind"
    junks = (b"\xff" * 16, b"agg-4096-v1\0\0\0\0x", b"\0" * 16, b"agg 4096-v1".ljust(16, b"\0"))
    for junk in junks:
        assert _reason(_with(seeded, preset=junk), server) == "unknown-preset"
    limit = Preset.AGGREGATION.spec.max_multiplier
    assert _reason(_with(seeded, multiplier=limit + 1), server) == "bad-multiplier"


def test_other_parameter_set_or_key(secret: SecretContext, x: np.ndarray, seeded: bytes) -> None:
    screening = SecretContext.generate(Preset.SCREENING)
    blob = wire.encode(ckks.encrypt(screening, x))
    assert _reason(blob, secret) == "preset-mismatch"
    assert _reason(seeded, screening) == "preset-mismatch"
    other = SecretContext.generate(Preset.AGGREGATION)
    assert _reason(seeded, other) == "key-mismatch"
    assert _reason(_with(seeded, fingerprint=b"\0" * 8), secret) == "key-mismatch"


def test_counts_inconsistent_with_each_other_or_with_the_size(
    server: PublicContext, seeded: bytes, full: bytes
) -> None:
    assert _reason(seeded, server, expected_length=LENGTH + 1) == "length-mismatch"
    assert _reason(_with(seeded, values=LENGTH - 1), server, expected_length=LENGTH) == (
        "length-mismatch"
    )
    for chunks in (0, 1, 3, 2**32 - 1):
        assert _reason(_with(seeded, chunks=chunks), server) == "count-mismatch"
    # Consistent counts that claim more chunks than the bytes carry.
    assert _reason(_with(seeded, values=3 * 4096, chunks=3), server) == "truncated"
    # ...or fewer.
    assert _reason(_with(full, values=4096, chunks=1), server) == "trailing-bytes"
    # Seeded flag cleared: the bytes are too few for two polynomials per chunk.
    assert _reason(_with(seeded, flags=0), server) == "truncated"
    # Seeded flag set on a full ciphertext: too many bytes.
    assert _reason(_with(full, flags=1), server) == "trailing-bytes"


def test_absurd_lengths_are_rejected_without_allocation(
    server: PublicContext, seeded: bytes
) -> None:
    huge = 2**40
    chunks = huge // 4096
    assert _reason(_with(seeded, values=huge, chunks=chunks), server) == "too-large"
    assert _reason(_with(seeded, values=huge, chunks=chunks), server, expected_length=LENGTH) == (
        "length-mismatch"
    )
    assert _reason(_with(seeded, values=2**64 - 1, chunks=2**32 - 1), server) == "count-mismatch"
    assert _reason(_with(seeded[: wire.HEADER_BYTES], values=huge, chunks=chunks), server) == (
        "too-large"
    )


def test_coefficient_out_of_range(server: PublicContext, seeded: bytes, full: bytes) -> None:
    q = Preset.AGGREGATION.spec.data_moduli[0]
    start = wire.HEADER_BYTES + 32  # after the seed
    for value in (q, q + 1, 2**56 - 1):
        bad = bytearray(seeded)
        bad[start + 7 * 123 : start + 7 * 124] = value.to_bytes(7, "little")
        assert _reason(bytes(bad), server) == "coefficient-out-of-range"
    bad = bytearray(full)
    bad[-7:] = q.to_bytes(7, "little")  # last coefficient of the last c1
    assert _reason(bytes(bad), server) == "coefficient-out-of-range"
    # q - 1 is fine.
    ok = bytearray(seeded)
    ok[start : start + 7] = (q - 1).to_bytes(7, "little")
    wire.decode(bytes(ok), server, expected_length=LENGTH, max_bytes=BIG)


def test_trailing_garbage(server: PublicContext, seeded: bytes, full: bytes) -> None:
    for blob in (seeded, full):
        for extra in (b"\0", b"garbage", bytes(10_000)):
            assert _reason(blob + extra, server) == "trailing-bytes"


def test_transparent_ciphertext(server: PublicContext, full: bytes) -> None:
    poly = 4096 * 7
    bad = bytearray(full)
    first_c1 = wire.HEADER_BYTES + poly  # chunk 0: c0 then c1
    bad[first_c1 : first_c1 + poly] = bytes(poly)
    assert _reason(bytes(bad), server) == "transparent-ciphertext"


def test_tampered_but_well_formed_decrypts_to_garbage_without_crash(
    secret: SecretContext, seeded: bytes, x: np.ndarray
) -> None:
    bad = bytearray(seeded)
    bad[wire.HEADER_BYTES] ^= 0xFF  # flips the seed: another a, same c0
    enc = wire.decode(bytes(bad), secret, expected_length=LENGTH, max_bytes=BIG)
    assert np.max(np.abs(ckks.decrypt(secret, enc) - x)) > 1.0


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutations_are_accepted_or_rejected_with_a_reason(
    server: PublicContext, seeded: bytes, full: bytes, data: st.DataObject
) -> None:
    blob = bytearray(data.draw(st.sampled_from([seeded, full])))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(
            st.one_of(st.integers(0, wire.HEADER_BYTES + 40), st.integers(0, len(blob) - 1))
        )
        blob[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    tail = data.draw(st.binary(max_size=16))
    mutated = bytes(blob[:cut]) + tail
    try:
        enc = wire.decode(mutated, server, expected_length=None, max_bytes=len(full) + 64)
    except InvalidCiphertext as exc:
        assert exc.reason in wire.REASONS
    else:
        assert isinstance(enc, EncryptedVector)
