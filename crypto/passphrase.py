"""Where a passphrase comes from: an environment variable, else the terminal (no echo)."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Final

from federation.errors import CryptoError

__all__ = ["PASSPHRASE_ENV_VAR", "read_passphrase"]

PASSPHRASE_ENV_VAR: Final = "FEDGUARD_PASSPHRASE"


def read_passphrase(
    env_var: str = PASSPHRASE_ENV_VAR, prompt: bool = True, *, confirm: bool = False
) -> str:
    """Get the passphrase from the environment or, failing that, the terminal.

    Parameters
    ----------
    env_var:
        Environment variable checked first; a non-empty value wins.
    prompt:
        Ask on the terminal (without echo) when the variable is unset.
    confirm:
        Ask twice and require both answers to match (use when creating keys).

    Returns
    -------
    str
        The passphrase.

    Raises
    ------
    CryptoError
        If the variable is unset and prompting is off or there is no terminal,
        the answer is empty, or the two answers differ. The message names the
        variable, never a value.
    """
    value = os.environ.get(env_var, "")
    if value:
        return value
    if not prompt or not _stdin_is_tty():
        raise CryptoError(
            f"no passphrase: set the environment variable {env_var} "
            "or run the command from a terminal"
        )
    first = getpass.getpass("fedguard passphrase: ")
    if not first:
        raise CryptoError("the passphrase is empty")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise CryptoError("the two passphrases differ")
    return first


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False
