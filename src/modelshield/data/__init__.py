"""Data set loaders: bundled digits, MNIST and Fashion-MNIST (IDX files), by name or directly,
the UCI phishing-websites tabular data and the SMS Spam Collection (``load_sms_spam``, raw
texts in a :class:`TextDataset`), and ``load_data`` for any data reference (a built-in name,
an ``.npz``, a CSV / Parquet table, an image folder, a labelled-text file) into a :class:`UserData`.

The phishing and SMS spam data ship inside the package (the UCI files' original bytes, CC BY
4.0; credits in :data:`ATTRIBUTIONS`), read when no data folder holds the files: nothing is
downloaded, and a loader's ``source`` says which copy it read.

Every image loader returns a :class:`Dataset` with float32 images in [0, 1] shaped
``(N, 1, H, W)`` and int64 labels; tabular loaders return a :class:`TabularDataset` with
``(N, D)`` float32 rows (``load_tabular_dataset``). Loaders raise :class:`~modelshield.errors.DataError` (or
:class:`~modelshield.errors.MissingDataError`) with the fix when the files are absent or broken.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from modelshield.data._dataset import DATA_ENV, Dataset, data_dir
from modelshield.data._embedded import ATTRIBUTIONS
from modelshield.data.digits import load_digits
from modelshield.data.idx import load_fashion_mnist, load_idx, load_mnist
from modelshield.data.phishing import TabularDataset, load_phishing
from modelshield.data.refs import BUILTIN_DATA, DataKind, DataProvenance, UserData, load_data
from modelshield.data.sms_spam import TextDataset, load_sms_spam
from modelshield.errors import ConfigError

__all__ = [
    "ATTRIBUTIONS",
    "BUILTIN_DATA",
    "DATASETS",
    "DATA_ENV",
    "TABULAR_DATASETS",
    "DataKind",
    "DataProvenance",
    "Dataset",
    "TabularDataset",
    "TextDataset",
    "UserData",
    "data_dir",
    "load_data",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_mnist",
    "load_phishing",
    "load_sms_spam",
    "load_tabular_dataset",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
"""Image data sets (``load_dataset``)."""

TABULAR_DATASETS: tuple[str, ...] = ("phishing-websites",)
"""Tabular data sets (``load_tabular_dataset``)."""


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a data set by name.

    Args:
        name: one of ``DATASETS``: ``"digits"`` (bundled with scikit-learn, ``root`` is ignored),
            ``"mnist"`` or ``"fashion-mnist"`` (IDX files under ``root``).
        root: the data folder; None means ``$MODELSHIELD_DATA``.

    Returns:
        The Dataset, with the default split for digits.

    Raises:
        ConfigError: unknown name (the message lists the names).
        MissingDataError: the files are not found (the message says how to fix it).
        DataError: a file is truncated or corrupt.

    Example:
        ds = load_dataset("fashion-mnist", root="/data")
    """
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(root)
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"load_dataset: 'name' must be one of {', '.join(map(repr, DATASETS))}; got {name!r}. "
        f"{hint}Use one of the listed names."
    )


def load_tabular_dataset(
    name: str, root: str | Path | None = None, *, deduplicate: bool = False
) -> TabularDataset:
    """Load a tabular data set by name (its default split).

    Args:
        name: one of ``TABULAR_DATASETS``: ``"phishing-websites"`` (UCI Phishing Websites,
            see ``load_phishing``).
        root: the data folder; None means ``$MODELSHIELD_DATA``. Without a folder holding the
            file, the copy embedded in the package is read.
        deduplicate: drop exact duplicate rows before splitting (the phishing data hold 5,206).

    Returns:
        The TabularDataset.

    Raises:
        ConfigError: unknown name (the message lists the names).
        MissingDataError: no folder holds the file and the embedded copy is not installed.
        DataError: a malformed row.

    Example:
        ds = load_tabular_dataset("phishing-websites", deduplicate=True)
    """
    if name == "phishing-websites":
        return load_phishing(root, deduplicate=deduplicate)
    close = difflib.get_close_matches(str(name), TABULAR_DATASETS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"load_tabular_dataset: 'name' must be one of {', '.join(map(repr, TABULAR_DATASETS))}; "
        f"got {name!r}. {hint}Use one of the listed names (image data: load_dataset)."
    )
