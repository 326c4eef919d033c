"""In-band wrapping of the CKKS secret context (simulations and quick starts).

Every trainer makes a :class:`WrapKeyPair` (X25519) and sends only its
public half. The trainer that generated the CKKS keys wraps the secret
context for each recipient with :func:`wrap_secret`: an ephemeral X25519
agreement, HKDF-SHA256 whose ``info`` binds the purpose, the run id, the
recipient id and both public keys, then AES-256-GCM with the blob header as
associated data. The server only relays the opaque blobs;
:func:`unwrap_secret` opens them. The wrapping is anonymous: it keeps the
secret from the server as long as the server relays public keys honestly.
A server that swaps a trainer's public key for its own can read that
trainer's blob, so real deployments use provisioning instead, or compare
:func:`wrap_key_fingerprint` values out of band.

Every unwrap failure, whatever its cause, raises :class:`~federation.errors.DecryptionFailed`
with no detail and no chained exception; invalid arguments raise
:class:`~federation.errors.CryptoError` without key material.

Blob format (all integers big-endian)::

    wrapped secret, version 1
      0   4  b"FGW\\x01"            magic + version
      4  32  ephemeral X25519 public key
     36  12  AES-GCM nonce
     48   -  ciphertext || 16-byte tag  (associated data: bytes 0..47)
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto._keybytes import AES_KEY_BYTES, MAX_SECRET_BYTES, NONCE_BYTES, TAG_BYTES, as_bytes, fields
from federation.errors import CryptoError, DecryptionFailed

__all__ = ["WrapKeyPair", "unwrap_secret", "wrap_key_fingerprint", "wrap_secret"]

_X25519_KEY_BYTES: Final = 32
_MAX_ID_BYTES: Final = 1024
_WRAP_MAGIC: Final = b"FGW\x01"
_WRAP_PURPOSE: Final = b"fedguard/ckks-secret-context/v1"
_WRAP_HEADER_BYTES: Final = len(_WRAP_MAGIC) + _X25519_KEY_BYTES + NONCE_BYTES


class WrapKeyPair:
    """A trainer's X25519 key pair for receiving wrapped secrets.

    Only :attr:`public_bytes` leaves the trainer. The private half never
    appears in ``repr`` and the object refuses to be pickled, so it cannot
    slip into a checkpoint by accident; :meth:`private_bytes` and
    :meth:`from_private_bytes` exist for deliberately keeping it in a
    trainer's own state (for example Flower's ``context.state``).

    Parameters
    ----------
    private_key:
        An X25519 private key. Prefer :meth:`generate`.
    """

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise CryptoError("WrapKeyPair needs an X25519 private key")
        self._private = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> WrapKeyPair:
        """Make a fresh key pair from the operating system's random source."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> WrapKeyPair:
        """Rebuild a key pair from :meth:`private_bytes`.

        Raises
        ------
        CryptoError
            If ``raw`` is not 32 bytes.
        """
        data = as_bytes(raw, "private key")
        if len(data) != _X25519_KEY_BYTES:
            raise CryptoError(f"X25519 private key must be {_X25519_KEY_BYTES} bytes")
        return cls(X25519PrivateKey.from_private_bytes(data))

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key, safe to send to anyone."""
        return self._public

    @property
    def fingerprint(self) -> str:
        """:func:`wrap_key_fingerprint` of the public key, for out-of-band checks."""
        return wrap_key_fingerprint(self._public)

    def private_bytes(self) -> bytes:
        """The 32-byte raw private key. Secret: store it only in the trainer's own state."""
        return self._private.private_bytes_raw()

    def _agree(self, peer_public: X25519PublicKey) -> bytes:
        return self._private.exchange(peer_public)

    def __repr__(self) -> str:
        return f"WrapKeyPair(public={self.fingerprint})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("WrapKeyPair holds a private key and cannot be pickled")


def wrap_key_fingerprint(public: bytes) -> str:
    """Short SHA-256 fingerprint of a 32-byte X25519 public key.

    Returns
    -------
    str
        ``"x25519:"`` and the first 16 bytes of the digest in hex.

    Raises
    ------
    CryptoError
        If ``public`` is not 32 bytes.
    """
    data = _check_public_key(public)
    return "x25519:" + hashlib.sha256(data).hexdigest()[:32]


def wrap_secret(secret: bytes, recipient_public: bytes, *, run_id: str, recipient_id: str) -> bytes:
    """Encrypt ``secret`` so that only one recipient, in one run, can open it.

    Parameters
    ----------
    secret:
        The bytes to send, typically a serialized CKKS secret context; 1 byte
        to 1 GiB.
    recipient_public:
        The recipient's :attr:`WrapKeyPair.public_bytes` as received from the
        peer (exactly 32 bytes).
    run_id:
        Identifier of the run; the blob opens only with the same value.
    recipient_id:
        Identifier of the recipient (for example its node id); the blob opens
        only with the same value. Both ids: 1-1024 bytes of UTF-8.

    Returns
    -------
    bytes
        A version-1 blob (48 bytes of header, then ciphertext and tag), safe
        to hand to the server for relaying.

    Raises
    ------
    CryptoError
        If the public key has the wrong size or is a degenerate point, an id
        is empty or too long, or the secret is empty or too large.
    """
    payload = as_bytes(secret, "secret")
    if not 1 <= len(payload) <= MAX_SECRET_BYTES:
        raise CryptoError(f"secret must be 1 to {MAX_SECRET_BYTES} bytes, got {len(payload)}")
    recipient = _check_public_key(recipient_public)
    run = _id_bytes(run_id, "run_id")
    to = _id_bytes(recipient_id, "recipient_id")

    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:
        shared = None
    if shared is None:
        # OpenSSL refuses an all-zero shared secret: a small-order public key.
        raise CryptoError("recipient public key is not a usable X25519 key")
    key = _wrap_key(shared, ephemeral_public, recipient, run, to)
    nonce = secrets.token_bytes(NONCE_BYTES)
    header = _WRAP_MAGIC + ephemeral_public + nonce
    return header + AESGCM(key).encrypt(nonce, payload, header)


def unwrap_secret(blob: bytes, keypair: WrapKeyPair, *, run_id: str, recipient_id: str) -> bytes:
    """Open a blob made by :func:`wrap_secret` for ``keypair``.

    Parameters
    ----------
    blob:
        The relayed blob (untrusted).
    keypair:
        The recipient's own key pair.
    run_id, recipient_id:
        Must equal the values the sender used.

    Returns
    -------
    bytes
        The secret.

    Raises
    ------
    DecryptionFailed
        For every failure of the blob: wrong key, run id or recipient id, any
        changed or missing byte, an unknown version, a degenerate ephemeral
        key. The error carries no detail.
    CryptoError
        If ``keypair`` is not a :class:`WrapKeyPair` or an id is empty or too
        long (caller mistakes, not properties of the blob).
    """
    if not isinstance(keypair, WrapKeyPair):
        raise CryptoError("keypair must be a WrapKeyPair")
    run = _id_bytes(run_id, "run_id")
    to = _id_bytes(recipient_id, "recipient_id")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DecryptionFailed()
    data = bytes(blob)
    if (
        len(data) < _WRAP_HEADER_BYTES + TAG_BYTES + 1
        or len(data) > _WRAP_HEADER_BYTES + MAX_SECRET_BYTES + TAG_BYTES
        or data[: len(_WRAP_MAGIC)] != _WRAP_MAGIC
    ):
        raise DecryptionFailed()
    ephemeral_public = data[len(_WRAP_MAGIC) : len(_WRAP_MAGIC) + _X25519_KEY_BYTES]
    nonce = data[len(_WRAP_MAGIC) + _X25519_KEY_BYTES : _WRAP_HEADER_BYTES]
    header = data[:_WRAP_HEADER_BYTES]
    # Failures are turned into a flag and the error raised outside the
    # `except` block, so DecryptionFailed has no __context__ to leak detail.
    plaintext: bytes | None
    try:
        shared = keypair._agree(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = _wrap_key(shared, ephemeral_public, keypair.public_bytes, run, to)
        plaintext = AESGCM(key).decrypt(nonce, data[_WRAP_HEADER_BYTES:], header)
    except (InvalidTag, ValueError):
        plaintext = None
    if plaintext is None:
        raise DecryptionFailed()
    return plaintext


def _wrap_key(
    shared: bytes, ephemeral_public: bytes, recipient_public: bytes, run: bytes, to: bytes
) -> bytes:
    info = _WRAP_PURPOSE + fields(
        (b"run", run), (b"to", to), (b"epk", ephemeral_public), (b"rpk", recipient_public)
    )
    return HKDF(algorithm=hashes.SHA256(), length=AES_KEY_BYTES, salt=None, info=info).derive(
        shared
    )


def _check_public_key(public: bytes) -> bytes:
    data = as_bytes(public, "public key")
    if len(data) != _X25519_KEY_BYTES:
        raise CryptoError(f"X25519 public key must be {_X25519_KEY_BYTES} bytes, got {len(data)}")
    return data


def _id_bytes(value: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise CryptoError(f"{name} must be a string, got {type(value).__name__}")
    data = value.encode("utf-8")
    if not 1 <= len(data) <= _MAX_ID_BYTES:
        raise CryptoError(f"{name} must be 1 to {_MAX_ID_BYTES} bytes of UTF-8")
    return data
