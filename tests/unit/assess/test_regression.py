"""compare_reports on hand-built report dicts: directions, the binomial tolerance, severities,
the defence verdict, missing sections and metrics, and baselines that are not comparable (#22)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from modelshield.assess import SCHEMA_VERSION
from modelshield.assess.regression import (
    DEFENCE_METRICS,
    METRICS,
    Comparison,
    check_baseline,
    compare_reports,
    load_report,
)
from modelshield.assess.thresholds import HEADLINE_METRICS
from modelshield.errors import ConfigError

DATA = {"name": "digits", "sha256": "d" * 64, "n": 100}


def section(sid: str, severity: str, headline: dict[str, Any], *, n: int | None = 100,
            **metrics: Any) -> dict[str, Any]:
    extra = {} if n is None else {"n": n}
    return {"id": sid, "title": sid, "summary": "", "severity": severity,
            "metrics": {**headline, **extra, **metrics}, "headline": dict(headline)}


def report(*sections: dict[str, Any], weights: str = "a" * 64, data: dict[str, Any] | None = None,
           plan: dict[str, Any] | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for s in sections:
        metrics.update(s["headline"])
    return {
        "schema_version": SCHEMA_VERSION, "generated_at": "2025-01-01T00:00:00+00:00",
        "model": {"name": "cnn", "weights_sha256": weights}, "data": dict(data or DATA),
        "summary": {"severity": "medium", "n": 100, "metrics": metrics, "risks": []},
        "sections": list(sections),
        "provenance": {"plan": plan or {"n": 100, "seed": 0, "batch_size": 250,
                                        "evasion": {"steps": 10}}},
    }


def evasion(robust: float, *, severity: str = "medium", success: float | None = None,
            n: int | None = 100) -> dict[str, Any]:
    return section("evasion", severity, {"clean_accuracy": 0.99, "robust_accuracy": robust,
                                         "attack_success_rate": 1 - robust if success is None else success},
                   n=n)


def by_name(cmp: Comparison, name: str) -> Any:
    (change,) = [c for c in cmp.changes if c.name == name]
    return change


def test_a_report_compared_with_itself_has_no_change() -> None:
    base = report(evasion(0.6), section("extraction", "critical", {"extraction_fidelity": 0.97}))
    cmp = compare_reports(base, copy.deepcopy(base))
    assert not cmp.regressed and cmp.regressions == ()
    assert {c.status for c in cmp.changes} == {"same", "unchanged"}
    assert cmp.lines() == [
        "6 items unchanged (metrics within their tolerance, sections at the same severity)."]
    assert "same model weights" in " ".join(cmp.notes)


def test_tolerance_is_two_binomial_standard_errors_of_the_difference() -> None:
    # 60% -> 50% on 100 points each: 2 * sqrt(0.6*0.4/100 + 0.5*0.5/100) = 2 * 0.07 = 0.14
    cmp = compare_reports(report(evasion(0.6, severity="medium")), report(evasion(0.5, severity="medium")))
    robust = by_name(cmp, "robust_accuracy")
    assert robust.tolerance == pytest.approx(0.14)
    assert robust.status == "unchanged" and not robust.regression and not cmp.regressed
    # 60% -> 45%: beyond 2 * sqrt(0.0024 + 0.002475) = 0.1396
    cmp = compare_reports(report(evasion(0.6)), report(evasion(0.45)))
    robust = by_name(cmp, "robust_accuracy")
    assert robust.status == "worse" and robust.regression and cmp.regressed
    assert robust.tolerance == pytest.approx(2 * math.sqrt(0.6 * 0.4 / 100 + 0.45 * 0.55 / 100))
    assert robust.message.startswith("robust_accuracy (evasion): 60.0% -> 45.0%, worse by 15.0 points")
    assert by_name(cmp, "attack_success_rate").status == "worse"  # higher success: worse too


def test_more_points_narrow_the_tolerance() -> None:
    cmp = compare_reports(report(evasion(0.6, n=2000)), report(evasion(0.55, n=2000)))
    assert by_name(cmp, "robust_accuracy").status == "worse"


def test_direction_follows_the_defender() -> None:
    cmp = compare_reports(report(evasion(0.4)), report(evasion(0.8)))
    assert by_name(cmp, "robust_accuracy").status == "better"
    assert by_name(cmp, "attack_success_rate").status == "better"  # success fell from 60% to 20%
    assert not cmp.regressed
    old = report(section("extraction", "high", {"extraction_fidelity": 0.5}))
    new = report(section("extraction", "high", {"extraction_fidelity": 0.9}))
    assert by_name(compare_reports(old, new), "extraction_fidelity").status == "worse"


def test_a_fixed_tolerance_replaces_the_binomial_rule() -> None:
    cmp = compare_reports(report(evasion(0.6)), report(evasion(0.55)), tolerance=0.02)
    robust = by_name(cmp, "robust_accuracy")
    assert robust.tolerance == 0.02 and robust.status == "worse" and cmp.regressed
    assert by_name(compare_reports(report(evasion(0.6)), report(evasion(0.59)), tolerance=0.02),
                   "robust_accuracy").status == "unchanged"


def test_a_section_without_its_points_uses_the_report_n_then_the_fallback() -> None:
    old, new = report(evasion(0.6, n=None)), report(evasion(0.5, n=None))
    assert by_name(compare_reports(old, new), "robust_accuracy").tolerance == pytest.approx(0.14)  # summary n
    del old["summary"]["n"], new["summary"]["n"]
    robust = by_name(compare_reports(old, new), "robust_accuracy")
    assert robust.tolerance == 0.02 and robust.status == "worse"


def test_severity_worse_regresses_better_does_not() -> None:
    worse = compare_reports(report(evasion(0.6, severity="low")), report(evasion(0.6, severity="high")))
    assert worse.regressed and by_name(worse, "evasion").status == "worse"
    assert by_name(worse, "evasion").message == "section evasion: severity low -> high (worse)."
    better = compare_reports(report(evasion(0.6, severity="high")), report(evasion(0.6, severity="low")))
    assert not better.regressed and by_name(better, "evasion").status == "better"


def test_a_section_missing_or_not_run_now_regresses_a_new_one_does_not() -> None:
    ext = section("extraction", "critical", {"extraction_fidelity": 0.97})
    both = report(evasion(0.6), ext)
    missing = compare_reports(both, report(evasion(0.6)))
    assert missing.regressed and by_name(missing, "extraction").status == "missing"
    assert "add it to --sections" in by_name(missing, "extraction").message
    assert not [c for c in missing.changes if c.name == "extraction_fidelity"]  # said once, by the section
    new = compare_reports(report(evasion(0.6)), both)
    assert not new.regressed and by_name(new, "extraction").status == "new"
    assert by_name(new, "extraction_fidelity").status == "new"
    failed = section("extraction", "none", {}, failed=True, skipped=True, error="ConfigError",
                     reason="no pool")
    now_failed = compare_reports(both, report(evasion(0.6), failed))
    change = by_name(now_failed, "extraction")
    assert now_failed.regressed and change.status == "missing"
    assert "not run now (failed: ConfigError: no pool)" in change.message


def test_a_metric_measured_before_and_not_now_regresses() -> None:
    new = report(evasion(0.6))
    new["summary"]["metrics"]["attack_success_rate"] = None
    cmp = compare_reports(report(evasion(0.6)), new)
    change = by_name(cmp, "attack_success_rate")
    assert change.status == "missing" and change.regression and "not measured now" in change.message


def _defenses(verdict: str, robust: float, flags: float = 0.0) -> dict[str, Any]:
    return section("defenses", "low", {"defended_robust_accuracy": robust, "defended_masking_flags": flags},
                   verdict=verdict, holds=verdict == "holds")


def test_a_defence_that_stops_holding_regresses() -> None:
    cmp = compare_reports(report(_defenses("holds", 0.8)), report(_defenses("no gain", 0.5)))
    verdict = by_name(cmp, "verdict")
    assert verdict.status == "worse" and verdict.defence and verdict.regression
    assert verdict.message == "defenses verdict: holds -> no gain (worse): the defence stopped holding."
    metric = by_name(cmp, "defended_robust_accuracy")
    assert metric.defence and metric.status == "worse" and "a defence got weaker" in metric.message
    back = compare_reports(report(_defenses("masked", 0.5)), report(_defenses("holds", 0.8)))
    assert not back.regressed and by_name(back, "verdict").status == "better"


def test_counts_are_exact() -> None:
    cmp = compare_reports(report(_defenses("holds", 0.8, flags=0.0)),
                          report(_defenses("holds", 0.8, flags=1.0)))
    flags = by_name(cmp, "defended_masking_flags")
    assert flags.tolerance == 0.0 and flags.status == "worse" and cmp.regressed
    assert flags.message == "defended_masking_flags (defenses): 0 -> 1, worse by 1: a defence got weaker."


def test_a_metric_without_a_direction_is_shown_never_a_regression() -> None:
    old = report(evasion(0.6), section("mine", "low", {"my_metric": 0.2}))
    new = report(evasion(0.6), section("mine", "low", {"my_metric": 0.9}))
    cmp = compare_reports(old, new)
    assert by_name(cmp, "my_metric").status == "changed" and not cmp.regressed
    assert "my_metric (mine): 20.0% -> 90.0%" in " ".join(cmp.lines())


def test_a_different_model_is_compared_and_a_different_plan_noted() -> None:
    new = report(evasion(0.6), weights="b" * 64,
                 plan={"n": 100, "seed": 0, "batch_size": 50, "evasion": {"steps": 40}})
    cmp = compare_reports(report(evasion(0.6)), new)
    assert not cmp.regressed and cmp.baseline["weights_sha256"] == "a" * 64
    (note,) = cmp.notes  # batch size aside; not the same weights
    assert "evasion.steps 10 -> 40" in note and "batch_size" not in note


def test_every_headline_metric_has_a_rule() -> None:
    listed = {m for names in HEADLINE_METRICS.values() for m in names}
    assert listed == set(METRICS)
    assert set(METRICS) >= DEFENCE_METRICS


def test_to_dict_is_json() -> None:
    cmp = compare_reports(report(evasion(0.6)), report(evasion(0.3, severity="high")))
    out = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    assert out["regressed"] is True and out["counts"] == {"worse": 3, "unchanged": 1}
    assert out["tolerance"] is None and out["tolerance_rule"].startswith("rates: 2 binomial standard errors")
    assert out["regressions"][0] == "section evasion: severity medium -> high (worse)."
    assert {c["name"] for c in out["changes"]} == {"evasion", "clean_accuracy", "robust_accuracy",
                                                   "attack_success_rate"}


# -- baselines that cannot be compared ----------------------------------------------------------

@pytest.mark.parametrize(("baseline", "match"), [
    ([1, 2], "must be a modelshield report \\(a JSON object\\); got list"),
    ({"a": 1}, "without 'schema_version', 'model', 'data', 'summary', 'sections'"),
    ({**report(evasion(0.6)), "summary": {"severity": "low"}}, "without 'summary.metrics'"),
    ({**report(evasion(0.6)), "sections": [{"id": "x"}]}, "without 'sections\\[\\].id/severity'"),
    ({**report(evasion(0.6)), "schema_version": 0}, "schema version 1 .*got 0. Re-run the baseline"),
])
def test_a_malformed_baseline_is_refused(baseline: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        compare_reports(baseline, report(evasion(0.6)))


def test_a_baseline_on_other_data_is_refused() -> None:
    other = report(evasion(0.6), data={"name": "mnist", "sha256": "e" * 64})
    with pytest.raises(ConfigError, match=r"same data as this assessment, digits \(sha256 dddddddddddd\); "
                                          r"got a baseline on mnist \(sha256 eeeeeeeeeeee\)"):
        compare_reports(other, report(evasion(0.6)))
    check_baseline(report(evasion(0.6)), data=DATA)  # same digest: fine
    with pytest.raises(ConfigError, match="same data"):  # no digest on one side: the names decide
        check_baseline(report(evasion(0.6), data={"name": "mnist"}), data={"name": "digits"})


def test_a_bad_tolerance_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'tolerance' must be None or a number in \[0\.0, 1\.0\]; "
                                          r"got -0\.1"):
        compare_reports(report(evasion(0.6)), report(evasion(0.6)), tolerance=-0.1)


def test_load_report_reads_a_file_or_its_folder(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps(report(evasion(0.6))))
    assert load_report(tmp_path)["summary"]["metrics"]["robust_accuracy"] == 0.6
    assert load_report(tmp_path / "report.json")["schema_version"] == SCHEMA_VERSION


def test_load_report_refuses_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"an existing report\.json; got .*nope\.json.*no such file"):
        load_report(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"must be valid JSON; got .*bad\.json.*line 1, column 2"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ConfigError, match="must be a modelshield report; got a JSON object without"):
        load_report(tmp_path / "other.json")
