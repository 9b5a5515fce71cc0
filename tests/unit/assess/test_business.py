"""The business reading of a report: impacts, frameworks, commands that exist, plain summary."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import typer

from modelshield.assess._section import SECTIONS
from modelshield.assess.business import IMPACTS, NIST_AI_RMF, OWASP_ML, RISKS, business_view
from modelshield.cli.app import app


def _section(sid: str, severity: str, **metrics: Any) -> dict[str, Any]:
    return {"id": sid, "title": sid.title(), "severity": severity, "summary": f"{sid} finding.",
            "atlas": [{"id": "AML.T0015", "name": "Evade ML Model"}], "metrics": metrics}


def test_every_built_in_section_has_a_business_reading() -> None:
    import modelshield.assess.sections  # noqa: F401  (registers them)

    built_in = {sid for sid, runner in SECTIONS.items()
                if type(runner).__module__.startswith("modelshield.assess.sections")}
    assert len(built_in) >= 11 and built_in <= set(RISKS)  # (other tests register their own sections)
    for risk in RISKS.values():
        assert set(risk.impact) == set(IMPACTS) and all(risk.impact.values())
        assert all(i in OWASP_ML for i in risk.owasp) and all(i in NIST_AI_RMF for i in risk.nist)
        assert risk.eu_ai_act.startswith("Article 15")


def _sub(group: Any, name: str) -> Any:
    """The sub-command ``name`` of a (typer's click) group, or None."""
    if not hasattr(group, "get_command"):
        return None
    return group.get_command(group.context_class(group), name)


@pytest.mark.parametrize("sid", sorted(RISKS))
def test_each_remediation_command_exists_with_its_options(sid: str) -> None:
    for part in RISKS[sid].command.split("&&"):
        argv = shlex.split(part)
        assert argv[0] == "modelshield"
        cmd: Any = typer.main.get_command(app)
        path: list[str] = []
        for w in (a for a in argv[1:] if not a.startswith("-")):
            sub = _sub(cmd, w)
            if sub is not None:
                path.append(w)
                cmd = sub
        assert path, f"{RISKS[sid].command}: no modelshield command"
        options = {o for p in cmd.params for o in p.opts}
        for a in argv[1:]:
            if a.startswith("--"):
                assert a in options, f"{RISKS[sid].command}: {' '.join(path)} has no {a}"


def test_the_plan_puts_the_worst_and_cheapest_attack_first() -> None:
    sections = [_section("evasion", "high"), _section("extraction", "high"), _section("backdoor", "low"),
                _section("blackbox", "none"), _section("poisoning", "medium", skipped=True),
                _section("supply-chain", "none", skipped=True, failed=True)]
    view = business_view(sections, model="my-model.pt")
    plan = view["remediation_plan"]
    # high before low; among the highs the query-only attack (extraction) before the white-box one
    assert [p["section"] for p in plan] == ["extraction", "evasion", "backdoor"]
    assert plan[0]["command"] == "modelshield serve --model my-model.pt --config gateway.yaml"
    assert [r["section"] for r in view["risks"]] == ["extraction", "evasion", "backdoor", "blackbox",
                                                     "supply-chain"]  # skipped-only sections left out
    text = " ".join(view["executive_summary"])
    assert text.startswith("Overall: high risk. 3 of 5 tested threats succeed")
    assert "An attacker can copy the model by querying it" in text
    assert "could not run (supply-chain)" in text and "unknown, not absent" in text
    assert view["risks"][0]["owasp_ml_top10"] == ["ML05 Model Theft"]


def test_a_report_without_findings_does_not_claim_robustness() -> None:
    view = business_view([_section("evasion", "none"), _section("blackbox", "none")])
    assert view["remediation_plan"] == []
    assert "not a proof of robustness" in view["executive_summary"][0]


def test_a_report_carries_its_business_view(digits_mlp: Any) -> None:
    from modelshield.assess import AssessmentPlan, BlackBoxPlan, run

    net, x, y = digits_mlp
    plan = AssessmentPlan(sections=("blackbox",), n=16, batch_size=16,
                          blackbox=BlackBoxPlan(eps=0.3, budgets=(50,), hsj_budgets=(), n=None))
    report = run(net, x, y, plan=plan, model_info={"name": "mlp", "source": "zoo"},
                 data_info={"name": "digits"}).to_dict()
    view = report["business"]
    assert view == business_view(report["sections"], model="mlp")
    assert view["risks"][0]["section"] == "blackbox" and view["executive_summary"]


def test_the_html_report_opens_with_the_executive_summary_and_prints_by_section(digits_mlp: Any) -> None:
    from modelshield.assess import AssessmentPlan, BlackBoxPlan, run
    from modelshield.assess.report import render_html

    net, x, y = digits_mlp
    plan = AssessmentPlan(sections=("blackbox",), n=16, batch_size=16,
                          blackbox=BlackBoxPlan(eps=0.3, budgets=(200,), hsj_budgets=(), n=None))
    report = run(net, x, y, plan=plan, model_info={"name": "mlp", "source": "zoo"},
                 data_info={"name": "digits"}).to_dict()
    html = render_html(report)
    order = [html.index(f'id="{i}"') for i in ("executive-summary", "summary", "business")]
    assert order == sorted(order)
    assert report["business"]["executive_summary"][0] in html
    if report["business"]["remediation_plan"]:
        assert 'id="remediation"' in html and "modelshield serve --model mlp" in html
    assert "@page" in html and "break-before: page" in html
