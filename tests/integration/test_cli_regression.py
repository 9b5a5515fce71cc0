"""``modelshield assess --baseline ... --fail-on regression``: the regression gate end to end (#22).

Two real reports on the same 60 digits test points (evasion only, PGD at eps 0.1): digits-cnn-at
(adversarially trained) as the baseline, digits-cnn as the model under test. The zoo models are
trained once per session (digits-cnn-at is shared with the defenses section's tests).
"""

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

ASSESS = ("--threads", "1", "assess", "--sections", "evasion", "--attacks", "pgd", "--eps", "0.1",
          "--steps", "5", "--n", "60")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """digits-cnn and digits-cnn-at trained once (the session cache of tests/conftest.py when set)."""
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("regression-zoo-cache")))
        with torch_threads(1):
            zoo.load("digits-cnn")
            zoo.load("digits-cnn-at")
        yield zoo.cache_dir()


@pytest.fixture(scope="module")
def reports(zoo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """report.json of digits-cnn-at and of digits-cnn, each assessed once without a baseline."""
    root = tmp_path_factory.mktemp("regression-reports")
    out: dict[str, Path] = {}
    for name in ("digits-cnn-at", "digits-cnn"):
        result = invoke(*ASSESS, "--model", name, "--out", str(root / name))
        assert result.exit_code == 0, result.output
        assert "comparison" not in json.loads((root / name / "report.json").read_text())
        out[name] = root / name / "report.json"
    return out


def test_a_report_compared_with_itself_passes_the_gate(reports: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(*ASSESS, "--model", "digits-cnn", "--out", str(tmp_path / "r"),
                    "--baseline", str(reports["digits-cnn"]), "--fail-on", "regression")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "Changes since baseline (digits-cnn," in text and "No regression since the baseline." in text
    assert "4 unchanged" in text and "same model weights" in text
    comparison = json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]
    assert comparison["regressed"] is False and comparison["regressions"] == []
    assert comparison["baseline_path"] == str(reports["digits-cnn"])
    assert {c["status"] for c in comparison["changes"]} == {"same", "unchanged"}
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'id="comparison"' in html and "no regression" in html
    assert html.index('id="comparison"') < html.index('id="summary"')  # near the top


def test_a_less_robust_model_fails_the_gate_naming_the_change(reports: dict[str, Path],
                                                              tmp_path: Path) -> None:
    result = invoke(*ASSESS, "--model", "digits-cnn", "--out", str(tmp_path / "r"),
                    "--baseline", str(reports["digits-cnn-at"]), "--fail-on", "regression")
    assert result.exit_code == 1, result.output
    text = flat(result.stdout)
    assert "Changes since baseline (digits-cnn-at," in text
    assert "worse robust_accuracy (evasion):" in text and "section evasion: severity" in text
    assert "Regressed since the baseline:" in text and "--fail-on regression: exit 1" in text
    report = json.loads((tmp_path / "r" / "report.json").read_text())  # the report is still written
    comparison = report["comparison"]
    assert comparison["regressed"] is True and comparison["baseline"]["model"] == "digits-cnn-at"
    worse = {c["name"] for c in comparison["changes"] if c["regression"]}
    assert {"robust_accuracy", "attack_success_rate"} <= worse
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Changes since baseline" in html and ">regressed<" in html


def test_without_fail_on_a_regression_is_shown_and_exits_0(reports: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(*ASSESS, "--model", "digits-cnn", "--out", str(tmp_path / "r"),
                    "--baseline", str(reports["digits-cnn-at"].parent))  # the --out folder works too
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "Regressed since the baseline:" in text and "exit 1" not in text


def test_bad_baselines_exit_2_with_one_line(reports: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, ')
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.9}))
    foreign = json.loads(reports["digits-cnn"].read_text())
    foreign["data"] = {**foreign["data"], "name": "mnist", "sha256": "0" * 64}
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    cases = {
        ("--baseline", str(tmp_path / "missing.json")): "the baseline must be an existing report.json",
        ("--baseline", str(tmp_path / "corrupt.json")): "the baseline must be valid JSON",
        ("--baseline", str(tmp_path / "other.json")): "the baseline must be a modelshield report",
        ("--baseline", str(tmp_path / "foreign.json")): "the baseline must assess the same data",
        ("--fail-on", "regression"): "'--fail-on regression' compares with a baseline report; got "
                                     "--fail-on regression without --baseline",
        ("--fail-on", "worse", "--baseline", str(reports["digits-cnn"])): "'--fail-on' must be one of "
                                                                           "'regression'; got 'worse'",
        ("--baseline-tolerance", "0.02"): "got --baseline-tolerance without --baseline",
    }
    for extra, message in cases.items():
        result = invoke(*ASSESS, "--model", "digits-cnn", "--out", str(tmp_path / "r"), *extra)
        assert message in one_error_line(result), extra
    assert not (tmp_path / "r").exists()  # refused before any report was written


def test_help_documents_the_gate() -> None:
    result = CliRunner().invoke(app, ["assess", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = flat(result.stdout)
    assert result.exit_code == 0
    for words in ("--baseline", "--fail-on", "--baseline-tolerance", "2 binomial standard errors",
                  "with --fail-on regression, the assessment regressed against --baseline"):
        assert words in text, words
