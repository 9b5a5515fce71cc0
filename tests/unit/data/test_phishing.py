"""The UCI phishing loader: label mapping, split, both file formats, and its errors."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modelshield.data.phishing import PHISHING_FEATURES, load_phishing
from modelshield.errors import ConfigError, DataError

FOLDER = "phishing-websites"


@pytest.fixture(scope="module")
def phish_dir() -> Path:
    root = Path(os.environ.get("MODELSHIELD_DATA", "")) / FOLDER
    if not (root / "phishing_websites.csv").is_file() or not (root / "Training_Dataset.arff").is_file():
        pytest.skip(f"phishing files not found under {root}; set MODELSHIELD_DATA")
    return root


def _csv_rows(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.asarray(rows[1:], dtype=np.int64)


def test_label_mapping_split_and_values(phish_dir: Path) -> None:
    header, raw = _csv_rows(phish_dir / "phishing_websites.csv")
    ds = load_phishing(phish_dir.parent)
    assert ds.feature_names == tuple(header[:-1]) == PHISHING_FEATURES
    n = raw.shape[0]
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == n
    assert ds.x_test.shape[0] == int(np.ceil(0.25 * n))
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Result == -1 (phishing in the UCI encoding) becomes label 1.
    n_phish = int((raw[:, -1] == -1).sum())
    assert int(ds.y_train.sum() + ds.y_test.sum()) == n_phish == 4898
    assert ds.class_names[1] == "phishing"
    # Stratified: both splits hold the same share of phishing rows (within one row).
    share = n_phish / n
    assert abs(float(ds.y_test.float().mean()) - share) < 1.0 / ds.x_test.shape[0] + 1e-9
    values = torch.unique(torch.cat([ds.x_train, ds.x_test]))
    assert set(values.tolist()) <= {-1.0, 0.0, 1.0}
    # Every test row is a row of the file with its label mapped.
    file_rows = {tuple(r[:-1].tolist()) + ((1,) if r[-1] == -1 else (0,)) for r in raw}
    for xr, yr in zip(ds.x_test[:50].long().tolist(), ds.y_test[:50].tolist(), strict=True):
        assert (*xr, yr) in file_rows


def test_sha256_source_and_determinism(phish_dir: Path) -> None:
    ds = load_phishing(phish_dir.parent)
    assert ds.sha256 == hashlib.sha256(Path(ds.source).read_bytes()).hexdigest()
    again = load_phishing(phish_dir.parent)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    other = load_phishing(phish_dir.parent, seed=1)
    assert not torch.equal(ds.x_test, other.x_test)


def test_csv_and_arff_give_the_same_data(phish_dir: Path, tmp_path: Path) -> None:
    shutil.copy(phish_dir / "phishing_websites.csv", tmp_path / "phishing_websites.csv")
    from_csv = load_phishing(tmp_path)
    from_arff = load_phishing(phish_dir)  # the folder itself also works as root
    assert from_csv.source.endswith(".csv") and from_arff.source.endswith(".arff")
    assert torch.equal(from_csv.x_train, from_arff.x_train)
    assert torch.equal(from_csv.y_test, from_arff.y_test)


def test_deduplicate_keeps_one_copy_per_row(phish_dir: Path) -> None:
    _, raw = _csv_rows(phish_dir / "phishing_websites.csv")
    ds = load_phishing(phish_dir.parent, deduplicate=True)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == len(np.unique(raw, axis=0))


def test_root_beats_env_and_folders_without_the_files_give_the_embedded_copy(
    phish_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A data folder without the files (e.g. one holding MNIST only) is passed over: the copy
    # embedded in the package is read, the same bytes, and `source` says so.
    embedded = "modelshield (embedded copy of Training_Dataset.arff, CC BY 4.0)"
    monkeypatch.setenv("MODELSHIELD_DATA", str(tmp_path))
    from_env = load_phishing()
    assert from_env.source == embedded
    from_root = load_phishing(phish_dir.parent)
    assert from_root.source == str((phish_dir / "Training_Dataset.arff").resolve())
    assert from_root.sha256 == from_env.sha256 and torch.equal(from_root.x_test, from_env.x_test)
    assert load_phishing(tmp_path / "absent").source == embedded
    monkeypatch.setenv("MODELSHIELD_DATA", str(phish_dir.parent))
    assert load_phishing(tmp_path).source == from_root.source  # root lacks them: $MODELSHIELD_DATA next
    monkeypatch.delenv("MODELSHIELD_DATA")
    assert load_phishing().source == embedded


def _write_csv(path: Path, rows: list[str]) -> None:
    header = ",".join([*PHISHING_FEATURES, "Result"])
    path.write_text("\n".join([header, *rows]) + "\n")


GOOD = ",".join(["1"] * 30 + ["-1"])


def test_malformed_rows_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "phishing_websites.csv"
    _write_csv(f, [GOOD, GOOD, ",".join(["1"] * 30)])
    with pytest.raises(DataError, match=r"line 4 .*31 comma-separated values; got 30"):
        load_phishing(tmp_path)
    _write_csv(f, [GOOD, "1,2," + ",".join(["1"] * 28) + ",1"])
    with pytest.raises(DataError, match=r"line 3 .*'URL_Length' must be one of \[-1, 0, 1\]; got 2"):
        load_phishing(tmp_path)
    _write_csv(f, [GOOD, "1,x," + ",".join(["1"] * 28) + ",1"])
    with pytest.raises(DataError, match=r"line 3 .*must hold integers"):
        load_phishing(tmp_path)
    _write_csv(f, [",".join(["1"] * 30 + ["0"])])
    with pytest.raises(DataError, match=r"line 2 .*'Result' must be one of \[-1, 1\]; got 0"):
        load_phishing(tmp_path)


def test_malformed_arff(phish_dir: Path, tmp_path: Path) -> None:
    lines = (phish_dir / "Training_Dataset.arff").read_text().splitlines()
    data_at = next(i for i, line in enumerate(lines) if line.lower().startswith("@data"))
    # Redirect is declared {0,1} in the header: -1 there is invalid for the ARFF file.
    bad = lines[data_at + 1].split(",")
    bad[PHISHING_FEATURES.index("Redirect")] = "-1"
    lines[data_at + 2] = ",".join(bad)
    (tmp_path / "Training_Dataset.arff").write_text("\n".join(lines))
    with pytest.raises(DataError, match=f"line {data_at + 3} .*'Redirect' must be one of \\[0, 1\\]"):
        load_phishing(tmp_path)


def test_bad_test_fraction() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_phishing("/nonexistent", test_fraction=1.5)
