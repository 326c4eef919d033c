"""Keys at rest: a secret sealed under a passphrase for storage on disk.

:func:`seal_at_rest` encrypts a secret under a passphrase (scrypt with
``n = 2**16, r = 8, p = 1``, a random 16-byte salt, then AES-256-GCM; the
header with the KDF parameters is authenticated). :func:`open_at_rest`
refuses KDF parameters outside a small allowed range *before* running
scrypt, so a tampered file cannot make it allocate more than 128 MiB.

Every open failure, whatever its cause, raises :class:`~federation.errors.DecryptionFailed`
with no detail and no chained exception.

Blob format (all integers big-endian)::

    sealed at rest, version 1
      0   4  b"FGS\\x01"            magic + version
      4   1  KDF id (1 = scrypt)
      5   1  log2(n)
      6   1  r
      7   1  p
      8  16  salt
     24  12  AES-GCM nonce
     36   -  ciphertext || 16-byte tag  (associated data: bytes 0..35 || label)
"""

from __future__ import annotations

import secrets
import struct
import unicodedata
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from crypto._keybytes import AES_KEY_BYTES, MAX_SECRET_BYTES, NONCE_BYTES, TAG_BYTES, as_bytes
from federation.errors import CryptoError, DecryptionFailed

# seal_with_label, open_with_label and new_passphrase_bytes serve crypto.provisioning only.
__all__ = ["open_at_rest", "seal_at_rest"]

_SEAL_MAGIC: Final = b"FGS\x01"
_KDF_SCRYPT: Final = 1
_SALT_BYTES: Final = 16
_SEAL_HEADER = struct.Struct(f">4sBBBB{_SALT_BYTES}s{NONCE_BYTES}s")
# Cost of new files: n = 2**16, r = 8, p = 1 -> 64 MiB and ~0.17 s on one core
# of the reference machine (2**15 took 0.08 s, 2**17 0.37 s).
_SCRYPT_LOG2_N = 16
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
# What open_at_rest accepts: memory is 128 * r * n bytes, so at most 128 MiB,
# and time at most ~2x the default; anything else is refused before scrypt runs.
_SCRYPT_LOG2_N_RANGE: Final = range(14, 18)
_SCRYPT_P_RANGE: Final = range(1, 3)
_MIN_PASSPHRASE_CHARS: Final = 8


def seal_at_rest(secret: bytes, passphrase: str) -> bytes:
    """Encrypt a secret under a passphrase for storage on disk.

    Parameters
    ----------
    secret:
        The bytes to protect (1 byte to 1 GiB).
    passphrase:
        At least 8 characters; compared after Unicode NFC normalisation, so
        the same text typed on different systems opens the file.

    Returns
    -------
    bytes
        A version-1 sealed blob: 36-byte header (KDF id and parameters, salt,
        nonce), then ciphertext and tag.

    Notes
    -----
    scrypt with ``n = 2**16, r = 8, p = 1`` (64 MiB, about 0.2 s on one
    core), a fresh 16-byte salt, then AES-256-GCM; the header is
    authenticated.
    """
    return seal_with_label(secret, passphrase, label=b"")


def open_at_rest(blob: bytes, passphrase: str) -> bytes:
    """Decrypt a blob made by :func:`seal_at_rest`.

    Parameters
    ----------
    blob:
        The sealed bytes (untrusted: they may have been changed on disk).
    passphrase:
        The passphrase used to seal.

    Returns
    -------
    bytes
        The secret.

    Raises
    ------
    DecryptionFailed
        Wrong passphrase, any changed or missing byte, unknown version or KDF,
        KDF parameters outside the allowed range (refused before scrypt runs).
    CryptoError
        If ``passphrase`` is not a non-empty string.
    """
    return open_with_label(blob, passphrase, label=b"")


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise CryptoError("passphrase must be a non-empty string")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def new_passphrase_bytes(passphrase: str) -> bytes:
    pw = _passphrase_bytes(passphrase)
    if len(unicodedata.normalize("NFC", passphrase)) < _MIN_PASSPHRASE_CHARS:
        raise CryptoError(f"passphrase must be at least {_MIN_PASSPHRASE_CHARS} characters")
    return pw


def _scrypt(salt: bytes, log2_n: int, r: int, p: int, passphrase: bytes) -> bytes:
    return Scrypt(salt=salt, length=AES_KEY_BYTES, n=1 << log2_n, r=r, p=p).derive(passphrase)


def seal_with_label(secret: bytes, passphrase: str, *, label: bytes) -> bytes:
    payload = as_bytes(secret, "secret")
    if not 1 <= len(payload) <= MAX_SECRET_BYTES:
        raise CryptoError(f"secret must be 1 to {MAX_SECRET_BYTES} bytes, got {len(payload)}")
    pw = new_passphrase_bytes(passphrase)
    salt = secrets.token_bytes(_SALT_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    header = _SEAL_HEADER.pack(
        _SEAL_MAGIC, _KDF_SCRYPT, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P, salt, nonce
    )
    key = _scrypt(salt, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P, pw)
    return header + AESGCM(key).encrypt(nonce, payload, header + label)


def open_with_label(blob: bytes, passphrase: str, *, label: bytes) -> bytes:
    pw = _passphrase_bytes(passphrase)
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DecryptionFailed()
    data = bytes(blob)
    if len(data) < _SEAL_HEADER.size + TAG_BYTES + 1:
        raise DecryptionFailed()
    magic, kdf, log2_n, r, p, salt, nonce = _SEAL_HEADER.unpack_from(data)
    if (
        magic != _SEAL_MAGIC
        or kdf != _KDF_SCRYPT
        or log2_n not in _SCRYPT_LOG2_N_RANGE
        or r != _SCRYPT_R
        or p not in _SCRYPT_P_RANGE
        or len(data) > _SEAL_HEADER.size + MAX_SECRET_BYTES + TAG_BYTES
    ):
        raise DecryptionFailed()
    header = data[: _SEAL_HEADER.size]
    plaintext: bytes | None
    try:
        key = _scrypt(salt, log2_n, r, p, pw)
        plaintext = AESGCM(key).decrypt(nonce, data[_SEAL_HEADER.size :], header + label)
    except (InvalidTag, ValueError, MemoryError):
        plaintext = None
    if plaintext is None:
        raise DecryptionFailed()
    return plaintext
