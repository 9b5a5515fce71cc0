"""Sections on the user's own model and data (issue #16): the extraction pool from the training
split, the poisoning section's refit sweep and data validation, and the default sections by kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.assess import AssessmentPlan, ExtractionPlan
from modelshield.assess._section import AssessmentContext
from modelshield.assess.sections import ExtractionSection, PoisoningSection
from modelshield.assess.sections.data_validation import data_validation_section, data_validation_severity
from modelshield.assess.sections.tabular_poisoning import refit_problem
from modelshield.models import as_model


def _rows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in [0, 1]^4: class 1 has larger first features."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.35 + 0.3 * y[:, None].float() + 0.08 * torch.randn(n, 4, generator=gen)).clamp(0, 1)
    return x, y


def _ctx(model: Any, x: torch.Tensor, y: torch.Tensor, *, train: tuple[Any, torch.Tensor] | None,
         plan: AssessmentPlan | None = None, modality: str = "tabular", user_model: Any = None,
         data_format: str = "csv") -> AssessmentContext:
    return AssessmentContext(model=as_model(model, bounds=(0.0, 1.0)), x=x, y=y,
                             plan=plan or AssessmentPlan(),
                             model_info={"name": "mine", "modality": modality},
                             data_info={"name": "rows", "sha256": "ab" * 32, "format": data_format,
                                        "classes": ["benign", "malicious"]},
                             bounds=(0.0, 1.0), seed=0, batch_size=64, train=train, user_model=user_model)


def _logreg(x: torch.Tensor, y: torch.Tensor) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(x.numpy(), y.numpy())


def test_extraction_pool_is_the_training_split_capped_at_its_size() -> None:
    x_tr, y_tr = _rows(120)
    x, y = _rows(30, seed=1)
    clf = _logreg(x_tr, y_tr)
    plan = AssessmentPlan(sections=("extraction",), extraction=ExtractionPlan(budgets=(50, 200), epochs=30))
    ctx = _ctx(clf, x, y, train=(x_tr, y_tr), plan=plan)
    section = ExtractionSection(defences=("top1",), jacobian=False)(ctx, None)
    pool = section.metrics["pool"]
    assert pool["kind"] == "train-split" and pool["n"] == 120 and pool["sha256"] == "ab" * 32
    assert section.metrics["budget"] == 120 and section.provenance["settings"]["budgets"] == [50, 120]
    assert section.provenance["settings"]["epochs"] == 30
    assert any("fewer than the largest query budget 200" in w for w in section.warnings)
    assert section.metrics["extraction_fidelity"] > 0.8  # a linear victim, same-distribution queries


def test_extraction_without_a_fitting_training_split_uses_noise() -> None:
    x, y = _rows(30, seed=1)
    clf = _logreg(*_rows(120))
    plan = AssessmentPlan(sections=("extraction",), extraction=ExtractionPlan(budgets=(40,), epochs=1))
    wrong = (torch.rand(50, 3), torch.zeros(50, dtype=torch.long))  # 3 features, the model takes 4
    section = ExtractionSection(defences=("top1",), jacobian=False)(_ctx(clf, x, y, train=wrong, plan=plan),
                                                                    None)
    assert section.metrics["pool"]["kind"] == "noise"


def test_tabular_poisoning_refits_a_clone_of_the_users_estimator() -> None:
    x_tr, y_tr = _rows(200)
    x, y = _rows(40, seed=1)
    clf = _logreg(x_tr, y_tr)
    section = PoisoningSection()(_ctx(clf, x, y, train=(x_tr, y_tr), user_model=clf), None)
    m = section.metrics
    assert [r["rate"] for r in m["curve"]] == [0.0, 0.05, 0.1, 0.2]
    assert m["refit_agreement"] == 1.0 and m["curve"][0]["flipped"] == 0 and m["curve"][2]["flipped"] == 10
    assert section.headline["poisoned_malicious_recall"] == m["curve"][2]["recall"]
    assert m["training_data"]["label_issues"] == 0  # clean, well-separated blobs


def test_an_estimator_that_cannot_be_refitted_gets_the_validation_and_the_reason() -> None:
    x_tr, y_tr = _rows(200)
    y_tr = y_tr.clone()
    y_tr[:20:2] = 1  # ten planted flips of class 0 rows
    x, y = _rows(40, seed=1)
    clf = _logreg(*_rows(200))

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        return np.asarray(clf.predict_proba(rows))

    assert refit_problem(predict_proba) is not None and refit_problem(clf) is None
    ctx = _ctx(predict_proba, x, y, train=(x_tr, y_tr), user_model=predict_proba)
    section = PoisoningSection()(ctx, None)
    assert "not measured" in " ".join(section.findings) and "cloned" in " ".join(section.findings)
    flagged = {row[0] for row in section.tables[0].rows}
    assert flagged and flagged <= set(range(0, 20, 2))  # only planted flips are flagged
    assert section.severity == data_validation_severity(section.metrics["flagged"] / 200) != "none"


def test_validation_without_training_data_says_why() -> None:
    x, y = _rows(20)
    ctx = _ctx(nn.Sequential(nn.Linear(4, 2)), x, y, train=None, modality="image")
    section = data_validation_section("poisoning", ctx, None, why="Because.")
    assert section.metrics["skipped"] and "No training split" in section.summary


@pytest.mark.parametrize(("kind", "data", "access", "expected"), [
    ("torch", None, "white-box", ("evasion", "blackbox", "extraction")),
    ("torch", object(), "black-box", ("evasion", "blackbox", "extraction")),
    ("sklearn", None, "black-box", ("tabular", "blackbox", "extraction")),
    ("sklearn", object(), "black-box", ("tabular", "blackbox", "extraction", "poisoning")),
    ("text", object(), "black-box", ("poisoning", "text-evasion", "extraction")),
])
def test_default_sections_by_kind(kind: str, data: object, access: str, expected: tuple[str, ...]) -> None:
    from modelshield.cli.assess import default_sections
    from modelshield.targets import Target

    target = Target(module=nn.Linear(4, 2), x=torch.zeros(1, 4), y=torch.zeros(1, dtype=torch.long),
                    bounds=(0.0, 1.0), model_info={}, data_info={}, kind=kind, access=access, data=data)
    assert default_sections(target) == expected
