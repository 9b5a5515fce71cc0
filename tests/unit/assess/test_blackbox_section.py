"""The black-box exposure and tabular evasion report sections, their plans and helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.assess import (
    SECTIONS,
    AssessmentPlan,
    BlackBoxPlan,
    TabularPlan,
    run,
)
from modelshield.assess.sections.blackbox import budget_curve, changes_curve
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ConfigError


def _result(point_queries: torch.Tensor | None) -> EvasionResult:
    y = torch.tensor([0, 0, 0, 0])
    return EvasionResult(
        attack="Square", params={}, x_adv=torch.zeros(4, 2), y=y, target=None,
        clean_pred=torch.tensor([0, 0, 0, 1]), adv_pred=torch.tensor([1, 1, 0, 1]),
        success=torch.tensor([True, True, False, False]), valid=torch.ones(4, dtype=torch.bool),
        norms=torch.zeros(4), norm="inf", eps=0.1, queries_forward=0, queries_backward=0, time_s=0.0,
        point_queries=point_queries,
    )


def test_budget_curve_counts_points_broken_within_each_budget() -> None:
    # Three eligible points (the last is misclassified already); broken after 5 and 50 queries.
    curve = budget_curve(_result(torch.tensor([5, 50, 100, 1])), (1, 10, 100))
    assert [p["broken"] for p in curve] == [0, 1, 2]
    assert [p["success_rate"] for p in curve] == [0.0, pytest.approx(1 / 3, abs=1e-6),
                                                  pytest.approx(2 / 3, abs=1e-6)]
    # 3 of 4 clean-correct, minus the broken ones.
    assert [p["robust_accuracy"] for p in curve] == [0.75, 0.5, 0.25]
    with pytest.raises(ConfigError, match="budget_curve: 'result' must come from a query-based attack"):
        budget_curve(_result(None), (10,))


def test_changes_curve_reads_success_by_l0() -> None:
    x = torch.zeros(4, 3)
    x_adv = torch.tensor([[1.0, 0, 0], [1.0, 1, 0], [1.0, 1, 1], [0.0, 0, 0]])
    success = torch.tensor([True, True, True, False])
    attacked = torch.tensor([True, True, True, True])
    curve = changes_curve(x, x_adv, success, attacked, (1, 2, 3))
    assert [p["successes"] for p in curve] == [1, 2, 3]
    assert [p["success_rate"] for p in curve] == [0.25, 0.5, 0.75]


def test_plans_validate() -> None:
    assert BlackBoxPlan(budgets=(300, 100, 300)).budgets == (100, 300)
    with pytest.raises(ConfigError, match="BlackBoxPlan: 'budgets' must hold at least one value"):
        BlackBoxPlan(budgets=())
    with pytest.raises(ConfigError, match="BlackBoxPlan: 'hsj_budgets' must be an int"):
        BlackBoxPlan(hsj_budgets=(0,))
    with pytest.raises(ConfigError, match="BlackBoxPlan: 'eps' must be"):
        BlackBoxPlan(eps=0.0)
    assert TabularPlan(max_changes=(5, 1), headline_changes=3).max_changes == (1, 3, 5)
    with pytest.raises(ConfigError, match="TabularPlan: 'max_changes' must be an int"):
        TabularPlan(max_changes=(0, 2))
    plan = AssessmentPlan(sections=("evasion", "blackbox"))
    assert "blackbox" in plan.to_dict() and "tabular" not in plan.to_dict()
    assert list(SECTIONS)[:3] == ["evasion", "blackbox", "tabular"]  # registered on import


def test_blackbox_section_on_a_small_model(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    net, x, y = digits_mlp
    plan = AssessmentPlan(sections=("blackbox",), n=16, batch_size=16,
                          blackbox=BlackBoxPlan(eps=0.3, budgets=(5, 50, 200), hsj_budgets=(60,), n=None))
    report = run(net, x, y, plan=plan, model_info={"name": "mlp"}, data_info={"name": "digits"})
    sec = report.sections[0]
    assert sec.id == "blackbox" and sec.severity in ("none", "low", "medium", "high", "critical")
    ids = {a["id"] for a in sec.atlas}
    assert {"AML.T0043.001", "AML.T0015", "AML.T0040"} <= ids
    curve = sec.metrics["square_curve"]
    assert [p["budget"] for p in curve] == [5, 50, 200]
    rates = [p["success_rate"] for p in curve]
    assert rates == sorted(rates)  # success can only grow with the budget
    robust = [p["robust_accuracy"] for p in curve]
    assert robust == sorted(robust, reverse=True) and robust[0] <= sec.metrics["clean_accuracy"]
    assert sec.headline["blackbox_robust_accuracy"] == robust[-1]
    assert len(sec.metrics["hsj_curve"]) == 1 and sec.figures and "rate-limit" in sec.recommendation
    assert all(f.how_to_read for f in sec.figures) and "breaks within L-inf eps=0.3" in sec.figures[0].caption
    d = report.to_dict()
    assert d["summary"]["metrics"]["blackbox_success_rate"] == rates[-1]
    # HopSkipJump minimises the norm and spends its whole budget: its row says how many points it
    # breaks within eps, not a "queries per success" that would equal the budget.
    hsj = sec.metrics["hsj_curve"][0]
    assert "median_queries_per_success" not in hsj
    assert hsj["success_within_eps"] is not None and hsj["success_within_eps"] <= hsj["success_rate"]
    assert sec.tables[-1].columns[-1] == "success within L-inf eps=0.3"
    assert "Clean accuracy on these 16 points" in " ".join(sec.findings)
    assert sec.points == "all 16 assessment points"


def test_blackbox_on_a_subset_says_so(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    net, x, y = digits_mlp
    plan = AssessmentPlan(sections=("blackbox",), n=24, batch_size=8,
                          blackbox=BlackBoxPlan(eps=0.3, budgets=(20,), hsj_budgets=(), n=8))
    sec = run(net, x, y, plan=plan, model_info={"name": "mlp"}, data_info={"name": "digits"}).sections[0]
    assert sec.points.startswith("the first 8 of the 24 assessment points: each query-only attack costs")
    assert "Clean accuracy on these 8 points" in " ".join(sec.findings)


def test_tabular_section_with_an_inferred_spec() -> None:
    from sklearn.linear_model import LogisticRegression

    gen = np.random.default_rng(0)
    x = gen.choice([-1.0, 1.0], size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)  # 1 = malicious
    est = LogisticRegression().fit(x, y)
    plan = AssessmentPlan(sections=("tabular",), tabular=TabularPlan(max_changes=(1, 2), headline_changes=2))
    report = run(est, torch.from_numpy(x), torch.from_numpy(y), plan=plan, model_info={"name": "lr"},
                 data_info={"name": "toy", "feature_names": ["a", "b", "c", "d"]}, bounds=(-1.0, 1.0))
    sec = report.sections[0]
    m = sec.metrics
    assert sec.id == "tabular" and m["invalid_rows"] == 0 and sec.headline["tabular_valid_rows"] == 1.0
    # Flipping feature a alone turns every malicious row (a = 1) benign for this model.
    assert m["changes_curve"][0]["success_rate"] == 1.0 and sec.headline["malicious_recall_after"] == 0.0
    assert "a" in m["features_used"] and sec.severity == "critical"
    assert any("inferred" in w for w in sec.warnings)
    assert sec.figures and all(f.how_to_read for f in sec.figures)


def test_tabular_section_on_the_phishing_zoo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")
    from modelshield import zoo
    from modelshield.data import load_tabular_dataset

    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    zm = zoo.load("phishing-logreg")
    x, y = zoo.test_split("phishing-logreg", n=300)
    ds = load_tabular_dataset("phishing-websites", deduplicate=True)
    report = run(zm.module, x, y, plan=AssessmentPlan(sections=("tabular",)),
                 model_info={"name": zm.spec.name},
                 data_info={"name": ds.name, "feature_names": list(ds.feature_names)}, bounds=(-1.0, 1.0))
    sec = report.sections[0]
    assert sec.metrics["invalid_rows"] == 0 and sec.headline["tabular_valid_rows"] == 1.0
    assert "shipped phishing spec" in sec.metrics["constraints"] and not sec.warnings
    rates = [p["success_rate"] for p in sec.metrics["changes_curve"]]
    assert [p["max_changes"] for p in sec.metrics["changes_curve"]] == [1, 2, 3, 5] and rates == sorted(rates)
    immutable = {"age_of_domain", "DNSRecord", "web_traffic", "Page_Rank", "Google_Index"}
    assert not immutable & set(sec.metrics["features_used"])
    assert sec.metrics["malicious_recall_before"] >= sec.headline["malicious_recall_after"]
