"""Data references: a built-in name, an ``.npz`` file, a CSV / Parquet table, a folder of images
or a labelled-text file, loaded into one :class:`UserData` (kind, split, bounds, class names,
provenance with the file digest). Every malformed file is one ``ModelShieldError`` naming the
file, the problem and the fix; nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import math
import re
import warnings
import zipfile
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_bounds, check_choice, check_range
from modelshield._io import hash_file
from modelshield._resources import TEXT_PARSE_COPIES, check_memory, check_text_file_memory, format_bytes
from modelshield.data._dataset import Dataset
from modelshield.data.phishing import TabularDataset
from modelshield.data.sms_spam import TextDataset, split_labelled_lines
from modelshield.errors import ConfigError, DataError, MissingDataError

__all__ = [
    "BUILTIN_DATA",
    "DATA_KINDS",
    "DEFAULT_TEST_FRACTION",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "DataKind",
    "DataProvenance",
    "UserData",
    "interleaved_order",
    "load_data",
]

DataKind = Literal["image", "tabular", "text"]
DATA_KINDS: tuple[str, ...] = ("image", "tabular", "text")

BUILTIN_DATA: dict[str, DataKind] = {
    "digits": "image",
    "mnist": "image",
    "fashion-mnist": "image",
    "phishing-websites": "tabular",
    "sms-spam": "text",
}
"""The built-in data set names and their kinds."""

DEFAULT_TEST_FRACTION = 0.3
"""Share held out for testing when a file has no test split of its own."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
"""Image files read from a class sub-folder (case-insensitive)."""

MAX_IMAGE_PIXELS = 1 << 25
"""Largest image accepted (width x height, about 33.5 million pixels): bigger is refused as a
possible decompression bomb before it is decoded."""

_OWNER = "load_data"
_TEXT_SUFFIXES = (".tsv", ".txt", "")
_NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names", "bounds")
_SMALLER_FILE = (
    "Use a smaller file (a sample of the rows), or raise $MODELSHIELD_MAX_MEMORY if memory allows."
)
_CELL_BYTES = 20
"""Bytes held per numeric table cell at the peak: float64 while parsing, then float32 copies (the
array, the split, the output tensor)."""
_ROW_BYTES = 100
"""Bytes held per table row besides its cells (the label string, the line number)."""
_GREY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I"})
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini"})
_SUPPORTED = (
    "a built-in name (" + ", ".join(BUILTIN_DATA) + "), an .npz file with arrays x and y, a .csv or "
    ".parquet table (with label_col), a folder of images with one sub-folder per class, or a .tsv "
    "file of '<label>\\t<text>' lines"
)


@dataclass(frozen=True, slots=True)
class DataProvenance:
    """Where the data came from and every choice made while loading it.

    Attributes:
        ref: the reference as given (a name or a path).
        format: ``"builtin"``, ``"npz"``, ``"csv"``, ``"tsv"``, ``"parquet"``, ``"image-folder"``
            or ``"text-lines"``.
        path: the resolved file or folder; None for a built-in data set.
        sha256: SHA-256 of the file's bytes; for a folder, of the sorted ``"<relative path>
            <sha256>"`` lines of its images; for a built-in data set, its loader's digest.
        split: how the test split was made, e.g. ``"from the file"`` or ``"seeded stratified"``.
        test_fraction: the held-out share of a split made here; None when the data had one.
        seed: the seed of a split made here; None when the data had one.
        bounds_source: where ``bounds`` came from (``"given"``, ``"file"``, ``"data min/max"``,
            ``"images scaled to [0, 1]"``, ``"built-in"``); ``"none (text)"`` for text.
        labels: how labels became class indices (``"integer labels"``, ``"names, sorted"``,
            ``"names, given order"``, ``"built-in"``).
        scaling: how inputs were rescaled (``"/255 (8-bit images)"``, ``"none"``).
    """

    ref: str
    format: str
    path: str | None
    sha256: str
    split: str
    test_fraction: float | None
    seed: int | None
    bounds_source: str
    labels: str
    scaling: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, eq=False)
class UserData:
    """A labelled train/test split loaded from a data reference (see :func:`load_data`).

    Equality is identity (``eq=False``); compare ``provenance.sha256`` to check two loads read
    the same bytes.

    Attributes:
        name: a short name for reports: the built-in name or the file / folder stem.
        kind: ``"image"``, ``"tabular"`` or ``"text"``.
        x_train, x_test: image: ``(N, C, H, W)`` float32 tensors; tabular: ``(N, D)`` float32
            tensors; text: tuples of strings.
        y_train, y_test: ``(N,)`` int64 class indices into ``class_names``.
        class_names: the class names by index.
        bounds: the input range ``(lo, hi)`` every feature lies in; None for text.
        feature_names: tabular column names, in order; ``()`` otherwise.
        feature_ranges: tabular per-column ``(min, max)`` over all rows (train and test);
            ``()`` otherwise. A starting point for a constraint spec.
        provenance: the source, digest and every loading choice.
    """

    name: str
    kind: DataKind
    x_train: Tensor | tuple[str, ...]
    y_train: Tensor
    x_test: Tensor | tuple[str, ...]
    y_test: Tensor
    class_names: tuple[str, ...]
    bounds: tuple[float, float] | None
    feature_names: tuple[str, ...]
    feature_ranges: tuple[tuple[float, float], ...]
    provenance: DataProvenance

    def __repr__(self) -> str:
        return (
            f"UserData(name={self.name!r}, kind={self.kind!r}, train={len(self.y_train)}, "
            f"test={len(self.y_test)}, input_shape={self.input_shape}, classes={len(self.class_names)}, "
            f"bounds={self.bounds}, format={self.provenance.format!r})"
        )

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(C, H, W)`` for images, ``(D,)`` for tables, ``()`` for text."""
        return tuple(self.x_train.shape[1:]) if isinstance(self.x_train, Tensor) else ()

    def to_dataset(self) -> Dataset | TabularDataset | TextDataset:
        """The same split as the record the built-in loaders return (by kind), for code that takes one."""
        source = self.provenance.path or self.provenance.ref
        if isinstance(self.x_train, tuple) and isinstance(self.x_test, tuple):
            return TextDataset(
                name=self.name, texts_train=self.x_train, y_train=self.y_train, texts_test=self.x_test,
                y_test=self.y_test, class_names=self.class_names, sha256=self.provenance.sha256,
                source=source,
            )
        if not (isinstance(self.x_train, Tensor) and isinstance(self.x_test, Tensor)):  # pragma: no cover
            raise DataError(f"UserData: x_train and x_test must be of one type; got {self!r}.")
        bounds = self.bounds if self.bounds is not None else (0.0, 1.0)
        if self.kind == "tabular":
            return TabularDataset(
                name=self.name, feature_names=self.feature_names, x_train=self.x_train,
                y_train=self.y_train, x_test=self.x_test, y_test=self.y_test,
                class_names=self.class_names, sha256=self.provenance.sha256, source=source, bounds=bounds,
            )
        return Dataset(
            name=self.name, x_train=self.x_train, y_train=self.y_train, x_test=self.x_test,
            y_test=self.y_test, classes=self.class_names, sha256=self.provenance.sha256, source=source,
            bounds=bounds,
        )


# ----------------------------------------------------------------------------------------------
# The entry point


def load_data(
    ref: str | Path,
    *,
    kind: Literal["auto", "image", "tabular", "text"] = "auto",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
    text_col: str | None = None,
    bounds: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
) -> UserData:
    """Load a data reference into a labelled train/test split.

    References, and the kind each gives with ``kind="auto"``:

    - a built-in name (``BUILTIN_DATA``: digits, mnist, fashion-mnist → image;
      phishing-websites → tabular; sms-spam → text), read from ``data_root`` /
      ``$MODELSHIELD_DATA`` by the built-in loaders. A name wins over a file of the same name
      in the working folder; write ``./digits`` for the file.
    - ``.npz`` (read with ``allow_pickle=False``; numeric arrays only): ``x`` and ``y``,
      optionally ``x_test`` and ``y_test`` (the test split), ``class_names`` (strings) and
      ``bounds`` (two numbers). ``x`` of shape ``(N, C, H, W)`` or ``(N, H, W)`` → image
      (channels first; ``uint8`` pixels are divided by 255); ``(N, D)`` → tabular.
    - ``.csv`` / ``.parquet`` with ``label_col``: tabular, features ``feature_cols`` (default:
      every other column; each must be numeric). With ``text_col``: text. Parquet needs
      ``pip install 'modelshield[parquet]'`` (pyarrow).
    - a folder with one sub-folder per class of PNG / JPEG / BMP images (or ``train/`` and
      ``test/`` folders each holding the class sub-folders): image. Class names are the
      sorted sub-folder names (the order of torchvision's ``ImageFolder``); all images must
      share one size; grey-scale (modes 1, L, LA, I;16) stays one channel, any other image
      (palette images included) makes every image RGB, alpha dropped; pixels scaled to
      [0, 1] (8-bit / 255, 16-bit / 65535). Hidden files and files beside the class
      folders are ignored; anything else in a class folder is an error.
    - ``.tsv`` / ``.txt`` / no extension: ``<label>\\t<text>`` lines, as the SMS Spam
      Collection: text. With ``label_col`` it is a tab-separated table with a header, read
      as a CSV.

    Labels are integers ``0..C-1`` (every class present), or names mapped to their sorted
    order, or to their index in ``class_names`` when given. When the data have no test split
    of their own, a seeded stratified split holds out ``test_fraction`` (default
    ``DEFAULT_TEST_FRACTION`` = 0.3; built-ins keep their loaders' defaults) of each class.
    Bounds are the given ones, else the file's (``bounds`` in an npz), else [0, 1] for images
    (the data's min/max if they leave it), else the min/max of the features over all rows
    (train and test, so that test points lie within them). The data are checked to lie within
    the bounds. Every choice is recorded in ``provenance``.

    Args:
        ref: the reference (see above).
        kind: the expected kind; ``"auto"`` infers it. A kind the reference cannot give is a
            ConfigError.
        label_col: the label column of a table (CSV / Parquet / TSV with a header).
        feature_cols: the feature columns of a table, in order; None means every column but
            the label.
        text_col: the text column of a table holding texts.
        bounds: the input range ``(lo, hi)``; None reads it from the data.
        class_names: the class names by index; None reads them from the data. With named
            labels (or an image folder) every label must be one of them, and their order
            sets the class indices.
        test_fraction: held-out share in (0, 0.95] for data without a test split; None means
            ``DEFAULT_TEST_FRACTION`` (or a built-in loader's default).
        seed: seed of the split.
        data_root: the folder of the built-in data sets; None means ``$MODELSHIELD_DATA``.

    Returns:
        A UserData.

    Raises:
        MissingDataError: the file or folder does not exist (or a built-in's files are absent).
        DataError: the file is malformed: wrong content for its extension (a pickle is refused
            unread), object or non-numeric arrays, NaN / inf features, mismatched lengths,
            inconsistent or single-class labels, unreadable or odd-sized images, invalid UTF-8,
            a file too big for memory. The message names the file, the place and the fix.
        ConfigError: a bad option, or one that does not fit the reference (a missing column,
            with close names suggested).

    Example:
        data = load_data("transactions.csv", label_col="is_fraud")
        data.kind, data.x_train.shape, data.class_names     # ('tabular', (700, 12), ('0', '1'))
    """
    opts = _Options.build(
        kind=kind, label_col=label_col, feature_cols=feature_cols, text_col=text_col, bounds=bounds,
        class_names=class_names, test_fraction=test_fraction, seed=seed,
    )
    if isinstance(ref, str) and ref in BUILTIN_DATA:
        return _load_builtin(ref, opts, data_root)
    if not isinstance(ref, str | Path):
        raise ConfigError(
            f"{_OWNER}: 'ref' must be a str or Path; got {type(ref).__name__}. Pass {_SUPPORTED}."
        )
    path = Path(ref).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(str(ref), BUILTIN_DATA, n=1)
        hint = f"Did you mean the built-in {close[0]!r}? " if close else ""
        raise MissingDataError(
            f"{_OWNER}: 'ref' must be a built-in name or an existing file or folder; got {str(ref)!r}, "
            f"which does not exist. {hint}Pass {_SUPPORTED}."
        )
    path = path.resolve()
    if not (path.is_dir() or path.is_file()):
        raise DataError(
            f"{_OWNER}: 'ref' must be a regular file or a folder; got {str(ref)!r}, which is neither "
            "(a device, a pipe or a socket). Save the data to a file first."
        )
    if path.is_dir():
        parsed = _read_image_folder(path, opts)
    else:
        suffix = path.suffix.lower()
        if suffix == ".npz":
            parsed = _read_npz(path, opts)
        elif suffix in (".csv", ".tsv", ".txt", "") and (suffix == ".csv" or opts.label_col is not None):
            parsed = _read_csv(path, opts, delimiter="," if suffix == ".csv" else "\t")
        elif suffix in (".parquet", ".pq"):
            parsed = _read_parquet(path, opts)
        elif suffix in _TEXT_SUFFIXES:
            parsed = _read_text_lines(path, opts)
        elif suffix == ".npy":
            raise DataError(
                f"{_OWNER}: the data file must hold inputs and labels; got the single-array file "
                f"{str(path)!r}. Save both with numpy.savez({path.with_suffix('.npz').name!r}, x=x, y=y)."
            )
        else:
            raise DataError(
                f"{_OWNER}: the data file must be .npz, .csv, .parquet, .tsv or a folder; got "
                f"{str(path)!r} ({suffix!r}). Pass {_SUPPORTED}."
            )
    return _finish(parsed, opts, ref=str(ref), path=path)


# ----------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class _Options:
    kind: str
    label_col: str | None
    feature_cols: tuple[str, ...] | None
    text_col: str | None
    bounds: tuple[float, float] | None
    class_names: tuple[str, ...] | None
    test_fraction: float | None
    seed: int

    @staticmethod
    def build(
        *,
        kind: object,
        label_col: object,
        feature_cols: object,
        text_col: object,
        bounds: object,
        class_names: object,
        test_fraction: object,
        seed: object,
    ) -> _Options:
        check_choice("kind", kind, ("auto", *DATA_KINDS), owner=_OWNER, fix="Use 'auto' to infer it.")
        for name, col in (("label_col", label_col), ("text_col", text_col)):
            if col is not None and not (isinstance(col, str) and col):
                raise ConfigError(
                    f"{_OWNER}: {name!r} must be a column name (a non-empty str); got {col!r}. "
                    "Give the column's name as written in the file's header."
                )
        cols: tuple[str, ...] | None = None
        if feature_cols is not None:
            if isinstance(feature_cols, str) or not isinstance(feature_cols, Sequence):
                raise ConfigError(
                    f"{_OWNER}: 'feature_cols' must be a list of column names; got {feature_cols!r}. "
                    "Pass e.g. feature_cols=['amount', 'age'] (CLI: --feature-cols amount,age)."
                )
            cols = tuple(feature_cols)
            bad = [c for c in cols if not (isinstance(c, str) and c)]
            dups = sorted({c for c in cols if cols.count(c) > 1})
            if not cols or bad or dups:
                raise ConfigError(
                    f"{_OWNER}: 'feature_cols' must be distinct non-empty column names; got {list(cols)!r}. "
                    "List each feature column once."
                )
            if label_col is not None and label_col in cols:
                raise ConfigError(
                    f"{_OWNER}: 'feature_cols' must not include the label column; got {label_col!r} in "
                    f"{list(cols)!r}. Remove it from feature_cols."
                )
        names: tuple[str, ...] | None = None
        if class_names is not None:
            if isinstance(class_names, str) or not isinstance(class_names, Sequence):
                raise ConfigError(
                    f"{_OWNER}: 'class_names' must be a list of names; got {class_names!r}. "
                    "Pass e.g. class_names=['ham', 'spam']."
                )
            names = tuple(class_names)
            if (
                len(names) < 2
                or not all(isinstance(c, str) and c.strip() for c in names)
                or len(set(names)) != len(names)
            ):
                raise ConfigError(
                    f"{_OWNER}: 'class_names' must be at least 2 distinct non-empty names; got "
                    f"{list(names)!r}. Give one name per class, in label order."
                )
        checked_bounds = None if bounds is None else check_bounds(bounds, owner=_OWNER)
        if test_fraction is not None:
            check_range(
                "test_fraction", test_fraction, owner=_OWNER, low=0.0, high=0.95, low_open=True,
                fix="Give the held-out share, e.g. test_fraction=0.3.",
            )
        check_range("seed", seed, owner=_OWNER, low=0, high=2**32 - 1, integer=True)
        return _Options(
            kind=str(kind),
            label_col=label_col if isinstance(label_col, str) else None,
            feature_cols=cols,
            text_col=text_col if isinstance(text_col, str) else None,
            bounds=checked_bounds,
            class_names=names,
            test_fraction=None if test_fraction is None else float(test_fraction),  # type: ignore[arg-type]  # checked by check_range
            seed=int(seed),  # type: ignore[call-overload]  # checked by check_range
        )

    def refuse_columns(self, what: str) -> None:
        """ConfigError if a table option was given for a reference that has no columns."""
        options = {"label_col": self.label_col, "feature_cols": self.feature_cols, "text_col": self.text_col}
        given = [f"{n}={v!r}" for n, v in options.items() if v is not None]
        if given:
            raise ConfigError(
                f"{_OWNER}: label_col, feature_cols and text_col apply to tables (CSV, Parquet, TSV "
                f"with a header); got {', '.join(given)} for {what}. Drop them."
            )

    def expect_kind(self, found: str, what: str) -> None:
        if self.kind not in ("auto", found):
            raise ConfigError(
                f"{_OWNER}: 'kind' must fit the data; got kind={self.kind!r} for {what}, which holds "
                f"{found} data. Pass kind='auto' or kind={found!r}."
            )


# ----------------------------------------------------------------------------------------------
# Parsed data, before labels, split and bounds


@dataclass(slots=True)
class _Parsed:
    kind: DataKind
    fmt: str
    sha256: str
    x: np.ndarray | tuple[str, ...]
    y: np.ndarray
    locate: Callable[[int], str]
    x_test: np.ndarray | tuple[str, ...] | None = None
    y_test: np.ndarray | None = None
    locate_test: Callable[[int], str] | None = None
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    images: bool = False
    scaling: str = "none"


def _finish(p: _Parsed, opts: _Options, *, ref: str, path: Path) -> UserData:
    """Labels to indices, checks, bounds and the split: the steps every file format shares."""
    where = str(path)
    has_test = p.x_test is not None and p.y_test is not None
    parts = [p.y, p.y_test] if has_test and p.y_test is not None else [p.y]
    locs = [p.locate, p.locate_test or p.locate] if has_test else [p.locate]
    xs = [p.x, p.x_test] if has_test and p.x_test is not None else [p.x]
    given = opts.class_names if opts.class_names is not None else p.class_names
    encoded, names, how = _encode_labels(parts, locs, given, where)
    if opts.class_names is None and p.class_names is not None:
        how += " (class_names from the file)"
    bounds: tuple[float, float] | None = None
    ranges: tuple[tuple[float, float], ...] = ()
    source = "none (text)"
    arrays = [x for x in xs if isinstance(x, np.ndarray)]
    if arrays:
        for x, loc in zip(arrays, locs, strict=True):
            _check_finite(x, loc, p.feature_names, where)
        lo = min(float(x.min()) for x in arrays)
        hi = max(float(x.max()) for x in arrays)
        if opts.bounds is not None:
            bounds, source = opts.bounds, "given"
        elif p.bounds is not None:
            bounds, source = p.bounds, "file"
        elif p.images and lo >= 0.0 and hi <= 1.0:
            bounds, source = (0.0, 1.0), "images in [0, 1]"
        elif lo < hi:
            bounds, source = (lo, hi), "data min/max"
        else:
            raise DataError(
                f"{_OWNER}: the inputs of {where!r} must not all be equal; got every value = {lo:g}. "
                "Check the file, or pass bounds=(lo, hi)."
            )
        for x, loc in zip(arrays, locs, strict=True):
            _check_within(x, bounds, source, loc, where)
        if p.kind == "tabular":
            mins = np.min([x.min(axis=0) for x in arrays], axis=0)
            maxs = np.max([x.max(axis=0) for x in arrays], axis=0)
            ranges = tuple((float(a), float(b)) for a, b in zip(mins, maxs, strict=True))
    elif opts.bounds is not None:
        raise ConfigError(
            f"{_OWNER}: 'bounds' apply to image and tabular data; got bounds={opts.bounds} for the "
            f"text file {where!r}. Drop bounds."
        )
    if has_test:
        if opts.test_fraction is not None:
            raise ConfigError(
                f"{_OWNER}: 'test_fraction' applies only to data without a test split; got "
                f"test_fraction={opts.test_fraction} for {where!r}, which has one. Drop test_fraction."
            )
        x_tr, x_te, y_tr, y_te = xs[0], xs[1], encoded[0], encoded[1]
        split, frac, seed = "from the file", None, None
    else:
        fraction = DEFAULT_TEST_FRACTION if opts.test_fraction is None else opts.test_fraction
        train, test = _stratified_split(encoded[0], fraction, opts.seed, names, p.locate, where)
        x_tr, x_te = _take(p.x, train), _take(p.x, test)
        y_tr, y_te = encoded[0][train], encoded[0][test]
        split, frac, seed = "seeded stratified", fraction, opts.seed
    provenance = DataProvenance(
        ref=ref, format=p.fmt, path=where, sha256=p.sha256, split=split, test_fraction=frac, seed=seed,
        bounds_source=source, labels=how, scaling=p.scaling,
    )
    return UserData(
        name=path.stem if path.is_file() else path.name,
        kind=p.kind,
        x_train=_as_output(x_tr),
        y_train=torch.from_numpy(np.array(y_tr, dtype=np.int64, copy=True)),
        x_test=_as_output(x_te),
        y_test=torch.from_numpy(np.array(y_te, dtype=np.int64, copy=True)),
        class_names=names,
        bounds=bounds,
        feature_names=p.feature_names,
        feature_ranges=ranges,
        provenance=provenance,
    )


def _take(x: np.ndarray | tuple[str, ...], idx: np.ndarray) -> np.ndarray | tuple[str, ...]:
    if isinstance(x, np.ndarray):
        rows: np.ndarray = x[idx]
        return rows
    return tuple(x[i] for i in idx.tolist())


def _as_output(x: np.ndarray | tuple[str, ...] | None) -> Tensor | tuple[str, ...]:
    if x is None:  # pragma: no cover - the callers pass both splits
        raise DataError(f"{_OWNER}: internal: a split is missing.")
    if isinstance(x, tuple):
        return x
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not out.flags.writeable:  # torch.from_numpy needs a writable array
        out = out.copy()
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------
# Labels, split, checks


def _labels_from_text(values: Sequence[str], locate: Callable[[int], str], where: str) -> np.ndarray:
    """int64 labels when every value is a whole number, else stripped str labels; mixed is an error."""
    stripped = [v.strip() for v in values]
    kinds = [_label_kind(v) for v in stripped]
    for i, (v, k) in enumerate(zip(stripped, kinds, strict=True)):
        if not v:
            raise DataError(
                f"{_OWNER}: {locate(i)} of {where!r} must have a label; got an empty one. "
                "Fill in the label or remove that row."
            )
        if k == "number":
            raise DataError(
                f"{_OWNER}: the labels of {where!r} must be class labels (integers or names); got the "
                f"number {v!r} at {locate(i)}. Check that the label column holds classes, not a "
                "continuous value."
            )
    if all(k == "int" for k in kinds):
        return np.array([int(float(v)) for v in stripped], dtype=np.int64)
    if "int" in kinds:
        i_num, i_name = kinds.index("int"), kinds.index("name")
        raise DataError(
            f"{_OWNER}: the labels of {where!r} must be all integers or all names; got both "
            f"{stripped[i_num]!r} ({locate(i_num)}) and {stripped[i_name]!r} ({locate(i_name)}). "
            "Use one encoding for every row."
        )
    return np.array(stripped, dtype=str)


def _label_kind(v: str) -> str:
    """'int' (a whole number such as 1 or 1.0), 'number' (any other number, NaN, inf) or 'name'."""
    if _INT_TEXT.match(v):
        return "int"
    try:
        f = float(v)
    except ValueError:
        return "name"
    return "int" if math.isfinite(f) and f == int(f) else "number"


def _encode_labels(
    parts: list[np.ndarray],
    locs: list[Callable[[int], str]],
    given: tuple[str, ...] | None,
    where: str,
) -> tuple[list[np.ndarray], tuple[str, ...], str]:
    """(int64 label arrays, class names, how) for the train (and test) label arrays."""
    kinds = ["name" if a.dtype.kind == "U" else "number" for a in parts]
    if len(set(kinds)) > 1:
        raise DataError(
            f"{_OWNER}: the labels of {where!r} must use one encoding; got {kinds[0]}s in y and "
            f"{kinds[1]}s in y_test. Store both as integers or both as names."
        )
    if kinds[0] == "name":
        for arr, loc in zip(parts, locs, strict=True):
            empty = np.char.str_len(arr) == 0
            if empty.any():
                i = int(np.flatnonzero(empty)[0])
                raise DataError(
                    f"{_OWNER}: every label of {where!r} must be non-empty; got '' at {loc(i)}. Fill in "
                    "the label or remove that row."
                )
        if given is not None:
            lookup = {c: i for i, c in enumerate(given)}
            out = []
            for arr, loc in zip(parts, locs, strict=True):
                unknown = ~np.isin(arr, np.array(given, dtype=str))
                if unknown.any():
                    i = int(np.flatnonzero(unknown)[0])
                    close = difflib.get_close_matches(str(arr[i]), given, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise DataError(
                        f"{_OWNER}: every label of {where!r} must be one of the class names "
                        f"{list(given)!r}; got {str(arr[i])!r}{hint} at {loc(i)}. Fix the label or the "
                        "class names."
                    )
                out.append(np.array([lookup[str(v)] for v in arr.tolist()], dtype=np.int64))
            names, how = given, "names, given order"
        else:
            names = tuple(sorted({str(v) for arr in parts for v in np.unique(arr).tolist()}))
            out = [np.searchsorted(np.array(names, dtype=str), arr).astype(np.int64) for arr in parts]
            how = "names, sorted"
    else:
        out = []
        for arr, loc in zip(parts, locs, strict=True):
            if arr.dtype.kind == "f":
                bad = ~np.isfinite(arr) | (arr != np.round(arr))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise DataError(
                        f"{_OWNER}: the labels of {where!r} must be whole numbers; got {arr[i].item()!r} at "
                        f"{loc(i)}. Store class indices 0..C-1 (one-hot labels: y.argmax(1))."
                    )
            out.append(arr.astype(np.int64))
        top = len(given) if given is not None else None
        for arr, loc in zip(out, locs, strict=True):
            bad = (arr < 0) if top is None else ((arr < 0) | (arr >= top))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                span = "0..C-1" if top is None else f"0..{top - 1} (one per class name)"
                raise DataError(
                    f"{_OWNER}: the labels of {where!r} must be class indices {span}; got {int(arr[i])} "
                    f"at {loc(i)}. Relabel from 0 (e.g. -1/1 -> 0/1), or store the labels as names."
                )
        present = np.unique(np.concatenate(out))
        if given is not None:
            names, how = given, "integer labels, given names"
        else:
            n = int(present.max()) + 1
            missing = sorted(set(range(n)) - set(present.tolist()))
            if missing:
                raise DataError(
                    f"{_OWNER}: integer labels of {where!r} must be 0..C-1 with every class present; got "
                    f"values {_short(present.tolist())} (no example of {_short(missing)}). Relabel to "
                    "0..C-1 (e.g. y - 1 for labels starting at 1), or pass class_names to allow empty "
                    "classes."
                )
            names, how = tuple(str(i) for i in range(n)), "integer labels"
    present_all = np.unique(np.concatenate(out))
    if len(present_all) < 2:
        only = names[int(present_all[0])] if len(present_all) else "none"
        raise DataError(
            f"{_OWNER}: the data in {where!r} must hold at least 2 classes; got only {only!r}. "
            "A classifier cannot be assessed on one class: add examples of the other classes."
        )
    return out, names, how


def _short(values: Sequence[object], n: int = 8) -> str:
    shown = ", ".join(map(str, values[:n]))
    return f"[{shown}{', ...' if len(values) > n else ''}]"


def _stratified_split(
    y: np.ndarray,
    fraction: float,
    seed: int,
    names: tuple[str, ...],
    locate: Callable[[int], str],
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: ``fraction`` of each class held out, at least one each; train rows
    in file order, test rows in a seeded class-interleaved order (``interleaved_order``)."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in range(len(names)):
        rows = np.flatnonzero(y == c)
        if len(rows) == 0:
            continue
        if len(rows) < 2:
            first = locate(int(rows[0]))
            header = " (if that row is a header, pass label_col and text_col)" if first == "line 1" else ""
            if len(names) > max(len(y) // 2, 10):
                header += f" ({len(names)} classes in {len(y)} rows: does the label column hold classes?)"
            raise DataError(
                f"{_OWNER}: every class of {where!r} needs at least 2 examples for a train/test split; "
                f"got 1 of {names[c]!r} at {first}{header}. Add examples, drop that row, or give a test "
                "split (x_test and y_test in an npz; train/ and test/ image folders)."
            )
        perm = rng.permutation(rows)
        n_test = min(max(round(len(rows) * fraction), 1), len(rows) - 1)
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    held = np.sort(np.concatenate(test))  # the held-out rows; their order comes next
    return np.sort(np.concatenate(train)), held[interleaved_order(y[held], seed)]


def interleaved_order(y: np.ndarray | Tensor, seed: int) -> np.ndarray:
    """A seeded order of the rows of labels y in which every prefix is close to stratified.

    Each class's rows are shuffled and spread evenly over [0, 1) (row j of a class of n_c rows
    at ``(j + u_c) / n_c``, u_c a random phase); sorting those keys interleaves the classes, so
    the first n rows hold about ``n * n_c / N`` rows of each class, give or take one (a class-sorted file
    no longer gives one class first). The same y and seed give the same order.

    Returns:
        ``(N,)`` int64 row positions into y.
    """
    labels = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    rng = np.random.default_rng([int(seed), 0x5EED])  # its own stream: the split's draws stay as they were
    keys = np.zeros(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keys[rng.permutation(rows)] = (np.arange(len(rows)) + rng.random()) / len(rows)
    order: np.ndarray = np.lexsort((rng.random(len(labels)), keys)).astype(np.int64)
    return order


def _check_finite(x: np.ndarray, locate: Callable[[int], str], features: tuple[str, ...], where: str) -> None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    pos = np.argwhere(bad)[0]
    row = int(pos[0])
    col = f", column {features[int(pos[1])]!r}" if features and len(pos) > 1 else (
        f", position {tuple(int(v) for v in pos[1:])}" if len(pos) > 1 else ""
    )
    raise DataError(
        f"{_OWNER}: the features of {where!r} must be finite numbers; got {x[tuple(pos)].item()!r} at "
        f"{locate(row)}{col} ({int(bad.sum())} such values). Impute or drop missing and infinite "
        "values before loading."
    )


def _check_within(
    x: np.ndarray, bounds: tuple[float, float], source: str, locate: Callable[[int], str] | None, where: str
) -> None:
    lo, hi = bounds
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    outside = (x < lo - tol) | (x > hi + tol)
    if not outside.any():
        return
    row = int(np.flatnonzero(outside.reshape(len(x), -1).any(axis=1))[0])
    at = f"; first at {locate(row)}" if locate is not None else f"; first in row {row}"
    raise DataError(
        f"{_OWNER}: the inputs of {where!r} must lie within the bounds [{lo:g}, {hi:g}] ({source}); got "
        f"{int(outside.sum())} values outside (min {float(x.min()):g}, max {float(x.max()):g}{at}). "
        "Pass bounds covering the data, or rescale the data."
    )


# ----------------------------------------------------------------------------------------------
# Built-in names


def _load_builtin(name: str, opts: _Options, root: str | Path | None) -> UserData:
    opts.refuse_columns(f"the built-in data set {name!r}")
    kind = BUILTIN_DATA[name]
    opts.expect_kind(kind, f"the built-in data set {name!r}")
    fraction = opts.test_fraction
    if name in ("mnist", "fashion-mnist") and fraction is not None:
        raise ConfigError(
            f"{_OWNER}: 'test_fraction' applies only to data without a fixed test split; got "
            f"test_fraction={fraction} for {name!r}, which has one. Drop test_fraction."
        )
    x_tr: Tensor | tuple[str, ...]
    x_te: Tensor | tuple[str, ...]
    features: tuple[str, ...] = ()
    bounds: tuple[float, float] | None
    if name == "digits":
        from modelshield.data.digits import load_digits

        ds = (
            load_digits(seed=opts.seed) if fraction is None
            else load_digits(test_fraction=fraction, seed=opts.seed)
        )
        x_tr, y_tr, x_te, y_te, names, digest, bounds = (
            ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.classes, ds.sha256, ds.bounds
        )
        split = f"load_digits, seeded stratified (seed {opts.seed})"
    elif kind == "image":
        from modelshield.data import load_dataset

        ds = load_dataset(name, root=root)
        x_tr, y_tr, x_te, y_te, names, digest, bounds = (
            ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.classes, ds.sha256, ds.bounds
        )
        split = "the data set's own"
    elif kind == "tabular":
        from modelshield.data.phishing import load_phishing

        tab = (
            load_phishing(root, seed=opts.seed) if fraction is None
            else load_phishing(root, test_fraction=fraction, seed=opts.seed)
        )
        x_tr, y_tr, x_te, y_te, names, digest, bounds = (
            tab.x_train, tab.y_train, tab.x_test, tab.y_test, tab.class_names, tab.sha256, tab.bounds
        )
        features = tab.feature_names
        split = f"load_phishing, seeded stratified (seed {opts.seed})"
    else:
        from modelshield.data.sms_spam import load_sms_spam

        txt = (
            load_sms_spam(root, seed=opts.seed) if fraction is None
            else load_sms_spam(root, test_fraction=fraction, seed=opts.seed)
        )
        x_tr, y_tr, x_te, y_te, names, digest = (
            txt.texts_train, txt.y_train, txt.texts_test, txt.y_test, txt.class_names, txt.sha256
        )
        bounds = None
        split = f"load_sms_spam, seeded stratified (seed {opts.seed})"
    source = "built-in"
    if opts.bounds is not None:
        if bounds is None:
            raise ConfigError(
                f"{_OWNER}: 'bounds' apply to image and tabular data; got bounds={opts.bounds} for the "
                f"text data set {name!r}. Drop bounds."
            )
        for x in (x_tr, x_te):
            if isinstance(x, Tensor):
                _check_within(x.numpy(), opts.bounds, "given", None, name)
        bounds, source = opts.bounds, "given"
    labels = "built-in"
    if opts.class_names is not None:
        if len(opts.class_names) != len(names):
            raise ConfigError(
                f"{_OWNER}: 'class_names' must name the {len(names)} classes of {name!r}; got "
                f"{len(opts.class_names)} names {list(opts.class_names)!r}. Give {len(names)} names or none."
            )
        names, labels = opts.class_names, "built-in, given names"
    ranges: tuple[tuple[float, float], ...] = ()
    if kind == "tabular" and isinstance(x_tr, Tensor) and isinstance(x_te, Tensor):
        both = torch.cat([x_tr, x_te])
        ranges = tuple(
            (float(a), float(b)) for a, b in zip(both.amin(0).tolist(), both.amax(0).tolist(), strict=True)
        )
    provenance = DataProvenance(
        ref=name, format="builtin", path=None, sha256=digest, split=split,
        test_fraction=fraction, seed=None if name in ("mnist", "fashion-mnist") else opts.seed,
        bounds_source=source if bounds is not None else "none (text)", labels=labels,
    )
    return UserData(
        name=name, kind=kind, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=names,
        bounds=bounds, feature_names=features, feature_ranges=ranges, provenance=provenance,
    )


# ----------------------------------------------------------------------------------------------
# Files: digests and magic bytes


def _file_sha256(path: Path) -> str:
    return str(hash_file(path).hexdigest())


def _head(path: Path, n: int = 8) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _refuse_binary(path: Path, head: bytes, expected: str) -> None:
    """DataError when a text file starts like a pickle, zip, npy or Parquet file."""
    found = _sniff(head)
    if found:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be {expected}; got {found}. Give the file its real "
            f"extension, or export the data as {expected}."
        )


def _sniff(head: bytes) -> str:
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "a Python pickle (never loaded: unpickling can run code)"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a zip archive (e.g. an .npz file)"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array file"
    if head.startswith(b"PAR1"):
        return "a Parquet file"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (decompress it first)"
    return ""


def _check_size(path: Path, n_bytes: int, what: str) -> None:
    check_memory(_OWNER, f"{str(path)!r} ({what})", n_bytes, fix=_SMALLER_FILE, error=DataError)


# ----------------------------------------------------------------------------------------------
# .npz


def _read_npz(path: Path, opts: _Options) -> _Parsed:
    opts.refuse_columns(f"the npz file {str(path)!r}")
    head = _head(path)
    if not head:
        raise DataError(f"{_OWNER}: {str(path)!r} must be an npz archive; got an empty file. Re-save it.")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")):
        found = _sniff(head) or f"bytes {head[:8]!r}, not a zip archive"
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be an npz archive (numpy.savez); got {found}. Save the "
            "arrays with numpy.savez(path, x=x, y=y)."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
            keys = [m.removesuffix(".npy") for m in members]
            unknown = [k for k in keys if k not in _NPZ_KEYS]
            if unknown or "x" not in keys or "y" not in keys or (("x_test" in keys) != ("y_test" in keys)):
                hints = [
                    f"{k!r} -> {c[0]!r}?" for k in unknown
                    if (c := difflib.get_close_matches(k.lower(), _NPZ_KEYS, n=1))
                ]
                hint = f" (did you mean {', '.join(hints)})" if hints else ""
                raise DataError(
                    f"{_OWNER}: {str(path)!r} must hold arrays 'x' and 'y' (optionally 'x_test' with "
                    f"'y_test', 'class_names', 'bounds'); got {sorted(keys)!r}{hint}. Save with "
                    "numpy.savez(path, x=x, y=y) using these names."
                )
            total = held = 0
            headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
            for member, info in members.items():
                key = member.removesuffix(".npy")
                with zf.open(info) as fh:
                    shape, dtype = _npy_header(fh, path, key)
                _check_npz_dtype(path, key, dtype)
                headers[key] = (shape, dtype)
                total += math.prod(shape) * dtype.itemsize
                # inputs become float32, then a split copy: 8 more bytes per value
                held += math.prod(shape) * (dtype.itemsize + (8 if key in ("x", "x_test") else 0))
            _check_size(path, held, f"arrays of {format_bytes(total)}, held as read, as float32 and split")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in headers}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a readable npz archive; got {type(exc).__name__}: {exc}. "
            "Re-save it with numpy.savez(path, x=x, y=y)."
        ) from exc
    x, y = arrays["x"], arrays["y"]
    kind, x = _npz_inputs(path, x, "x", opts)
    scaling = "/255 (8-bit images)" if kind == "image" and arrays["x"].dtype == np.uint8 else "none"
    y = _npz_labels(path, y, "y", len(x))
    x_test = y_test = None
    if "x_test" in arrays:
        kt, x_test = _npz_inputs(path, arrays["x_test"], "x_test", opts)
        if kt != kind or x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{_OWNER}: 'x_test' in {str(path)!r} must have the input shape of 'x' "
                f"{tuple(x.shape[1:])}; got {tuple(x_test.shape[1:])}. Save both splits in one shape."
            )
        if (arrays["x_test"].dtype == np.uint8) != (arrays["x"].dtype == np.uint8) and kind == "image":
            raise DataError(
                f"{_OWNER}: 'x' and 'x_test' in {str(path)!r} must share one pixel scale; got "
                f"{arrays['x'].dtype} and {arrays['x_test'].dtype}. Save both as uint8 or both as float."
            )
        y_test = _npz_labels(path, arrays["y_test"], "y_test", len(x_test))
    names = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or cn.dtype.kind != "U":
            raise DataError(
                f"{_OWNER}: 'class_names' in {str(path)!r} must be a 1-D array of strings; got dtype "
                f"{cn.dtype} and shape {cn.shape}. Save numpy.array(['cat', 'dog'])."
            )
        names = tuple(str(c) for c in cn.tolist())
        if len(names) < 2 or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise DataError(
                f"{_OWNER}: 'class_names' in {str(path)!r} must be at least 2 distinct non-empty names; "
                f"got {list(names)!r}. Save one name per class."
            )
    file_bounds = None
    if "bounds" in arrays:
        b = arrays["bounds"]
        if b.shape != (2,) or b.dtype.kind not in "iuf":
            raise DataError(
                f"{_OWNER}: 'bounds' in {str(path)!r} must be two numbers (lo, hi); got dtype {b.dtype} "
                f"and shape {b.shape}. Save numpy.array([0.0, 1.0])."
            )
        try:
            file_bounds = check_bounds((float(b[0]), float(b[1])), owner=_OWNER)
        except ConfigError as exc:
            raise DataError(f"{exc} (the 'bounds' array in {str(path)!r})") from exc
    return _Parsed(
        kind=kind, fmt="npz", sha256=_file_sha256(path), x=x, y=y, locate=lambda i: f"row {i}",
        x_test=x_test, y_test=y_test, locate_test=lambda i: f"row {i} of x_test",
        class_names=names, bounds=file_bounds, images=kind == "image", scaling=scaling,
    )


def _npy_header(fh: Any, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        # numpy refuses headers whose dtype needs pickling (object arrays) with a ValueError
        raise DataError(
            f"{_OWNER}: the array {key!r} in {str(path)!r} must be a plain numeric .npy array; got an "
            f"unreadable header ({exc}). Re-save it with numpy.savez(path, x=x, y=y) from numeric arrays."
        ) from exc
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _check_npz_dtype(path: Path, key: str, dtype: np.dtype[Any]) -> None:
    allowed = {
        "x": "buif", "x_test": "buif", "y": "buifU", "y_test": "buifU", "class_names": "U", "bounds": "iuf"
    }
    if dtype.hasobject or dtype.kind not in allowed[key]:
        what = "Python objects (refused: reading them unpickles)" if dtype.hasobject else f"dtype {dtype}"
        need = {"x": "numbers", "x_test": "numbers", "class_names": "strings", "bounds": "numbers"}.get(
            key, "integers or strings"
        )
        names = key in ("class_names", "y", "y_test")
        fix = f"{key}.astype(str)" if names else f"{key}.astype(numpy.float32)"
        raise DataError(
            f"{_OWNER}: the array {key!r} in {str(path)!r} must hold {need}; got {what}. Convert it, e.g. "
            f"{fix} (or integer class indices for labels), and save again."
        )


def _npz_inputs(path: Path, x: np.ndarray, key: str, opts: _Options) -> tuple[DataKind, np.ndarray]:
    if x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"{_OWNER}: {key!r} in {str(path)!r} must have shape (N, D) for tabular or (N, C, H, W) for "
            f"image data with N >= 1; got shape {x.shape}. Save one row per example."
        )
    kind: DataKind = "tabular" if x.ndim == 2 else "image"
    opts.expect_kind(kind, f"{str(path)!r} ({key} of shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        raise DataError(
            f"{_OWNER}: {key!r} in {str(path)!r} must be channels-first (N, C, H, W); got shape {x.shape}, "
            f"which looks channels-last. Save {key}.transpose(0, 3, 1, 2)."
        )
    elif x.ndim > 4:
        raise DataError(
            f"{_OWNER}: {key!r} in {str(path)!r} must have 2 to 4 dimensions; got shape {x.shape}. "
            "Save images as (N, C, H, W) and tables as (N, D)."
        )
    if kind == "image" and x.dtype == np.uint8:
        return kind, x.astype(np.float32) / np.float32(255.0)
    return kind, x.astype(np.float32)


def _npz_labels(path: Path, y: np.ndarray, key: str, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{_OWNER}: {key!r} in {str(path)!r} must have shape ({n},), one label per input; got shape "
            f"{y.shape}. Save one class index (or name) per row (one-hot labels: y.argmax(1))."
        )
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "U":
        return np.char.strip(y)
    return y


# ----------------------------------------------------------------------------------------------
# CSV / TSV tables


def _read_csv(path: Path, opts: _Options, *, delimiter: str) -> _Parsed:
    fmt = "csv" if delimiter == "," else "tsv"
    head = _head(path, 64 * 1024)
    if not head.strip():
        raise DataError(
            f"{_OWNER}: {str(path)!r} must hold a header line and data rows; got an empty file. "
            "Check the path."
        )
    _refuse_binary(path, head, "a text table (CSV)")
    kind: DataKind = "text" if opts.text_col is not None else "tabular"
    if opts.kind == "text" and opts.text_col is None:
        raise ConfigError(
            f"{_OWNER}: 'text_col' must name the text column for kind='text'; got None for {str(path)!r}. "
            "Pass text_col=<name> (CLI: --text-col)."
        )
    opts.expect_kind(kind, f"{str(path)!r} ({'text_col given' if kind == 'text' else 'a table'})")
    size = path.stat().st_size
    reader: Any = None
    if b"\n" not in head and size > len(head):
        raise DataError(
            f"{_OWNER}: the header line of {str(path)!r} must be shorter than {format_bytes(len(head))}; got "
            f"no line break in the first {format_bytes(len(head))} of a {format_bytes(size)} file. "
            "Check that it is a text table with one row per line."
        )
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{_OWNER}: {str(path)!r} must start with a header line; got none.")
            columns = [h.strip() for h in header]
            label_i, feat_i, text_i = _select_columns(path, columns, opts)
            if kind == "text":
                _check_size(path, TEXT_PARSE_COPIES * size, f"{format_bytes(size)}; parsing holds about "
                            f"{TEXT_PARSE_COPIES} copies")
            else:
                # rows from the mean length of the complete lines in the first 64 KiB
                sampled = head[: head.rfind(b"\n") + 1]
                rows_est = max(int(size * sampled.count(b"\n") / max(len(sampled), 1)), 1)
                _check_size(path, rows_est * (len(feat_i) * _CELL_BYTES + _ROW_BYTES),
                            f"{format_bytes(size)}, about {rows_est:,} rows x {len(feat_i)} numeric "
                            f"columns at {_CELL_BYTES} bytes per value while parsing")
            cells = array("d")
            labels: list[str] = []
            texts: list[str] = []
            linenos = array("q")
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(columns):
                    raise DataError(
                        f"{_OWNER}: line {reader.line_num} of {str(path)!r} must have {len(columns)} "
                        f"{'comma' if delimiter == ',' else 'tab'}-separated fields like the header; got "
                        f"{len(row)}. Repair or remove that line (quote fields holding the separator)."
                    )
                labels.append(row[label_i])
                linenos.append(reader.line_num)
                if text_i is not None:
                    texts.append(row[text_i])
                    continue
                for j in feat_i:
                    try:
                        cells.append(float(row[j]))
                    except ValueError:
                        _refuse_cell(path, columns, feat_i, row, reader.line_num, j)
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc) from exc
    except csv.Error as exc:
        where = f"line {reader.line_num} of " if reader is not None else ""
        raise DataError(
            f"{_OWNER}: {where}{str(path)!r} must be well-formed CSV; got {exc}. Repair the file "
            "(a binary file, or a field larger than 128 KiB?)."
        ) from exc
    if not labels:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must hold data rows below the header; got none. Check the file."
        )
    line_arr = np.frombuffer(linenos, dtype=np.int64) if len(linenos) else np.zeros(0, np.int64)

    def locate(i: int) -> str:
        return f"line {int(line_arr[i])}"

    y = _labels_from_text(labels, locate, str(path))
    if text_i is not None:
        _check_texts(texts, locate, path)
        return _Parsed(kind="text", fmt=fmt, sha256=_file_sha256(path), x=tuple(texts), y=y, locate=locate)
    x = np.frombuffer(cells, dtype=np.float64).reshape(len(labels), len(feat_i)).astype(np.float32)
    return _Parsed(
        kind="tabular", fmt=fmt, sha256=_file_sha256(path), x=x, y=y, locate=locate,
        feature_names=tuple(columns[j] for j in feat_i),
    )


def _refuse_cell(
    path: Path, columns: list[str], feat_i: list[int], row: list[str], lineno: int, j: int
) -> None:
    if not row[j].strip():
        raise DataError(
            f"{_OWNER}: line {lineno} of {str(path)!r} must have a value in column {columns[j]!r}; got an "
            "empty field. Impute or drop rows with missing values before loading."
        )
    bad = []
    for k in feat_i:
        try:
            float(row[k])
        except ValueError:
            if row[k].strip():
                bad.append(k)
    listed = ", ".join(f"{columns[k]!r} ({row[k][:20]!r})" for k in bad)
    raise DataError(
        f"{_OWNER}: feature columns of {str(path)!r} must be numeric; got text in {listed} at line "
        f"{lineno}. Encode them as numbers (e.g. one-hot), or choose numeric columns with "
        "feature_cols=[...] (CLI: --feature-cols)."
    )


def _select_columns(path: Path, columns: list[str], opts: _Options) -> tuple[int, list[int], int | None]:
    """(label index, feature indices, text index or None) of a header, or the error naming the fix."""
    empty = [i for i, c in enumerate(columns) if not c]
    dups = sorted({c for c in columns if c and columns.count(c) > 1})
    if empty or dups:
        what = f"empty names at positions {empty}" if empty else f"repeated names {dups!r}"
        raise DataError(
            f"{_OWNER}: the header of {str(path)!r} must name every column once; got {what}. "
            "Fix the header line."
        )

    def find(option: str, name: str) -> int:
        if name in columns:
            return columns.index(name)
        close = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
        folded = [c for c in columns if c.casefold() == name.casefold()]
        hint = f"Did you mean {(folded or close)[0]!r}? " if (folded or close) else ""
        raise ConfigError(
            f"{_OWNER}: {option!r} must name a column of {str(path)!r}; got {name!r}. {hint}The columns "
            f"are {_short(columns, 20)}."
        )

    if opts.label_col is None:
        raise ConfigError(
            f"{_OWNER}: 'label_col' must name the label column of the table {str(path)!r}; got None. "
            f"Pass label_col=<name> (CLI: --label-col); the columns are {_short(columns, 20)}."
        )
    label_i = find("label_col", opts.label_col)
    if opts.text_col is not None:
        if opts.feature_cols is not None:
            raise ConfigError(
                f"{_OWNER}: 'feature_cols' apply to tabular data; got feature_cols and text_col "
                f"{opts.text_col!r} for {str(path)!r}. Pass one of them."
            )
        text_i = find("text_col", opts.text_col)
        if text_i == label_i:
            raise ConfigError(
                f"{_OWNER}: 'text_col' must differ from 'label_col'; got {opts.text_col!r} for both. "
                "Name the text column."
            )
        return label_i, [], text_i
    if opts.feature_cols is not None:
        feat_i = [find("feature_cols", c) for c in opts.feature_cols]
    else:
        feat_i = [i for i in range(len(columns)) if i != label_i]
    if not feat_i:
        raise DataError(
            f"{_OWNER}: the table {str(path)!r} must have a feature column besides the label "
            f"{opts.label_col!r}; got only {columns!r}. Add the feature columns."
        )
    return label_i, feat_i, None


def _check_texts(texts: Sequence[str], locate: Callable[[int], str], path: Path) -> None:
    for i, t in enumerate(texts):
        if not t.strip():
            raise DataError(
                f"{_OWNER}: {locate(i)} of {str(path)!r} must have a non-empty text; got {t!r}. "
                "Remove that row or add the text."
            )


def _utf8_error(path: Path, exc: UnicodeDecodeError) -> DataError:
    """A DataError naming the first line of ``path`` that is not UTF-8 (found by a binary re-read)."""
    lineno, bad = 0, exc.object[exc.start : exc.end]
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - lineno is used after the loop
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as inner:
                bad = raw[inner.start : inner.end]
                break
    return DataError(
        f"{_OWNER}: line {lineno} of {str(path)!r} must be UTF-8 text; got the byte(s) {bad!r} "
        f"({exc.reason}). Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8."
    )


# ----------------------------------------------------------------------------------------------
# Parquet


def _read_parquet(path: Path, opts: _Options) -> _Parsed:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            f"{_OWNER}: reading the Parquet file {str(path)!r} needs pyarrow; got ImportError ({exc}). "
            "Install it with pip install 'modelshield[parquet]', or export the table as CSV."
        ) from exc
    with path.open("rb") as fh:
        head = fh.read(4)
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if size == 0:
        raise DataError(f"{_OWNER}: {str(path)!r} must be a Parquet file; got an empty file. Re-export it.")
    if head != b"PAR1" or tail != b"PAR1":
        found = _sniff(head + b"\0\0\0\0") or "no PAR1 magic bytes at both ends (truncated, or not Parquet)"
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a Parquet file; got {found}. Re-export the table as Parquet "
            "(or as CSV)."
        )
    kind: DataKind = "text" if opts.text_col is not None else "tabular"
    if opts.kind == "text" and opts.text_col is None:
        raise ConfigError(
            f"{_OWNER}: 'text_col' must name the text column for kind='text'; got None for {str(path)!r}. "
            "Pass text_col=<name> (CLI: --text-col)."
        )
    opts.expect_kind(kind, f"{str(path)!r} ({'text_col given' if kind == 'text' else 'a table'})")
    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
        n_rows = int(pf.metadata.num_rows)
        label_i, feat_i, text_i = _select_columns(path, [str(c) for c in columns], opts)
        if kind == "text":
            meta = pf.metadata
            raw = sum(int(meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups))
            _check_size(path, TEXT_PARSE_COPIES * raw, f"{format_bytes(raw)} uncompressed, {n_rows:,} rows; "
                        f"parsing holds about {TEXT_PARSE_COPIES} copies")
        else:
            _check_size(path, n_rows * (len(feat_i) * _CELL_BYTES + _ROW_BYTES),
                        f"{n_rows:,} rows x {len(feat_i)} numeric columns at {_CELL_BYTES} bytes per value")
        wanted = [columns[j] for j in (label_i, *feat_i, *(() if text_i is None else (text_i,)))]
        table = pf.read(columns=wanted)
    except (ConfigError, DataError):
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a readable Parquet file; got {type(exc).__name__}: {exc}. "
            "Re-export the table."
        ) from exc
    if table.num_rows == 0:
        raise DataError(f"{_OWNER}: {str(path)!r} must hold data rows; got none. Check the file.")

    def locate(i: int) -> str:
        return f"row {i}"

    for name in wanted:
        col = table.column(name)
        if col.null_count:
            first = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0])
            raise DataError(
                f"{_OWNER}: column {name!r} of {str(path)!r} must have no missing values; got "
                f"{col.null_count} (first at row {first}). Impute or drop them before loading."
            )
    label_col = table.column(columns[label_i])
    if pa.types.is_integer(label_col.type) or pa.types.is_boolean(label_col.type):
        y = np.asarray(label_col.to_numpy(zero_copy_only=False)).astype(np.int64)
    elif pa.types.is_floating(label_col.type):
        y = np.asarray(label_col.to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        y = _labels_from_text([str(v) for v in label_col.to_pylist()], locate, str(path))
    if text_i is not None:
        tcol = table.column(columns[text_i])
        if not (pa.types.is_string(tcol.type) or pa.types.is_large_string(tcol.type)):
            raise DataError(
                f"{_OWNER}: text column {columns[text_i]!r} of {str(path)!r} must hold strings; got type "
                f"{tcol.type}. Name the column that holds the texts."
            )
        texts = tuple(str(t) for t in tcol.to_pylist())
        _check_texts(texts, locate, path)
        return _Parsed(kind="text", fmt="parquet", sha256=_file_sha256(path), x=texts, y=y, locate=locate)
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
               for t in (table.column(columns[j]).type for j in feat_i)]
    if not all(numeric):
        listed = ", ".join(
            f"{columns[j]!r} ({table.column(columns[j]).type})" for j, ok in zip(feat_i, numeric, strict=True)
            if not ok
        )
        raise DataError(
            f"{_OWNER}: feature columns of {str(path)!r} must be numeric; got {listed}. Encode them as "
            "numbers (e.g. one-hot), or choose numeric columns with feature_cols=[...] (CLI: --feature-cols)."
        )
    x = np.column_stack([
        np.asarray(table.column(columns[j]).to_numpy(zero_copy_only=False), dtype=np.float32) for j in feat_i
    ])
    return _Parsed(
        kind="tabular", fmt="parquet", sha256=_file_sha256(path), x=x, y=y, locate=locate,
        feature_names=tuple(str(columns[j]) for j in feat_i),
    )


# ----------------------------------------------------------------------------------------------
# <label>\t<text> lines


def _read_text_lines(path: Path, opts: _Options) -> _Parsed:
    opts.refuse_columns(f"the labelled-text file {str(path)!r}")
    opts.expect_kind("text", f"{str(path)!r} ('<label>\\t<text>' lines)")
    size = path.stat().st_size
    check_text_file_memory(_OWNER, str(path), size, fix=_SMALLER_FILE)
    raw = path.read_bytes()
    _refuse_binary(path, raw[:8], "a text file of '<label>\\t<text>' lines")
    labels, texts, linenos = split_labelled_lines(
        raw, path=str(path), owner=_OWNER,
        no_tab_fix="Separate the label from the text with one tab (a CSV with a header: pass label_col "
                   "and text_col).",
    )
    digest = hashlib.sha256(raw).hexdigest()
    del raw

    def locate(i: int) -> str:
        return f"line {linenos[i]}"

    _check_texts(texts, locate, path)
    y = _labels_from_text(labels, locate, str(path))
    return _Parsed(kind="text", fmt="text-lines", sha256=digest, x=tuple(texts), y=y, locate=locate)


# ----------------------------------------------------------------------------------------------
# Image folders


def _read_image_folder(path: Path, opts: _Options) -> _Parsed:
    opts.refuse_columns(f"the image folder {str(path)!r}")
    opts.expect_kind("image", f"the folder {str(path)!r} (image folders)")
    subdirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if "train" in subdirs and "test" in subdirs:
        others = [d for d in subdirs if d not in ("train", "test")]
        if others:
            raise DataError(
                f"{_OWNER}: an image folder with train/ and test/ must hold no other sub-folder; got "
                f"{others!r} in {str(path)!r}. Move them out (a validation split is not used)."
            )
        train_files, train_classes = _scan_classes(path / "train")
        test_files, test_classes = _scan_classes(path / "test")
        extra = sorted(set(test_classes) - set(train_classes))
        if extra:
            raise DataError(
                f"{_OWNER}: the classes of {str(path / 'test')!r} must also be in {str(path / 'train')!r}; "
                f"got {extra!r} only in test/. Add training images for them, or remove them."
            )
        files = train_files + test_files
        n_train = len(train_files)
    else:
        files, _ = _scan_classes(path)
        n_train = len(files)
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a core dependency
        raise ConfigError(
            f"{_OWNER}: reading images needs Pillow; got ImportError ({exc}). pip install pillow."
        ) from exc
    # First pass: headers only (size and mode), so that sizes and memory are checked before decoding.
    sizes: list[tuple[int, int]] = []
    modes: list[str] = []
    for f, _ in files:
        with _open_image(Image, f, path) as im:
            sizes.append(im.size)
            modes.append(str(im.mode))
    colour = any(m not in _GREY_MODES for m in modes)
    first = sizes[0]
    for (f, _), s in zip(files, sizes, strict=True):
        if s != first:
            raise DataError(
                f"{_OWNER}: every image in {str(path)!r} must have the size of {_rel(files[0][0], path)!r} "
                f"({first[0]}x{first[1]}); got {s[0]}x{s[1]} for {_rel(f, path)!r}. Resize the images to "
                "one size first (e.g. with Pillow's Image.resize)."
            )
    channels = 3 if colour else 1
    w, h = first
    largest = max(f.stat().st_size for f, _ in files)  # one file's bytes are held while it is decoded
    _check_size(path, len(files) * channels * h * w * 8 + largest,
                f"{len(files):,} images of {channels}x{h}x{w} as float32, with a copy for the split")
    x = np.empty((len(files), channels, h, w), dtype=np.float32)
    digest = hashlib.sha256()
    for i, (f, _) in enumerate(files):
        data = f.read_bytes()
        digest.update(f"{_rel(f, path)}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        with _open_image(Image, f, path, data) as im:
            try:
                im.load()
                x[i] = _pixels(im, colour)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DataError(
                    f"{_OWNER}: {_rel(f, path)!r} in {str(path)!r} must be a readable image; got "
                    f"{type(exc).__name__}: {exc}. Replace or remove that file."
                ) from exc
    deep = [m.startswith("I") for m in modes]
    scaling = {0: "/255", len(deep): "/65535 (16-bit grey)"}.get(sum(deep), "/255, /65535 (16-bit grey)")
    y = np.array([c for _, c in files], dtype=str)
    rel = [_rel(f, path) for f, _ in files]
    parsed = _Parsed(
        kind="image", fmt="image-folder", sha256=digest.hexdigest(), x=x[:n_train], y=y[:n_train],
        locate=lambda i: rel[i], images=True, scaling=scaling,
    )
    if n_train < len(files):
        parsed.x_test, parsed.y_test = x[n_train:], y[n_train:]
        parsed.locate_test = lambda i: rel[n_train + i]
    return parsed


def _scan_classes(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(files with their class, sorted class names) of a folder of class sub-folders."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    stray = sorted(
        f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not classes:
        found = f"{len(stray)} image files at the top level" if stray else "no sub-folders"
        raise DataError(
            f"{_OWNER}: the image folder {str(root)!r} must hold one sub-folder per class (e.g. cat/, "
            f"dog/); got {found}. Move each class's images into a sub-folder named after the class."
        )
    if stray:
        raise DataError(
            f"{_OWNER}: images in {str(root)!r} must be inside a class sub-folder; got {stray[0]!r} at the "
            "top level. Move it into its class's sub-folder."
        )
    files: list[tuple[Path, str]] = []
    for c in classes:
        found_files: list[Path] = []
        for f in sorted((root / c).iterdir()):
            if f.name.startswith(".") or f.name.lower() in _IGNORED_FILES:
                continue
            if f.is_dir():
                raise DataError(
                    f"{_OWNER}: class folder {str(root / c)!r} must hold image files only; got the "
                    f"sub-folder {f.name!r}. Flatten it (one level of class folders)."
                )
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{_OWNER}: files in {str(root / c)!r} must be images ({', '.join(IMAGE_EXTENSIONS)}); "
                    f"got {f.name!r}. Move it out of the data folder, or convert it."
                )
            found_files.append(f)
        if not found_files:
            raise DataError(
                f"{_OWNER}: class folder {str(root / c)!r} must hold at least one image; got none. Add "
                "images or remove the empty folder."
            )
        files.extend((f, c) for f in found_files)
    return files, classes


def _rel(f: Path, root: Path) -> str:
    return f.relative_to(root).as_posix()


def _open_image(image_mod: Any, f: Path, root: Path, data: bytes | None = None) -> Any:
    """PIL image (header read only) or DataError; refuses images over MAX_IMAGE_PIXELS undecoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_mod.DecompressionBombWarning)
            im = image_mod.open(io.BytesIO(data) if data is not None else f)
    except (image_mod.DecompressionBombWarning, image_mod.DecompressionBombError) as exc:
        raise DataError(
            f"{_OWNER}: {_rel(f, root)!r} in {str(root)!r} must be at most {MAX_IMAGE_PIXELS:,} pixels; got "
            f"{exc}. Remove it or shrink it (a possible decompression bomb)."
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise DataError(
            f"{_OWNER}: {_rel(f, root)!r} in {str(root)!r} must be a readable image; got "
            f"{type(exc).__name__}: {exc}. Replace or remove that file."
        ) from exc
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
        im.close()
        raise DataError(
            f"{_OWNER}: {_rel(f, root)!r} in {str(root)!r} must be 1 to {MAX_IMAGE_PIXELS:,} pixels; got "
            f"{w}x{h}. Remove it or shrink it (a possible decompression bomb)."
        )
    return im


def _pixels(im: Any, colour: bool) -> np.ndarray:
    """(C, H, W) float32 pixels in [0, 1]: 8-bit / 255, 16-bit grey / 65535; alpha dropped, grey
    replicated to three channels when the folder holds colour images."""
    if im.mode.startswith("I"):
        grey = np.clip(np.asarray(im, dtype=np.float64), 0, 65535).astype(np.float32) / np.float32(65535.0)
        return np.repeat(grey[None], 3 if colour else 1, axis=0)
    arr = np.asarray(im.convert("RGB" if colour else "L"), dtype=np.float32) / np.float32(255.0)
    return arr.transpose(2, 0, 1) if colour else arr[None]
