"""How a trainer reads the global model and ships its update: one scheme per transport.

The trainer's mirror of :class:`server.schemes.Scheme`. A :class:`TrainerScheme` is everything
a trainer's message handlers (:mod:`clients.handlers`, :mod:`clients.mods`) need to know about
the transport of a run; they never branch on the mode themselves (``tests/test_scheme_home.py``
checks that no other module of ``clients/`` does). Two implementations live here:

* :class:`PlaintextTrainerScheme`: the global model and updates are float32 vectors; key
  records in a message are ignored (there is nothing to install).
* :class:`CkksTrainerScheme`: the trainer holds the CKKS secret context in its node state; the
  mechanics (unwrapping, provenance checks, decryption, seeded encryption) are the functions
  of :mod:`clients.encrypted`, which this class calls.

:func:`trainer_scheme` chooses once per message. The choice cannot follow the run config alone:
the config comes from the server, and a server that named plaintext to a trainer holding the
CKKS key would get a plaintext update of a model of its choosing (a downgrade). So the scheme
is CKKS when the config says ``ckks`` **or** this node already holds a CKKS key.

One message, in order (a train message uses every step, evaluate the first two, verify the
first and the last)::

    scheme = trainer_scheme(cfg, state, node_config, run_id)
    scheme.install_keys(content)                  # explicit, idempotent; refuses with a reason
    g = scheme.read_global(content, initial, t)   # G (decrypted and checked under CKKS)
    scheme.note_round(round_, clients)            # a train message: bounds screening requests
    records = scheme.encode_update(update, m)     # the update's records (encrypted under CKKS)
    cands = scheme.read_candidates(content, initial)  # attribution (query.verify)

Who holds what: the secret context never leaves the node state (``context.state``, the
SuperNode's memory); nothing a scheme raises or returns carries key material.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, RecordDict

from clients import encrypted
from federation import protocol as P
from federation.config import FedConfig, SecureAggregation
from federation.errors import CryptoError, FedguardError, GlobalRefused, ProtocolError, RejectedUpdate
from federation.records import record_vector, vector_record
from federation.updates import PlainUpdate

__all__ = ["CkksTrainerScheme", "Model", "PlaintextTrainerScheme", "TrainerScheme", "trainer_scheme"]

Model = npt.NDArray[np.float32]
"""A plaintext model: one float32 per parameter, in the task's flat parameter order."""

Candidate = Model | GlobalRefused
"""One attribution candidate: its plaintext model, or why this trainer refuses it."""


class TrainerScheme(Protocol):
    """The transport-specific half of a trainer's round (see the module docstring).

    An instance is bound to one node's state and node config for one message.
    """

    name: str  # "none" or "ckks", the value of ``secure-aggregation`` it implements

    def install_keys(self, content: RecordDict) -> None:
        """Make sure this node holds what the transport needs before the global is read.

        Idempotent: a key already installed is kept (a re-sent wrapped copy is ignored).

        Raises
        ------
        ProtocolError, CryptoError
            Under CKKS, when no key can be obtained: no key in state, no wrapped copy in the
            message's ``keys`` record, no provisioned ``key-dir``; or a wrapped copy without
            a prior in-band key setup (the reason names which).
        """

    def read_global(self, content: RecordDict, initial: Model,
                    timings: dict[str, float]) -> Model:
        """The global model the message carries, checked (and decrypted under CKKS).

        ``initial`` is the public seeded initial model; under CKKS the message carries the
        encrypted sum of updates since then, or (round 1 only) ``initial`` itself in plaintext.
        ``timings`` receives ``decrypt-seconds`` / ``verify-seconds`` (seconds).

        Raises
        ------
        GlobalRefused
            A global this trainer will not use (reason code; the trainer votes against it).
        ProtocolError
            The message carries no global model this scheme can read.
        """

    def note_round(self, round_: int, clients: int) -> None:
        """Remember that this trainer trains in ``round_`` of a ``clients``-client federation."""

    def encode_update(self, update: PlainUpdate, metrics: dict[str, float]) -> dict[str, ArrayRecord]:
        """The records carrying ``update`` to the server; adds ``bytes-up`` (bytes) to ``metrics``.

        ``update`` is this trainer's plaintext update (a ``NoisedUpdate`` when DP-SGD made it):
        sent as is in plaintext mode, encrypted under CKKS (``encrypt-seconds``, and
        ``clipped-values`` when values beyond the preset's bound were clipped).
        """

    def read_candidates(self, content: RecordDict, initial: Model) -> list[Candidate]:
        """Attribution: each candidate global of a ``query.verify`` message, or why it is refused.

        Raises
        ------
        GlobalRefused
            The request as a whole is refused (no candidates, too many, or under CKKS groups
            that break the attribution rules of :func:`clients.encrypted.decrypt_candidates`).
        """


def trainer_scheme(cfg: FedConfig, state: RecordDict, node_config: Mapping[str, Any],
                   run_id: int) -> TrainerScheme:
    """The one place a trainer chooses its transport: CKKS if the run config says ``ckks`` or
    this node holds a CKKS key already (never downgraded by the server's config), else plaintext.
    """
    if cfg.secure.mode is SecureAggregation.CKKS or encrypted.holds_key(state):
        return CkksTrainerScheme(state, node_config, run_id)
    return PlaintextTrainerScheme()


def _plain_vector(rec: ArrayRecord, dim: int) -> Model:
    try:
        return record_vector(rec, dim)
    except RejectedUpdate as exc:
        raise GlobalRefused(exc.reason, exc.detail) from None


class PlaintextTrainerScheme:
    """Float32 vectors both ways (a run with ``secure-aggregation none``); holds no key."""

    name = SecureAggregation.NONE.value

    def install_keys(self, content: RecordDict) -> None:
        """Nothing to install: a ``keys`` record in a plaintext run is ignored."""

    def read_global(self, content: RecordDict, initial: Model,
                    timings: dict[str, float]) -> Model:
        rec = content.array_records.get(P.GLOBAL_PLAIN)
        if rec is not None:
            return _plain_vector(rec, int(initial.shape[0]))
        if P.GLOBAL_CIPHER in content.array_records:
            raise ProtocolError("an encrypted global model in a plaintext run "
                                "(secure-aggregation none), and this trainer holds no CKKS key")
        raise ProtocolError("message carries no global model")

    def note_round(self, round_: int, clients: int) -> None:
        """Nothing to remember: a plaintext trainer answers no screening requests."""

    def encode_update(self, update: PlainUpdate, metrics: dict[str, float]) -> dict[str, ArrayRecord]:
        metrics[P.M_BYTES_UP] = int(update.nbytes)
        return {P.UPDATE_PLAIN: vector_record(update)}

    def read_candidates(self, content: RecordDict, initial: Model) -> list[Candidate]:
        arrays = content.array_records.get(P.CANDIDATES)
        if arrays is None or not 1 <= len(arrays) <= encrypted.MAX_CANDIDATES:
            raise GlobalRefused("candidates", "no candidates, or too many")
        out: list[Candidate] = []
        for key in sorted(arrays.keys()):
            try:
                out.append(record_vector(ArrayRecord({P.VECTOR_ITEM: arrays[key]}),
                                         int(initial.shape[0])))
            except FedguardError as exc:
                out.append(GlobalRefused("malformed", str(exc)))
        return out


class CkksTrainerScheme:
    """CKKS (``secure-aggregation ckks``): the secret context in node state, updates encrypted.

    Parameters
    ----------
    state:
        The node's persistent state (``context.state``): where the secret context, the in-band
        wrap key and the screening limits live.
    node_config:
        The node's config (``key-dir`` of a provisioned trainer bundle, if any).
    run_id:
        The Flower run: wrapped secrets are bound to it.
    """

    name = SecureAggregation.CKKS.value

    def __init__(self, state: RecordDict, node_config: Mapping[str, Any], run_id: int) -> None:
        self._state = state
        self._node_config = node_config
        self._run_id = run_id
        self._commit = b""

    def install_keys(self, content: RecordDict) -> None:
        # the key in state wins; else the wrapped copy in the message; else the provisioned bundle
        encrypted.secret_context(content, self._state, self._node_config, self._run_id)
        keys = content.config_records.get(P.KEYS)
        commit = keys.get(P.SCREEN_COMMIT, b"") if keys is not None else b""
        self._commit = commit if isinstance(commit, bytes) else b""  # what note_round records

    def _installed(self) -> None:
        if not encrypted.holds_key(self._state):
            raise CryptoError("no CKKS key installed: install_keys must run before the global "
                              "is read")

    def read_global(self, content: RecordDict, initial: Model,
                    timings: dict[str, float]) -> Model:
        self._installed()
        rec = content.array_records.get(P.GLOBAL_PLAIN)
        if rec is not None:
            # Only the public initial model of round 1 travels in plaintext under CKKS: anything
            # else would be a model of the server's choosing.
            vec = _plain_vector(rec, int(initial.shape[0]))
            cfg = content.config_records.get(P.CFG)
            if not np.array_equal(vec, initial) or (cfg is not None
                                                    and cfg.get(P.GLOBAL_ROUND, 0) != 0):
                raise GlobalRefused("replaced-global", "a plaintext global under CKKS that is not "
                                    "the public initial model")
            return vec
        if P.GLOBAL_CIPHER in content.array_records:
            t = time.perf_counter()
            vec = encrypted.decrypt_global(content, self._state, self._node_config, self._run_id,
                                           initial, timings)
            timings[P.M_DECRYPT_SECONDS] = time.perf_counter() - t
            return vec
        raise ProtocolError("message carries no global model")

    def note_round(self, round_: int, clients: int) -> None:
        encrypted.note_round(self._state, round_, clients, self._commit)

    def encode_update(self, update: PlainUpdate, metrics: dict[str, float]) -> dict[str, ArrayRecord]:
        t = time.perf_counter()
        arrays, nbytes, clipped = encrypted.encrypt_update(update, self._state)
        metrics[P.M_ENCRYPT_SECONDS] = time.perf_counter() - t
        if clipped:
            metrics[P.M_CLIPPED_VALUES] = clipped
        metrics[P.M_BYTES_UP] = nbytes
        return arrays

    def read_candidates(self, content: RecordDict, initial: Model) -> list[Candidate]:
        self._installed()
        return encrypted.decrypt_candidates(content, self._state, self._node_config, self._run_id,
                                            initial)
