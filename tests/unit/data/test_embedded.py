"""The data sets embedded in the package: read without a data folder, the UCI files' exact bytes,
package data of the wheel, credited (CC BY 4.0), and clear errors for a broken install."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import torch

from modelshield.data import ATTRIBUTIONS, load_data, load_phishing, load_sms_spam, load_tabular_dataset
from modelshield.data import _embedded as embedded_mod
from modelshield.data._embedded import EMBEDDED_DATA, EmbeddedFile, read_embedded
from modelshield.errors import DataError, MissingDataError

REPO = Path(__file__).resolve().parents[3]
EMBEDDED = resources.files("modelshield.data").joinpath("embedded")
FOLDERS = {"phishing-websites": "phishing-websites", "sms-spam": "sms-spam"}


@pytest.fixture()
def no_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSHIELD_DATA", raising=False)


def _shared_file(name: str) -> Path:
    """The UCI file in $MODELSHIELD_DATA (else ../shared/data beside the checkout); skip without it."""
    root = Path(os.environ.get("MODELSHIELD_DATA") or REPO.parent / "shared" / "data")
    path = root / FOLDERS[name] / EMBEDDED_DATA[name].file
    if not path.is_file():
        pytest.skip(f"{path} not found; set MODELSHIELD_DATA to compare with the UCI file")
    return path


@pytest.mark.parametrize("name", sorted(EMBEDDED_DATA))
def test_embedded_file_is_the_original_bytes(name: str) -> None:
    entry = EMBEDDED_DATA[name]
    raw = gzip.decompress(EMBEDDED.joinpath(f"{entry.file}.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == entry.sha256
    assert read_embedded(name, owner="test", fix="fix") == raw


def test_loaders_read_the_embedded_copy_without_a_data_folder(no_data_folder: None) -> None:
    phish = load_phishing()
    assert phish.source == "modelshield (embedded copy of Training_Dataset.arff, CC BY 4.0)"
    assert phish.sha256 == EMBEDDED_DATA["phishing-websites"].sha256
    assert phish.x_train.shape == (8291, 30) and int(phish.y_train.sum() + phish.y_test.sum()) == 4898
    assert load_tabular_dataset("phishing-websites", deduplicate=True).x_test.shape == (1463, 30)
    spam = load_sms_spam()
    assert spam.source == "modelshield (embedded copy of SMSSpamCollection, CC BY 4.0)"
    assert spam.sha256 == EMBEDDED_DATA["sms-spam"].sha256
    assert len(spam.texts_train) + len(spam.texts_test) == 5574
    assert int(spam.y_train.sum() + spam.y_test.sum()) == 747
    for ref, kind in (("phishing-websites", "tabular"), ("sms-spam", "text")):
        data = load_data(ref)
        assert data.kind == kind and data.provenance.sha256 == EMBEDDED_DATA[ref].sha256


def test_embedded_and_data_folder_give_the_same_bytes_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EMBEDDED_DATA:
        assert read_embedded(name, owner="test", fix="fix") == _shared_file(name).read_bytes()
    root = _shared_file("phishing-websites").parents[1]
    monkeypatch.delenv("MODELSHIELD_DATA", raising=False)
    for seed in (0, 3):
        a, b = load_phishing(seed=seed, deduplicate=True), load_phishing(root, seed=seed, deduplicate=True)
        assert a.source != b.source and a.sha256 == b.sha256
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
        s, t = load_sms_spam(seed=seed), load_sms_spam(root, seed=seed)
        assert s.source != t.source and s.sha256 == t.sha256
        assert s.texts_test == t.texts_test and torch.equal(s.y_train, t.y_train)


def test_a_data_folder_holding_the_file_wins(tmp_path: Path, no_data_folder: None) -> None:
    # e.g. a user's newer copy: read from the folder, with its own digest
    (tmp_path / "sms-spam").mkdir()
    newer = tmp_path / "sms-spam" / "SMSSpamCollection"
    newer.write_bytes(b"ham\thello there\nspam\tWIN cash now\n" * 4)
    ds = load_sms_spam(tmp_path, test_fraction=0.5)
    assert ds.source == str(newer) and len(ds.texts_train) == 4
    assert ds.sha256 == hashlib.sha256(newer.read_bytes()).hexdigest() != EMBEDDED_DATA["sms-spam"].sha256


def test_attributions_credit_every_embedded_data_set() -> None:
    text = EMBEDDED.joinpath("ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert set(ATTRIBUTIONS) == set(EMBEDDED_DATA)
    for name, doi in (("phishing-websites", "10.24432/C51W2X"), ("sms-spam", "10.24432/C5CC84")):
        credit = ATTRIBUTIONS[name]
        assert credit in text  # the file and the dict say the same
        for part in (doi, "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/",
                     "UCI Machine Learning Repository", "https://archive.ics.uci.edu/dataset/",
                     EMBEDDED_DATA[name].file, "unchanged"):
            assert part in credit, (name, part)
        assert EMBEDDED_DATA[name].sha256 in text
    assert all(who in ATTRIBUTIONS["phishing-websites"] for who in ("Mohammad", "McCluskey"))
    assert "Almeida" in ATTRIBUTIONS["sms-spam"] and "Gómez Hidalgo" in ATTRIBUTIONS["sms-spam"]
    # the authors' readme travels with the corpus: its copyright notice and disclaimer
    readme = EMBEDDED.joinpath("SMSSpamCollection-readme.txt").read_text(encoding="utf-8")
    assert "hold the copyrigth (c) for the SMS Spam Collection v.1" in readme and "No Warranty" in readme


def test_embedded_files_are_package_data() -> None:
    """Every file of data/embedded is matched by [tool.setuptools.package-data], so wheels carry it
    (tests/integration/test_packaging.py builds one)."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = sorted(f.name for f in EMBEDDED.iterdir() if f.is_file())
    assert files == ["ATTRIBUTION.txt", "SMSSpamCollection-readme.txt", "SMSSpamCollection.gz",
                     "Training_Dataset.arff.gz"]
    unmatched = [f for f in files
                 if not any(fnmatch.fnmatch(f"data/embedded/{f}", p) for p in patterns["modelshield"])]
    assert not unmatched


def test_a_missing_or_damaged_embedded_copy_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    good = EMBEDDED_DATA["sms-spam"]
    monkeypatch.setitem(EMBEDDED_DATA, "sms-spam", EmbeddedFile(file="absent", sha256=good.sha256, credit=""))
    with pytest.raises(MissingDataError, match=r"absent\.gz must be installed.*Put it there, or reinstall"):
        read_embedded("sms-spam", owner="load_sms_spam", fix="Put it there")
    monkeypatch.setitem(EMBEDDED_DATA, "sms-spam", EmbeddedFile(file=good.file, sha256="0" * 64, credit=""))
    with pytest.raises(DataError, match=r"must hold the original SMSSpamCollection \(sha256 000000000000"):
        read_embedded("sms-spam", owner="load_sms_spam", fix="Put it there")
    monkeypatch.setattr(embedded_mod, "resources", _Resources(b"not gzip"))
    with pytest.raises(DataError, match=r"SMSSpamCollection\.gz must be gzip data.*Reinstall modelshield"):
        read_embedded("sms-spam", owner="load_sms_spam", fix="Put it there")


class _Resources:
    """Stands in for importlib.resources: every file holds ``data``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def files(self, package: str) -> _Resources:
        return self

    def joinpath(self, *parts: str) -> _Resources:
        return self

    def read_bytes(self) -> bytes:
        return self.data
