"""A user's ``arrays`` record <-> fedguard's flat vector: exact round trip, and every record
that does not match the public initial model's layout is refused (never reshaped or clamped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from federation.arrays import ArrayLayout
from federation.errors import RejectedUpdate


def _record() -> ArrayRecord:
    return ArrayRecord(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).state_dict())


def test_round_trip_keeps_names_shapes_dtypes_and_values() -> None:
    rec = _record()
    layout = ArrayLayout.of(rec)
    vec = layout.flatten(rec)
    assert vec.dtype == np.float32 and vec.shape == (layout.size,) and layout.size == 3 * 4 + 4 + 4 * 2 + 2
    back = layout.unflatten(vec)
    assert list(back.keys()) == list(rec.keys())
    for k in rec.keys():
        assert np.array_equal(back[k].numpy(), rec[k].numpy())


@pytest.mark.parametrize("change", ["rename", "reshape", "nan", "drop"])
def test_a_record_with_another_layout_or_non_finite_values_is_refused(change: str) -> None:
    rec = _record()
    layout = ArrayLayout.of(rec)
    arrays = {k: rec[k].numpy().copy() for k in rec.keys()}
    first = next(iter(arrays))
    if change == "rename":
        arrays["other"] = arrays.pop(first)
    elif change == "reshape":
        arrays[first] = arrays[first].reshape(-1)
    elif change == "nan":
        arrays[first][0, 0] = np.nan
    else:
        arrays.pop(first)
    bad = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    with pytest.raises(RejectedUpdate):
        layout.flatten(bad)
    with pytest.raises(RejectedUpdate):
        layout.unflatten(np.zeros(layout.size + 1, np.float32))


def test_integer_arrays_are_refused_with_a_reason() -> None:
    with pytest.raises(RejectedUpdate, match="floating-point"):
        ArrayLayout.of(ArrayRecord({"steps": Array(np.zeros(3, np.int64))}))
