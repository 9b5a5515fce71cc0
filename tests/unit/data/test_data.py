"""Data loaders: digits split, IDX parsing and validation, MNIST-layout folders, data_dir."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from modelshield.data import (
    DATASETS,
    data_dir,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_mnist,
)
from modelshield.errors import ConfigError, DataError, MissingDataError

REPO_ROOT = Path(__file__).resolve().parents[3]
SPLIT_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def shared_data() -> Path:
    """$MODELSHIELD_DATA if set, else <repo>/../shared/data."""
    env = os.environ.get("MODELSHIELD_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def idx_bytes(arr: np.ndarray) -> bytes:
    """Hand-rolled IDX encoding (magic 0x0000, type code, ndim, big-endian dims, big-endian data)."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    header = bytes([0, 0, codes[big.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + big.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(folder: Path, *, n_train: int = 12, n_test: int = 6, gz: bool = True) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-layout data set (7x5 images) into folder; return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 7, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 7, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # so the max pixel is exactly 1.0
    for i, (stem, arr) in enumerate(arrays.items()):
        # Mix compressed and raw files: both must be accepted.
        use_gz = gz and i % 2 == 0
        write_idx(folder / (f"{stem}.gz" if use_gz else stem), arr, gz=use_gz)
    return arrays


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range() -> None:
    ds = load_digits()
    assert ds.name == "digits" and ds.source == "sklearn.datasets.load_digits"
    assert ds.x_train.shape == (1257, 1, 8, 8) and ds.x_test.shape == (540, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_test.shape == (540,) and ds.classes == tuple(str(d) for d in range(10))
    x = torch.cat([ds.x_train, ds.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # pixel values are 0..16 divided by 16, so 16 * x is integral
    assert torch.equal(x * 16, (x * 16).round())
    assert ds.bounds == (0.0, 1.0) and ds.n_classes == 10 and ds.input_shape == (1, 8, 8)


def test_digits_split_is_stratified() -> None:
    ds = load_digits()
    y_all = torch.cat([ds.y_train, ds.y_test])
    per_class = torch.bincount(y_all, minlength=10)
    test_counts = torch.bincount(ds.y_test, minlength=10)
    assert int(per_class.sum()) == 1797
    # each class is held out in proportion 0.3 (up to rounding)
    assert (test_counts.double() - per_class.double() * 0.3).abs().max() <= 1.0


def test_digits_is_deterministic_and_seeded() -> None:
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.sha256 == b.sha256 and re.fullmatch(r"[0-9a-f]{64}", a.sha256)
    c = load_digits(seed=1)
    assert not torch.equal(a.y_test, c.y_test) and a.sha256 != c.sha256
    d = load_digits(test_fraction=0.5)
    assert d.x_test.shape[0] == 899 or d.x_test.shape[0] == 898


def test_digits_returns_fresh_tensors() -> None:
    a = load_digits()
    a.x_train.zero_()
    assert float(load_digits().x_train.max()) == 1.0


def test_digits_sha256_covers_the_split_arrays() -> None:
    ds = load_digits()
    h = hashlib.sha256()
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(t.numpy().tobytes())
    assert ds.sha256 == h.hexdigest()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, "0.2", True])
def test_digits_rejects_bad_test_fraction(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"load_digits: 'test_fraction' must be a number in \(0, 1\)"):
        load_digits(test_fraction=bad)  # type: ignore[arg-type]


def test_digits_rejects_bad_seed() -> None:
    with pytest.raises(ConfigError, match="'seed' must be an int"):
        load_digits(seed=-1)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_load_idx_round_trip(tmp_path: Path, gz: bool, dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a-{dtype.strip('>')}.idx{'.gz' if gz else ''}", arr, gz=gz)
    out = load_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype.kind == arr.dtype.kind
    assert out.dtype.isnative and np.array_equal(out, arr)
    assert not out.flags.writeable  # shared with the cache


def test_load_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    arr = np.array([1, 2, 3], dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", arr, gz=True)  # no .gz suffix
    assert np.array_equal(load_idx(path), arr)


def test_load_idx_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.idx", np.array([1, 2, 3], dtype=np.uint8))
    assert load_idx(path).tolist() == [1, 2, 3]
    write_idx(path, np.array([7, 8], dtype=np.uint8))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # make sure the mtime differs
    assert load_idx(path).tolist() == [7, 8]


def test_load_idx_truncated_data(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 5), dtype=np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(data[:-3])
    with pytest.raises(DataError, match=r"short\.idx.*must hold 20 data bytes.*got 17 \(truncated\)"):
        load_idx(path)


def test_load_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "hdr.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"\x00\x00\x00\x02")
    with pytest.raises(DataError, match=r"hdr\.idx.*16-byte header.*truncated"):
        load_idx(path)


def test_load_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)) + b"xx")
    with pytest.raises(DataError, match=r"long\.idx.*got 5 \(trailing bytes\)"):
        load_idx(path)


def test_load_idx_bad_magic_and_type(tmp_path: Path) -> None:
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match=r"magic\.idx.*IDX magic 0x0000; got 0x0102"):
        load_idx(bad_magic)
    bad_type = tmp_path / "type.idx"
    bad_type.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match=r"type\.idx.*type code 0x07"):
        load_idx(bad_type)


def test_load_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), dtype=np.uint8)))[:-10])
    with pytest.raises(DataError, match=r"broken\.gz.*gzip"):
        load_idx(path)


def test_load_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"nope\.idx.*missing.*MODELSHIELD_DATA"):
        load_idx(tmp_path / "nope.idx")


# --------------------------------------------------------------------------- data_dir / MNIST layout


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv("MODELSHIELD_DATA", str(env_dir))
    assert data_dir() == env_dir.resolve()
    assert data_dir(tmp_path) == tmp_path.resolve()


def test_data_dir_unset_names_both_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSHIELD_DATA", raising=False)
    with pytest.raises(MissingDataError, match=r"MODELSHIELD_DATA unset.*MODELSHIELD_DATA.*--data-dir"):
        data_dir()


def test_data_dir_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingDataError, match=r"root=.*absent.*not a folder.*--data-dir"):
        data_dir(tmp_path / "absent")
    monkeypatch.setenv("MODELSHIELD_DATA", str(tmp_path / "gone"))
    with pytest.raises(MissingDataError, match=r"MODELSHIELD_DATA=.*gone"):
        load_mnist()


@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_load_mnist_from_tiny_files(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "mnist" if layout == "subfolder" else tmp_path
    arrays = fake_mnist(folder)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.source == str(folder.resolve())
    assert ds.x_train.shape == (12, 1, 7, 5) and ds.x_test.shape == (6, 1, 7, 5)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(ds.x_train, expected) and float(ds.x_train.max()) == 1.0
    assert ds.y_test.tolist() == [5, 4, 3, 2, 1, 0]
    # sha256 over the raw files' bytes, files sorted by name
    files = sorted(p for p in folder.iterdir() if p.name.split(".")[0] in SPLIT_FILES)
    assert [p.name.split(".")[0] for p in files] == sorted(SPLIT_FILES)
    assert ds.sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    assert load_mnist(tmp_path).sha256 == ds.sha256


def test_load_mnist_tensors_are_not_shared_with_the_cache(tmp_path: Path) -> None:
    fake_mnist(tmp_path)
    load_mnist(tmp_path).x_train.fill_(0.5)
    assert float(load_mnist(tmp_path).x_train.max()) == 1.0


def test_load_fashion_mnist_uses_its_subfolder(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "fashion-mnist", n_train=10)
    ds = load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist" and ds.x_train.shape[0] == 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert load_dataset("fashion-mnist", tmp_path).sha256 == ds.sha256


def test_load_mnist_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingDataError, match=r"t10k-labels-idx1-ubyte.*MODELSHIELD_DATA.*--data-dir"):
        load_mnist(tmp_path)


def test_load_mnist_truncated_file_names_it(tmp_path: Path) -> None:
    fake_mnist(tmp_path, gz=False)
    target = tmp_path / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path)


def test_load_mnist_inconsistent_counts_and_labels(tmp_path: Path) -> None:
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"same number of items; got 6 images and 5 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 10], dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels in \[0, 9\]; got 10"):
        load_mnist(tmp_path)


def test_load_dataset_by_name_and_unknown_name(tmp_path: Path) -> None:
    assert DATASETS == ("digits", "mnist", "fashion-mnist")
    assert load_dataset("digits").sha256 == load_digits().sha256
    fake_mnist(tmp_path / "mnist")
    assert load_dataset("mnist", tmp_path).x_train.shape[0] == 12
    listed = r"'digits', 'mnist', 'fashion-mnist'; got 'mnsit'.*Did you mean 'mnist'"
    with pytest.raises(ConfigError, match=listed):
        load_dataset("mnsit")


# --------------------------------------------------------------------------- real files


@pytest.mark.data
@pytest.mark.parametrize(("loader", "sub"), [(load_mnist, "mnist"), (load_fashion_mnist, "fashion-mnist")])
def test_real_idx_datasets(loader: object, sub: str) -> None:
    root = shared_data()
    if not (root / sub).is_dir():
        pytest.skip(f"{root / sub} not found; set MODELSHIELD_DATA to the folder holding {sub}/")
    ds = loader(root)  # type: ignore[operator]
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert float(ds.x_test.min()) >= 0.0 and float(ds.x_test.max()) == 1.0
    # both splits are (nearly) balanced over the 10 classes
    assert torch.bincount(ds.y_train, minlength=10).min() >= 5000
    files = sorted((root / sub).glob("*-ubyte*"))
    assert ds.sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    assert loader(root).sha256 == ds.sha256  # type: ignore[operator]
