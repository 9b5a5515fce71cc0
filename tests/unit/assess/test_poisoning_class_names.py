"""Poisoning and data-validation findings name classes by the data's labels (held-out #16).

The tabular poisoning sweep said "malicious (class 1) recall" and the validation table's reasons
"p(label 1) ... p(class 0)" where the data call the classes e.g. "legit" and "phish"; the report
now names them (``data_info["classes"]``), and records the malicious label the flips start from.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modelshield.assess import AssessmentPlan, TabularPlan
from modelshield.assess._section import AssessmentContext
from modelshield.assess.sections import PoisoningSection
from modelshield.assess.sections.data_validation import class_label, data_validation_section, name_classes
from modelshield.models import as_model

NAMES = ["legit", "phish"]


def _rows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.35 + 0.3 * y[:, None].float() + 0.08 * torch.randn(n, 4, generator=gen)).clamp(0, 1)
    return x, y


def _ctx(model: Any, x: torch.Tensor, y: torch.Tensor, train: tuple[torch.Tensor, torch.Tensor], *,
         classes: list[str] | None, plan: AssessmentPlan | None = None) -> AssessmentContext:
    info: dict[str, Any] = {"name": "rows", "sha256": "ab" * 32, "format": "csv"}
    if classes is not None:
        info["classes"] = classes
    return AssessmentContext(model=as_model(model, bounds=(0.0, 1.0)), x=x, y=y,
                             plan=plan or AssessmentPlan(), data_info=info,
                             model_info={"name": "mine", "modality": "tabular"},
                             bounds=(0.0, 1.0), seed=0, batch_size=64, train=train, user_model=model)


def _logreg(x: torch.Tensor, y: torch.Tensor) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(x.numpy(), y.numpy())


def test_tabular_poisoning_names_the_malicious_and_benign_labels() -> None:
    x_tr, y_tr = _rows(200)
    x, y = _rows(40, seed=1)
    clf = _logreg(x_tr, y_tr)
    section = PoisoningSection()(_ctx(clf, x, y, (x_tr, y_tr), classes=NAMES), None)
    text = " ".join([section.summary, *section.findings, section.tables[0].title])
    assert "class 1)" not in text.replace("'phish' (class 1)", "")  # never a bare index
    assert "Malicious class: 'phish' (class 1); benign: 'legit' (class 0)" in text
    assert ("Flipping 10% of the 'phish' (class 1) training labels (10 rows) to 'legit' (class 0) changes "
            "that recall") in text
    assert section.tables[0].title == "Malicious 'phish' (class 1) recall after refitting on poisoned labels"
    assert "malicious (phish)" in section.summary
    m = section.metrics
    assert (m["malicious_class"], m["malicious_label"], m["benign_class"], m["benign_label"]) == (
        1, "phish", 0, "legit")
    flip = section.provenance["attacks"]["poisoning:label-flip"]
    assert (flip["malicious_label"], flip["target_label"]) == ("phish", "legit")


def test_the_plans_malicious_class_is_followed_and_named() -> None:
    x_tr, y_tr = _rows(200)
    x, y = _rows(40, seed=1)
    clf = _logreg(x_tr, y_tr)
    plan = AssessmentPlan(tabular=TabularPlan(malicious_class=0))
    section = PoisoningSection()(_ctx(clf, x, y, (x_tr, y_tr), classes=["bad", "good"], plan=plan), None)
    assert section.metrics["malicious_label"] == "bad" and section.metrics["benign_label"] == "good"
    assert any("Malicious class: 'bad' (class 0); benign: 'good' (class 1)" in f for f in section.findings)


def test_without_class_names_the_index_is_used() -> None:
    x_tr, y_tr = _rows(200)
    x, y = _rows(40, seed=1)
    clf = _logreg(x_tr, y_tr)
    section = PoisoningSection()(_ctx(clf, x, y, (x_tr, y_tr), classes=None), None)
    assert section.metrics["malicious_label"] is None
    assert any("Malicious class: class 1; benign: class 0" in f for f in section.findings)


def test_validation_table_reasons_name_the_labels() -> None:
    x_tr, y_tr = _rows(200)
    y_tr = y_tr.clone()
    y_tr[:20:2] = 1  # ten planted flips of 'legit' rows to 'phish'
    x, y = _rows(40, seed=1)
    clf = _logreg(*_rows(200))
    section = data_validation_section("poisoning", _ctx(clf, x, y, (x_tr, y_tr), classes=NAMES), None,
                                      why="Because.")
    reasons = [row[4] for row in section.tables[0].rows]
    assert reasons and all("p(label 'phish')" in r and "p(class 'legit')" in r for r in reasons), reasons
    assert all(row[1] == "phish" and row[2] == "legit" for row in section.tables[0].rows)


def test_too_small_split_names_the_class_counts() -> None:
    x_tr, y_tr = _rows(12)
    y_tr = torch.tensor([0] * 10 + [1] * 2)
    x, y = _rows(10, seed=1)
    section = data_validation_section("poisoning", _ctx(_logreg(x, y), x, y, (x_tr, y_tr), classes=NAMES),
                                      None, why="Because.")
    assert "class counts {'legit': 10, 'phish': 2}" in section.summary


@pytest.mark.parametrize(("text", "expected"), [
    ("confident learning: out-of-fold p(label 1) = 0.100 but p(class 0) = 0.900",
     "confident learning: out-of-fold p(label 'phish') = 0.100 but p(class 'legit') = 0.900"),
    ("60% of the 10 nearest neighbours have another label (majority 0)",
     "60% of the 10 nearest neighbours have another label (majority 'legit')"),
    ("exact duplicate of rows [3] whose labels differ (labels [0, 1])",
     "exact duplicate of rows [3] whose labels differ (labels ['legit', 'phish'])"),
    ("p(class 7) stays", "p(class 7) stays"),  # an index the names do not hold is kept
])
def test_name_classes(text: str, expected: str) -> None:
    assert name_classes(text, NAMES) == expected
    assert name_classes(text, None) == text


def test_class_label() -> None:
    assert class_label(1, NAMES) == "'phish' (class 1)"
    assert class_label(2, NAMES) == "class 2" and class_label(0, None) == "class 0"
