"""The assessment report: JSON schema, a self-contained autoescaped HTML page, section plugins."""

from __future__ import annotations

import datetime as dt
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield import PGD
from modelshield.assess import (
    SECTIONS,
    SEVERITIES,
    Assessment,
    AssessmentContext,
    AssessmentPlan,
    EvasionPlan,
    Section,
    atlas,
    max_severity,
    render_html,
    run,
    write_report,
)
from modelshield.errors import ConfigError, EvaluationWarning

NASTY = "cnn <script>alert('x')</script> & co"
PLAN = AssessmentPlan(n=60, batch_size=25, seed=0,
                      evasion=EvasionPlan(attacks=("fgsm", "pgd"), eps=(0.0, 0.1, 0.3), steps=5))


@pytest.fixture(scope="module")
def assessment(digits_mlp: tuple[nn.Module, Tensor, Tensor]) -> Assessment:
    from modelshield.cli._target import torch_threads

    net, x, y = digits_mlp
    calls: list[tuple[int, int, str]] = []
    with torch_threads(1):
        result = run(net, x, y, plan=PLAN, model_info={"name": NASTY},
                     data_info={"name": "digits", "sha256": "ab" * 32},
                     progress=lambda *a: calls.append(a))
    # 2 attacks x 3 eps x ceil(60 / 25) = 18 batches, reported in order up to the total
    assert [c[0] for c in calls] == list(range(1, 19)) and {c[1] for c in calls} == {18}
    return result


@pytest.fixture(scope="module")
def report(assessment: Assessment) -> dict[str, Any]:
    def no_nan(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name}")

    loaded: dict[str, Any] = json.loads(json.dumps(assessment.to_dict()), parse_constant=no_nan)
    return loaded


@pytest.fixture(scope="module")
def html(report: dict[str, Any]) -> str:
    return render_html(report)


def test_json_top_level_schema(report: dict[str, Any]) -> None:
    assert report["schema_version"] == 1
    assert {"schema_version", "generated_at", "model", "data", "summary", "sections",
            "provenance"} <= report.keys()
    generated = dt.datetime.fromisoformat(report["generated_at"])
    assert generated.tzinfo is not None
    assert report["data"]["n"] == 60 and len(report["data"]["points_sha256"]) == 64


def test_provenance_records_versions_hashes_seed_and_attacks(report: dict[str, Any],
                                                             digits_mlp: tuple[nn.Module, Tensor, Tensor]
                                                             ) -> None:
    from modelshield.models.load import weights_sha256

    prov = report["provenance"]
    assert {"modelshield", "torch", "numpy", "scikit-learn", "python"} <= prov["packages"].keys()
    assert prov["packages"]["torch"] == metadata.version("torch")
    assert prov["model_weights_sha256"] == weights_sha256(digits_mlp[0])
    assert prov["data_sha256"] == "ab" * 32
    assert prov["seed"] == 0
    assert set(prov["attacks"]) == {"fgsm", "pgd"}
    assert prov["attacks"]["pgd"]["steps"] == 5 and prov["attacks"]["pgd"]["eps"] == [0.0, 0.1, 0.3]
    assert prov["plan"]["evasion"]["attacks"] == ["fgsm", "pgd"]


def test_section_schema(report: dict[str, Any]) -> None:
    (section,) = report["sections"]
    assert section["id"] == "evasion"
    assert section["severity"] in SEVERITIES
    assert {a["id"] for a in section["atlas"]} == {"AML.T0015", "AML.T0043", "AML.T0043.000"}
    assert "adversarial training" in section["recommendation"]
    assert len(section["figures"]) == 2
    assert all(f["png_base64"] and f["how_to_read"] for f in section["figures"])
    assert section["tables"][0]["columns"][0] == "attack"
    curves = section["metrics"]["curves"]
    assert [p["eps"] for p in curves["pgd"]] == [0.0, 0.1, 0.3]
    for points in curves.values():  # eps=0 admits only x itself: robust accuracy equals clean accuracy
        assert points[0]["robust_accuracy"] == points[0]["clean_accuracy"]


def test_summary_is_the_worst_case_over_attacks(report: dict[str, Any]) -> None:
    summary = report["summary"]
    at_headline = {name: next(p for p in pts if p["eps"] == 0.1)
                   for name, pts in report["sections"][0]["metrics"]["curves"].items()}
    assert summary["metrics"]["robust_accuracy"] == min(p["robust_accuracy"] for p in at_headline.values())
    assert summary["severity"] == max_severity([s["severity"] for s in report["sections"]])
    assert summary["risks"][0]["section"] == "evasion"


def test_headline_robust_accuracy_matches_a_direct_pgd_run(report: dict[str, Any],
                                                           digits_mlp: tuple[nn.Module, Tensor, Tensor]
                                                           ) -> None:
    net, x, y = digits_mlp
    direct = PGD(eps=0.1, steps=5, seed=0)(net, x[:60], y[:60])
    # the worst case over attacks includes this very PGD run (same seed, settings and points)
    assert report["summary"]["metrics"]["robust_accuracy"] <= round(direct.robust_accuracy, 6)
    assert report["summary"]["metrics"]["clean_accuracy"] == round(direct.clean_accuracy, 6)


def test_html_is_self_contained(html: str, report: dict[str, Any]) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert not re.search(r"<script|<link|@import|url\(", html, flags=re.I)
    n_figures = sum(len(s["figures"]) for s in report["sections"])
    assert html.count('src="data:image/png;base64,') == n_figures


def test_html_escapes_untrusted_text(html: str) -> None:
    assert "<script>" not in html
    assert "cnn &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in html


def test_html_has_summary_sections_and_provenance(html: str, report: dict[str, Any]) -> None:
    for anchor in ('id="summary"', 'id="section-evasion"', 'id="provenance"'):
        assert anchor in html
    sev = report["sections"][0]["severity"]
    assert f'<span class="badge sev-{sev}">{sev}</span>' in html
    for tid in ("AML.T0015", "AML.T0043.000"):
        assert tid in html
    assert report["provenance"]["model_weights_sha256"] in html
    assert "Robust accuracy against eps" in html


def test_write_report_refuses_to_overwrite(assessment: Assessment, tmp_path: Path) -> None:
    json_path, html_path = write_report(assessment, tmp_path / "out")
    assert json.loads(json_path.read_text())["schema_version"] == 1
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    json_path.write_text("{}")
    with pytest.raises(ConfigError, match=r"must not exist yet.*report\.json.*--force"):
        write_report(assessment, tmp_path / "out")
    assert json_path.read_text() == "{}"  # nothing was written
    write_report(assessment, tmp_path / "out", overwrite=True)
    assert json.loads(json_path.read_text())["schema_version"] == 1


class _Noisy(nn.Module):
    """A randomised classifier: seeded noise added to the logits on every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out + 20.0 * torch.randn(out.shape, generator=self.gen)


def test_randomised_model_is_flagged_in_report_and_as_warning(
    digits_mlp: tuple[nn.Module, Tensor, Tensor],
) -> None:
    net, x, y = digits_mlp
    plan = AssessmentPlan(n=40, evasion=EvasionPlan(attacks=("fgsm",), eps=(0.0, 0.1)))
    # Verification detects the randomness and reads labels by majority vote (so eps=0 no
    # longer shows a gap); the report flags the model as non-deterministic instead.
    with pytest.warns(EvaluationWarning) as caught:
        result = run(_Noisy(net), x, y, plan=plan, model_info={"name": "noisy"}, data_info={})
    assert any("answered the same inputs differently" in str(w.message) for w in caught)
    assert any("Non-deterministic model" in w for w in result.sections[0].warnings)
    assert "Non-deterministic model" in render_html(result)


class _Custom:
    """A plugin section, as later threats (poisoning, extraction, ...) add them."""

    id = "custom-test"

    def __call__(self, ctx: AssessmentContext, progress: object) -> Section:
        return Section(id=self.id, title="Custom threat", summary=f"{ctx.x.shape[0]} points seen",
                       severity="critical", atlas=atlas("AML.T0020"), recommendation="Filter data.",
                       metrics={"score": 0.25}, headline={"custom_score": 0.25})


def test_plugin_sections_join_the_report(digits_mlp: tuple[nn.Module, Tensor, Tensor],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, y = digits_mlp
    monkeypatch.setitem(SECTIONS, "custom-test", _Custom())
    plan = AssessmentPlan(n=20, sections=("evasion", "custom-test"),
                          evasion=EvasionPlan(attacks=("fgsm",), eps=(0.1,)))
    d = run(net, x, y, plan=plan, model_info={"name": "m"}, data_info={}).to_dict()
    assert [s["id"] for s in d["sections"]] == ["evasion", "custom-test"]
    assert d["sections"][1]["summary"] == "20 points seen"
    assert d["summary"]["severity"] == "critical"
    assert d["summary"]["metrics"]["custom_score"] == 0.25
    assert d["summary"]["metrics"]["custom-test.score"] == 0.25
    assert 'id="section-custom-test"' in render_html(d) and "Filter data." in render_html(d)


def test_unknown_section_is_a_config_error(digits_mlp: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = digits_mlp
    with pytest.raises(ConfigError, match=r"'sections' must be one of .*got 'nope'"):
        run(net, x, y, plan=AssessmentPlan(sections=("nope",)), model_info={}, data_info={})


class _Replacement(_Custom):
    """The same section id, configured differently: what ``run(runners=...)`` swaps in."""

    def __call__(self, ctx: AssessmentContext, progress: object) -> Section:
        return Section(id=self.id, title="Custom threat", summary="replaced", severity="low")


def test_runners_replace_a_registered_section_for_one_run(digits_mlp: tuple[nn.Module, Tensor, Tensor],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, y = digits_mlp
    monkeypatch.setitem(SECTIONS, "custom-test", _Custom())
    plan = AssessmentPlan(n=20, sections=("custom-test",))
    info = {"model_info": {"name": "m"}, "data_info": {}}
    d = run(net, x, y, plan=plan, runners={"custom-test": _Replacement()}, **info).to_dict()
    assert d["sections"][0]["summary"] == "replaced" and d["summary"]["severity"] == "low"
    assert run(net, x, y, plan=plan, **info).sections[0].summary == "20 points seen"  # registry unchanged
    with pytest.raises(ConfigError, match=r"runners\['evasion'\] is a runner for section 'custom-test'"):
        run(net, x, y, plan=plan, runners={"evasion": _Replacement()}, **info)
