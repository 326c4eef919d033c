"""Key handling, one recipe per module; this module re-exports their public names.

* :mod:`crypto.wrapping` — in-band wrapping of the CKKS secret for each trainer (X25519 + HKDF
  + AES-GCM; simulations and quick starts).
* :mod:`crypto.at_rest` — a secret sealed under a passphrase (scrypt + AES-GCM).
* :mod:`crypto.provisioning` — ``fedguard keys init``: every file a real deployment needs,
  and loading trainer and server bundles back.
* :mod:`crypto.passphrase` — the passphrase from the environment or the terminal.

Every unwrap or decryption failure raises one opaque
:class:`~federation.errors.DecryptionFailed`; nothing secret in messages.
"""

from __future__ import annotations

from crypto.at_rest import open_at_rest, seal_at_rest
from crypto.passphrase import PASSPHRASE_ENV_VAR, read_passphrase
from crypto.provisioning import (
    ProvisionResult,
    ServerBundle,
    TrainerBundle,
    load_server_bundle,
    load_trainer_bundle,
    provision_federation,
)
from crypto.wrapping import WrapKeyPair, unwrap_secret, wrap_key_fingerprint, wrap_secret

__all__ = [
    "PASSPHRASE_ENV_VAR",
    "ProvisionResult",
    "ServerBundle",
    "TrainerBundle",
    "WrapKeyPair",
    "load_server_bundle",
    "load_trainer_bundle",
    "open_at_rest",
    "provision_federation",
    "read_passphrase",
    "seal_at_rest",
    "unwrap_secret",
    "wrap_key_fingerprint",
    "wrap_secret",
]
