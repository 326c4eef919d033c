"""The fedguard exception tree, named for causes.

::

    FedguardError
     ├── ConfigError            a bad configuration value (names the key and what is allowed)
     ├── DataError              a dataset that is missing, truncated or malformed
     ├── ProtocolError          a message from a peer that breaks the protocol
     │    ├── RejectedUpdate    one client's update refused (carries a machine-readable reason)
     │    └── GlobalRefused     a trainer refuses a global model it received (reason code)
     ├── PrivacyBudgetExceeded  a release would take a client past its (epsilon, delta) budget
     └── CryptoError            (crypto/) anything cryptographic; messages never carry secrets
          ├── InvalidCiphertext a peer's ciphertext bytes failed validation
          ├── KeyMismatch       a ciphertext or context made under another key or parameter set
          └── DecryptionFailed  one opaque error for every unwrap/decrypt failure
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CryptoError",
    "DataError",
    "DecryptionFailed",
    "FedguardError",
    "GlobalRefused",
    "InvalidCiphertext",
    "KeyMismatch",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "RejectedUpdate",
]


class FedguardError(Exception):
    """Root of every error fedguard raises on purpose."""


class ConfigError(FedguardError, ValueError):
    """A configuration value is missing or not allowed.

    Parameters
    ----------
    key:
        The dotted config key (for example ``dp.epsilon``).
    message:
        What is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(FedguardError):
    """A dataset file is missing, truncated or malformed."""


class ProtocolError(FedguardError):
    """A peer's message breaks the protocol (missing record, wrong type, bad shape)."""


class RejectedUpdate(ProtocolError):
    """One client's update is refused; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class GlobalRefused(ProtocolError):
    """A trainer refuses a global model (or a candidate sum) it received from the server.

    ``reason`` is a short code (``denominator``, ``provenance``, ``out-of-range``,
    ``loss-regression``, ...); the trainer reports it in its vote instead of training.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PrivacyBudgetExceeded(FedguardError):
    """Training once more would take a client past its privacy budget."""


class CryptoError(FedguardError):
    """Base of every cryptographic failure. Messages never contain key material."""


class InvalidCiphertext(CryptoError):
    """Ciphertext bytes from a peer failed structural validation."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class KeyMismatch(CryptoError):
    """A ciphertext or context belongs to another key or parameter set."""


class DecryptionFailed(CryptoError):
    """Unwrapping or decrypting failed. Deliberately says nothing more."""

    def __init__(self) -> None:
        super().__init__("decryption failed")
