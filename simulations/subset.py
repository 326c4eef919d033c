"""Build the vendored Fashion-MNIST subset, ``federation/_data/fashion-mnist-subset.npz``.

The subset is class-balanced: a fixed number of training images per class, drawn from the
official training set, and a fixed number of test images per class, drawn from the official
test set, with a seeded generator. The file is byte-for-byte reproducible (fixed zip
timestamps, fixed member order), so rebuilding it with the same arguments changes nothing::

    python -m simulations.subset --source /usr/share/datasets/fashion-mnist \\
        --out federation/_data/fashion-mnist-subset.npz \\
        --per-class-train 180 --per-class-test 45 --seed 0

Arrays: ``train_x``/``test_x`` ``uint8`` (N, 28, 28); ``train_y``/``test_y`` ``uint8`` (N,),
in a shuffled (not class-sorted) order. Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT
licence; keep ``federation/_data/LICENSE-fashion-mnist.txt`` next to the file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from federation.data import DEBIAN_DIR, NUM_CLASSES, SUBSET_RELPATH, load_dir
from federation.errors import DataError

__all__ = ["balanced_indices", "build_subset", "main", "write_npz"]

# 1980-01-01 is the earliest date a zip entry can carry; a fixed stamp keeps builds identical.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# The subset inside this source tree, wherever the command is run from.
_DEFAULT_OUT = Path(__file__).resolve().parent.parent / SUBSET_RELPATH


def balanced_indices(
    labels: npt.NDArray[np.integer], per_class: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Pick ``per_class`` indices of every class 0..9 without replacement, in shuffled order.

    Raises
    ------
    DataError
        A class has fewer than ``per_class`` samples.
    """
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise DataError(f"class {c} has {len(pool)} samples, fewer than {per_class}")
        chosen.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    return rng.permutation(np.concatenate(chosen)).astype(np.int64)


def build_subset(
    source: str | Path, per_class_train: int, per_class_test: int, seed: int
) -> dict[str, npt.NDArray[np.uint8]]:
    """Draw the balanced subset from the full set in ``source`` (a directory of IDX files)."""
    full = load_dir(source)
    rng = np.random.default_rng(seed)
    tr = balanced_indices(full.train_y, per_class_train, rng)
    te = balanced_indices(full.test_y, per_class_test, rng)
    return {
        "train_x": np.ascontiguousarray(full.train_x[tr]),
        "train_y": full.train_y[tr].astype(np.uint8),
        "test_x": np.ascontiguousarray(full.test_x[te]),
        "test_y": full.test_y[te].astype(np.uint8),
    }


def write_npz(path: str | Path, arrays: dict[str, npt.NDArray[np.uint8]]) -> bytes:
    """Write ``arrays`` as a deflated ``.npz`` with fixed timestamps; return the file's bytes.

    ``numpy.savez_compressed`` stamps each member with the current time, so two builds would
    differ; this writer produces the same format (``numpy.load`` reads it) deterministically.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    data = buf.getvalue()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.subset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", default=str(DEBIAN_DIR), help="directory with the IDX files")
    parser.add_argument("--out", default=str(_DEFAULT_OUT), help="the .npz to write")
    parser.add_argument("--per-class-train", type=int, default=180)
    parser.add_argument("--per-class-test", type=int, default=45)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_class_train < 1 or args.per_class_test < 1 or args.seed < 0:
        parser.error("--per-class-train/--per-class-test must be ≥ 1 and --seed ≥ 0")
    try:
        arrays = build_subset(args.source, args.per_class_train, args.per_class_test, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = write_npz(args.out, arrays)
    print(
        f"wrote {args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}; "
        f"train {len(arrays['train_y'])} ({args.per_class_train}/class), "
        f"test {len(arrays['test_y'])} ({args.per_class_test}/class), seed {args.seed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
