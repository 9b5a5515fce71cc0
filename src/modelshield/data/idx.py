"""IDX files (LeCun's MNIST format) and the MNIST / Fashion-MNIST loaders built on them.

Parsed arrays are cached in memory per process, keyed on the resolved path, modification time
and size, so repeated loads only pay for the float conversion.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from modelshield._io import hash_file
from modelshield._resources import check_memory, format_bytes
from modelshield.data._dataset import DATA_ENV, Dataset, data_dir
from modelshield.errors import DataError, MissingDataError

__all__ = ["FASHION_MNIST_CLASSES", "MNIST_CLASSES", "load_fashion_mnist", "load_idx", "load_mnist"]

MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
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

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "IDX file format").
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# The four files of an MNIST-style data set, by role (names as distributed, optionally + ".gz").
_SPLIT_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1032
"""Deflate's best compression ratio (about 1032:1): the most data a gzip file can honestly hold."""
_FIX = "Re-download the file; it is corrupt or not in IDX format."


def load_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file, gzip-compressed or raw, into a numpy array.

    The compression is detected from the file's first bytes, not its name. The header (magic,
    type code, number of dimensions, dimensions) is read and validated first, and the data size
    it declares is checked before any data is read: it must be possible for the file's size
    (a gzip file holds at most about 1032 times its size) and fit in memory. The data is then
    read with a bounded read and must match the dimensions exactly, so a crafted file (a "gzip
    bomb") is refused without being inflated.

    Args:
        path: the file, e.g. ``.../train-images-idx3-ubyte.gz``.

    Returns:
        A read-only array of the file's shape in native byte order (``uint8`` for MNIST). It is
        shared with the in-memory cache: copy it (``arr.copy()``) before modifying.

    Raises:
        MissingDataError: the file does not exist.
        DataError: the file is not valid IDX (bad gzip stream, bad magic, unknown type code,
            truncated header or data, trailing bytes, a declared size the file cannot hold or
            memory cannot fit); the message names the file.

    Example:
        labels = load_idx("mnist/t10k-labels-idx1-ubyte.gz")   # shape (10000,), uint8
    """
    return _parse_cached(_cache_key(path))[0]


def _cache_key(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, mtime_ns, size) of an existing file, or raise MissingDataError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(
            f"load_idx: the IDX file must exist; got {str(p)!r}, which is "
            f"{'a folder' if p.is_dir() else 'missing'}. Check the path, set {DATA_ENV} or pass "
            "root=... (CLI: --data-dir)."
        )
    st = p.stat()
    return str(p.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=16)
def _parse_cached(key: tuple[str, int, int]) -> tuple[np.ndarray, str]:
    """The parsed read-only array and the SHA-256 of the file's bytes."""
    path = key[0]
    try:
        with open(path, "rb") as fh:
            arr = _parse_idx_stream(fh, path, file_size=os.fstat(fh.fileno()).st_size)
        digest = hash_file(path)
    except OSError as exc:
        raise DataError(f"load_idx: cannot read {path!r}: {exc}. Check the file's permissions.") from exc
    return arr, digest.hexdigest()


def _read(stream: BinaryIO, n: int, path: str) -> bytes:
    """Up to n bytes of a (possibly gzip) stream; a damaged gzip stream is a DataError."""
    try:
        return stream.read(n)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"load_idx: {path!r} must be a complete gzip stream; got a damaged one ({exc}). {_FIX}"
        ) from exc


def _parse_idx_stream(raw: BinaryIO, path: str, *, file_size: int) -> np.ndarray:
    """Read and validate an IDX file (gunzipped on the fly when it starts with the gzip magic).

    The header is read first and the data size it declares is checked before anything else
    is read: it must be possible for a file of ``file_size`` bytes (raw: exactly; gzip: at most
    ``_MAX_DEFLATE_RATIO`` times the compressed size) and fit in memory. The data is then read
    with a bounded read (the declared size plus one byte, to detect trailing bytes), so a crafted
    file can never make the loader inflate more than its header declares.
    """
    compressed = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
    head = _read(stream, 4, path)
    if len(head) < 4:
        raise DataError(
            f"load_idx: {path!r} must start with a 4-byte IDX header; got {len(head)} bytes "
            f"(truncated). {_FIX}"
        )
    if head[:2] != b"\x00\x00":
        raise DataError(
            f"load_idx: {path!r} must start with the IDX magic 0x0000; got 0x{head[:2].hex()}. {_FIX}"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"load_idx: {path!r} has IDX type code 0x{code:02X}; must be one of {known}. {_FIX}")
    if ndim == 0:
        raise DataError(f"load_idx: {path!r} must have at least one dimension; got 0. {_FIX}")
    header = 4 + 4 * ndim
    dim_bytes = _read(stream, 4 * ndim, path)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(
            f"load_idx: {path!r} must have a {header}-byte header for {ndim} dimensions; got "
            f"{4 + len(dim_bytes)} bytes (truncated). {_FIX}"
        )
    dims = struct.unpack(f">{ndim}I", dim_bytes)
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if compressed:
        most = _MAX_DEFLATE_RATIO * file_size
        if expected > most:
            raise DataError(
                f"load_idx: {path!r} declares shape {dims} ({format_bytes(expected)} of data), which "
                f"a {format_bytes(file_size)} gzip file cannot hold (at most about {format_bytes(most)} "
                f"at deflate's best ratio {_MAX_DEFLATE_RATIO}:1); it is truncated or crafted, and was "
                f"not inflated. {_FIX}"
            )
    elif file_size - header != expected:
        problem = "truncated" if file_size - header < expected else "trailing bytes"
        raise DataError(
            f"load_idx: {path!r} must hold {expected} data bytes for shape {dims}; got "
            f"{file_size - header} ({problem}). {_FIX}"
        )
    check_memory("load_idx", f"the data of {path!r} (shape {dims}, {dtype.itemsize}-byte values, as its "
                 "header declares)", expected, error=DataError,
                 fix=f"Use a smaller file or a machine with more memory. {_FIX}")
    data = _read(stream, expected + 1, path)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise DataError(
            f"load_idx: {path!r} must hold {expected} data bytes for shape {dims}; got "
            f"{len(data) if len(data) < expected else 'more'} ({problem}). {_FIX}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(dims)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


def _find_split_files(owner: str, name: str, root: str | Path | None, subdir: str) -> dict[str, Path]:
    """The four IDX files of a data set in ``<root>/<subdir>`` (if it exists) or ``<root>``."""
    base = data_dir(root)
    folder = base / subdir if (base / subdir).is_dir() else base
    found: dict[str, Path] = {}
    for role, stem in _SPLIT_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            expected = ", ".join(f"{s}.gz" for s in _SPLIT_FILES.values())
            raise MissingDataError(
                f"{owner}: the {name} file {str(folder / stem)!r} (or .gz) must exist; it is missing. "
                f"Put the four {name} files ({expected}; raw or gzipped) in {str(base / subdir)!r}, "
                f"or point {DATA_ENV} / root=... (CLI: --data-dir) at the folder that holds "
                f"{subdir}/."
            )
    return found


def _load_idx_dataset(
    owner: str, name: str, root: str | Path | None, subdir: str, classes: tuple[str, ...]
) -> Dataset:
    """Load and validate an MNIST-layout data set into a Dataset."""
    files = _find_split_files(owner, name, root, subdir)
    keys = {role: _cache_key(p) for role, p in files.items()}
    parsed = {role: _parse_cached(k) for role, k in keys.items()}
    arrays = {role: arr for role, (arr, _) in parsed.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        fx, fy = files[f"x_{split}"], files[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(
                f"{owner}: {str(fx)!r} must hold uint8 images of shape (N, H, W); got {x.dtype} "
                f"of shape {x.shape}. Re-download the {name} files."
            )
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DataError(
                f"{owner}: {str(fy)!r} must hold uint8 labels of shape (N,); got {y.dtype} of "
                f"shape {y.shape}. Re-download the {name} files."
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{owner}: {str(fx)!r} and {str(fy)!r} must hold the same number of items; got "
                f"{x.shape[0]} images and {y.shape[0]} labels. Re-download the {name} files."
            )
        if y.size and int(y.max()) >= len(classes):
            raise DataError(
                f"{owner}: {str(fy)!r} must hold labels in [0, {len(classes) - 1}]; got "
                f"{int(y.max())}. Re-download the {name} files."
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{owner}: train and test images must have the same size; got "
            f"{arrays['x_train'].shape[1:]} and {arrays['x_test'].shape[1:]}. Re-download the {name} files."
        )
    return Dataset(
        name=name,
        x_train=_images(arrays["x_train"]),
        y_train=torch.tensor(arrays["y_train"], dtype=torch.int64),
        x_test=_images(arrays["x_test"]),
        y_test=torch.tensor(arrays["y_test"], dtype=torch.int64),
        classes=classes,
        sha256=_combined_sha256(tuple(sorted((p.name, keys[r]) for r, p in files.items()))),
        source=str(files["x_train"].parent),
    )


def _images(arr: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> fresh (N, 1, H, W) float32 tensor in [0, 1]."""
    # torch.tensor copies, so the cached read-only array is never exposed to in-place edits.
    return torch.tensor(arr, dtype=torch.float32).div_(255.0).unsqueeze(1)


@lru_cache(maxsize=16)
def _combined_sha256(named_keys: tuple[tuple[str, tuple[str, int, int]], ...]) -> str:
    """SHA-256 over the files' bytes concatenated in the given (name-sorted) order."""
    digest = hashlib.sha256()
    for _, (path, _mtime, _size) in named_keys:
        hash_file(path, digest)
    return str(digest.hexdigest())


def load_mnist(root: str | Path | None = None) -> Dataset:
    """Load MNIST (LeCun, Bottou, Bengio and Haffner, 1998) from IDX files.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``) in
    ``<root>/mnist`` if that folder exists, else directly in ``<root>``.

    Args:
        root: the data folder; None means ``$MODELSHIELD_DATA``.

    Returns:
        A Dataset with 60,000 training and 10,000 test images of shape ``(1, 28, 28)`` in [0, 1];
        ``sha256`` covers the four files' bytes (sorted by file name).

    Raises:
        MissingDataError: no data folder, or a file is missing (the message says how to fix it).
        DataError: a file is truncated, corrupt or inconsistent with the others.

    Reference:
        Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to
        document recognition", Proc. IEEE, 1998.

    Example:
        ds = load_mnist("/data")        # reads /data/mnist/*.gz
        ds.x_test.shape                 # torch.Size([10000, 1, 28, 28])
    """
    return _load_idx_dataset("load_mnist", "mnist", root, "mnist", MNIST_CLASSES)


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    """Load Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from IDX files.

    Same file names and layout as MNIST, in ``<root>/fashion-mnist`` or directly in ``<root>``.

    Args:
        root: the data folder; None means ``$MODELSHIELD_DATA``.

    Returns:
        A Dataset with 60,000 training and 10,000 test images of shape ``(1, 28, 28)`` in [0, 1].

    Raises:
        MissingDataError: no data folder, or a file is missing (the message says how to fix it).
        DataError: a file is truncated, corrupt or inconsistent with the others.

    Reference:
        H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking
        machine learning algorithms", arXiv:1708.07747, 2017.

    Example:
        ds = load_fashion_mnist()       # reads $MODELSHIELD_DATA/fashion-mnist/
    """
    return _load_idx_dataset(
        "load_fashion_mnist", "fashion-mnist", root, "fashion-mnist", FASHION_MNIST_CLASSES
    )
