"""Fashion-MNIST, read locally: IDX files, the search order, the vendored subset.

Data is never downloaded at run time. :func:`load_fashion_mnist` looks, in this order, at

1. the directory passed as ``data_dir``;
2. the directory named by the environment variable ``FEDGUARD_DATA_DIR`` (if set and non-empty);
3. ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` package puts
   the full set (60 000 training and 10 000 test images);
4. the small class-balanced subset vendored in ``federation/_data/`` (built by
   ``python -m simulations.subset``), which keeps tests and the default demo self-contained.

A directory that was named (steps 1 and 2) but is missing or malformed raises :class:`DataError`;
so does a Debian directory that exists but is broken. Neither falls back silently to the subset,
because a benchmark that quietly trained on 2 000 images would report meaningless numbers.

A directory holds the four files of the original distribution, gzipped or not:
``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.

Loaded datasets are cached in-process, keyed by resolved path, because simulated clients load
the data once each; the arrays of a :class:`Dataset` are read-only so that the shared copy
cannot be changed by one client under another's feet. :func:`clear_cache` empties the cache.

Fashion-MNIST is Copyright (c) 2017 Zalando SE, released under the MIT licence; the notice
ships next to the subset as ``federation/_data/LICENSE-fashion-mnist.txt``.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from federation.errors import DataError

__all__ = [
    "CLASSES",
    "DATA_DIR_ENV",
    "DEBIAN_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "SUBSET_NAME",
    "SUBSET_RELPATH",
    "Dataset",
    "clear_cache",
    "find_subset",
    "load_dir",
    "load_fashion_mnist",
    "load_subset",
    "normalize",
    "read_idx",
]

DATA_DIR_ENV: Final = "FEDGUARD_DATA_DIR"
"""Environment variable naming a directory with the four Fashion-MNIST IDX files."""

DEBIAN_DIR: Final = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the full set."""

SUBSET_RELPATH: Final = Path("federation", "_data", "fashion-mnist-subset.npz")
"""Path of the vendored subset relative to a directory that holds the ``federation`` package."""

IMAGE_SHAPE: Final = (28, 28)
NUM_CLASSES: Final = 10
CLASSES: Final = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names, indexed by label."""

FASHION_MNIST_MEAN: Final = 0.2860
"""Mean pixel value of the Fashion-MNIST training images, after scaling to [0, 1]."""

FASHION_MNIST_STD: Final = 0.3530
"""Standard deviation of the Fashion-MNIST training pixels, after scaling to [0, 1]."""

# File stems of the original distribution; each may be stored gzipped (``.gz``) or raw.
_FILES: Final = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_SUBSET_KEYS: Final = ("train_x", "train_y", "test_x", "test_y")

# IDX element types (third magic byte). Only unsigned bytes are accepted.
_IDX_TYPES: Final = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
_IDX_UBYTE: Final = 0x08
_GZIP_MAGIC: Final = b"\x1f\x8b"
# Decompressed payloads are read in chunks of this size, so a header that declares more data
# than the stream holds never makes us allocate the declared size up front.
_CHUNK: Final = 1 << 22


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """Read one IDX file (gzipped or raw) holding unsigned bytes.

    Gzip is recognised by the file's first two bytes, not its name. The header is validated
    before any payload is read: the magic must be ``0x00 0x00``, the element type ``0x08``
    (unsigned byte) and the number of dimensions between 1 and 4. The payload must hold exactly
    the product of the declared dimensions; missing or extra bytes are errors. Memory use is
    bounded by what the file really contains, not by what its header claims.

    Parameters
    ----------
    path:
        The file to read.

    Returns
    -------
    numpy.ndarray
        A writable ``uint8`` array with the declared shape.

    Raises
    ------
    DataError
        The file is missing, unreadable, not a valid gzip stream, or not a well-formed
        unsigned-byte IDX file. The message names the file.
    """
    p = Path(path)
    try:
        with p.open("rb") as raw:
            if raw.read(2) == _GZIP_MAGIC:
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _read_idx_stream(gz, p, raw_size=None)
            raw.seek(0)
            return _read_idx_stream(raw, p, raw_size=os.fstat(raw.fileno()).st_size)
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a cut-off gzip stream raises EOFError.
        raise DataError(f"{p}: cannot read ({exc})") from exc


def _read_exact(stream: io.BufferedIOBase, n: int) -> bytes:
    """Read up to ``n`` bytes (fewer only at end of stream)."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_idx_stream(
    stream: io.BufferedIOBase, path: Path, raw_size: int | None
) -> npt.NDArray[np.uint8]:
    head = _read_exact(stream, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(head)} of 4 magic bytes)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: bad IDX magic {head.hex()} (must start with 0000)")
    type_code, ndim = head[2], head[3]
    if type_code != _IDX_UBYTE:
        kind = _IDX_TYPES.get(type_code)
        what = (
            f"element type 0x{type_code:02x} ({kind})" if kind else f"type code 0x{type_code:02x}"
        )
        raise DataError(f"{path}: unsupported IDX {what}; only 0x08 (unsigned byte) is supported")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX file declares {ndim} dimensions; 1 to 4 are supported")
    dim_bytes = _read_exact(stream, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (dimensions cut off)")
    dims = tuple(int.from_bytes(dim_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(dims)
    header_len = 4 + 4 * ndim

    if raw_size is not None:
        # Uncompressed: the file size tells the truth before we allocate anything.
        actual = raw_size - header_len
        if actual != expected:
            word = "truncated" if actual < expected else "has extra bytes"
            raise DataError(
                f"{path}: {word}: header declares shape {dims} = {expected} bytes, "
                f"payload holds {actual}"
            )
        buf = bytearray(expected)
        view, got = memoryview(buf), 0
        while got < expected:
            n = stream.readinto(view[got:])
            if not n:
                break
            got += n
        if got != expected:  # the file shrank while we read it
            raise DataError(f"{path}: truncated: read {got} of {expected} payload bytes")
    else:
        # Compressed: grow the buffer only as real bytes arrive.
        buf = bytearray()
        while len(buf) < expected:
            chunk = stream.read(min(_CHUNK, expected - len(buf)))
            if not chunk:
                raise DataError(
                    f"{path}: truncated: header declares shape {dims} = {expected} bytes, "
                    f"payload holds {len(buf)}"
                )
            buf += chunk
        if stream.read(1):
            raise DataError(f"{path}: has extra bytes after the {expected} bytes of shape {dims}")
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


def _frozen_view(arr: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    view = arr.view()
    view.flags.writeable = False
    return view


def _check_split(
    x: object, y: object, split: str
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{split}: images and labels must be numpy arrays")
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{split}_x: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}"
        )
    if y.dtype != np.int64 or y.ndim != 1:
        raise DataError(f"{split}_y: expected int64 labels of shape (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{split}: {len(x)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise DataError(f"{split}_y: labels must lie in 0..{NUM_CLASSES - 1}")
    return x, y


@dataclass(frozen=True, eq=False)
class Dataset:
    """Fashion-MNIST images and labels, train and official test split.

    The arrays are read-only views (the loader shares one copy between all callers in the
    process); copy them before changing anything.

    Attributes
    ----------
    train_x, test_x:
        ``uint8`` images, shape ``(N, 28, 28)``, pixel values 0..255.
    train_y, test_y:
        ``int64`` labels, shape ``(N,)``, values 0..9 (see :data:`CLASSES`).
    source:
        Where the data came from: ``"dir:/abs/path"`` (a named directory),
        ``"debian:/usr/share/datasets/fashion-mnist"`` or ``"subset"``.
    name:
        The dataset name, ``"fashion-mnist"``.

    Raises
    ------
    DataError
        On construction, if an array has the wrong dtype or shape, images and labels disagree
        in length, or a label is outside 0..9.
    """

    train_x: npt.NDArray[np.uint8]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.uint8]
    test_y: npt.NDArray[np.int64]
    source: str
    name: str = "fashion-mnist"

    def __post_init__(self) -> None:
        _check_split(self.train_x, self.train_y, "train")
        _check_split(self.test_x, self.test_y, "test")
        for field in _SUBSET_KEYS:
            object.__setattr__(self, field, _frozen_view(getattr(self, field)))

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return len(self.train_y)

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return len(self.test_y)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, source={self.source!r}, "
            f"n_train={self.n_train}, n_test={self.n_test})"
        )


def _labels(arr: npt.NDArray[np.generic], where: str) -> npt.NDArray[np.int64]:
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing {stem}.gz (or {stem})")


@functools.lru_cache(maxsize=8)
def _load_dir_cached(directory: str, source: str) -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory (expected the four Fashion-MNIST IDX files)")
    arrays = {key: read_idx(_find_idx(d, stem)) for key, stem in _FILES.items()}
    return Dataset(
        train_x=arrays["train_x"],
        train_y=_labels(arrays["train_y"], f"{d}/{_FILES['train_y']}"),
        test_x=arrays["test_x"],
        test_y=_labels(arrays["test_y"], f"{d}/{_FILES['test_y']}"),
        source=source,
    )


def load_dir(directory: str | os.PathLike[str], *, source: str | None = None) -> Dataset:
    """Load Fashion-MNIST from a directory holding the four IDX files (cached).

    Parameters
    ----------
    directory:
        The directory; ``~`` is expanded and the path resolved (the cache key).
    source:
        The :attr:`Dataset.source` to record; default ``"dir:<resolved path>"``.

    Raises
    ------
    DataError
        The directory is missing, a file is missing or malformed, or the arrays disagree.
    """
    resolved = Path(directory).expanduser().resolve()
    return _load_dir_cached(str(resolved), source or f"dir:{resolved}")


def _distribution_roots() -> list[Path]:
    """Source roots of an installed ``fedguard`` distribution (editable installs, PEP 610)."""
    try:
        text = metadata.distribution("fedguard").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return []
    if not text:
        return []
    try:
        url = json.loads(text).get("url", "")
    except (ValueError, AttributeError):
        return []
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme != "file":
        return []
    return [Path(unquote(parsed.path))]


def find_subset() -> Path:
    """Locate the vendored subset ``federation/_data/fashion-mnist-subset.npz``.

    Looks next to this module first, then under every ``sys.path`` entry, then in the source
    tree of an installed ``fedguard`` distribution (an editable install records it in
    ``direct_url.json``). The later places matter when this module runs from a copy of the
    package that holds only ``*.py`` files, as in a Flower app bundle.

    Raises
    ------
    DataError
        The subset is nowhere to be found.
    """
    candidates = [Path(__file__).resolve().parent.parent / SUBSET_RELPATH]
    candidates += [Path(entry) / SUBSET_RELPATH for entry in sys.path if isinstance(entry, str)]
    candidates += [root / SUBSET_RELPATH for root in _distribution_roots()]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.resolve()
        except OSError:  # an unreadable sys.path entry
            continue
    raise DataError(
        f"the vendored Fashion-MNIST subset ({SUBSET_RELPATH.as_posix()}) was not found next to "
        f"{__name__}, on sys.path, or in an installed fedguard; install fedguard with its "
        f"package data, or point {DATA_DIR_ENV} at a directory with the full set"
    )


@functools.lru_cache(maxsize=2)
def _load_subset_cached(path: str) -> Dataset:
    try:
        # Open the file ourselves: np.load leaks its own handle when the zip is corrupt.
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive")
            with loaded as npz:
                missing = [k for k in _SUBSET_KEYS if k not in npz.files]
                if missing:
                    raise DataError(f"{path}: missing arrays {missing}")
                arrays = {k: np.asarray(npz[k]) for k in _SUBSET_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read the subset ({exc})") from exc
    return Dataset(
        train_x=arrays["train_x"],
        train_y=_labels(arrays["train_y"], f"{path}:train_y"),
        test_x=arrays["test_x"],
        test_y=_labels(arrays["test_y"], f"{path}:test_y"),
        source="subset",
    )


def load_subset() -> Dataset:
    """Load the vendored class-balanced subset (cached).

    Raises
    ------
    DataError
        The subset is missing (see :func:`find_subset`) or malformed.
    """
    return _load_subset_cached(str(find_subset()))


SUBSET_NAME = "subset"
"""The ``data_dir`` value that selects the vendored subset even when the full set exists."""


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load Fashion-MNIST from the first place that has it (see the module docstring).

    Parameters
    ----------
    data_dir:
        A directory with the four IDX files, or ``"subset"`` for the vendored subset. When
        given, it must work: there is no fallback.

    Returns
    -------
    Dataset
        Shared, read-only arrays; repeated calls with the same resolved path return the same
        object.

    Raises
    ------
    DataError
        A named directory (``data_dir`` or ``$FEDGUARD_DATA_DIR``) is missing or malformed, the
        Debian directory exists but is broken, or nothing is found at all.
    """
    if data_dir is not None and str(data_dir) == SUBSET_NAME:
        return load_subset()
    if data_dir is not None:
        return load_dir(data_dir)
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return load_dir(env)
    if DEBIAN_DIR.is_dir():
        return load_dir(DEBIAN_DIR, source=f"debian:{DEBIAN_DIR}")
    return load_subset()


def clear_cache() -> None:
    """Forget every dataset loaded so far in this process."""
    _load_dir_cached.cache_clear()
    _load_subset_cached.cache_clear()


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def normalize(x: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Scale images to [0, 1], then standardise with the Fashion-MNIST mean and std.

    Parameters
    ----------
    x:
        ``uint8`` images, shape ``(N, 28, 28)`` or ``(N, 1, 28, 28)``. Not modified.

    Returns
    -------
    numpy.ndarray
        A new ``float32`` array of shape ``(N, 1, 28, 28)``:
        ``(x / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD``.

    Raises
    ------
    DataError
        ``x`` is not a ``uint8`` array of one of the accepted shapes.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise DataError(f"normalize: expected uint8 images, got {getattr(x, 'dtype', type(x))}")
    if not (
        (x.ndim == 3 and x.shape[1:] == IMAGE_SHAPE)
        or (x.ndim == 4 and x.shape[1:] == (1, *IMAGE_SHAPE))
    ):
        raise DataError(f"normalize: expected shape (N, 28, 28) or (N, 1, 28, 28), got {x.shape}")
    out = x.reshape(len(x), 1, *IMAGE_SHAPE).astype(np.float32)
    np.divide(out, np.float32(255.0), out=out)
    np.subtract(out, np.float32(FASHION_MNIST_MEAN), out=out)
    np.divide(out, np.float32(FASHION_MNIST_STD), out=out)
    return out
