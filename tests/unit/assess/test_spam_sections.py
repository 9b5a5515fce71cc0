"""The text-model report sections: data poisoning and text evasion."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import pytest

from modelshield.assess import SECTIONS, AssessmentPlan, run, write_report
from modelshield.assess.sections.spam import (
    PoisoningSection,
    TextEvasionSection,
    poisoning_severity,
    text_evasion_severity,
)


def test_registered_and_default_for_text_models() -> None:
    from modelshield.cli.assess import TEXT_SECTIONS

    assert TEXT_SECTIONS == ("poisoning", "text-evasion", "extraction")  # extraction: a TF-IDF copy
    assert isinstance(SECTIONS["poisoning"], PoisoningSection)
    assert isinstance(SECTIONS["text-evasion"], TextEvasionSection)
    assert SECTIONS["poisoning"].rates == (0.0, 0.05, 0.1, 0.2, 0.4)
    assert SECTIONS["text-evasion"].budgets == (0.1, 0.2, 0.3)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [(math.nan, "none"), (0.0, "none"), (0.01, "low"), (0.05, "medium"), (0.2, "high"), (0.3, "critical")],
)
def test_poisoning_severity_thresholds(drop: float, expected: str) -> None:
    assert poisoning_severity(drop) == expected


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(math.nan, "none"), (0.0, "none"), (0.02, "low"), (0.1, "medium"), (0.25, "high"), (0.6, "critical")],
)
def test_text_evasion_severity_thresholds(rate: float, expected: str) -> None:
    assert text_evasion_severity(rate) == expected


def test_sections_refuse_non_text_models() -> None:
    import torch

    net = torch.nn.Linear(4, 2)
    x, y = torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)
    result = run(  # the section fails with the reason; the run (and any other section) goes on
        net,
        x,
        y,
        plan=AssessmentPlan(sections=("poisoning",)),
        model_info={"name": "mlp"},
        data_info={"name": "digits"},
    )
    (section,) = result.to_dict()["sections"]
    assert section["id"] == "poisoning" and section["metrics"]["failed"] is True
    assert section["metrics"]["error"] == "ConfigError"
    assert "must be a text zoo model on sms-spam" in section["summary"]


@pytest.fixture()
def spam_target(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    from modelshield.cli._target import load_target

    # Small, fast configurations of the two sections (the defaults run the full grids).
    monkeypatch.setitem(SECTIONS, "poisoning", PoisoningSection(rates=(0.0, 0.2), headline_rate=0.2))
    monkeypatch.setitem(
        SECTIONS,
        "text-evasion",
        TextEvasionSection(methods=("char", "goodword"), budgets=(0.1, 0.3), headline_budget=0.3, examples=3),
    )
    return load_target("spam-nb", data=None, data_dir=None, arch=None, n=200)


def test_text_sections_in_a_report(spam_target, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t = spam_target
    assert t.text and t.x.shape == (200, 1) and len(t.texts or ()) == 200
    result = run(
        t.adapted(),
        t.x,
        t.y,
        plan=AssessmentPlan(sections=("poisoning", "text-evasion")),
        model_info=t.model_info,
        data_info=t.data_info,
        bounds=t.bounds,
    )
    report = result.to_dict()
    pois, text = report["sections"]
    assert (pois["id"], text["id"]) == ("poisoning", "text-evasion")
    assert [a["id"] for a in pois["atlas"]] == ["AML.T0020"]
    assert [a["id"] for a in text["atlas"]] == ["AML.T0015", "AML.T0043"]
    assert "confident learning" in pois["recommendation"] and "NFKC" in text["recommendation"]
    assert "homoglyph" in text["recommendation"] and "invisible" in text["recommendation"]
    curve = pois["metrics"]["curve"]
    assert [c["rate"] for c in curve] == [0.0, 0.2]
    assert [c["n_poisoned"] for c in curve] == [0, 112]  # 20% of the 560 spam training rows
    assert curve[0]["detection_recall"] is None and curve[1]["detection_recall"] is not None
    assert curve[1]["recall"] < pois["metrics"]["clean_spam_recall"]
    assert pois["headline"]["poisoned_spam_recall"] == curve[1]["recall"]
    assert len(pois["figures"]) == 1 and pois["figures"][0]["png_base64"]
    assert all(f["how_to_read"] for s in (pois, text) for f in s["figures"])
    grid = text["metrics"]["curve"]
    assert {(c["method"], c["budget"]) for c in grid} == {
        (m, b) for m in ("char", "goodword") for b in (0.1, 0.3)
    }
    for c in grid:
        assert c["successes"] <= c["eligible"]
    # A larger word budget never evades fewer messages for the same greedy method.
    char = {c["budget"]: c["successes"] for c in grid if c["method"] == "char"}
    assert char[0.3] >= char[0.1]
    best = max(c["success_rate"] or 0.0 for c in grid if c["budget"] == 0.3)
    assert report["summary"]["metrics"]["text_evasion_success_rate"] == pytest.approx(best)
    examples = text["tables"][1]
    assert examples["columns"] == ["original", "adversarial", "words changed"]
    for original, adversarial, changed in examples["rows"]:
        assert original != adversarial and 1 <= changed <= 0.3 * len(original.split())
    paths = write_report(result, tmp_path)
    page = paths[1].read_text(encoding="utf-8")
    assert "Data poisoning" in page and "Text evasion" in page
    for _original, adversarial, _ in examples["rows"]:
        assert html.escape(adversarial, quote=False) in page or html.escape(adversarial) in page
    assert json.loads(paths[0].read_text())["summary"]["risks"][0]["section"] == "poisoning"
