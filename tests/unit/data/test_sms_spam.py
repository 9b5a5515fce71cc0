"""The SMS Spam Collection loader and labelled-text reader: counts, split, and line-numbered errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from modelshield.data.sms_spam import load_sms_spam, read_labelled_texts
from modelshield.errors import ConfigError, DataError, MissingDataError


@pytest.fixture(scope="module")
def spam_root() -> Path:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip(f"SMSSpamCollection not found under {root}; set MODELSHIELD_DATA")
    return root


def test_counts_split_and_labels(spam_root: Path) -> None:
    raw = (spam_root / "sms-spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    n_spam = sum(line.startswith("spam\t") for line in raw)
    ds = load_sms_spam(spam_root, test_fraction=0.25, seed=0)
    assert len(ds.texts_train) + len(ds.texts_test) == len(raw) == 5574
    assert int(ds.y_train.sum() + ds.y_test.sum()) == n_spam == 747
    assert ds.y_train.dtype == torch.int64 and ds.class_names == ("ham", "spam")
    assert len(ds.texts_test) == round(0.25 * 5574)
    # stratified: the spam share of both splits matches the corpus within one message
    assert abs(float(ds.y_test.float().mean()) - n_spam / len(raw)) < 1 / len(ds.texts_test) + 1e-9
    # labels belong to their texts
    pairs = {tuple(line.split("\t", 1)) for line in raw}
    names = ("ham", "spam")
    assert all((names[lab], t) in pairs for t, lab in zip(ds.texts_train, ds.y_train.tolist(), strict=True))
    again = load_sms_spam(spam_root, seed=0)
    assert again.texts_train == ds.texts_train and torch.equal(again.y_train, ds.y_train)
    assert load_sms_spam(spam_root, seed=1).texts_train != ds.texts_train
    dedup = load_sms_spam(spam_root, deduplicate=True)
    assert len(dedup.texts_train) + len(dedup.texts_test) < 5574


def test_env_and_direct_file(spam_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "SMSSpamCollection").write_bytes(b"ham\thello there\nspam\tWIN cash now\n" * 4)
    monkeypatch.setenv("MODELSHIELD_DATA", str(tmp_path))
    ds = load_sms_spam(test_fraction=0.5)
    assert len(ds.texts_train) == 4 and int(ds.y_train.sum()) == 2
    assert ds.source == str(tmp_path / "SMSSpamCollection")
    # Without a folder holding the file, the copy embedded in the package is read.
    embedded = "modelshield (embedded copy of SMSSpamCollection, CC BY 4.0)"
    monkeypatch.delenv("MODELSHIELD_DATA")
    assert load_sms_spam().source == embedded
    assert load_sms_spam(tmp_path / "nowhere").source == embedded


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"ham\tfine\nspamm\tbuy now\n", r"line 2 .*label must be one of 'ham', 'spam'; got 'spamm'"),
        (b"ham\tfine\nham no tab here\n", r"line 2 .*no tab"),
        (b"ham\tfine\nspam\t   \n", r"line 2 .*non-empty text"),
        (b"ham\tfine\n\nham\tok\n", r"line 2 .*empty line"),
        (b"ham\tfine\nham\tok\nspam\tcaf\xe9 prize\n", r"line 3 .*must be UTF-8.*iconv"),
        (b"", r"empty file"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "msgs.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_labelled_texts(path)


def test_reader_accepts_crlf_case_and_tabs(tmp_path: Path) -> None:
    path = tmp_path / "msgs.tsv"
    path.write_bytes(b"HAM\tsee you\tlater\r\nSpam\tfree entry\r\n")
    texts, y = read_labelled_texts(path)
    assert texts == ("see you\tlater", "free entry") and y.tolist() == [0, 1]
    with pytest.raises(MissingDataError, match="existing file"):
        read_labelled_texts(tmp_path / "missing.tsv")


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, True, "0.2"])
def test_bad_test_fraction(spam_root: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_sms_spam(spam_root, test_fraction=bad)  # type: ignore[arg-type]
