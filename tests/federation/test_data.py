"""federation.data: the IDX reader, the search order, the vendored subset, normalisation."""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from federation import data
from federation.errors import DataError

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def idx_bytes(
    arr: np.ndarray,
    *,
    type_code: int = 0x08,
    magic: bytes = b"\x00\x00",
    dims: tuple[int, ...] | None = None,
) -> bytes:
    shape = arr.shape if dims is None else dims
    header = magic + bytes([type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def make_dir(
    root: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0
) -> Path:
    """A directory with four tiny but well-formed Fashion-MNIST IDX files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28)),
        "test_y": np.arange(n_test) % 10,
    }
    for key, stem in FILES.items():
        write(root / (stem + (".gz" if gz else "")), idx_bytes(arrays[key]), gz)
    return root


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No env var, no Debian directory, an empty cache, before and after every test."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian-here")
    data.clear_cache()
    yield
    data.clear_cache()


# ------------------------------------------------------------------------------------------
# read_idx
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    out = data.read_idx(write(tmp_path / "f", idx_bytes(arr), gz))
    assert out.dtype == np.uint8
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    out[...] = 0  # the caller owns a writable array


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw_named_gz = write(tmp_path / "raw.gz", idx_bytes(arr), gz=False)
    gz_named_raw = write(tmp_path / "gz-ubyte", idx_bytes(arr), gz=True)
    np.testing.assert_array_equal(data.read_idx(raw_named_gz), arr)
    np.testing.assert_array_equal(data.read_idx(gz_named_raw), arr)


GOOD = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
MALFORMED = {
    "truncated payload": (idx_bytes(GOOD)[:-5], "truncated"),
    "extra bytes": (idx_bytes(GOOD) + b"\x00", "extra bytes"),
    "dims declare more": (idx_bytes(GOOD, dims=(3, 3, 4)), "truncated"),
    "dims declare fewer": (idx_bytes(GOOD, dims=(1, 3, 4)), "extra bytes"),
    "bad magic": (idx_bytes(GOOD, magic=b"\x01\x00"), "magic"),
    "bad magic 2": (idx_bytes(GOOD, magic=b"\x00\x08"), "magic"),
    "float type": (idx_bytes(GOOD, type_code=0x0D), "0x0d"),
    "int type": (idx_bytes(GOOD, type_code=0x0C), "0x0c"),
    "unknown type": (idx_bytes(GOOD, type_code=0x07), "0x07"),
    "zero dims": (b"\x00\x00\x08\x00" + GOOD.tobytes(), "dimensions"),
    "five dims": (idx_bytes(np.zeros((1, 1, 1, 1, 2))), "dimensions"),
    "empty file": (b"", "truncated"),
    "short magic": (b"\x00\x00\x08", "truncated"),
    "dims cut off": (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", "truncated"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_rejects_malformed(tmp_path: Path, gz: bool, case: str) -> None:
    payload, words = MALFORMED[case]
    path = write(tmp_path / "bad-idx", payload, gz)
    with pytest.raises(DataError, match=words) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_huge_declared_shape_allocates_nothing_big(tmp_path: Path, gz: bool) -> None:
    # 2^128 bytes declared, a few actually present: a naive reader would try to allocate it.
    payload = idx_bytes(np.zeros(16), dims=(0xFFFFFFFF,) * 4)
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(write(tmp_path / "huge", payload, gz))


def test_read_idx_broken_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.zeros((50, 28, 28))), mtime=0)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.gz"):
        data.read_idx(cut)
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"\x1f\x8b" + b"\xff" * 40)
    with pytest.raises(DataError, match=r"junk\.gz"):
        data.read_idx(junk)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------
# directories and the Dataset
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_dir(tmp_path: Path, gz: bool) -> None:
    d = make_dir(tmp_path / "fm", gz=gz)
    ds = data.load_dir(d)
    assert (ds.n_train, ds.n_test) == (20, 10)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.shape == (20, 28, 28)
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    assert ds.source == f"dir:{d.resolve()}"
    assert ds.name == "fashion-mnist"
    assert not ds.train_x.flags.writeable and not ds.test_y.flags.writeable
    assert data.load_dir(d) is ds  # cached
    assert data.load_dir(tmp_path / "fm" / ".." / "fm") is ds  # keyed by resolved path


@pytest.mark.parametrize(
    ("key", "bad", "words"),
    [
        ("train_y", np.arange(19) % 10, "20 images but 19 labels"),
        ("test_x", np.zeros((10, 27, 28)), r"test_x: expected uint8 images"),
        ("test_y", np.arange(10) + 1, r"labels must lie in 0\.\.9"),
        ("train_x", np.zeros((20, 28 * 28)), r"train_x: expected uint8 images"),
    ],
)
def test_load_dir_rejects_inconsistent(
    tmp_path: Path, key: str, bad: np.ndarray, words: str
) -> None:
    d = make_dir(tmp_path / "fm")
    write(d / (FILES[key] + ".gz"), idx_bytes(bad), gz=True)
    with pytest.raises(DataError, match=words):
        data.load_dir(d)


def test_load_dir_missing_file(tmp_path: Path) -> None:
    d = make_dir(tmp_path / "fm")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load_dir(d)


def test_dataset_validates_and_does_not_mutate_inputs() -> None:
    x = np.zeros((4, 28, 28), np.uint8)
    y = np.arange(4, dtype=np.int64)
    ds = data.Dataset(x, y, x[:2], y[:2], source="test")
    assert x.flags.writeable  # the caller's array is left alone; the dataset holds a view
    assert not ds.train_x.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ds.train_x[0, 0, 0] = 1
    with pytest.raises(DataError, match="int64 labels"):
        data.Dataset(x, y.astype(np.int32), x, y, source="test")
    with pytest.raises(DataError, match="4 images but 3 labels"):
        data.Dataset(x, y, x, y[:3], source="test")


# ------------------------------------------------------------------------------------------
# search order
# ------------------------------------------------------------------------------------------


def test_explicit_dir_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(make_dir(tmp_path / "env", n_train=30)))
    ds = data.load_fashion_mnist(make_dir(tmp_path / "arg", n_train=40))
    assert ds.n_train == 40 and ds.source == f"dir:{(tmp_path / 'arg').resolve()}"


def test_env_dir_wins_over_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_DIR", make_dir(tmp_path / "debian", n_train=50))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(make_dir(tmp_path / "env", n_train=30)))
    ds = data.load_fashion_mnist()
    assert ds.n_train == 30 and ds.source.startswith("dir:")


def test_debian_dir_when_nothing_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = make_dir(tmp_path / "debian", n_train=50, gz=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.setenv(data.DATA_DIR_ENV, "")  # empty means unset
    ds = data.load_fashion_mnist()
    assert ds.n_train == 50 and ds.source == f"debian:{debian}"


@pytest.mark.parametrize("how", ["argument", "env"])
@pytest.mark.parametrize("what", ["missing", "broken", "a file"])
def test_named_bad_dir_raises_without_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, what: str
) -> None:
    monkeypatch.setattr(data, "DEBIAN_DIR", make_dir(tmp_path / "debian"))  # would work
    bad = tmp_path / "bad"
    if what == "broken":
        make_dir(bad)
        (bad / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    elif what == "a file":
        bad.write_text("not a directory")
    if how == "env":
        monkeypatch.setenv(data.DATA_DIR_ENV, str(bad))
    with pytest.raises(DataError, match="bad"):
        data.load_fashion_mnist(bad if how == "argument" else None)


def test_broken_debian_dir_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = make_dir(tmp_path / "debian")
    (debian / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    with pytest.raises(DataError, match="t10k-images"):
        data.load_fashion_mnist()


def test_subset_fallback_when_nothing_else() -> None:
    ds = data.load_fashion_mnist()
    assert ds.source == "subset"
    assert data.load_fashion_mnist() is ds


def _not_installed(name: str) -> object:
    raise importlib.metadata.PackageNotFoundError(name)


def test_subset_found_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a Flower app bundle: this module's copy has no _data/, the real package is elsewhere.
    bundle = tmp_path / "bundle" / "federation"
    bundle.mkdir(parents=True)
    monkeypatch.setattr(data, "__file__", str(bundle / "data.py"))
    monkeypatch.setattr(data.metadata, "distribution", _not_installed)  # no installed fedguard
    elsewhere = tmp_path / "site"
    (elsewhere / data.SUBSET_RELPATH).parent.mkdir(parents=True)
    (elsewhere / data.SUBSET_RELPATH).write_bytes(b"")
    monkeypatch.setattr("sys.path", [str(tmp_path / "missing"), str(elsewhere)])
    assert data.find_subset() == (elsewhere / data.SUBSET_RELPATH).resolve()

    monkeypatch.setattr("sys.path", [str(tmp_path / "missing")])
    with pytest.raises(DataError, match=r"fashion-mnist-subset\.npz"):
        data.find_subset()
    with pytest.raises(DataError, match="not found"):
        data.load_fashion_mnist()


def test_subset_found_through_editable_install_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeDist:
        def read_text(self, name: str) -> str:
            assert name == "direct_url.json"
            url = (tmp_path / "src tree").as_uri()
            return json.dumps({"url": url, "dir_info": {"editable": True}})

    monkeypatch.setattr(data.metadata, "distribution", lambda name: FakeDist())
    monkeypatch.setattr(data, "__file__", str(tmp_path / "bundle" / "federation" / "data.py"))
    monkeypatch.setattr("sys.path", [])
    target = tmp_path / "src tree" / data.SUBSET_RELPATH
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert data.find_subset() == target.resolve()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


X4 = np.zeros((4, 28, 28), np.uint8)
Y4 = np.arange(4, dtype=np.uint8)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"PK\x03\x04 definitely not a zip", "cannot read"),
        (b"random bytes", "cannot read"),
        (_npy(np.zeros(3)), "not an .npz"),
        (_npz(train_x=X4, train_y=Y4, test_x=X4), r"missing arrays \['test_y'\]"),
        (_npz(train_x=X4, train_y=Y4, test_x=X4, test_y=Y4.astype(float)), "integers"),
        (_npz(train_x=X4.astype(np.int16), train_y=Y4, test_x=X4, test_y=Y4), "uint8 images"),
    ],
)
def test_broken_subset_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, words: str
) -> None:
    bad = tmp_path / "subset.npz"
    bad.write_bytes(content)
    monkeypatch.setattr(data, "find_subset", lambda: bad)
    with pytest.raises(DataError, match=words):
        data.load_subset()


# ------------------------------------------------------------------------------------------
# the vendored subset
# ------------------------------------------------------------------------------------------

SUBSET = Path(data.__file__).resolve().parent / "_data" / "fashion-mnist-subset.npz"
LICENCE = SUBSET.parent / "LICENSE-fashion-mnist.txt"


def test_subset_is_small_balanced_and_licensed() -> None:
    assert SUBSET.stat().st_size <= 1_100_000
    ds = data.load_subset()
    assert ds.source == "subset"
    assert (ds.n_train, ds.n_test) == (1800, 450)
    np.testing.assert_array_equal(np.bincount(ds.train_y, minlength=10), [180] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_y, minlength=10), [45] * 10)
    assert len(np.unique(ds.train_y[:50])) > 5  # stored shuffled, not sorted by class
    assert len(np.unique(ds.train_x.reshape(ds.n_train, -1), axis=0)) == ds.n_train
    text = LICENCE.read_text()
    assert "Copyright (c) 2017 Zalando SE" in text
    assert "MIT License" in text and "Permission is hereby granted" in text


FULL = Path("/usr/share/datasets/fashion-mnist")
needs_full = pytest.mark.skipif(
    not (FULL / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent"
)


@needs_full
def test_full_set_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_DIR", FULL)
    ds = data.load_fashion_mnist()
    assert ds.source == f"debian:{FULL}"
    assert ds.train_x.shape == (60000, 28, 28) and ds.test_x.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_y), [1000] * 10)


@needs_full
def test_subset_rebuilds_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations import subset

    out = tmp_path / "rebuilt.npz"
    assert subset.main(["--source", str(FULL), "--out", str(out)]) == 0
    assert "180/class" in capsys.readouterr().out
    assert out.read_bytes() == SUBSET.read_bytes()


def test_subset_script_reports_bad_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations import subset

    assert subset.main(["--source", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------------------------------
# normalize
# ------------------------------------------------------------------------------------------


def test_normalize() -> None:
    x = np.zeros((3, 28, 28), np.uint8)
    x[1] = 255
    x[2, 0, 0] = 128
    before = x.copy()
    out = data.normalize(x)
    assert out.dtype == np.float32 and out.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(x, before)
    mean, std = data.FASHION_MNIST_MEAN, data.FASHION_MNIST_STD
    np.testing.assert_allclose(out[0], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(out[1], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[2, 0, 0, 0], (128 / 255 - mean) / std, rtol=1e-6)
    np.testing.assert_array_equal(data.normalize(x.reshape(3, 1, 28, 28)), out)


def test_normalize_subset_is_roughly_standardised() -> None:
    out = data.normalize(data.load_subset().train_x)
    assert abs(float(out.mean())) < 0.05 and abs(float(out.std()) - 1) < 0.05


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 28, 28), np.float32),
        np.zeros((2, 28, 27), np.uint8),
        np.zeros((28, 28), np.uint8),
    ],
)
def test_normalize_rejects(bad: np.ndarray) -> None:
    with pytest.raises(DataError, match="normalize"):
        data.normalize(bad)


def test_public_surface() -> None:
    for name in data.__all__:
        assert hasattr(data, name), name
