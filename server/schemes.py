"""How the global model and updates travel: plaintext arrays or CKKS ciphertexts.

A :class:`Scheme` is everything the round loop needs to know about one transport; the loop
itself never looks inside a payload. :class:`PlaintextScheme` lives here; the CKKS scheme in
:mod:`server.encrypted`.

``Scheme`` is generic in the validated update it carries (:mod:`federation.updates`):
:class:`PlaintextScheme` is a ``Scheme[PlainUpdate]``, ``CkksScheme`` a
``Scheme[EncryptedVector]``. The loop is generic in the same type, so plaintext and ciphertext
payloads cannot be mixed without ``mypy --strict`` refusing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, RecordDict

from federation import protocol as P
from federation.aggregation import apply_update, weighted_update
from federation.config import FedConfig
from federation.errors import RejectedUpdate
from federation.records import record_vector, vector_record
from federation.robust import UpdateStats, stats_from_plain
from federation.updates import PlainUpdate

__all__ = ["PlaintextScheme", "Scheme", "U"]

U = TypeVar("U")
"""A scheme's validated update (payload) type."""


class Scheme(Protocol[U]):
    """The transport-specific half of a round (see :mod:`server.loop`), carrying updates ``U``."""

    name: str
    dim: int  # parameters of the model
    hides_updates: bool  # True when nobody may decrypt fewer than group-size updates summed

    @property
    def validates_uploads(self) -> bool:
        """True when :meth:`statistics` certifies each upload's validity (CKKS projection
        screening): the loop then screens every round, with or without a filter."""

    @property
    def global_round(self) -> int:
        """The newest round whose aggregate the global model includes (0: the initial model)."""

    def setup(self, grid: Any, nodes: Sequence[int], cfg: FedConfig) -> None:
        """One-off phases before round 1 (in-band key setup under CKKS)."""

    def global_records(self, node: int, round_: int) -> RecordDict:
        """The records carrying the global model to ``node`` for ``round_``."""

    def parse_update(self, node: int, content: RecordDict) -> U:
        """Validate a reply's update; raise :class:`RejectedUpdate` with a reason."""

    def statistics(self, grid: Any, payloads: Mapping[int, U], round_: int) -> UpdateStats:
        """Squared norms and pairwise squared distances of the round's updates."""

    def aggregate(self, payloads: Sequence[U], weights: Sequence[int], round_: int = 0) -> None:
        """Fold the accepted updates of ``round_`` into the global model (weights sum to K)."""

    def rollback(self) -> int | None:
        """Undo the newest aggregate; return its round, or None when none can be undone."""

    def candidate_records(self, groups: Sequence[tuple[Sequence[U], Sequence[int]]],
                          round_: int) -> RecordDict:
        """Attribution: records carrying the current global plus each group's weighted sum."""

    def checkpoint(self) -> dict[str, Any]:
        """What must be saved to resume after this round (never a secret)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`checkpoint` returned."""

    def bytes_down(self, node: int) -> int:
        """Bytes of model payload sent to ``node`` in the last train message."""

    def drain_audit(self) -> list[dict[str, Any]]:
        """Audit entries the scheme produced since the last call (key setup, screening)."""


class PlaintextScheme:
    """Updates as float32 vectors (a ``Scheme[PlainUpdate]``); the server holds the plaintext
    global model."""

    name = "none"
    hides_updates = False  # the server sees every plaintext update anyway
    validates_uploads = False  # nothing hidden to certify: the filters see the plaintext

    def __init__(self, initial: npt.NDArray[np.float32]) -> None:
        self.global_model = initial.astype(np.float32, copy=True)
        self.dim = int(initial.shape[0])
        self._history: list[tuple[int, npt.NDArray[np.float32]]] = []  # (round, model before it)
        self._round = 0

    @property
    def global_round(self) -> int:
        return self._round

    def setup(self, grid: Any, nodes: Sequence[int], cfg: FedConfig) -> None:
        pass

    def global_records(self, node: int, round_: int) -> RecordDict:
        return RecordDict({P.GLOBAL_PLAIN: vector_record(self.global_model)})

    def rollback(self) -> int | None:
        if not self._history:
            return None
        undone = self._round
        self._round, self.global_model = self._history.pop()
        return undone

    def candidate_records(self, groups: Sequence[tuple[Sequence[PlainUpdate], Sequence[int]]],
                          round_: int) -> RecordDict:
        arrays = {f"c{i:03d}": Array(apply_update(self.global_model, weighted_update(p, w)))
                  for i, (p, w) in enumerate(groups)}
        return RecordDict({P.CANDIDATES: ArrayRecord(arrays)})

    def parse_update(self, node: int, content: RecordDict) -> PlainUpdate:
        if P.UPDATE_PLAIN not in content.array_records:
            raise RejectedUpdate("malformed", "reply has no plaintext update")
        return PlainUpdate(record_vector(content.array_records[P.UPDATE_PLAIN], self.dim))

    def statistics(self, grid: Any, payloads: Mapping[int, PlainUpdate], round_: int) -> UpdateStats:
        ids = sorted(payloads)
        return stats_from_plain([payloads[i] for i in ids], ids)

    def aggregate(self, payloads: Sequence[PlainUpdate], weights: Sequence[int], round_: int = 0) -> None:
        self._history = [*self._history[-3:], (self._round, self.global_model)]
        self.global_model = apply_update(self.global_model, weighted_update(payloads, weights))
        self._round = round_

    def checkpoint(self) -> dict[str, Any]:
        return {"scheme": self.name, "global": self.global_model.copy()}

    def restore(self, state: dict[str, Any]) -> None:
        g = np.asarray(state["global"], dtype=np.float32)
        if g.shape != self.global_model.shape:
            raise ValueError("checkpoint model has the wrong shape")
        self.global_model = g
        self._round = int(np.asarray(state.get("round", 0)))  # no rollback past a restart
        self._history = []

    def bytes_down(self, node: int) -> int:
        return int(self.global_model.nbytes)

    def drain_audit(self) -> list[dict[str, Any]]:
        return []
