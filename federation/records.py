"""Codecs between our vectors/bytes and Flower records, validating everything from a peer."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from federation import protocol as P
from federation.errors import RejectedUpdate

__all__ = ["BYTES_STYPE", "bytes_record", "record_bytes", "record_vector", "vector_record"]

BYTES_STYPE = "fedguard/bytes-v1"
_VECTOR_KEY = P.VECTOR_ITEM


def vector_record(vec: npt.NDArray[np.float32]) -> ArrayRecord:
    """A flat float32 vector as a one-array ArrayRecord."""
    return ArrayRecord({_VECTOR_KEY: Array(np.ascontiguousarray(vec, dtype=np.float32))})


def record_vector(rec: ArrayRecord, expected_len: int) -> npt.NDArray[np.float32]:
    """Read and validate a flat float32 vector of ``expected_len`` finite values.

    Raises :class:`RejectedUpdate` with reason ``malformed``, ``shape-mismatch`` or
    ``non-finite``; never anything else, whatever the peer sent.
    """
    if list(rec.keys()) != [_VECTOR_KEY]:
        raise RejectedUpdate("malformed", "expected exactly one array")
    arr = rec[_VECTOR_KEY]
    if arr.dtype != "float32" or tuple(arr.shape) != (expected_len,):
        raise RejectedUpdate(
            "shape-mismatch", f"expected float32[{expected_len}], got {arr.dtype}{list(arr.shape)}"
        )
    if len(arr.data) > 4 * expected_len + 1024:  # np.save header + payload, nothing more
        raise RejectedUpdate("malformed", "payload larger than its shape")
    try:
        vec = arr.numpy()
    except Exception as exc:  # noqa: BLE001 - any parse failure of peer bytes is a rejection
        raise RejectedUpdate("malformed", type(exc).__name__) from None
    if vec.dtype != np.float32 or vec.shape != (expected_len,):
        raise RejectedUpdate("shape-mismatch", "declared and actual shape differ")
    if not np.all(np.isfinite(vec)):
        raise RejectedUpdate("non-finite", "NaN or Inf in update")
    return vec


def bytes_record(blobs: dict[str, bytes]) -> ArrayRecord:
    """Opaque byte strings (ciphertext envelopes) as uint8 arrays, one per key."""
    return ArrayRecord(
        {k: Array(dtype="uint8", shape=(len(b),), stype=BYTES_STYPE, data=b) for k, b in blobs.items()}
    )


def record_bytes(rec: ArrayRecord, key: str, max_bytes: int) -> bytes:
    """Return the bytes stored under ``key``, refusing other encodings and oversize payloads."""
    if key not in rec:
        raise RejectedUpdate("malformed", f"missing array {key!r}")
    arr = rec[key]
    if arr.stype != BYTES_STYPE or arr.dtype != "uint8" or len(arr.shape) != 1:
        raise RejectedUpdate("malformed", "not a byte array")
    data = arr.data
    if len(data) != arr.shape[0]:
        raise RejectedUpdate("malformed", "declared length differs from payload")
    if len(data) > max_bytes:
        raise RejectedUpdate("too-large", f"{len(data)} bytes > {max_bytes}")
    return bytes(data)
