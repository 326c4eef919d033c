"""CKKS recipes: parameter presets, key contexts and encrypted vectors.

Who holds what
--------------
* **Trainers** hold a :class:`SecretContext` (every trainer of a federation shares the
  same CKKS secret key; TenSEAL has no threshold decryption). They encrypt their
  updates -- as *seeded* ciphertexts, half the size -- and decrypt aggregates.
* **The server** holds only a :class:`PublicContext`. It can encrypt, add and weight
  ciphertexts, and project them for :mod:`crypto.stats`; it has no way to
  decrypt: a public context is a different type with no ``decrypt`` and no secret key
  inside (not a flag).

Invariants
----------
* Values are flat float vectors; an :class:`EncryptedVector` of any length is split
  into ``ceil(length / values_per_chunk)`` ciphertexts ("chunks"), zero-padded.
* Linear operations (:func:`add`, :func:`weighted_sum`) use integer weights applied as
  exact modular multiples of the coefficients: they cost no multiplicative level and no
  precision (the error of a weighted sum is the weighted sum of the errors). Division by
  the total weight happens in plaintext after decryption.
* Every ciphertext records its ``multiplier``: the plaintext magnitude is at most
  ``multiplier * preset.value_bound``. Operations refuse to exceed
  ``preset.max_multiplier``, so honest aggregates can never silently wrap the modulus.
  (For a peer's ciphertext the bound is only a claim; an oversized update is what the
  norm filters of :mod:`crypto.stats` are for.)
* Ciphertexts of different keys or presets never mix: :class:`KeyMismatch`.

Nothing in this module logs, and no exception or ``repr`` contains key material.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

import numpy as np
import numpy.typing as npt

from crypto import _seal
from federation.errors import CryptoError, KeyMismatch

__all__ = [
    "Context",
    "EncryptedVector",
    "Packing",
    "Preset",
    "PresetSpec",
    "PublicContext",
    "SecretContext",
    "add",
    "add_coefficients",
    "decrypt",
    "encode_coefficients",
    "encrypt",
    "weighted_sum",
]

U64Array = npt.NDArray[np.uint64]

_PRESET_ID_BYTES: Final = 16
_FINGERPRINT_BYTES: Final = 8
_PUBLIC_MAGIC: Final = b"FGPK"
_SECRET_MAGIC: Final = b"FGSK"
_CONTEXT_VERSION: Final = 1
_FINGERPRINT_DOMAIN: Final = b"fedguard.ckks.public-key.v1\x00"
_MAX_WEIGHT: Final = 2**31 - 1
_BLOCK_CHUNKS: Final = 128  # chunks processed at a time (bounds temporary memory)


class Packing(enum.Enum):
    """How a chunk's values map to CKKS slots."""

    REAL = "real"
    """One value per slot (``N/2`` values per chunk); needed for slot-wise products."""
    COMPLEX = "complex"
    """Two values per slot, as real and imaginary part (``N`` values per chunk); halves
    size and time, valid for linear operations only."""


@dataclass(frozen=True)
class PresetSpec:
    """The full, fixed description of a CKKS parameter set.

    Attributes
    ----------
    id:
        Short stable string, shipped in every envelope. Changing any field below means
        a new id.
    poly_degree:
        Ring degree ``N``.
    data_moduli:
        The RNS primes of the ciphertext modulus (they travel, bit-packed).
    special_modulus:
        SEAL's key-level prime (never travels; reduces public-key encryption noise).
    scale_bits:
        ``log2`` of the CKKS scale Delta.
    packing:
        :class:`Packing` of values into slots.
    ct_products:
        How many ciphertext x ciphertext products a ciphertext supports (lazily: no
        relinearisation, no rescale).
    value_bound:
        Largest ``|x|`` accepted by :func:`encrypt` (absolute units of the values).
    max_multiplier:
        Largest total integer weight one ciphertext may carry; with ``value_bound`` it
        keeps ``|plaintext| * Delta`` at most a quarter of the modulus.
    """

    id: str
    poly_degree: int
    data_moduli: tuple[int, ...]
    special_modulus: int
    scale_bits: int
    packing: Packing
    ct_products: int
    value_bound: float
    max_multiplier: int

    @property
    def key_moduli(self) -> tuple[int, ...]:
        return (*self.data_moduli, self.special_modulus)

    @property
    def scale(self) -> float:
        """The CKKS scale Delta (a power of two)."""
        return float(2**self.scale_bits)

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def values_per_chunk(self) -> int:
        """Plain values carried by one ciphertext."""
        return self.poly_degree if self.packing is Packing.COMPLEX else self.slots

    @property
    def coefficient_bytes(self) -> tuple[int, ...]:
        """Bytes per coefficient for each data prime (exact byte packing)."""
        return tuple((q.bit_length() + 7) // 8 for q in self.data_moduli)


class Preset(enum.Enum):
    """The CKKS parameter sets fedguard supports (no free-form knobs).

    Measured on this project's 2-core reference machine (``simulations.bench_crypto``); fresh
    symmetric encryption noise is a per-value absolute error.
    """

    AGGREGATION = PresetSpec(
        id="agg-4096-v1",
        poly_degree=4096,
        data_moduli=(72057594037641217,),  # 56 bits
        special_modulus=9007199254429697,  # 53 bits; 56 + 53 = 109 = 128-bit security cap
        scale_bits=28,
        packing=Packing.COMPLEX,
        ct_products=0,
        value_bound=16.0,
        max_multiplier=2**21,
    )
    """Secure aggregation only (complex packing: 4096 values per ciphertext).

    Seeded upload 7.0 B/value (1.75x float32), aggregate 14.0 B/value (3.5x). Noise std
    per value 5.5e-7 (trainer's symmetric encryption) / 2.6e-6 (public key). Weights may
    total 2^21 with ``|x| <= 16``. One core: encrypt ~2.8 M values/s, decrypt ~11 M/s,
    weighted sum ~60-80 M values/s."""

    SCREENING = PresetSpec(
        id="scr-4096-v1",
        poly_degree=4096,
        data_moduli=(72057594037641217, 4294828033),  # 56 + 32 bits = 88-bit modulus
        special_modulus=2056193,  # 21 bits; total 109
        scale_bits=26,
        packing=Packing.REAL,
        ct_products=1,
        value_bound=16.0,
        max_multiplier=2**31 - 1,
    )
    """Aggregation plus one lazy ciphertext product, for the encrypted poisoning filters
    (real packing: 2048 values per ciphertext). Products land at scale 2^52 under the
    88-bit modulus, leaving 2^35 of headroom for the slot sums and their 2^20 mask.

    Seeded upload 22.0 B/value (5.5x float32), aggregate 44.0 B/value (11x). Noise std
    per value 2.2e-6 (symmetric) / 1.0e-5 (public key). One core: encrypt ~0.85 M
    values/s, decrypt ~4.5 M/s, weighted sum ~18 M values/s; all 65 statistics of
    10 clients x 1M values in ~5.5 s."""

    @property
    def spec(self) -> PresetSpec:
        value: PresetSpec = self.value
        return value

    @property
    def id(self) -> str:
        return self.spec.id

    @classmethod
    def from_id(cls, preset_id: str) -> Preset:
        """Look a preset up by its stable id; ``ValueError`` if unknown."""
        for preset in cls:
            if preset.spec.id == preset_id:
                return preset
        raise ValueError(f"unknown CKKS preset id {preset_id!r}")


def _ring(preset: Preset) -> _seal.Ring:
    spec = preset.spec
    return _seal.ring(spec.poly_degree, spec.key_moduli)


def _preset_id_field(preset: Preset) -> bytes:
    return preset.id.encode("ascii").ljust(_PRESET_ID_BYTES, b"\0")


def _preset_from_field(field: bytes) -> Preset | None:
    """Parse a fixed-width preset id field; None if malformed or unknown."""
    text = field.rstrip(b"\0")
    if not text or b"\0" in text or not all(0x21 <= ch <= 0x7E for ch in text):
        return None
    try:
        return Preset.from_id(text.decode("ascii"))
    except ValueError:
        return None


# -- exact byte packing of RNS coefficients --------------------------------------------


def _packed_size(moduli: Sequence[int], degree: int) -> int:
    """Bytes of one packed polynomial (all primes)."""
    return degree * sum((q.bit_length() + 7) // 8 for q in moduli)


def _pack_rns(arr: U64Array, moduli: Sequence[int]) -> bytes:
    """Pack ``(..., primes, N)`` coefficients, each prime at ``ceil(bits/8)`` bytes, LE."""
    degree = arr.shape[-1]
    flat = np.ascontiguousarray(arr, dtype="<u8").reshape(-1, len(moduli), degree)
    parts = []
    for j, q in enumerate(moduli):
        width = (q.bit_length() + 7) // 8
        as_bytes = flat[:, j, :].view(np.uint8).reshape(len(flat), degree, 8)
        parts.append(as_bytes[:, :, :width].reshape(len(flat), degree * width))
    return np.concatenate(parts, axis=1).tobytes()


def _unpack_rns(buf: bytes | memoryview, rows: int, moduli: Sequence[int], degree: int) -> U64Array:
    """Inverse of :func:`_pack_rns` for ``rows`` polynomials; raises on out-of-range.

    ``buf`` must be exactly ``rows * _packed_size(moduli, degree)`` bytes (the caller
    checked); every coefficient is compared with its prime before anything uses it.

    Raises
    ------
    ValueError
        ``"coefficient-out-of-range"`` if any coefficient is ``>=`` its prime.
    """
    row_bytes = _packed_size(moduli, degree)
    raw = np.frombuffer(buf, dtype=np.uint8).reshape(rows, row_bytes)
    out = np.empty((rows, len(moduli), degree), dtype=np.uint64)
    offset = 0
    for j, q in enumerate(moduli):
        width = (q.bit_length() + 7) // 8
        padded = np.zeros((rows, degree, 8), dtype=np.uint8)
        padded[:, :, :width] = raw[:, offset : offset + degree * width].reshape(rows, degree, width)
        values = padded.view("<u8").reshape(rows, degree)
        if values.size and int(values.max()) >= q:
            raise ValueError("coefficient-out-of-range")
        out[:, j, :] = values
        offset += degree * width
    return out


# -- contexts --------------------------------------------------------------------------

_PRIVATE: Final = object()


def _fingerprint(preset: Preset, pk_packed: bytes) -> str:
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN + _preset_id_field(preset) + pk_packed)
    return digest.hexdigest()[: 2 * _FINGERPRINT_BYTES]


def _malformed(what: str, reason: str) -> NoReturn:
    raise CryptoError(f"malformed {what}: {reason}")


class PublicContext:
    """What the server holds: the public key of one preset. It encrypts and adds.

    It has no ``decrypt`` and contains no secret key -- neither in memory nor in
    :meth:`to_bytes`. Obtain one with :meth:`SecretContext.public` or
    :meth:`from_bytes`. Picklable (through :meth:`to_bytes`).
    """

    __slots__ = ("_fingerprint", "_keys", "_pk_packed", "_preset")

    def __init__(
        self, token: object, preset: Preset, keys: _seal.PublicKeys, pk_packed: bytes
    ) -> None:
        if token is not _PRIVATE:
            raise TypeError("use PublicContext.from_bytes() or SecretContext.public()")
        self._preset = preset
        self._keys = keys
        self._pk_packed = pk_packed
        self._fingerprint = _fingerprint(preset, pk_packed)

    @property
    def preset(self) -> Preset:
        return self._preset

    @property
    def fingerprint(self) -> str:
        """16 hex characters identifying the public key (same as its secret context's)."""
        return self._fingerprint

    def to_bytes(self) -> bytes:
        """``b"FGPK"``, format version, preset id, then the bit-packed public key."""
        return (
            _PUBLIC_MAGIC
            + bytes([_CONTEXT_VERSION])
            + _preset_id_field(self._preset)
            + self._pk_packed
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        """Parse and validate (in Python, before SEAL sees anything) a public context.

        Raises
        ------
        CryptoError
            If the bytes are not exactly a public context of a known preset.
        """
        head = len(_PUBLIC_MAGIC) + 1 + _PRESET_ID_BYTES
        data = bytes(data)
        if len(data) < head:
            _malformed("public context", "truncated")
        if data[:4] != _PUBLIC_MAGIC or data[4] != _CONTEXT_VERSION:
            _malformed("public context", "bad magic or version")
        preset = _preset_from_field(data[5:head])
        if preset is None:
            _malformed("public context", "unknown preset")
        spec = preset.spec
        pk_len = 2 * _packed_size(spec.key_moduli, spec.poly_degree)
        if len(data) != head + pk_len:
            _malformed("public context", "wrong length")
        pk_packed = data[head:]
        try:
            pk = _unpack_rns(pk_packed, 2, spec.key_moduli, spec.poly_degree)
        except ValueError:
            _malformed("public context", "coefficient out of range")
        keys = _seal.PublicKeys.from_array(_ring(preset), pk)
        return cls(_PRIVATE, preset, keys, pk_packed)

    def encrypt(self, vec: np.ndarray) -> EncryptedVector:
        """Public-key encryption; same as :func:`encrypt` with this context."""
        return encrypt(self, vec)

    def __repr__(self) -> str:
        return f"PublicContext(preset={self._preset.id!r}, fingerprint={self._fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicContext):
            return NotImplemented
        return self._preset is other._preset and self._pk_packed == other._pk_packed

    def __hash__(self) -> int:
        return hash((self._preset, self._fingerprint))

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        return (PublicContext.from_bytes, (self.to_bytes(),))


class SecretContext:
    """What trainers hold: the CKKS secret key (plus its public key) of one preset.

    :meth:`to_bytes` returns **secret** bytes: store them only encrypted (see
    ``crypto.keys``), never log them. ``repr`` shows the preset and fingerprint only, and
    pickling is refused so that the key cannot leave by accident.
    """

    __slots__ = ("_keys", "_public", "_sk_packed")

    def __init__(
        self, token: object, keys: _seal.SecretKeys, sk_packed: bytes, public: PublicContext
    ) -> None:
        if token is not _PRIVATE:
            raise TypeError("use SecretContext.generate() or SecretContext.from_bytes()")
        self._keys = keys
        self._sk_packed = sk_packed
        self._public = public

    @classmethod
    def generate(cls, preset: Preset) -> SecretContext:
        """Generate a fresh key pair for ``preset`` (SEAL's CSPRNG)."""
        spec = preset.spec
        keys = _seal.SecretKeys.generate(_ring(preset))
        sk_packed = _pack_rns(keys.to_array(), spec.key_moduli)
        pk_packed = _pack_rns(keys.public.to_array(), spec.key_moduli)
        public = PublicContext(_PRIVATE, preset, keys.public, pk_packed)
        return cls(_PRIVATE, keys, sk_packed, public)

    @property
    def preset(self) -> Preset:
        return self._public.preset

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the public key; equals ``self.public().fingerprint``."""
        return self._public.fingerprint

    def public(self) -> PublicContext:
        """The matching public context (safe to hand to the server)."""
        return self._public

    def to_bytes(self) -> bytes:
        """**Secret.** ``b"FGSK"``, version, preset id, packed secret key, packed public key."""
        return (
            _SECRET_MAGIC
            + bytes([_CONTEXT_VERSION])
            + _preset_id_field(self.preset)
            + self._sk_packed
            + self._public._pk_packed
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretContext:
        """Load secret context bytes produced by :meth:`to_bytes`.

        Raises
        ------
        CryptoError
            With no detail beyond a generic reason, if the bytes are malformed or the
            secret and public keys do not belong together.
        """
        head = len(_SECRET_MAGIC) + 1 + _PRESET_ID_BYTES
        data = bytes(data)
        if len(data) < head or data[:4] != _SECRET_MAGIC or data[4] != _CONTEXT_VERSION:
            _malformed("secret context", "bad header")
        preset = _preset_from_field(data[5:head])
        if preset is None:
            _malformed("secret context", "unknown preset")
        spec = preset.spec
        poly_len = _packed_size(spec.key_moduli, spec.poly_degree)
        if len(data) != head + 3 * poly_len:
            _malformed("secret context", "wrong length")
        sk_packed = data[head : head + poly_len]
        pk_packed = data[head + poly_len :]
        try:
            sk = _unpack_rns(sk_packed, 1, spec.key_moduli, spec.poly_degree)[0]
            pk = _unpack_rns(pk_packed, 2, spec.key_moduli, spec.poly_degree)
        except ValueError:
            _malformed("secret context", "coefficient out of range")
        keys = _seal.SecretKeys.from_arrays(_ring(preset), sk, pk)
        if not keys.matches_public_key():
            _malformed("secret context", "keys do not match")
        public = PublicContext(_PRIVATE, preset, keys.public, pk_packed)
        return cls(_PRIVATE, keys, sk_packed, public)

    def encrypt(self, vec: np.ndarray) -> EncryptedVector:
        """Seeded symmetric encryption; same as :func:`encrypt` with this context."""
        return encrypt(self, vec)

    def decrypt(self, enc: EncryptedVector) -> npt.NDArray[np.float32]:
        """Decrypt; same as :func:`decrypt`. Only a secret context has this method."""
        return decrypt(self, enc)

    def __repr__(self) -> str:
        return (
            f"SecretContext(preset={self.preset.id!r}, fingerprint={self.fingerprint!r}, "
            "secret=<redacted>)"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretContext is not picklable; use to_bytes() and store it encrypted")


Context = PublicContext | SecretContext
"""Either context: whatever can encrypt, add and check key membership."""


def _public_of(ctx: Context) -> PublicContext:
    if isinstance(ctx, SecretContext):
        return ctx.public()
    if isinstance(ctx, PublicContext):
        return ctx
    raise TypeError(f"expected a PublicContext or SecretContext, got {type(ctx).__name__}")


# -- ciphertext types ------------------------------------------------------------------


def _readonly(arr: U64Array) -> U64Array:
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class EncryptedVector:
    """A flat float vector of any length, encrypted as a list of CKKS ciphertexts.

    Build one with :func:`encrypt`, :func:`weighted_sum` or ``crypto.wire.decode``.

    Attributes
    ----------
    preset:
        Parameter set of every chunk.
    fingerprint:
        Public-key fingerprint of the key it was made under.
    length:
        Number of plain values (the last chunk is zero-padded).
    multiplier:
        Total integer weight carried (1 for a fresh encryption); the plaintext
        magnitude is at most ``multiplier * preset.spec.value_bound``.
    """

    preset: Preset
    fingerprint: str
    length: int
    multiplier: int
    _c0: U64Array
    _c1: U64Array | None
    _seed: bytes | None

    def __post_init__(self) -> None:
        spec = self.preset.spec
        chunks = -(-self.length // spec.values_per_chunk)
        shape = (chunks, len(spec.data_moduli), spec.poly_degree)
        if self.length < 1 or self._c0.shape != shape or self._c0.dtype != np.uint64:
            raise ValueError("inconsistent EncryptedVector")
        if (self._c1 is None) == (self._seed is None):
            raise ValueError("an EncryptedVector has either c1 or a seed")
        if self._c1 is not None and (self._c1.shape != shape or self._c1.dtype != np.uint64):
            raise ValueError("inconsistent EncryptedVector")
        if self._seed is not None and len(self._seed) != _seal.SEED_BYTES:
            raise ValueError("inconsistent EncryptedVector")
        if not 1 <= self.multiplier <= spec.max_multiplier:
            raise ValueError("multiplier out of range")
        _readonly(self._c0)
        if self._c1 is not None:
            _readonly(self._c1)

    @property
    def chunk_count(self) -> int:
        return int(self._c0.shape[0])

    @property
    def seeded(self) -> bool:
        """True when only ``c0`` and a 32-byte seed are stored (trainer uploads)."""
        return self._seed is not None

    def _c1_block(self, start: int, stop: int) -> U64Array:
        """The second polynomials of chunks ``start..stop-1`` (expanded if seeded)."""
        if self._c1 is not None:
            return self._c1[start:stop]
        assert self._seed is not None  # invariant of __post_init__
        spec = self.preset.spec
        return _seal.expand_uniform(self._seed, spec.data_moduli, spec.poly_degree, start, stop)

    def __repr__(self) -> str:
        return (
            f"EncryptedVector(length={self.length}, preset={self.preset.id!r}, "
            f"fingerprint={self.fingerprint!r}, chunks={self.chunk_count}, "
            f"seeded={self.seeded}, multiplier={self.multiplier})"
        )


# -- operations ------------------------------------------------------------------------


def _check_values(vec: np.ndarray, spec: PresetSpec) -> npt.NDArray[np.float64]:
    if not isinstance(vec, np.ndarray):
        raise TypeError("expected a numpy array")
    if vec.ndim != 1 or vec.size < 1:
        raise ValueError("expected a non-empty 1-D vector")
    if not np.issubdtype(vec.dtype, np.floating):
        raise TypeError(f"expected a floating-point vector, got {vec.dtype}")
    values = vec.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("vector contains NaN or infinity")
    if float(np.max(np.abs(values))) > spec.value_bound:
        raise ValueError(f"|value| exceeds the preset bound {spec.value_bound}")
    return values


def _slot_rows(
    values: npt.NDArray[np.float64], spec: PresetSpec, start: int, stop: int
) -> npt.NDArray[np.float64] | npt.NDArray[np.complex128]:
    """Chunk rows ``start..stop-1`` as slot values (zero-padded, complex if packed)."""
    per = spec.values_per_chunk
    rows = np.zeros((stop - start, per), dtype=np.float64)
    part = values[start * per : stop * per]
    rows.reshape(-1)[: part.size] = part
    if spec.packing is Packing.COMPLEX:
        return rows[:, : spec.slots] + 1j * rows[:, spec.slots :]
    return rows


def encrypt(ctx: Context, vec: np.ndarray) -> EncryptedVector:
    """Encrypt a flat float vector.

    With a :class:`SecretContext` (trainers) the result is *seeded*: symmetric
    encryption whose second polynomials expand from a fresh public 32-byte seed, so only
    ``c0`` travels. With a :class:`PublicContext` it is an ordinary public-key encryption.

    Parameters
    ----------
    ctx:
        Either context; decides the mode as above.
    vec:
        1-D floating array (float32 in fedguard), finite, ``|x| <= preset.value_bound``.

    Returns
    -------
    EncryptedVector
        ``multiplier == 1``.
    """
    public = _public_of(ctx)
    preset = public.preset
    spec = preset.spec
    values = _check_values(vec, spec)
    chunks = -(-values.size // spec.values_per_chunk)
    c0 = np.empty((chunks, len(spec.data_moduli), spec.poly_degree), dtype=np.uint64)
    if isinstance(ctx, SecretContext):
        seed = os.urandom(_seal.SEED_BYTES)
        for start in range(0, chunks, _BLOCK_CHUNKS):
            stop = min(chunks, start + _BLOCK_CHUNKS)
            a = _seal.expand_uniform(seed, spec.data_moduli, spec.poly_degree, start, stop)
            rows = _slot_rows(values, spec, start, stop)
            c0[start:stop] = ctx._keys.encrypt_seeded(rows, a, spec.scale)
        return EncryptedVector(preset, public.fingerprint, int(values.size), 1, c0, None, seed)
    c1 = np.empty_like(c0)
    for start in range(0, chunks, _BLOCK_CHUNKS):
        stop = min(chunks, start + _BLOCK_CHUNKS)
        polys = public._keys.encrypt(_slot_rows(values, spec, start, stop), spec.scale)
        c0[start:stop] = polys[:, 0]
        c1[start:stop] = polys[:, 1]
    return EncryptedVector(preset, public.fingerprint, int(values.size), 1, c0, c1, None)


def _check_same_key(public: PublicContext, preset: Preset, fingerprint: str) -> None:
    if preset is not public.preset:
        raise KeyMismatch(f"ciphertext preset {preset.id!r} != context {public.preset.id!r}")
    if fingerprint != public.fingerprint:
        raise KeyMismatch("ciphertext was made under another key")


def decrypt(ctx: SecretContext, enc: EncryptedVector) -> npt.NDArray[np.float32]:
    """Decrypt an :class:`EncryptedVector` (trainers only: needs the secret context).

    Returns
    -------
    numpy.ndarray
        float32 of length ``enc.length``. For a weighted sum this is the *weighted sum*;
        divide by the (plaintext) total weight yourself.

    Raises
    ------
    TypeError
        If ``ctx`` is not a :class:`SecretContext` (a public context cannot decrypt).
    KeyMismatch
        If ``enc`` belongs to another key or preset.
    """
    if not isinstance(ctx, SecretContext):
        raise TypeError("decryption needs a SecretContext")
    if not isinstance(enc, EncryptedVector):
        raise TypeError("expected an EncryptedVector")
    _check_same_key(ctx.public(), enc.preset, enc.fingerprint)
    spec = enc.preset.spec
    out = np.empty(enc.chunk_count * spec.values_per_chunk, dtype=np.float64)
    complex_slots = spec.packing is Packing.COMPLEX
    per = spec.values_per_chunk
    for start in range(0, enc.chunk_count, _BLOCK_CHUNKS):
        stop = min(enc.chunk_count, start + _BLOCK_CHUNKS)
        rows = ctx._keys.decrypt(
            enc._c0[start:stop],
            enc._c1_block(start, stop),
            spec.scale,
            complex_slots=complex_slots,
        )
        if complex_slots:
            block = np.concatenate([rows.real, rows.imag], axis=1)
        else:
            block = rows.real
        out[start * per : stop * per] = block.reshape(-1)
    return out[: enc.length].astype(np.float32)


def _mulmod(a: U64Array, w: int, q: int) -> U64Array:
    """``a * w mod q`` for ``a < q < 2^57`` and ``0 <= w < 2^31``, elementwise, exact."""
    if w == 1:
        return a.copy()
    qq = np.uint64(q)
    if q.bit_length() + w.bit_length() <= 64:
        return (a * np.uint64(w)) % qq
    # Quotient estimate in float64: a*w < 2^88 so its relative error (2^-52) is far
    # below 1/q; the estimate is off by at most one. The remainder is then exact in
    # wrapping 64-bit arithmetic and lands in (-q, 2q), fixed by two conditional steps.
    quot = np.floor(a.astype(np.float64) * (float(w) / float(q))).astype(np.uint64)
    rem = (a * np.uint64(w) - quot * qq).view(np.int64)
    rem = np.where(rem < 0, rem + np.int64(q), rem)
    rem = np.where(rem >= np.int64(q), rem - np.int64(q), rem)
    return rem.astype(np.uint64)


def _addmod_into(acc: U64Array, term: U64Array, moduli: U64Array) -> None:
    """``acc = (acc + term) mod q`` in place; both operands already reduced."""
    np.add(acc, term, out=acc)
    # For reduced operands acc < 2q; acc - q wraps to a huge value exactly when acc < q.
    np.minimum(acc, acc - moduli, out=acc)


def _check_weights(weights: Sequence[int], count: int) -> list[int]:
    if len(weights) != count:
        raise ValueError("need exactly one weight per vector")
    out: list[int] = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | np.integer):
            raise TypeError("weights must be integers (apply fractions after decryption)")
        value = int(w)
        if not 0 <= value <= _MAX_WEIGHT:
            raise ValueError(f"weights must lie in [0, {_MAX_WEIGHT}]")
        out.append(value)
    if sum(out) < 1:
        raise ValueError("at least one weight must be positive")
    return out


def weighted_sum(
    ctx: Context, vectors: Sequence[EncryptedVector], integer_weights: Sequence[int]
) -> EncryptedVector:
    """``sum_i w_i * x_i`` on ciphertexts, exactly (no level, no rescale, no precision loss).

    Done on the coefficient arrays with modular arithmetic; works with the server's
    :class:`PublicContext`. The result is not seeded and has
    ``multiplier = sum_i w_i * x_i.multiplier``.

    Parameters
    ----------
    ctx:
        Context of the key the vectors must belong to.
    vectors:
        At least one vector, all of the same length, preset and key.
    integer_weights:
        One non-negative integer per vector (e.g. sample counts), at least one positive.

    Raises
    ------
    KeyMismatch
        A vector belongs to another key or preset.
    ValueError
        Lengths differ, or the total weight would exceed ``preset.max_multiplier``.
    """
    public = _public_of(ctx)
    vectors = list(vectors)
    if not vectors:
        raise ValueError("need at least one vector")
    for v in vectors:
        if not isinstance(v, EncryptedVector):
            raise TypeError("expected EncryptedVector items")
        _check_same_key(public, v.preset, v.fingerprint)
    length = vectors[0].length
    if any(v.length != length for v in vectors):
        raise ValueError("vectors have different lengths")
    weights = _check_weights(integer_weights, len(vectors))
    spec = public.preset.spec
    multiplier = sum(w * v.multiplier for w, v in zip(weights, vectors, strict=True))
    if multiplier > spec.max_multiplier:
        raise ValueError(
            f"total weight {multiplier} exceeds the preset's {spec.max_multiplier} "
            "(the sum could wrap the modulus)"
        )
    chunks = vectors[0].chunk_count
    shape = (chunks, len(spec.data_moduli), spec.poly_degree)
    acc0 = np.zeros(shape, dtype=np.uint64)
    acc1 = np.zeros(shape, dtype=np.uint64)
    moduli = np.array(spec.data_moduli, dtype=np.uint64).reshape(-1, 1)
    for start in range(0, chunks, _BLOCK_CHUNKS):
        stop = min(chunks, start + _BLOCK_CHUNKS)
        for w, v in zip(weights, vectors, strict=True):
            if w == 0:
                continue
            c0 = v._c0[start:stop]
            c1 = v._c1_block(start, stop)
            for j, q in enumerate(spec.data_moduli):
                _addmod_into(acc0[start:stop, j], _mulmod(c0[:, j], w, q), moduli[j])
                _addmod_into(acc1[start:stop, j], _mulmod(c1[:, j], w, q), moduli[j])
    return EncryptedVector(public.preset, public.fingerprint, length, multiplier, acc0, acc1, None)


def add(ctx: Context, a: EncryptedVector, b: EncryptedVector) -> EncryptedVector:
    """``a + b`` on ciphertexts (same key, preset and length)."""
    return weighted_sum(ctx, [a, b], [1, 1])


# -- plaintext coefficients --------------------------------------------------------------


def encode_coefficients(preset: Preset, values: np.ndarray) -> npt.NDArray[np.int64]:
    """The integer plaintext polynomials that encode ``values`` (one row of ``N`` per chunk).

    ``values`` fills whole chunks (``chunks * values_per_chunk`` entries, padding included);
    the result is ``round(Delta * embedding^-1(values))``, centred, ``(chunks, N)`` int64.
    Any magnitude up to about ``q / (2 Delta)`` is allowed: this is what an attacker can put
    into a plaintext, which is why the screen checks coefficients, not claims.
    """
    spec = preset.spec
    if len(spec.data_moduli) != 1:
        raise ValueError("encode_coefficients supports single-prime presets")
    flat = np.asarray(values, dtype=np.float64).ravel()
    per = spec.values_per_chunk
    if flat.size == 0 or flat.size % per or not np.all(np.isfinite(flat)):
        raise ValueError(f"values must fill whole chunks of {per} finite values")
    q = spec.data_moduli[0]
    r = _ring(preset)
    rows = _slot_rows(flat, spec, 0, flat.size // per)
    out = np.empty((len(rows), spec.poly_degree), dtype=np.int64)
    for c in range(len(rows)):
        row: npt.NDArray[np.float64] | npt.NDArray[np.complex128] = rows[c]
        ntt = r.read_plaintext(r.encode(row, spec.scale))[0]
        coeffs = _seal.ntt_inverse(ntt, q).view(np.int64)
        out[c] = np.where(coeffs > q // 2, coeffs - q, coeffs)
    return out


def add_coefficients(enc: EncryptedVector, coefficients: np.ndarray) -> EncryptedVector:
    """``enc`` with the integer polynomials ``coefficients`` added to its plaintext (mod q).

    Needs no key (``c0 += NTT(coefficients)``) and keeps the seed: anyone holding a
    ciphertext can shift its plaintext by any polynomial. ``coefficients`` is
    ``(chunks, N)`` integers of any sign with ``|c| < 2^62``.
    """
    spec = enc.preset.spec
    if len(spec.data_moduli) != 1:
        raise ValueError("add_coefficients supports single-prime presets")
    coeffs = np.asarray(coefficients)
    shape = (enc.chunk_count, spec.poly_degree)
    if coeffs.shape != shape or not np.issubdtype(coeffs.dtype, np.integer):
        raise ValueError(f"coefficients must be integers shaped {shape}")
    q = spec.data_moduli[0]
    reduced = np.mod(coeffs.astype(np.int64), np.int64(q)).astype(np.uint64)
    delta = _seal.ntt_forward(reduced, q)
    moduli = np.array([q], dtype=np.uint64)
    c0 = np.array(enc._c0, dtype=np.uint64)
    _addmod_into(c0[:, 0], delta, moduli[0])
    return EncryptedVector(enc.preset, enc.fingerprint, enc.length, enc.multiplier, c0,
                           None if enc._c1 is None else np.array(enc._c1), enc._seed)
