"""fedguard's cryptography: CKKS recipes over TenSEAL, wire format, keys, TLS material.

The only package that touches ``tenseal`` (in ``crypto/_seal.py``) and ``cryptography``
primitives. Capabilities are types: a :class:`PublicContext` (the server's) can encrypt and
add; only a :class:`SecretContext` (trainers') can decrypt.
"""

from crypto.ckks import (
    EncryptedVector,
    Preset,
    PublicContext,
    SecretContext,
    add,
    decrypt,
    encrypt,
    weighted_sum,
)

__all__ = [
    "EncryptedVector",
    "Preset",
    "PublicContext",
    "SecretContext",
    "add",
    "decrypt",
    "encrypt",
    "weighted_sum",
]
