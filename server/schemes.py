"""How the global model and updates travel: plaintext arrays or CKKS ciphertexts.

A :class:`Scheme` is everything the round loop needs to know about one transport; the loop
itself never looks inside a payload. :class:`PlaintextScheme` lives here; the CKKS scheme in
:mod:`server.encrypted`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.app import RecordDict

from federation import protocol as P
from federation.aggregation import apply_update, weighted_update
from federation.config import FedConfig
from federation.errors import RejectedUpdate
from federation.records import record_vector, vector_record
from federation.robust import UpdateStats, stats_from_plain

__all__ = ["PlaintextScheme", "Scheme"]


class Scheme(Protocol):
    """The transport-specific half of a round (see :mod:`server.loop`)."""

    name: str
    dim: int  # parameters of the model

    def setup(self, grid: Any, nodes: Sequence[int], cfg: FedConfig) -> None:
        """One-off phases before round 1 (in-band key setup under CKKS)."""

    def global_records(self, node: int, round_: int) -> RecordDict:
        """The records carrying the global model to ``node`` for ``round_``."""

    def parse_update(self, node: int, content: RecordDict) -> Any:
        """Validate a reply's update; raise :class:`RejectedUpdate` with a reason."""

    def statistics(self, grid: Any, payloads: dict[int, Any], round_: int) -> UpdateStats:
        """Squared norms and pairwise squared distances of the round's updates."""

    def aggregate(self, payloads: Sequence[Any], weights: Sequence[int]) -> None:
        """Fold the accepted updates into the global model."""

    def checkpoint(self) -> dict[str, Any]:
        """What must be saved to resume after this round (never a secret)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`checkpoint` returned."""

    def bytes_down(self, node: int) -> int:
        """Bytes of model payload sent to ``node`` in the last train message."""

    def drain_audit(self) -> list[dict[str, Any]]:
        """Audit entries the scheme produced since the last call (key setup, screening)."""


class PlaintextScheme:
    """Updates as float32 vectors; the server holds the plaintext global model."""

    name = "none"

    def __init__(self, initial: npt.NDArray[np.float32]) -> None:
        self.global_model = initial.astype(np.float32, copy=True)
        self.dim = int(initial.shape[0])

    def setup(self, grid: Any, nodes: Sequence[int], cfg: FedConfig) -> None:
        pass

    def global_records(self, node: int, round_: int) -> RecordDict:
        return RecordDict({P.GLOBAL_PLAIN: vector_record(self.global_model)})

    def parse_update(self, node: int, content: RecordDict) -> npt.NDArray[np.float32]:
        if P.UPDATE_PLAIN not in content.array_records:
            raise RejectedUpdate("malformed", "reply has no plaintext update")
        return record_vector(content.array_records[P.UPDATE_PLAIN], self.dim)

    def statistics(self, grid: Any, payloads: dict[int, Any], round_: int) -> UpdateStats:
        ids = sorted(payloads)
        return stats_from_plain([payloads[i] for i in ids], ids, None)

    def aggregate(self, payloads: Sequence[Any], weights: Sequence[int]) -> None:
        self.global_model = apply_update(self.global_model, weighted_update(payloads, weights))

    def checkpoint(self) -> dict[str, Any]:
        return {"scheme": self.name, "global": self.global_model.copy()}

    def restore(self, state: dict[str, Any]) -> None:
        g = np.asarray(state["global"], dtype=np.float32)
        if g.shape != self.global_model.shape:
            raise ValueError("checkpoint model has the wrong shape")
        self.global_model = g

    def bytes_down(self, node: int) -> int:
        return int(self.global_model.nbytes)

    def drain_audit(self) -> list[dict[str, Any]]:
        return []
