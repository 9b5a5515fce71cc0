"""``modelshield attack evasion`` with query-only attacks and the constrained tabular attack."""

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


def fast(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", *args])


@pytest.fixture(scope="module")
def phishing_data() -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")


@pytest.fixture(scope="module")
def digits_cache() -> Iterator[None]:
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with torch_threads(1):
        zoo.load("digits-cnn")  # trains on a cold session cache (a few seconds)
    yield


def shipped_spec_text() -> str:
    from modelshield.data.phishing import PHISHING_CONSTRAINTS

    return PHISHING_CONSTRAINTS.read_text(encoding="utf-8")


def test_tabular_attack_writes_valid_rows(phishing_data: None, tmp_path: Path) -> None:
    out = tmp_path / "tab.json"
    result = fast("attack", "evasion", "--model", "phishing-logreg", "--attack", "tabular",
                  "--max-changes", "3", "--n", "300", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "invalid_rows" in result.stdout and "malicious_recall_after" in result.stdout
    d = json.loads(out.read_text())
    assert d["invalid_rows"] == 0 and d["spec_violations"] == 0
    assert d["attack"] == "tabular" and d["n"] == 300 and d["max_changes"] == 3
    assert 0.0 <= d["success_rate"] <= 1.0
    assert d["malicious_recall_after"] <= d["malicious_recall_before"]
    hist = d["changes_histogram"]
    assert set(hist) == {"1", "2", "3"} and sum(hist.values()) == d["successes"]
    # Recall after = (detected - evaded) / malicious rows.
    mal, att, succ = d["malicious_rows"], d["attacked_rows"], d["successes"]
    assert d["malicious_recall_after"] == pytest.approx((att - succ) / mal, abs=1e-6)
    assert d["model"]["name"] == "phishing-logreg" and d["data"]["deduplicated"] is True
    assert d["provenance"]["data_sha256"] == d["data"]["sha256"]


def test_unknown_feature_in_user_spec_exits_2(phishing_data: None, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(shipped_spec_text().replace("  URL_Length:", "  URL_Lenght:"), encoding="utf-8")
    result = fast("attack", "evasion", "--model", "phishing-logreg", "--attack", "tabular",
                  "--constraints", str(spec), "--n", "20")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "'URL_Lenght'" in line and "did you mean 'URL_Length'" in line


def test_clean_value_outside_the_allowed_set_exits_2(phishing_data: None, tmp_path: Path) -> None:
    text = shipped_spec_text()
    start = text.index("  URL_Length:")
    patched = text[:start] + text[start:].replace("values: [-1, 0, 1]", "values: [-1, 1]", 1)
    spec = tmp_path / "spec.yaml"
    spec.write_text(patched, encoding="utf-8")
    result = fast("attack", "evasion", "--model", "phishing-logreg", "--attack", "tabular",
                  "--constraints", str(spec), "--n", "300")
    assert result.exit_code == 2
    assert "URL_Length" in one_error_line(result)


def test_bad_budgets_and_label_only_models_exit_2(phishing_data: None, digits_cache: None) -> None:
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "square", "--max-queries", "0",
                  "--n", "5")
    assert result.exit_code == 2 and "'max_queries' must be" in one_error_line(result)
    result = fast("attack", "evasion", "--model", "phishing-logreg", "--attack", "tabular",
                  "--max-changes", "0", "--n", "5")
    assert result.exit_code == 2 and "'max_changes' must be" in one_error_line(result)
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "square", "--labels-only",
                  "--n", "5")
    assert result.exit_code == 2 and "labels only" in one_error_line(result)
    result = fast("attack", "evasion", "--model", "phishing-logreg", "--attack", "tabular", "--labels-only",
                  "--n", "50")
    assert result.exit_code == 2 and "label-only" in one_error_line(result)
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "pgd", "--max-queries", "10",
                  "--n", "5")
    assert result.exit_code == 2 and "--max-queries" in one_error_line(result)
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "tabular", "--n", "5")
    assert result.exit_code == 2 and "tabular model" in one_error_line(result)


def test_square_on_digits_with_a_small_budget(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "sq.json"
    n, q, eps = 30, 40, 0.2
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "square", "--eps", str(eps),
                  "--max-queries", str(q), "--n", str(n), "--json", str(out))
    assert result.exit_code == 0, result.output
    d = json.loads(out.read_text())
    assert (d["attack"], d["attack_class"], d["n"], d["eps"]) == ("square", "Square", n, eps)
    assert d["access"] == "probabilities, query-only" and d["queries_backward"] == 0
    assert d["params"]["max_queries"] == q
    assert d["max_perturbation"] <= eps + 1e-6 and d["invalid_points"] == 0
    # At most q queries per point before the verification query.
    assert n <= d["queries_forward"] <= n * (q + 1)
    assert 0.0 <= d["robust_accuracy"] <= d["clean_accuracy"]
    if d["attack_success_rate"]:
        assert 1 <= d["median_queries_per_success"] <= q


def test_zoo_list_shows_the_phishing_models() -> None:
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    for name in ("phishing-logreg", "phishing-rf", "phishing-gbm"):
        assert name[:10] in result.stdout
