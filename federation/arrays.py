"""A user's model as Flower's standard ``arrays`` record <-> one flat float32 vector.

fedguard encrypts, screens and aggregates flat vectors; a partner's Flower app speaks
``ArrayRecord`` s of named arrays (a torch ``state_dict``, a list of numpy arrays). An
:class:`ArrayLayout` — the names, shapes and dtypes of the public initial model — converts one
into the other on both sides (the server's strategy and the client's mod), and validates
everything: a record with other names, shapes, dtypes or non-finite values is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from federation.errors import RejectedUpdate

__all__ = ["ArrayLayout"]

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


@dataclass(frozen=True)
class ArrayLayout:
    """Names, shapes and dtypes of a model's arrays, in record order.

    Attributes
    ----------
    names, shapes, dtypes:
        One entry per array; only floating dtypes (the values travel as float32).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> ArrayLayout:
        """The layout of ``record``. Raises :class:`RejectedUpdate` for a non-float array."""
        names, shapes, dtypes = [], [], []
        for name in record.keys():
            arr = record[name]
            dtype = str(arr.dtype)
            if dtype not in _FLOAT_KINDS:
                raise RejectedUpdate(
                    "malformed", f"array {name!r} has dtype {dtype}; fedguard aggregates only "
                    "floating-point arrays (keep integer buffers out of the arrays record)")
            names.append(str(name))
            shapes.append(tuple(int(d) for d in arr.shape))
            dtypes.append(dtype)
        if not names:
            raise RejectedUpdate("malformed", "the arrays record is empty")
        return cls(tuple(names), tuple(shapes), tuple(dtypes))

    @property
    def size(self) -> int:
        """Total number of values (the flat vector's length)."""
        return int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes))

    def flatten(self, record: ArrayRecord) -> npt.NDArray[np.float32]:
        """``record``'s values as one float32 vector, after checking it has this layout.

        Raises :class:`RejectedUpdate` (``shape-mismatch`` / ``non-finite``) otherwise.
        """
        if tuple(str(k) for k in record.keys()) != self.names:
            raise RejectedUpdate("shape-mismatch", "the arrays record has other array names")
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            arr = record[name]
            if tuple(int(d) for d in arr.shape) != shape or str(arr.dtype) not in _FLOAT_KINDS:
                raise RejectedUpdate("shape-mismatch", f"array {name!r} has another shape or dtype")
            parts.append(np.asarray(arr.numpy(), dtype=np.float32).ravel())
        vec = np.concatenate(parts).astype(np.float32, copy=False)
        if not np.all(np.isfinite(vec)):
            raise RejectedUpdate("non-finite", "the arrays record holds NaN or Inf")
        return vec

    def unflatten(self, vec: npt.NDArray[np.float32]) -> ArrayRecord:
        """A record of this layout holding ``vec`` (each array cast back to its dtype)."""
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise RejectedUpdate("shape-mismatch", f"expected {self.size} values, got {vec.shape}")
        arrays: dict[str, Array] = {}
        offset = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape, dtype=np.int64))
            part = vec[offset : offset + n].reshape(shape)
            arrays[name] = Array(np.ascontiguousarray(part.astype(dtype if dtype != "bfloat16"
                                                                   else "float32")))
            offset += n
        return ArrayRecord(arrays)
