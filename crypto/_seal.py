"""Private bridge to Microsoft SEAL through ``tenseal.sealapi``.

This is the only module of the repository that imports :mod:`tenseal`. Nothing it
returns is a TenSEAL object: callers get numpy arrays, Python scalars and the small
handle classes defined here (which keep their SEAL objects private).

How ciphertext data crosses the boundary
----------------------------------------
The exchange format is a numpy ``uint64`` array of RNS coefficients in NTT form, shaped
``(polynomials, primes, N)`` -- exactly SEAL's in-memory layout. It never crosses as
TenSEAL/SEAL serialization:

* **into SEAL**: we write a SEAL-format byte stream *ourselves* from arrays that the
  caller has already validated (header, metadata, uncompressed ``DynArray``) into an
  anonymous in-memory file (``memfd``) and let SEAL load it. SEAL therefore only ever
  parses bytes this module generated; peer bytes are parsed by ``crypto/wire.py``.
* **out of SEAL**: in bulk. ``sealapi`` has no bulk accessor and its ``save`` always
  compresses with zstd, which the Python standard library cannot read; but the zstd that
  SEAL links is exported from the same extension module, so :func:`_zstd` calls its
  ``ZSTD_decompress`` through :mod:`ctypes` and we parse SEAL's (uncompressed) member
  layout, checking every size and the parameter id against what we expect. That costs
  ~50 ns per coefficient instead of ~220-270 ns reading them one by one
  (``DynArray.at``), which stays as the fallback when the symbol is missing or a save
  does not have the expected layout.

Seeded ciphertexts
------------------
Trainers hold the secret key and upload *seeded* ciphertexts: the second polynomial
``a`` is expanded from a public 32-byte seed (:func:`expand_uniform`, AES-256-CTR plus
rejection sampling, done in numpy) and only ``c0`` travels, halving the upload. SEAL has
no API for "symmetric encryption with a caller-chosen ``a``", so it is assembled from
SEAL primitives: ``ct' = Enc_sk(m) = (c0', a')`` (fresh SEAL noise ``e'``) and
``Dec(ct' - (0, a)) = c0' + (a' - a)s = m - e' - a*s = c0``. The pair ``(c0, a)`` is an
ordinary RLWE encryption of ``m`` with fresh noise, exactly what SEAL's own seeded mode
produces, only with a PRG we can run in numpy (so the server can aggregate without SEAL).
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as _sealapi
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from federation.errors import CryptoError

__all__: list[str] = []  # private module: nothing is public API

_S: Any = _sealapi

U64Array = npt.NDArray[np.uint64]
F64Array = npt.NDArray[np.float64]
C128Array = npt.NDArray[np.complex128]

SEED_BYTES: Final = 32
"""Length of the public seed from which a seeded ciphertext's ``a`` polynomials expand."""

_SEAL_MAGIC: Final = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr mode, reserved, size
_CT_META = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt, size, degree, rns count, scale, corr.
_PT_META = struct.Struct("<4QQd")  # parms_id, coeff count, scale
_EXTRA_WORDS: Final = 64  # oversampling per expanded row (rejections are ~1e-5 likely each)
_NTT_BATCH: Final = 16  # polynomials per SEAL transform: SEAL's largest ciphertext size



class _Scratch:
    """An anonymous in-memory file that SEAL can open by path.

    ``sealapi`` loads objects only from file paths. A ``memfd`` has no name in any
    directory and lives in RAM; ``/proc/self/fd/N`` reopens it. Where memfd is not
    available we fall back to a private ``0700`` temporary directory.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()  # a forked child must not share the parent's file
        self._tmpdir: str | None = None
        fd = -1
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("fedguard-seal", os.MFD_CLOEXEC)
            if not os.path.exists(f"/proc/self/fd/{fd}"):
                os.close(fd)
                fd = -1
        if fd >= 0:
            self.path = f"/proc/self/fd/{fd}"
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="fedguard-seal-")
            self.path = os.path.join(self._tmpdir, "scratch")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fd = fd

    def put(self, data: bytes) -> None:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(self._fd, view[offset:], offset)
        os.ftruncate(self._fd, len(view))

    def get(self) -> bytes:
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0)

    def wipe(self) -> None:
        size = os.fstat(self._fd).st_size
        if size:
            os.pwrite(self._fd, bytes(size), 0)
        os.ftruncate(self._fd, 0)

    def __del__(self) -> None:
        try:
            os.close(self._fd)
            if self._tmpdir is not None:
                os.unlink(self.path)
                os.rmdir(self._tmpdir)
        except Exception:  # noqa: BLE001 - best effort, also at interpreter shutdown
            pass


@functools.cache
def _seal_version() -> tuple[int, int]:
    """The (major, minor) version SEAL writes into its headers, read from a real save."""
    parms = _S.EncryptionParameters(_S.SCHEME_TYPE.CKKS)
    scratch = _Scratch()
    parms.save(scratch.path)
    magic, header_size, major, minor, *_ = _HEADER.unpack_from(scratch.get())
    if magic != _SEAL_MAGIC or header_size != _HEADER.size or major != 4:
        raise CryptoError("unsupported SEAL build inside tenseal")
    return int(major), int(minor)


def _seal_header(total_size: int) -> bytes:
    major, minor = _seal_version()
    return _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, 0, 0, total_size)


def _dynarray(data: U64Array) -> bytes:
    body = struct.pack("<Q", data.size) + np.ascontiguousarray(data, dtype="<u8").tobytes()
    return _seal_header(_HEADER.size + len(body)) + body


def _ciphertext_stream(parms_id: Sequence[int], polys: U64Array, scale: float) -> bytes:
    size, rns, degree = polys.shape
    meta = _CT_META.pack(*parms_id, 1, size, degree, rns, scale, 1)
    body = meta + _dynarray(polys)
    return _seal_header(_HEADER.size + len(body)) + body


def _plaintext_stream(parms_id: Sequence[int], coeffs: U64Array, scale: float) -> bytes:
    meta = _PT_META.pack(*parms_id, coeffs.size, scale)
    body = meta + _dynarray(coeffs)
    return _seal_header(_HEADER.size + len(body)) + body


def _read_plain(pt: Any, count: int) -> U64Array:
    """Read ``count`` coefficients out of a SEAL Plaintext one by one (~220 ns each)."""
    return np.fromiter(map(pt.data, range(count)), dtype=np.uint64, count=count)


def _read_cipher(ct: Any, count: int) -> U64Array:
    """Read ``count`` coefficients out of a SEAL Ciphertext one by one (~270 ns each).

    ``dyn_array().at`` is twice as fast as ``Ciphertext.__getitem__``; the DynArray
    aliases ``ct``'s memory, and ``ct`` stays referenced while we read.
    """
    data = ct.dyn_array()
    return np.fromiter(map(data.at, range(count)), dtype=np.uint64, count=count)


_COMPR_NONE: Final = 0
_COMPR_ZSTD: Final = 2
_DYN_HEAD: Final = _HEADER.size + 8  # a DynArray member: its own SEAL header, then its size


@functools.cache
def _zstd() -> Any:
    """``ZSTD_decompress`` of the zstd build inside SEAL's extension module, or None.

    Looked up once; None (so every read takes the one-by-one path) when the module does
    not export it. Only ever called on bytes SEAL itself just wrote.
    """
    import ctypes
    import sys

    try:
        lib = ctypes.CDLL(sys.modules[_S.Plaintext.__module__].__file__)
        fn = lib.ZSTD_decompress
        is_error = lib.ZSTD_isError
    except (AttributeError, KeyError, OSError, TypeError):
        return None
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    is_error.restype = ctypes.c_uint
    is_error.argtypes = [ctypes.c_size_t]

    def decompress(src: bytes, size: int) -> bytearray | None:
        out = bytearray(size)
        buf = (ctypes.c_char * size).from_buffer(out)
        got = fn(ctypes.addressof(buf), size, src, len(src))
        del buf  # release the export before the bytearray may be resized or freed
        if is_error(got) or got != size:
            return None
        return out

    return decompress


def expand_uniform(
    seed: bytes, moduli: Sequence[int], degree: int, start: int, stop: int
) -> U64Array:
    """Expand the ``a`` polynomials of chunks ``start..stop-1`` from a public seed.

    Row ``r = chunk * len(moduli) + prime`` owns the AES-256-CTR(key=seed) counter
    blocks ``[r * W, (r + 1) * W)`` with ``W = (N + 64) / 2`` (N + 64 words of 64
    bits). Words are masked to the prime's bit length and rejection-sampled (keep
    ``< q``, first ``N``); should a row keep fewer than ``N`` (probability < 1e-100 for
    our primes) it continues from its own counter region ``2^127 + r * 2^32``. Each row
    is uniform in ``[0, q)^N``, hence uniform in the NTT domain. The result does not
    depend on how callers split the chunk range.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array shaped ``(stop - start, len(moduli), degree)``.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError("seed must be 32 bytes")
    rns = len(moduli)
    words = degree + _EXTRA_WORDS
    blocks_per_row = words * 8 // 16
    first_row, rows = start * rns, (stop - start) * rns
    ctr = Cipher(algorithms.AES(seed), modes.CTR((first_row * blocks_per_row).to_bytes(16, "big")))
    raw = np.frombuffer(ctr.encryptor().update(bytes(rows * words * 8)), dtype="<u8")
    raw = raw.reshape(stop - start, rns, words)
    out = np.empty((stop - start, rns, degree), dtype=np.uint64)
    for j, q in enumerate(moduli):
        bound = np.uint64(q)
        plane = raw[:, j, :] & np.uint64((1 << int(q).bit_length()) - 1)
        accepted = plane < bound
        clean = accepted[:, :degree].all(axis=1)
        out[clean, j] = plane[clean, :degree]
        for c in np.flatnonzero(~clean):
            kept = plane[c][accepted[c]]
            row = first_row + int(c) * rns + j
            counter = ((1 << 127) | (row << 32)).to_bytes(16, "big")
            stream = Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()
            mask = np.uint64((1 << int(q).bit_length()) - 1)
            while kept.size < degree:
                more = np.frombuffer(stream.update(bytes(8 * words)), dtype="<u8") & mask
                kept = np.concatenate([kept, more[more < bound]])
            out[c, j] = kept[:degree]
    return out


class Ring:
    """One CKKS parameter set inside SEAL: context, encoder, evaluator, scratch file.

    Shared by every key of the same preset; holds no key material.
    """

    def __init__(self, degree: int, moduli: tuple[int, ...]) -> None:
        parms = _S.EncryptionParameters(_S.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(degree)
        parms.set_coeff_modulus([_S.Modulus(q) for q in moduli])
        ctx = _S.SEALContext(parms, True, _S.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise CryptoError("SEAL rejected the parameter set")
        self.degree: Final = degree
        self.key_moduli: Final = tuple(int(m.value()) for m in parms.coeff_modulus())
        self.data_moduli: Final = self.key_moduli[:-1]
        if self.key_moduli != moduli or len(self.data_moduli) < 1:
            raise CryptoError("SEAL changed the parameter set")
        self.slots: Final = degree // 2
        self._ctx = ctx
        self._encoder = _S.CKKSEncoder(ctx)
        self._evaluator = _S.Evaluator(ctx)
        self._data_pid: tuple[int, ...] = tuple(ctx.first_parms_id())
        self._key_pid: tuple[int, ...] = tuple(ctx.key_parms_id())
        self._scratch = _Scratch()

    # -- moving data in and out -------------------------------------------------------

    def _load(self, obj: Any, stream: bytes, *, secret: bool = False) -> None:
        scratch = self._scratch
        if scratch.pid != os.getpid():  # we were forked (e.g. a process pool)
            scratch = self._scratch = _Scratch()
        with scratch.lock:
            scratch.put(stream)
            try:
                obj.load(self._ctx, scratch.path)
            except Exception as exc:  # our own, validated stream: should never happen
                raise CryptoError("SEAL refused an internally generated object") from exc
            finally:
                if secret:
                    scratch.wipe()

    def _saved(self, obj: Any, meta: struct.Struct, pid: tuple[int, ...], count: int,
               *, secret: bool = False) -> U64Array | None:
        """``count`` coefficients of ``obj`` through SEAL's own ``save`` (bulk); None if the
        save does not look exactly as expected (the caller then reads one by one).

        The save is SEAL's header, then (zstd-compressed or not) ``meta`` -- whose first
        four words are the parameter id -- and a DynArray of ``count`` words.
        """
        decompress = _zstd()
        scratch = self._scratch
        if scratch.pid != os.getpid():
            scratch = self._scratch = _Scratch()
        with scratch.lock:
            try:
                obj.save(scratch.path)
                raw = scratch.get()
            finally:
                if secret:
                    scratch.wipe()
        size = meta.size + _DYN_HEAD + 8 * count
        if len(raw) < _HEADER.size:
            return None
        magic, header_size, major, minor, mode, _reserved, total = _HEADER.unpack_from(raw)
        if (magic, header_size, (major, minor)) != (_SEAL_MAGIC, _HEADER.size, _seal_version()) \
                or total != len(raw):
            return None
        body: bytes | bytearray | None
        if mode == _COMPR_NONE:
            body = raw[_HEADER.size:]
        elif mode == _COMPR_ZSTD and decompress is not None:
            body = decompress(raw[_HEADER.size:], size)
        else:
            body = None
        if body is None or len(body) != size or tuple(meta.unpack_from(body)[:4]) != pid:
            return None
        inner = _HEADER.unpack_from(body, meta.size)
        words = struct.unpack_from("<Q", body, meta.size + _HEADER.size)[0]
        if inner[0] != _SEAL_MAGIC or inner[4] != _COMPR_NONE or words != count:
            return None
        out = np.frombuffer(body, dtype="<u8", count=count, offset=meta.size + _DYN_HEAD)
        result: U64Array = out.astype(np.uint64)  # a copy: the buffer is wiped below
        if secret and isinstance(body, bytearray):
            body[:] = bytes(len(body))
        return result

    def read_cipher_object(self, ct: Any, size: int, pid: tuple[int, ...], rns: int) -> U64Array:
        """All ``size * rns * N`` coefficients of a SEAL ciphertext (or public key) at ``pid``."""
        count = size * rns * self.degree
        got = self._saved(ct, _CT_META, pid, count)
        return got if got is not None else _read_cipher(ct, count)

    def read_plain_object(self, pt: Any, pid: tuple[int, ...], rns: int,
                          *, secret: bool = False) -> U64Array:
        """All ``rns * N`` coefficients of a SEAL plaintext (or secret key) at ``pid``."""
        count = rns * self.degree
        got = self._saved(pt, _PT_META, pid, count, secret=secret)
        return got if got is not None else _read_plain(pt, count)

    def ntt_inverse(self, values: U64Array) -> U64Array:
        """SEAL's inverse NTT of ``(k, N)`` polynomials reduced mod the (single) data prime.

        Same result as :func:`ntt_inverse` (tests check it), ~4x faster; SEAL transforms
        :data:`_NTT_BATCH` polynomials per call, loaded as one ciphertext. Any reduced
        values (a peer's ``c0`` included) are accepted. Data level only.
        """
        if len(self.data_moduli) != 1 or values.ndim != 2 or values.shape[1] != self.degree:
            raise ValueError("expected (k, N) polynomials of a single-prime parameter set")
        out = np.empty(values.shape, dtype=np.uint64)
        # A sentinel polynomial of ones closes every batch: SEAL refuses a "transparent"
        # ciphertext (all polynomials after the first zero), which a peer's c0 could make.
        sentinel = np.ones((1, self.degree), dtype=np.uint64)
        for start in range(0, len(values), _NTT_BATCH - 1):
            part = values[start:start + _NTT_BATCH - 1]
            batch = np.concatenate([part, sentinel])
            ct = self.load_ciphertext(batch[:, None, :], 1.0)
            self._evaluator.transform_from_ntt_inplace(ct)
            done = self.read_cipher_object(ct, len(batch), self._data_pid, 1)
            out[start:start + len(part)] = done.reshape(len(batch), self.degree)[: len(part)]
        return out

    def load_ciphertext(self, polys: U64Array, scale: float) -> Any:
        """Build a SEAL ciphertext at the data level from validated coefficients."""
        ct = _S.Ciphertext()
        self._load(ct, _ciphertext_stream(self._data_pid, polys, scale))
        return ct

    def read_ciphertext(self, ct: Any) -> U64Array:
        size = int(ct.size())
        rns = len(self.data_moduli)
        data = self.read_cipher_object(ct, size, self._data_pid, rns)
        return data.reshape(size, rns, self.degree)

    def read_plaintext(self, pt: Any) -> U64Array:
        rns = len(self.data_moduli)
        return self.read_plain_object(pt, self._data_pid, rns).reshape(rns, self.degree)

    def encode(self, values: F64Array | C128Array, scale: float) -> Any:
        """Encode up to ``slots`` real or complex values at ``scale`` (data level)."""
        pt = _S.Plaintext()
        self._encoder.encode(values.tolist(), list(self._data_pid), scale, pt)
        return pt

    def decode(self, pt: Any, *, complex_slots: bool) -> F64Array | C128Array:
        if complex_slots:
            return np.asarray(self._encoder.decode_complex(pt), dtype=np.complex128)
        return np.asarray(self._encoder.decode_double(pt), dtype=np.float64)


@functools.cache
def ring(degree: int, moduli: tuple[int, ...]) -> Ring:
    """The shared :class:`Ring` of a parameter set (created once per process)."""
    return Ring(degree, moduli)


def _chunk_values(values: F64Array | C128Array, index: int) -> F64Array | C128Array:
    row: F64Array | C128Array = values[index]
    return row


class PublicKeys:
    """A SEAL public key and its encryptor. Cannot decrypt: it holds no secret key."""

    def __init__(self, r: Ring, pk: Any) -> None:
        self.ring: Final = r
        self._pk = pk
        self._encryptor = _S.Encryptor(r._ctx, pk)

    @classmethod
    def from_array(cls, r: Ring, pk: U64Array) -> PublicKeys:
        """Load a public key from validated coefficients shaped ``(2, primes+1, N)``."""
        obj = _S.PublicKey()
        r._load(obj, _ciphertext_stream(r._key_pid, pk, 1.0))
        return cls(r, obj)

    def to_array(self) -> U64Array:
        r = self.ring
        rns = len(r.key_moduli)
        data = r.read_cipher_object(self._pk.data(), 2, r._key_pid, rns)
        return data.reshape(2, rns, r.degree)

    def encrypt(self, values: F64Array | C128Array, scale: float) -> U64Array:
        """Public-key encrypt each row of ``values``; returns ``(chunks, 2, primes, N)``."""
        r = self.ring
        out = np.empty((len(values), 2, len(r.data_moduli), r.degree), dtype=np.uint64)
        for c in range(len(values)):
            ct = _S.Ciphertext(r._ctx)
            self._encryptor.encrypt(r.encode(_chunk_values(values, c), scale), ct)
            out[c] = r.read_ciphertext(ct)
        return out

    def encrypt_to_seal(self, values: F64Array | C128Array, scale: float) -> Any:
        ct = _S.Ciphertext(self.ring._ctx)
        self._encryptor.encrypt(self.ring.encode(values, scale), ct)
        return ct


class SecretKeys:
    """A SEAL secret key with its public key; encrypts (seeded) and decrypts.

    Holders: trainers only. Nothing here is ever logged or put into an exception.
    """

    def __init__(self, r: Ring, sk: Any, public: PublicKeys) -> None:
        self.ring: Final = r
        self.public: Final = public
        self._sk = sk
        self._encryptor = _S.Encryptor(r._ctx, sk)
        self._decryptor = _S.Decryptor(r._ctx, sk)

    def __repr__(self) -> str:
        return "SecretKeys(<redacted>)"

    @classmethod
    def generate(cls, r: Ring) -> SecretKeys:
        keygen = _S.KeyGenerator(r._ctx)
        pk = _S.PublicKey()
        keygen.create_public_key(pk)
        return cls(r, keygen.secret_key(), PublicKeys(r, pk))

    @classmethod
    def from_arrays(cls, r: Ring, sk: U64Array, pk: U64Array) -> SecretKeys:
        """Load from validated coefficients.

        ``sk`` is ``(primes+1, N)`` and ``pk`` is ``(2, primes+1, N)`` (key level).
        """
        obj = _S.SecretKey()
        r._load(obj, _plaintext_stream(r._key_pid, sk, 1.0), secret=True)
        return cls(r, obj, PublicKeys.from_array(r, pk))

    def to_array(self) -> U64Array:
        r = self.ring
        rns = len(r.key_moduli)
        data = r.read_plain_object(self._sk.data(), r._key_pid, rns, secret=True)
        return data.reshape(rns, r.degree)

    def matches_public_key(self) -> bool:
        """True when the public key encrypts under this secret key (a zero decrypts small)."""
        r = self.ring
        ct = self.public.encrypt_to_seal(np.zeros(r.slots), 2.0**26)
        pt = _S.Plaintext()
        self._decryptor.decrypt(ct, pt)
        err = np.abs(r.decode(pt, complex_slots=False))  # noise std ~1e-5 if they match
        return bool(np.all(np.isfinite(err)) and float(err.max()) < 1e-3)

    def encrypt_seeded(self, values: F64Array | C128Array, a: U64Array, scale: float) -> U64Array:
        """Symmetric encryption with caller-chosen ``a``; returns ``c0`` ``(chunks, primes, N)``.

        ``values`` has one row of slot values per chunk and ``a`` the matching expanded
        polynomials; see the module docstring for why the result is a proper RLWE
        ciphertext ``(c0, a)`` of the row with fresh noise.
        """
        r = self.ring
        rns = len(r.data_moduli)
        zeros = np.zeros((1, rns, r.degree), dtype=np.uint64)
        out = np.empty((len(values), rns, r.degree), dtype=np.uint64)
        for c in range(len(values)):
            zero_a = r.load_ciphertext(np.concatenate([zeros, a[c : c + 1]]), scale)
            ct = _S.Ciphertext(r._ctx)
            self._encryptor.encrypt_symmetric(r.encode(_chunk_values(values, c), scale), ct)
            r._evaluator.sub_inplace(ct, zero_a)
            pt = _S.Plaintext()
            self._decryptor.decrypt(ct, pt)
            out[c] = r.read_plaintext(pt)
        return out

    def decrypt(
        self, c0: U64Array, c1: U64Array, scale: float, *, complex_slots: bool
    ) -> F64Array | C128Array:
        """Decrypt chunk ciphertexts ``(c0[c], c1[c])``; one row of slot values per chunk."""
        r = self.ring
        out: F64Array | C128Array
        if complex_slots:
            out = np.empty((len(c0), r.slots), dtype=np.complex128)
        else:
            out = np.empty((len(c0), r.slots), dtype=np.float64)
        for c in range(len(c0)):
            ct = r.load_ciphertext(np.stack([c0[c], c1[c]]), scale)
            pt = _S.Plaintext()
            self._decryptor.decrypt(ct, pt)
            out[c] = r.decode(pt, complex_slots=complex_slots)
        return out


# -- coefficient-domain projections (screening without ciphertext products) ------------------
#
# SEAL keeps ciphertexts in NTT form. A projection <z, dec> in the *coefficient* domain needs
# the inverse negacyclic NTT. The screen uses SEAL's own (Ring.ntt_inverse: with bulk reads
# it is ~4x faster than numpy); the numpy transforms below are the reference the tests hold it
# to, and serve the small jobs (encode_coefficients, add_coefficients). They reproduce SEAL's
# forward transform (Harvey/Cooley-Tukey, bit-reversed powers of the minimal primitive 2N-th
# root of unity) and invert it stage by stage; the tests check them against SEAL itself (the
# secret key comes out ternary, a decryption comes out small, SEAL's inverse agrees).


def _mulmod_f(
    a: U64Array, w: U64Array | np.uint64, w_over_q: F64Array | np.float64, q: int
) -> U64Array:
    """``a * w mod q`` for ``a, w < q < 2^57`` (elementwise, broadcasting), exact.

    The quotient is estimated in float64 (off by at most ~32 for 57-bit operands); the
    remainder ``a*w - quot*q`` is exact in wrapping 64-bit arithmetic and, read as signed,
    lies in ``(-40q, 40q)`` -- well inside int64 -- so one signed remainder finishes it.
    """
    quot = (a.astype(np.float64) * w_over_q).astype(np.int64).view(np.uint64)  # >= 0: trunc = floor
    rem = (a * w - quot * np.uint64(q)).view(np.int64)
    out: U64Array = np.remainder(rem, np.int64(q)).view(np.uint64)
    return out


def _bitrev(k: int, bits: int) -> int:
    return int(format(k, f"0{bits}b")[::-1], 2) if bits else 0


def _minimal_root(order: int, q: int) -> int:
    """The smallest primitive ``order``-th root of unity mod ``q`` (what SEAL picks)."""
    if (q - 1) % order:
        raise CryptoError("modulus does not support the NTT")
    factors, rest, p = [], q - 1, 2
    while p * p <= rest:
        if rest % p == 0:
            factors.append(p)
            while rest % p == 0:
                rest //= p
        p += 1
    if rest > 1:
        factors.append(rest)
    g = 2
    while any(pow(g, (q - 1) // f, q) == 1 for f in factors):
        g += 1
    root = pow(g, (q - 1) // order, q)
    # every primitive order-th root is root^k for odd k (order is a power of two)
    square = root * root % q
    best, cur = root, root
    for _ in range(order // 2 - 1):
        cur = cur * square % q
        best = min(best, cur)
    return best


class NttTables:
    """Precomputed twiddles of SEAL's negacyclic NTT for one prime and degree."""

    def __init__(self, degree: int, q: int) -> None:
        bits = degree.bit_length() - 1
        psi = _minimal_root(2 * degree, q)
        powers = [1] * degree
        for i in range(1, degree):
            powers[i] = powers[i - 1] * psi % q
        rev = [powers[_bitrev(i, bits)] for i in range(degree)]  # SEAL's root_powers order
        inv = [pow(w, q - 2, q) for w in rev]
        self.degree: Final = degree
        self.q: Final = q
        self.fwd = np.array(rev, dtype=np.uint64)
        self.fwd_q = np.array([w / q for w in rev], dtype=np.float64)
        self.inv = np.array(inv, dtype=np.uint64)
        self.inv_q = np.array([w / q for w in inv], dtype=np.float64)
        n_inv = pow(degree, q - 2, q)
        self.n_inv = np.uint64(n_inv)
        self.n_inv_q = np.float64(n_inv / q)


@functools.cache
def ntt_tables(degree: int, q: int) -> NttTables:
    return NttTables(degree, q)


def _addmod(a: U64Array, b: U64Array, qq: np.uint64) -> U64Array:
    s = a + b
    out: U64Array = np.minimum(s, s - qq)
    return out


def ntt_forward(coeffs: U64Array, q: int) -> U64Array:
    """SEAL's forward negacyclic NTT of each row of ``coeffs`` (``(..., N)``, reduced mod q)."""
    shape = coeffs.shape
    degree = shape[-1]
    t_ = ntt_tables(degree, q)
    qq = np.uint64(q)
    a = np.array(coeffs, dtype=np.uint64).reshape(-1, degree)
    m, t = 1, degree // 2
    while m < degree:
        v = a.reshape(len(a), m, 2, t)
        x, y = v[:, :, 0, :], v[:, :, 1, :]
        wy = _mulmod_f(y, t_.fwd[m : 2 * m, None], t_.fwd_q[m : 2 * m, None], q)
        top = _addmod(x, wy, qq)
        bottom = _addmod(x, qq - wy, qq)
        v[:, :, 0, :] = top
        v[:, :, 1, :] = bottom
        m, t = 2 * m, t // 2
    out: U64Array = a.reshape(shape)
    return out


def ntt_inverse(values: U64Array, q: int) -> U64Array:
    """Inverse of :func:`ntt_forward` (NTT form -> coefficients), rows of ``(..., N)``."""
    shape = values.shape
    degree = shape[-1]
    t_ = ntt_tables(degree, q)
    qq = np.uint64(q)
    a = np.array(values, dtype=np.uint64).reshape(-1, degree)
    m, t = degree // 2, 1
    while m >= 1:
        v = a.reshape(len(a), m, 2, t)
        x, y = v[:, :, 0, :], v[:, :, 1, :]
        top = _addmod(x, y, qq)
        diff = _addmod(x, qq - y, qq)
        v[:, :, 1, :] = _mulmod_f(diff, t_.inv[m : 2 * m, None], t_.inv_q[m : 2 * m, None], q)
        v[:, :, 0, :] = top
        m, t = m // 2, 2 * t
    a = _mulmod_f(a, t_.n_inv, np.float64(t_.n_inv_q), q)
    out: U64Array = a.reshape(shape)
    return out


def pointwise_mulmod(a: U64Array, b: U64Array, q: int) -> U64Array:
    """``a * b mod q`` elementwise for reduced operands (NTT-domain polynomial product)."""
    return _mulmod_f(a, b, b.astype(np.float64) / float(q), q)
