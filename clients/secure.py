"""How a trainer reads the global model and ships its update: plaintext or CKKS.

Plaintext mode: float32 vectors. CKKS mode: see :mod:`clients.encrypted` (the trainer holds the
secret context in its node state; the server only ever sees ciphertexts).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import RecordDict

from federation import protocol as P
from federation.config import FedConfig, SecureAggregation
from federation.errors import GlobalRefused, ProtocolError, RejectedUpdate
from federation.records import record_vector, vector_record
from federation.updates import PlainUpdate

__all__ = ["encode_update", "read_global"]


def read_global(
    content: RecordDict, state: RecordDict, node_config: Mapping[str, Any], run_id: int,
    initial: npt.NDArray[np.float32], timings: dict[str, float],
) -> npt.NDArray[np.float32]:
    """The global model a message carries, decrypted if it came encrypted.

    ``initial`` is the public seeded initial model; under CKKS the message carries the
    encrypted sum of updates since then.
    """
    dim = int(initial.shape[0])
    if P.GLOBAL_PLAIN in content.array_records:
        from clients import encrypted

        if P.KEYS in content.config_records:  # round 1 of CKKS: the public initial model
            encrypted.secret_context(content, state, node_config, run_id)  # and our wrapped key
        try:
            vec = record_vector(content.array_records[P.GLOBAL_PLAIN], dim)
        except RejectedUpdate as exc:
            raise GlobalRefused(exc.reason, exc.detail) from None
        encrypted.check_plain_global(content, state, vec, initial)
        return vec
    if P.GLOBAL_CIPHER in content.array_records:
        from clients import encrypted

        t = time.perf_counter()
        vec = encrypted.decrypt_global(content, state, node_config, run_id, initial, timings)
        timings[P.M_DECRYPT_SECONDS] = time.perf_counter() - t
        return vec
    raise ProtocolError("message carries no global model")


def encode_update(
    update: PlainUpdate, state: RecordDict, cfg: FedConfig, metrics: dict[str, float]
) -> dict[str, Any]:
    """The records carrying ``update`` to the server; adds ``bytes-up`` (and timings).

    ``update`` is this trainer's plaintext update (a ``NoisedUpdate`` when DP-SGD produced it):
    sent as is in plaintext mode, encrypted under CKKS.
    """
    if cfg.secure.mode is SecureAggregation.CKKS:
        from clients import encrypted

        t = time.perf_counter()
        arrays, nbytes, clipped = encrypted.encrypt_update(update, state)
        metrics[P.M_ENCRYPT_SECONDS] = time.perf_counter() - t
        if clipped:
            metrics[P.M_CLIPPED_VALUES] = clipped
    else:
        arrays, nbytes = {P.UPDATE_PLAIN: vector_record(update)}, int(update.nbytes)
    metrics[P.M_BYTES_UP] = nbytes
    return arrays
