"""A report with the "explain" section: JSON with the section, HTML with its figures embedded, and the
section listed after "evasion" reading the plan's evasion settings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from modelshield.assess import Assessment, AssessmentPlan, EvasionPlan, render_html, run, write_report
from modelshield.assess.plan import ExplainPlan
from modelshield.attacks.backdoor import make_train_fn
from modelshield.data import load_digits


@pytest.fixture(scope="module")
def assessment() -> Assessment:
    d = load_digits()
    model = make_train_fn("cnn-8x8", epochs=4, batch_size=64)(d.x_train, d.y_train)
    plan = AssessmentPlan(sections=("evasion", "explain"), n=100, seed=0,
                          evasion=EvasionPlan(attacks=("fgsm",), eps=(0.0, 0.15), headline_eps=0.15),
                          explain=ExplainPlan(n=32, worst=2))
    calls: list[str] = []

    def progress(done: int, total: int | None, text: str) -> None:
        calls.append(text)

    result = run(model, d.x_test, d.y_test, plan=plan, model_info={"name": "cnn"},
                 data_info={"name": "digits", "classes": [str(i) for i in range(10)]}, progress=progress)
    assert any(t.startswith("explain:") for t in calls)  # the section reports its progress
    return result


def test_html_embeds_the_explain_figures(assessment: Assessment, tmp_path: Path) -> None:
    json_path, html_path = write_report(assessment, tmp_path)
    html = html_path.read_text()
    report: dict[str, Any] = json.loads(json_path.read_text())
    (sec,) = [s for s in report["sections"] if s["id"] == "explain"]
    assert sec["metrics"]["eps"] == 0.15  # the evasion plan's headline eps
    assert sec["figures"], "the section drew no figure"
    for fig in sec["figures"]:
        assert base64.b64decode(fig["png_base64"]).startswith(b"\x89PNG")
        assert f"data:image/png;base64,{fig['png_base64']}" in html
    assert "Explanations (what the model looked at)" in html
    assert report["provenance"]["plan"]["explain"]["worst"] == 2
    assert "explain" in report["provenance"]["sections"]
    assert html == render_html(json.loads(json_path.read_text()))
