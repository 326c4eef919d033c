"""What an update is at each point of its trip: plaintext, DP-noised, or encrypted.

The threat model shows in the types (STYLE.md 6). A model update is one flat float32 vector,
``trained model - received global``, of the model's parameter count:

* :data:`PlainUpdate`: an update in the clear. A trainer holds its own; in plaintext mode the
  server holds every trainer's (it cannot tell whether one was DP-noised: a peer's claim).
* :data:`NoisedUpdate`: a trainer's update after DP-SGD (per-example clipping and Gaussian
  noise, recorded in the privacy ledger). It *is* a :data:`PlainUpdate`, so it goes wherever a
  plaintext update may; a plain one is not accepted where a noised one is required.
* ``crypto.ckks.EncryptedVector``: an update under CKKS; the server only ever holds these in
  CKKS mode and cannot decrypt them.

A round's transport is generic in its payload type (``server.schemes.Scheme[U]``: the
plaintext scheme is a ``Scheme[PlainUpdate]``, the CKKS scheme a ``Scheme[EncryptedVector]``),
so ``mypy --strict`` refuses a ciphertext where a plaintext update is expected and the other
way round. These are static types (``typing.NewType``): no cost at run time, and the values are
plain numpy arrays for every numpy function.
"""

from __future__ import annotations

from typing import NewType

import numpy as np
import numpy.typing as npt

__all__ = ["NoisedUpdate", "PlainUpdate"]

PlainUpdate = NewType("PlainUpdate", npt.NDArray[np.float32])
"""A model update in the clear: float32, one value per model parameter."""

NoisedUpdate = NewType("NoisedUpdate", PlainUpdate)
"""A trainer's update released by DP-SGD (its ε is in the trainer's ledger before it leaves)."""
