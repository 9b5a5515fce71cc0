"""The UCI "Phishing Websites" tabular data set (Mohammad, Thabtah and McCluskey), from ARFF or CSV."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield._resources import check_text_file_memory
from modelshield.data._dataset import DATA_ENV, find_data_file
from modelshield.data._embedded import embedded_source, read_embedded
from modelshield.errors import ConfigError, DataError

__all__ = [
    "PHISHING_CLASSES",
    "PHISHING_CONSTRAINTS",
    "PHISHING_FEATURES",
    "PHISHING_FILES",
    "TabularDataset",
    "load_phishing",
]

PHISHING_FILES: tuple[str, ...] = ("Training_Dataset.arff", "phishing_websites.csv")
"""File names looked for, in this order, under ``<root>/phishing-websites/`` and ``<root>/``."""

PHISHING_DATASET = "phishing-websites"
PHISHING_FOLDER = "phishing-websites"
PHISHING_CLASSES: tuple[str, ...] = ("legitimate", "phishing")
PHISHING_CONSTRAINTS = Path(__file__).with_name("phishing_constraints.yaml")
"""The shipped constraint spec (see ``ConstraintSpec.from_yaml``)."""

PHISHING_FEATURES: tuple[str, ...] = (
    "having_IP_Address", "URL_Length", "Shortining_Service", "having_At_Symbol",
    "double_slash_redirecting", "Prefix_Suffix", "having_Sub_Domain", "SSLfinal_State",
    "Domain_registeration_length", "Favicon", "port", "HTTPS_token", "Request_URL",
    "URL_of_Anchor", "Links_in_tags", "SFH", "Submitting_to_email", "Abnormal_URL", "Redirect",
    "on_mouseover", "RightClick", "popUpWidnow", "Iframe", "age_of_domain", "DNSRecord",
    "web_traffic", "Page_Rank", "Google_Index", "Links_pointing_to_page", "Statistical_report",
)
"""The 30 feature columns, spelled as in the UCI files (including their typos)."""

_LABEL = "Result"
_FEATURE_VALUES = (-1, 0, 1)


@dataclass(frozen=True, slots=True)
class TabularDataset:
    """A train/test split of a tabular classification data set.

    Attributes:
        name: the data set's name, e.g. ``"phishing-websites"``.
        feature_names: one name per column.
        x_train, x_test: ``(N, D)`` float32 feature rows.
        y_train, y_test: ``(N,)`` int64 labels, indices into ``class_names``.
        class_names: class names by label; for phishing ``("legitimate", "phishing")``.
        sha256: SHA-256 of the source file's bytes.
        source: the path of the file read, or ``"modelshield (embedded copy of ..., CC BY 4.0)"``.
        bounds: the natural range of every feature, for ``as_model(..., bounds=...)``.
    """

    name: str
    feature_names: tuple[str, ...]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    sha256: str
    source: str
    bounds: tuple[float, float] = (-1.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"TabularDataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={self.class_names!r}, source={self.source!r})"
        )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def load_phishing(
    root: str | Path | None = None,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    deduplicate: bool = False,
) -> TabularDataset:
    """Load the UCI Phishing Websites data (11,055 sites, 30 features in {-1, 0, 1}).

    Label mapping. In the UCI files the class column ``Result`` is -1 for phishing and 1 for
    legitimate (4,898 and 6,157 rows); the features documentation encodes every feature as
    1 = legitimate, 0 = suspicious, -1 = phishing. This loader maps ``Result == -1`` to label
    **1 = phishing** (the malicious, positive class) and ``Result == 1`` to **0 = legitimate**.
    Feature values are kept as they are, as float32. Note that in the published data the
    empirical association of several features with the class disagrees with the documented
    sign (e.g. ``Domain_registeration_length == 1`` is more common among phishing rows), so do
    not rely on "1 means legitimate" feature by feature.

    The file is looked for as ``<root>/phishing-websites/<file>`` or ``<root>/<file>`` for
    ``Training_Dataset.arff`` (the original ARFF) then ``phishing_websites.csv`` (the same
    rows with a header line), then likewise under ``$MODELSHIELD_DATA``; a folder that holds
    neither file is passed over. Without either, the copy of the UCI ARFF embedded in the package
    is read (CC BY 4.0, see ``modelshield.data.ATTRIBUTIONS``): same bytes, same ``sha256``,
    ``source`` naming the embedded copy. Nothing is downloaded. The split
    is stratified by class and fixed by ``seed`` (a private RandomState; the global RNG is not
    touched). The data hold 5,206 exact duplicate rows, so a random split puts copies of
    training rows in the test set; ``deduplicate=True`` keeps the first copy of each
    (feature, label) row before splitting.

    Args:
        root: folder holding ``phishing-websites/`` (or the files directly); None means
            ``$MODELSHIELD_DATA``, else the embedded copy.
        test_fraction: share of rows held out for testing, in (0, 1).
        seed: seed of the split.
        deduplicate: drop exact duplicate rows before splitting.

    Returns:
        A TabularDataset with float32 features in [-1, 1] and int64 labels (1 = phishing).

    Raises:
        MissingDataError: no data folder holds the files and the package lacks its embedded
            copy (an install without package data; the message names the fix).
        DataError: a malformed row (the message names the file and line number), or a damaged
            embedded copy.
        ConfigError: test_fraction or seed out of range.

    Reference:
        R. M. Mohammad, F. Thabtah and L. McCluskey, "An Assessment of Features Related to
        Phishing Websites using an Automated Technique", ICITST 2012; and "Phishing Websites
        Features" (UCI Machine Learning Repository, 2015).

    Example:
        ds = load_phishing()
        ds.x_train.shape          # torch.Size([8291, 30])
    """
    if not (
        isinstance(test_fraction, int | float)
        and not isinstance(test_fraction, bool)
        and 0.0 < test_fraction < 1.0
    ):
        raise ConfigError(
            f"load_phishing: 'test_fraction' must be a number in (0, 1); got {test_fraction!r}. "
            "Give the held-out share, e.g. test_fraction=0.25."
        )
    check_range("seed", seed, owner="load_phishing", low=0, high=2**32 - 1, integer=True)
    path = _find(root)
    if path is None:
        x, y, digest = _read_embedded()
        source = embedded_source(PHISHING_DATASET)
    else:
        stat = path.stat()
        x, y, digest = _read(str(path), stat.st_mtime_ns, stat.st_size)
        source = str(path)
    if deduplicate:
        _, first = np.unique(np.column_stack([x, y]), axis=0, return_index=True)
        keep = np.sort(first)
        x, y = x[keep], y[keep]
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(test_fraction), random_state=seed, stratify=y
    )
    return TabularDataset(
        name=PHISHING_DATASET,
        feature_names=PHISHING_FEATURES,
        x_train=torch.tensor(np.ascontiguousarray(x_tr)),
        y_train=torch.tensor(np.ascontiguousarray(y_tr)),
        x_test=torch.tensor(np.ascontiguousarray(x_te)),
        y_test=torch.tensor(np.ascontiguousarray(y_te)),
        class_names=PHISHING_CLASSES,
        sha256=digest,
        source=source,
    )


_FIX = (
    f"Put Training_Dataset.arff or phishing_websites.csv (UCI Phishing Websites) in "
    f"<data>/{PHISHING_FOLDER}/ and set {DATA_ENV}=<data>, or pass root=... (CLI: --data-dir)"
)


def _find(root: str | Path | None) -> Path | None:
    """The data folder's file, or None for the embedded copy."""
    return find_data_file(root, folder=PHISHING_FOLDER, names=PHISHING_FILES)


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(x float32 (N, 30), y int64 (N,), sha256) of one file; cached by path, mtime and size."""
    check_text_file_memory("load_phishing", path, size)
    return _parse(Path(path).read_bytes(), path, arff=path.lower().endswith(".arff"))


@lru_cache(maxsize=1)
def _read_embedded() -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, sha256) of the embedded ARFF (800 kB: no memory check needed)."""
    raw = read_embedded(PHISHING_DATASET, owner="load_phishing", fix=_FIX)
    return _parse(raw, embedded_source(PHISHING_DATASET), arff=True)


def _parse(raw: bytes, path: str, *, arff: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, sha256) of an ARFF or CSV file's bytes; ``path`` names it in errors."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"load_phishing: {path!r} must be UTF-8/ASCII text; got {exc}.") from exc
    lines = text.splitlines()
    declared: list[set[int]] | None = None
    if arff:
        start, declared = _arff_header(lines, path)
    else:
        _csv_header(lines, path)
        start = 1
    rows: list[list[int]] = []
    for lineno in range(start, len(lines)):
        line = lines[lineno].strip()
        if not line or line.startswith("%"):
            continue
        rows.append(_parse_row(line, lineno + 1, path, declared))
    if not rows:
        raise DataError(f"load_phishing: {path!r} must hold data rows; got none. Re-download the file.")
    arr = np.asarray(rows, dtype=np.int64)
    x = arr[:, :-1].astype(np.float32)
    y = (arr[:, -1] == -1).astype(np.int64)  # UCI: Result -1 = phishing -> label 1
    for a in (x, y):
        a.flags.writeable = False
    return x, y, digest


def _check_names(names: list[str], path: str, where: str) -> None:
    expected = [*PHISHING_FEATURES, _LABEL]
    if names != expected:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, expected, strict=False)) if a != b]
        detail = f"first difference at column {diff[0][0]}: {diff[0][1]!r} vs {diff[0][2]!r}" if diff else (
            f"{len(names)} columns instead of {len(expected)}"
        )
        raise DataError(
            f"load_phishing: {where} of {path!r} must name the 30 UCI features and 'Result'; got "
            f"{detail}. Use the original UCI Phishing Websites file."
        )


def _csv_header(lines: list[str], path: str) -> None:
    if not lines:
        raise DataError(f"load_phishing: {path!r} must not be empty; got 0 lines. Re-download the file.")
    names = [n.strip().strip('"') for n in lines[0].split(",")]
    _check_names(names, path, "the header line")


def _arff_header(lines: list[str], path: str) -> tuple[int, list[set[int]]]:
    names: list[str] = []
    declared: list[set[int]] = []
    for i, raw in enumerate(lines):
        line = raw.strip()
        low = line.lower()
        if low.startswith("@attribute"):
            parts = line.split(None, 2)
            if len(parts) < 3 or "{" not in parts[2]:
                raise DataError(
                    f"load_phishing: line {i + 1} of {path!r} must declare a nominal attribute "
                    f"'@attribute name {{...}}'; got {line!r}."
                )
            names.append(parts[1])
            inside = parts[2][parts[2].index("{") + 1 : parts[2].rindex("}")]
            try:
                declared.append({int(v) for v in inside.split(",")})
            except ValueError as exc:
                raise DataError(
                    f"load_phishing: line {i + 1} of {path!r} must list integer values; got {line!r}."
                ) from exc
        elif low.startswith("@data"):
            _check_names(names, path, "the @attribute lines")
            return i + 1, declared
    raise DataError(f"load_phishing: {path!r} must contain an @data line; got none. Re-download the file.")


def _parse_row(line: str, lineno: int, path: str, declared: list[set[int]] | None) -> list[int]:
    fields = line.split(",")
    n = len(PHISHING_FEATURES) + 1
    if len(fields) != n:
        raise DataError(
            f"load_phishing: line {lineno} of {path!r} must have {n} comma-separated values; got "
            f"{len(fields)}: {line[:80]!r}. Repair or remove that line."
        )
    try:
        vals = [int(v) for v in fields]
    except ValueError as exc:
        raise DataError(
            f"load_phishing: line {lineno} of {path!r} must hold integers; got {line[:80]!r}. "
            "Repair or remove that line (missing values are not allowed)."
        ) from exc
    for j, v in enumerate(vals):
        allowed = declared[j] if declared is not None else (
            {-1, 1} if j == n - 1 else set(_FEATURE_VALUES)
        )
        if v not in allowed:
            name = PHISHING_FEATURES[j] if j < n - 1 else _LABEL
            raise DataError(
                f"load_phishing: line {lineno} of {path!r}: {name!r} must be one of "
                f"{sorted(allowed)}; got {v}. Repair or remove that line."
            )
    return vals
