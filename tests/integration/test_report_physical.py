"""A report with the "physical" section: JSON with its headline numbers in the summary, HTML with its
figures and tables, and the same numbers when the section runs as a runner job."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelshield.assess import Assessment, AssessmentPlan, EvasionPlan, render_html, run, write_report
from modelshield.assess.plan import PhysicalPlan
from modelshield.assess.report import report_numbers
from modelshield.assess.suite import target_inputs
from modelshield.assess.thresholds import HEADLINE_METRICS
from modelshield.runner import InlineExecutor
from modelshield.runner.assess import run_assessment
from modelshield.targets import TargetRef

REF = TargetRef(model="digits-cnn", n=80)
PLAN = AssessmentPlan(sections=("physical",), n=80, seed=1,
                      evasion=EvasionPlan(attacks=("fgsm",), eps=(0.0, 0.15), headline_eps=0.15),
                      physical=PhysicalPlan(sizes=(0.05, 0.1), steps=15, batch_size=32, train_n=200,
                                            certify_n=20, detector_n=40, strengths=(0.0, 2.0),
                                            universal_passes=1, examples=2))


@pytest.fixture(scope="module")
def assessment() -> Iterator[Assessment]:
    from modelshield.cli._target import torch_threads

    with torch_threads(1):  # the runner's workers use one thread: same numbers, bit for bit
        target = REF.load()  # trains digits-cnn on a cold session cache (a few seconds)
        calls: list[str] = []
        result = run(plan=PLAN, progress=lambda d, t, text: calls.append(text), **target_inputs(target))
        assert any(t.startswith("physical:") for t in calls)  # the section reports its progress
        yield result


def test_html_embeds_the_physical_figures_and_the_summary_has_its_numbers(assessment: Assessment,
                                                                          tmp_path: Path) -> None:
    json_path, html_path = write_report(assessment, tmp_path)
    html = html_path.read_text()
    report: dict[str, Any] = json.loads(json_path.read_text())
    (sec,) = [s for s in report["sections"] if s["id"] == "physical"]
    assert len(sec["figures"]) == 3
    for fig in sec["figures"]:
        assert base64.b64decode(fig["png_base64"]).startswith(b"\x89PNG")
        assert f"data:image/png;base64,{fig['png_base64']}" in html
    assert "Physical-world evasion (adversarial patches)" in html
    assert "Defences against the" in html and "Physical Environment Access" in html
    assert sec["metrics"]["universal"]["eps"] == 0.15  # the evasion plan's headline eps
    summary = report["summary"]["metrics"]
    for name in HEADLINE_METRICS["physical"]:
        assert name in summary and summary[name] == sec["headline"][name]
    assert report["provenance"]["plan"]["physical"]["steps"] == 15
    assert html == render_html(json.loads(json_path.read_text()))


def test_the_section_as_a_runner_job_gives_the_same_numbers(assessment: Assessment) -> None:
    done = run_assessment(REF, PLAN, InlineExecutor(threads=1))
    assert done.counts == {"done": 1, "cached": 0, "failed": 0}
    assert report_numbers(done.assessment.to_dict()) == report_numbers(assessment.to_dict())
