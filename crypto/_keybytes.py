"""Byte-level helpers and sizes shared by the key recipes (wrapping, sealing at rest, provisioning)."""

from __future__ import annotations

import struct
from typing import Final

from federation.errors import CryptoError

AES_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
# AES-GCM in `cryptography` takes at most 2**31 - 1 bytes; stay well below.
MAX_SECRET_BYTES: Final = 2**30


def as_bytes(value: object, name: str) -> bytes:
    """``value`` as ``bytes``; raises :class:`CryptoError` naming ``name`` for anything else."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise CryptoError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def fields(*pairs: tuple[bytes, bytes]) -> bytes:
    """Named, length-prefixed fields: no choice of values can make two inputs collide."""
    return b"".join(b"|" + name + b"=" + struct.pack(">I", len(v)) + v for name, v in pairs)
