"""Versioned wire envelopes for ciphertexts, validated byte by byte before use.

TenSEAL's own serialization is never shipped: it trusts fields an attacker controls
(crafted inputs segfault, leak memory or allocate attacker-chosen amounts). An envelope
carries only plain integers and the raw RNS coefficients, exactly byte-packed per prime
(a 56-bit prime takes 7 bytes, 48-bit 6, 32-bit 4); the special prime never travels.
:func:`decode` checks every field and every coefficient in numpy; SEAL later parses only
streams that ``crypto._seal`` writes itself from those validated numbers.

Layout (little-endian), 57-byte header::

    offset size field
     0      4   magic b"FGCT"
     4      1   format version (1)
     5      1   kind: 1 = vector (2, the retired masked statistic, is refused)
     6      1   flags: bit 0 = seeded; other bits 0
     7      1   polynomials per ciphertext (2)
     8     16   preset id, ASCII, NUL-padded
    24      8   key fingerprint (16 hex digits as 8 bytes)
    32      4   ring degree N
    36      1   scale power (1)
    37      3   reserved, zero
    40      4   chunk count (ciphertexts)
    44      8   value count (vector length)
    52      4   multiplier (total integer weight)
    56      1   reserved, zero
    57     32   seed (seeded vectors only)
    ..          payload: per chunk, per travelling polynomial, per prime:
                N coefficients of ceil(bits/8) bytes

A seeded vector ships only ``c0``; ``c1`` is expanded from the seed by the receiver.

Rejections raise :class:`~federation.errors.InvalidCiphertext` whose ``reason`` is one
of the ``REASON_*`` codes below; nothing is allocated in proportion to a claimed size
before the claim is checked against the actual length and ``max_bytes``.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from crypto import _seal
from crypto.ckks import (
    Context,
    EncryptedVector,
    Preset,
    PublicContext,
    _pack_rns,
    _packed_size,
    _preset_from_field,
    _preset_id_field,
    _public_of,
    _unpack_rns,
)
from federation.errors import InvalidCiphertext

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "REASONS",
    "decode",
    "encode",
    "encoded_size",
]

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"FGCT"
_KIND_VECTOR: Final = 1
_FLAG_SEEDED: Final = 0x01
_HEADER = struct.Struct("<4sBBBB16s8sIB3sIQIB")
HEADER_BYTES: Final = _HEADER.size
"""Size of the fixed header (57)."""

REASON_TRUNCATED: Final = "truncated"
REASON_TOO_LARGE: Final = "too-large"
REASON_BAD_MAGIC: Final = "bad-magic"
REASON_UNSUPPORTED_VERSION: Final = "unsupported-version"
REASON_WRONG_KIND: Final = "wrong-kind"
REASON_BAD_HEADER: Final = "bad-header"
REASON_UNKNOWN_PRESET: Final = "unknown-preset"
REASON_PRESET_MISMATCH: Final = "preset-mismatch"
REASON_KEY_MISMATCH: Final = "key-mismatch"
REASON_BAD_DEGREE: Final = "bad-degree"
REASON_EXTRA_POLYNOMIALS: Final = "extra-polynomials"
REASON_MISSING_POLYNOMIALS: Final = "missing-polynomials"
REASON_BAD_SCALE: Final = "bad-scale"
REASON_EMPTY: Final = "empty"
REASON_LENGTH_MISMATCH: Final = "length-mismatch"
REASON_COUNT_MISMATCH: Final = "count-mismatch"
REASON_BAD_MULTIPLIER: Final = "bad-multiplier"
REASON_TRAILING_BYTES: Final = "trailing-bytes"
REASON_COEFFICIENT_OUT_OF_RANGE: Final = "coefficient-out-of-range"
REASON_TRANSPARENT: Final = "transparent-ciphertext"

REASONS: Final = frozenset(
    {
        REASON_TRUNCATED,
        REASON_TOO_LARGE,
        REASON_BAD_MAGIC,
        REASON_UNSUPPORTED_VERSION,
        REASON_WRONG_KIND,
        REASON_BAD_HEADER,
        REASON_UNKNOWN_PRESET,
        REASON_PRESET_MISMATCH,
        REASON_KEY_MISMATCH,
        REASON_BAD_DEGREE,
        REASON_EXTRA_POLYNOMIALS,
        REASON_MISSING_POLYNOMIALS,
        REASON_BAD_SCALE,
        REASON_EMPTY,
        REASON_LENGTH_MISMATCH,
        REASON_COUNT_MISMATCH,
        REASON_BAD_MULTIPLIER,
        REASON_TRAILING_BYTES,
        REASON_COEFFICIENT_OUT_OF_RANGE,
        REASON_TRANSPARENT,
    }
)
"""Every ``InvalidCiphertext.reason`` this module can produce."""


def _poly_bytes(preset: Preset) -> int:
    spec = preset.spec
    return _packed_size(spec.data_moduli, spec.poly_degree)


def encoded_size(preset: Preset, length: int, *, seeded: bool) -> int:
    """Exact envelope size of a vector of ``length`` values.

    Use ``encoded_size(preset, n, seeded=False)`` as ``max_bytes`` when a vector of
    length ``n`` may arrive either way (it is the larger of the two).
    """
    if length < 1:
        raise ValueError("length must be positive")
    chunks = -(-length // preset.spec.values_per_chunk)
    polys = 1 if seeded else 2
    seed = _seal.SEED_BYTES if seeded else 0
    return HEADER_BYTES + seed + chunks * polys * _poly_bytes(preset)


def _header(
    kind: int,
    flags: int,
    polys: int,
    preset: Preset,
    fingerprint: str,
    scale_power: int,
    chunks: int,
    values: int,
    multiplier: int,
) -> bytes:
    return _HEADER.pack(
        _MAGIC,
        FORMAT_VERSION,
        kind,
        flags,
        polys,
        _preset_id_field(preset),
        bytes.fromhex(fingerprint),
        preset.spec.poly_degree,
        scale_power,
        bytes(3),
        chunks,
        values,
        multiplier,
        0,
    )


def encode(enc: EncryptedVector) -> bytes:
    """Serialize an :class:`EncryptedVector` (seeded ones ship ``c0`` and the seed)."""
    if not isinstance(enc, EncryptedVector):
        raise TypeError("expected an EncryptedVector")
    spec = enc.preset.spec
    flags = _FLAG_SEEDED if enc.seeded else 0
    head = _header(
        _KIND_VECTOR,
        flags,
        2,
        enc.preset,
        enc.fingerprint,
        1,
        enc.chunk_count,
        enc.length,
        enc.multiplier,
    )
    if enc._seed is not None:
        payload = _pack_rns(enc._c0, spec.data_moduli)
        return head + enc._seed + payload
    assert enc._c1 is not None
    both = np.stack([enc._c0, enc._c1], axis=1)  # (chunks, 2, primes, N)
    return head + _pack_rns(both, spec.data_moduli)


def _reject(reason: str, detail: str = "") -> InvalidCiphertext:
    return InvalidCiphertext(reason, detail)


class _Header:
    """The parsed, partially validated fixed header."""

    __slots__ = ("chunks", "flags", "multiplier", "polys", "preset", "scale_power", "values")

    def __init__(
        self,
        preset: Preset,
        flags: int,
        polys: int,
        scale_power: int,
        chunks: int,
        values: int,
        multiplier: int,
    ) -> None:
        self.preset = preset
        self.flags = flags
        self.polys = polys
        self.scale_power = scale_power
        self.chunks = chunks
        self.values = values
        self.multiplier = multiplier


def _parse_header(view: memoryview, public: PublicContext, kind: int, max_bytes: int) -> _Header:
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError("max_bytes must be a positive integer")
    if len(view) > max_bytes:
        raise _reject(REASON_TOO_LARGE, f"{len(view)} bytes > limit {max_bytes}")
    if len(view) < HEADER_BYTES:
        if bytes(view[:4]) != _MAGIC[: len(view[:4])]:
            raise _reject(REASON_BAD_MAGIC)
        raise _reject(REASON_TRUNCATED, f"{len(view)} bytes, header needs {HEADER_BYTES}")
    (
        magic,
        version,
        got_kind,
        flags,
        polys,
        preset_field,
        fingerprint,
        degree,
        scale_power,
        reserved,
        chunks,
        values,
        multiplier,
        reserved2,
    ) = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise _reject(REASON_BAD_MAGIC)
    if version != FORMAT_VERSION:
        raise _reject(REASON_UNSUPPORTED_VERSION, f"version {version}")
    if got_kind != kind:
        raise _reject(REASON_WRONG_KIND, f"kind {got_kind}")
    if reserved != bytes(3) or reserved2 != 0:
        raise _reject(REASON_BAD_HEADER, "reserved bytes are not zero")
    if flags & ~_FLAG_SEEDED:
        raise _reject(REASON_BAD_HEADER, f"flags {flags:#04x}")
    preset = _preset_from_field(preset_field)
    if preset is None:
        raise _reject(REASON_UNKNOWN_PRESET)
    if preset is not public.preset:
        raise _reject(REASON_PRESET_MISMATCH, f"{preset.id} != {public.preset.id}")
    if fingerprint.hex() != public.fingerprint:
        raise _reject(REASON_KEY_MISMATCH)
    if degree != preset.spec.poly_degree:
        raise _reject(REASON_BAD_DEGREE, f"N={degree}")
    if polys > 2:
        raise _reject(REASON_EXTRA_POLYNOMIALS, f"{polys} polynomials")
    if polys < 2:
        raise _reject(REASON_MISSING_POLYNOMIALS, f"{polys} polynomials")
    if scale_power != 1:
        raise _reject(REASON_BAD_SCALE, f"scale power {scale_power}")
    return _Header(preset, flags, polys, scale_power, chunks, values, multiplier)


def _check_size(view: memoryview, expected: int, max_bytes: int) -> None:
    if expected > max_bytes:
        raise _reject(REASON_TOO_LARGE, f"claims {expected} bytes > limit {max_bytes}")
    if len(view) < expected:
        raise _reject(REASON_TRUNCATED, f"{len(view)} of {expected} bytes")
    if len(view) > expected:
        raise _reject(REASON_TRAILING_BYTES, f"{len(view) - expected} extra bytes")


def _coefficients(payload: memoryview, rows: int, preset: Preset) -> np.ndarray:
    spec = preset.spec
    try:
        return _unpack_rns(payload, rows, spec.data_moduli, spec.poly_degree)
    except ValueError:
        raise _reject(REASON_COEFFICIENT_OUT_OF_RANGE) from None


def decode(
    data: bytes | bytearray | memoryview,
    ctx: Context,
    *,
    expected_length: int | None,
    max_bytes: int,
) -> EncryptedVector:
    """Validate and parse a vector envelope from a peer.

    Parameters
    ----------
    data:
        The peer's bytes (hostile until this returns).
    ctx:
        Our context; the envelope must name its preset and key fingerprint.
    expected_length:
        The vector length the protocol expects (e.g. the model size), or ``None``.
    max_bytes:
        Hard limit, checked before anything else and against every claimed size
        (see :func:`encoded_size`).

    Raises
    ------
    InvalidCiphertext
        With a ``reason`` from :data:`REASONS`; never any other exception for bad data.
    """
    public = _public_of(ctx)
    view = memoryview(data).cast("B")
    head = _parse_header(view, public, _KIND_VECTOR, max_bytes)
    spec = head.preset.spec
    if head.values == 0:
        raise _reject(REASON_EMPTY)
    if expected_length is not None and head.values != expected_length:
        raise _reject(REASON_LENGTH_MISMATCH, f"{head.values} values, expected {expected_length}")
    if head.chunks != -(-head.values // spec.values_per_chunk):
        raise _reject(REASON_COUNT_MISMATCH, f"{head.chunks} chunks for {head.values} values")
    if not 1 <= head.multiplier <= spec.max_multiplier:
        raise _reject(REASON_BAD_MULTIPLIER, f"multiplier {head.multiplier}")
    seeded = bool(head.flags & _FLAG_SEEDED)
    travelling = 1 if seeded else 2
    seed_bytes = _seal.SEED_BYTES if seeded else 0
    expected = HEADER_BYTES + seed_bytes + head.chunks * travelling * _poly_bytes(head.preset)
    _check_size(view, expected, max_bytes)
    payload = view[HEADER_BYTES + seed_bytes :]
    coeffs = _coefficients(payload, head.chunks * travelling, head.preset)
    shape = (head.chunks, travelling, len(spec.data_moduli), spec.poly_degree)
    coeffs = coeffs.reshape(shape)
    seed: bytes | None = None
    c1: np.ndarray | None = None
    if seeded:
        seed = bytes(view[HEADER_BYTES : HEADER_BYTES + seed_bytes])
    else:
        c1 = np.ascontiguousarray(coeffs[:, 1])
        if not c1.reshape(head.chunks, -1).any(axis=1).all():
            raise _reject(REASON_TRANSPARENT, "a chunk has an all-zero second polynomial")
    return EncryptedVector(head.preset, public.fingerprint, head.values, head.multiplier,
                           np.ascontiguousarray(coeffs[:, 0]), c1, seed)
