"""The SMS Spam Collection (Almeida, Gómez Hidalgo and Yamakami, 2011) and labelled-text files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield._io import write_atomic
from modelshield._resources import check_text_file_memory
from modelshield.data._dataset import DATA_ENV, find_data_file
from modelshield.data._embedded import embedded_source, read_embedded
from modelshield.errors import ConfigError, DataError, InputError, MissingDataError

__all__ = [
    "SMS_SPAM_CLASSES",
    "SMS_SPAM_FILE",
    "TextDataset",
    "load_sms_spam",
    "read_labelled_texts",
    "split_labelled_lines",
    "write_labelled_texts",
]

SMS_SPAM_DATASET = "sms-spam"
SMS_SPAM_FILE = "SMSSpamCollection"
SMS_SPAM_FOLDER = "sms-spam"
SMS_SPAM_CLASSES: tuple[str, ...] = ("ham", "spam")
"""Class names by label: 0 = ham (legitimate), 1 = spam."""


@dataclass(frozen=True, slots=True)
class TextDataset:
    """A train/test split of a labelled text data set.

    Attributes:
        name: the data set's name, e.g. ``"sms-spam"``.
        texts_train, texts_test: the raw messages.
        y_train, y_test: ``(N,)`` int64 labels, indices into ``class_names`` (1 = spam).
        class_names: class names by label, ``("ham", "spam")``.
        sha256: SHA-256 of the source file's bytes.
        source: the path of the file read, or ``"modelshield (embedded copy of ..., CC BY 4.0)"``.
    """

    name: str
    texts_train: tuple[str, ...]
    y_train: Tensor
    texts_test: tuple[str, ...]
    y_test: Tensor
    class_names: tuple[str, ...]
    sha256: str
    source: str

    def __repr__(self) -> str:
        return (
            f"TextDataset(name={self.name!r}, train={len(self.texts_train)}, test={len(self.texts_test)}, "
            f"classes={self.class_names!r}, source={self.source!r})"
        )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def load_sms_spam(
    root: str | Path | None = None,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    deduplicate: bool = False,
) -> TextDataset:
    """Load the SMS Spam Collection v.1 (5,574 messages: 4,827 ham, 747 spam).

    The file (one message a line: ``ham`` or ``spam``, a tab, the text) is looked for as
    ``<root>/sms-spam/SMSSpamCollection`` then ``<root>/SMSSpamCollection``, then likewise under
    ``$MODELSHIELD_DATA``; a folder without it is passed over. Without either, the copy embedded
    in the package is read (CC BY 4.0, see ``modelshield.data.ATTRIBUTIONS``): same bytes, same
    ``sha256``, ``source`` naming the embedded copy. Nothing is downloaded. The split is
    stratified by class and fixed by ``seed`` (scikit-learn's ``train_test_split`` with a
    private RandomState; the global RNG is not touched). The corpus holds about 400 exact
    duplicate messages, so a random split puts copies of training messages in the test set;
    ``deduplicate=True`` keeps the first copy of each (label, text) pair before splitting.

    Args:
        root: folder holding ``sms-spam/`` (or the file directly); None means ``$MODELSHIELD_DATA``,
            else the embedded copy.
        test_fraction: share of messages held out for testing, in (0, 1).
        seed: seed of the split.
        deduplicate: drop exact duplicate (label, text) pairs before splitting.

    Returns:
        A TextDataset with labels 0 = ham, 1 = spam.

    Raises:
        MissingDataError: no data folder holds the file and the package lacks its embedded
            copy (an install without package data; the message names the fix).
        DataError: a malformed line (bad label, missing tab, empty text, bytes that are not
            UTF-8); the message names the line number and the fix. Or a damaged embedded copy.
        ConfigError: test_fraction or seed out of range.

    Reference:
        T. A. Almeida, J. M. Gómez Hidalgo and A. Yamakami, "Contributions to the Study of SMS
        Spam Filtering: New Collection and Results", ACM DocEng 2011.

    Example:
        ds = load_sms_spam()
        len(ds.texts_train), int(ds.y_train.sum())      # (4180, 560)
    """
    if not (
        isinstance(test_fraction, int | float)
        and not isinstance(test_fraction, bool)
        and 0.0 < test_fraction < 1.0
    ):
        raise ConfigError(
            f"load_sms_spam: 'test_fraction' must be a number in (0, 1); got {test_fraction!r}. "
            "Give the held-out share, e.g. test_fraction=0.25."
        )
    check_range("seed", seed, owner="load_sms_spam", low=0, high=2**32 - 1, integer=True)
    path = _find(root)
    if path is None:
        texts, labels, digest = _read_embedded()
        source = embedded_source(SMS_SPAM_DATASET)
    else:
        stat = path.stat()
        texts, labels, digest = _read(str(path), stat.st_mtime_ns, stat.st_size, "load_sms_spam")
        source = str(path)
    idx = np.arange(len(texts))
    if deduplicate:
        seen: set[tuple[int, str]] = set()
        keep = []
        for i, (t, lab) in enumerate(zip(texts, labels.tolist(), strict=True)):
            if (lab, t) not in seen:
                seen.add((lab, t))
                keep.append(i)
        idx = np.asarray(keep, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(idx, test_size=float(test_fraction), random_state=seed, stratify=labels[idx])
    return TextDataset(
        name=SMS_SPAM_DATASET,
        texts_train=tuple(texts[i] for i in tr),
        y_train=torch.tensor(labels[tr]),
        texts_test=tuple(texts[i] for i in te),
        y_test=torch.tensor(labels[te]),
        class_names=SMS_SPAM_CLASSES,
        sha256=digest,
        source=source,
    )


def read_labelled_texts(
    path: str | Path, *, class_names: tuple[str, ...] = SMS_SPAM_CLASSES
) -> tuple[tuple[str, ...], Tensor]:
    """Read a file of ``<label>\\t<text>`` lines (the SMS Spam Collection format).

    Labels are matched case-insensitively against ``class_names`` and returned as their index.
    Line endings ``\\n`` and ``\\r\\n`` are accepted; the text keeps any further tab characters.
    A final newline is fine, but an empty line inside the file is an error.

    Args:
        path: the file, UTF-8 encoded.
        class_names: the allowed labels, by index (default ``("ham", "spam")``).

    Returns:
        ``(texts, y)``: the messages and an ``(N,)`` int64 tensor of labels.

    Raises:
        MissingDataError: the file does not exist.
        DataError: a malformed line or non-UTF-8 bytes; the message names the line number.

    Example:
        texts, y = read_labelled_texts("my_messages.tsv")
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(
            f"read_labelled_texts: 'path' must be an existing file; got {str(p)!r}. "
            "Check the path (one '<label>\\t<text>' line per message)."
        )
    if not class_names or len(set(class_names)) != len(class_names):
        raise ConfigError(
            f"read_labelled_texts: 'class_names' must be distinct names; got {class_names!r}. "
            "Pass e.g. class_names=('ham', 'spam')."
        )
    stat = p.stat()
    texts, labels, _ = _read(
        str(p.resolve()), stat.st_mtime_ns, stat.st_size, "read_labelled_texts", tuple(class_names)
    )
    return texts, torch.tensor(labels)


def write_labelled_texts(
    path: str | Path,
    texts: Sequence[str],
    y: Tensor | Sequence[int],
    *,
    class_names: tuple[str, ...] = SMS_SPAM_CLASSES,
    overwrite: bool = True,
) -> Path:
    """Write ``<label>\\t<text>`` lines (the SMS Spam Collection format) that read_labelled_texts reads back.

    Args:
        path: the file to write atomically (UTF-8, ``\\n`` line endings; replaced if it exists
            and overwrite is True).
        texts: the messages; none may be empty or contain a line break.
        y: one label index per text.
        class_names: label names by index.
        overwrite: replace an existing file (else a ConfigError, nothing written).

    Returns:
        The path written.

    Raises:
        InputError: texts and labels differ in length, a label is out of range, or a text is
            empty or holds a line break (the message names the row).
        ConfigError: the file exists and overwrite is False, or the path cannot be written.
    """
    labels = [int(v) for v in (y.tolist() if isinstance(y, Tensor) else y)]
    if len(labels) != len(texts):
        raise InputError(
            f"write_labelled_texts: 'y' must have one label per text ({len(texts)}); got {len(labels)}. "
            "Pass matching texts and labels."
        )
    lines = []
    for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
        if not 0 <= lab < len(class_names):
            raise InputError(
                f"write_labelled_texts: y[{i}] must be in [0, {len(class_names) - 1}]; got {lab}. "
                "Use label indices into class_names."
            )
        if not isinstance(t, str) or not t.strip() or "\n" in t or "\r" in t:
            raise InputError(
                f"write_labelled_texts: texts[{i}] must be a non-empty one-line str; got {t!r:.60}. "
                "Remove empty rows and line breaks."
            )
        lines.append(f"{class_names[lab]}\t{t}\n")
    return write_atomic(Path(path).expanduser(), "".join(lines), force=overwrite)


_FIX = (
    f"Put SMSSpamCollection (UCI SMS Spam Collection) in <data>/{SMS_SPAM_FOLDER}/ and set "
    f"{DATA_ENV}=<data>, or pass root=... (CLI: --data-dir)"
)


def _find(root: str | Path | None) -> Path | None:
    """The data folder's file, or None for the embedded copy."""
    return find_data_file(root, folder=SMS_SPAM_FOLDER, names=(SMS_SPAM_FILE,))


@lru_cache(maxsize=8)
def _read(
    path: str,
    mtime_ns: int,
    size: int,
    owner: str,
    class_names: tuple[str, ...] = SMS_SPAM_CLASSES,
) -> tuple[tuple[str, ...], np.ndarray, str]:
    """(texts, labels int64, sha256) of one file; cached by path, mtime and size."""
    check_text_file_memory(owner, path, size)
    return _parse(Path(path).read_bytes(), path, owner, class_names)


@lru_cache(maxsize=1)
def _read_embedded() -> tuple[tuple[str, ...], np.ndarray, str]:
    """(texts, labels, sha256) of the embedded SMSSpamCollection (480 kB: no memory check needed)."""
    raw = read_embedded(SMS_SPAM_DATASET, owner="load_sms_spam", fix=_FIX)
    return _parse(raw, embedded_source(SMS_SPAM_DATASET), "load_sms_spam", SMS_SPAM_CLASSES)


def _parse(
    raw: bytes, path: str, owner: str, class_names: tuple[str, ...]
) -> tuple[tuple[str, ...], np.ndarray, str]:
    """(texts, labels int64, sha256) of a labelled-text file's bytes; ``path`` names it in errors."""
    digest = hashlib.sha256(raw).hexdigest()
    lookup = {name.casefold(): i for i, name in enumerate(class_names)}
    allowed = ", ".join(repr(c) for c in class_names)
    texts: list[str] = []
    labels: list[int] = []
    for label, body, lineno in zip(*split_labelled_lines(raw, path=path, owner=owner), strict=True):
        where = f"{owner}: line {lineno} of {path!r}"
        line = f"{label}\t{body}"
        key = label.strip().casefold()
        if key not in lookup:
            raise DataError(
                f"{where}: the label must be one of {allowed}; got {label[:40]!r}. Fix or remove that line."
            )
        if not body.strip():
            raise DataError(
                f"{where} must have a non-empty text after the label; got {line[:60]!r}. "
                "Remove that line or add the message text."
            )
        texts.append(body)
        labels.append(lookup[key])
    y = np.asarray(labels, dtype=np.int64)
    y.flags.writeable = False
    return tuple(texts), y, digest


def split_labelled_lines(
    raw: bytes,
    *,
    path: str,
    owner: str,
    no_tab_fix: str = "Separate the label from the text with one tab character.",
) -> tuple[list[str], list[str], list[int]]:
    """``(labels, texts, line numbers)`` of the ``<label>\\t<text>`` lines in raw (UTF-8, BOM allowed).

    ``\\n`` and ``\\r\\n`` endings are accepted and a final newline is fine; the text keeps any
    further tab characters. Labels and texts are returned as written (callers check them).

    Raises:
        DataError: bytes that are not UTF-8, an empty file, an empty line or a line without a
            tab; the message names ``path`` and the line number.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{owner}: line {lineno} of {path!r} must be UTF-8 text; got the byte(s) "
            f"{raw[exc.start : exc.end]!r} ({exc.reason}). Re-save the file as UTF-8, e.g. iconv -f "
            "latin1 -t utf-8."
        ) from exc
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise DataError(
            f"{owner}: {path!r} must hold '<label>\\t<text>' lines; got an empty file. Check the path."
        )
    labels: list[str] = []
    texts: list[str] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        where = f"{owner}: line {lineno} of {path!r}"
        if not line.strip():
            raise DataError(
                f"{where} must hold '<label>\\t<text>'; got an empty line. Remove the empty line."
            )
        label, tab, body = line.partition("\t")
        if not tab:
            raise DataError(
                f"{where} must hold '<label>\\t<text>' separated by a tab; got no tab in {line[:60]!r}. "
                f"{no_tab_fix}"
            )
        labels.append(label)
        texts.append(body)
        linenos.append(lineno)
    return labels, texts, linenos
