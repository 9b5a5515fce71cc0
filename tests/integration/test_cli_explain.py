"""``modelshield explain``: PNGs and summary.json per model kind, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fast(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", *args])


@pytest.fixture(scope="module")
def digits_cache() -> Iterator[None]:
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with torch_threads(1):
        zoo.load("digits-cnn")  # trains on a cold session cache (a few seconds)
    yield


@pytest.fixture(scope="module")
def phishing_data() -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")


def pngs(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.png"))
    for f in files:
        assert f.read_bytes()[:8] == PNG_MAGIC
    return files


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_digits_writes_one_heatmap_per_input_and_a_summary(digits_cache: None, tmp_path: Path,
                                                           method: str) -> None:
    out = tmp_path / method
    result = fast("explain", "--model", "digits-cnn", "--method", method, "--n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [p.name for p in pngs(out)] == ["input-000.png", "input-001.png"]
    d = json.loads((out / "summary.json").read_text())
    assert d["method"] == method and d["model"]["name"] == "digits-cnn"
    assert d["result"]["n"] == 2 and d["result"]["shape"] == [1, 8, 8]
    assert [r["file"] for r in d["inputs"]] == ["input-000.png", "input-001.png"]
    if method == "ig":
        assert d["config"]["steps"] == 50
        gaps = d["completeness_gap"]
        assert len(gaps) == 2
        scores = [abs(r["score"]) for r in d["inputs"]]
        assert all(g <= 0.01 * max(s, 1.0) for g, s in zip(gaps, scores, strict=True))  # completeness
    else:
        assert d["completeness_gap"] is None
    assert "input-000.png" in result.stdout


def test_default_method_for_torch_is_ig(digits_cache: None, tmp_path: Path) -> None:
    result = fast("explain", "--model", "digits-cnn", "--n", "1", "--steps", "8",
                  "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert d["method"] == "ig" and d["config"]["steps"] == 8 and d["result"]["details"]["steps"] == 8


def test_tabular_writes_bar_charts(phishing_data: None, tmp_path: Path) -> None:
    out = tmp_path / "tab"
    result = fast("explain", "--model", "phishing-logreg", "--n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(pngs(out)) == 2
    d = json.loads((out / "summary.json").read_text())
    assert d["method"] == "kernel-shap"  # the default for a tabular model that is not a tree ensemble
    assert len(d["result"]["feature_names"]) == 30
    assert max(d["completeness_gap"]) < 1e-6  # Kernel SHAP imposes efficiency


def test_tree_models_default_to_tree_shap_with_names(phishing_data: None, tmp_path: Path) -> None:
    out = tmp_path / "gbm"  # phishing-gbm is a HistGradientBoostingClassifier
    result = fast("explain", "--model", "phishing-gbm", "--n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    d = json.loads((out / "summary.json").read_text())
    assert d["method"] == "tree-shap" and len(d["result"]["feature_names"]) == 30
    assert max(d["completeness_gap"]) < 1e-6  # TreeSHAP's local accuracy


def test_existing_folder_is_not_overwritten_without_force(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_error_line(fast("explain", "--model", "digits-cnn", "--method", "saliency", "--n", "1",
                               "--out", str(out)))
    assert "--force" in line and str(out) in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    result = fast("explain", "--model", "digits-cnn", "--method", "saliency", "--n", "1", "--out", str(out),
                  "--force")
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file() and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("args", "words"), [
    (["--model", "digits-cnn", "--method", "igg"], ["'--method'", "Did you mean 'ig'?"]),
    (["--model", "digits-cnn", "--method", "ig", "--steps", "0"], ["'--steps'", "got 0"]),
    (["--model", "digits-cnn", "--n", "0"], ["'--n'", "got 0"]),
    (["--model", "digits-cnn", "--method", "tree-shap"], ["'--method'", "ig, saliency", "tree-shap"]),
    (["--model", "spam-nb", "--method", "ig"], ["'--method'", "occlusion, kernel-shap"]),
    (["--model", "digits-cnn", "--method", "saliency", "--steps", "5"], ["'--steps'", "Drop --steps"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    out = tmp_path / "never"
    line = one_error_line(fast("explain", *args, "--out", str(out)))
    for word in words:
        assert word in line, line
    assert not out.exists()  # refused before any work


def test_help_lists_explain() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "explain" in result.stdout


def test_text_highlights_tokens(tmp_path: Path) -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam").is_dir():
        pytest.skip("sms-spam data not found; set MODELSHIELD_DATA")
    out = tmp_path / "spam"
    result = fast("explain", "--model", "spam-nb", "--n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(pngs(out)) == 2
    d = json.loads((out / "summary.json").read_text())
    assert d["method"] == "occlusion" and d["result"]["method"] == "text-occlusion"
    page = (out / "tokens.html").read_text()
    assert page.count('<p class="tokens"') == 2 and "<span" in page


def test_permutation_writes_one_global_chart(phishing_data: None, tmp_path: Path) -> None:
    out = tmp_path / "perm"
    result = fast("explain", "--model", "phishing-logreg", "--method", "permutation", "--n", "2",
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [p.name for p in pngs(out)] == ["permutation.png"]
    d = json.loads((out / "summary.json").read_text())
    assert d["result"]["method"] == "permutation-importance" and d["data"]["n"] == d["rows"] > 2
    assert len(d["result"]["importances_mean"]) == 30
