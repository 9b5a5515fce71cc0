"""The "defenses" report section: a defended model against the undefended one, judged honestly.

digits-cnn against digits-cnn-at (TRADES, eps 0.1; trained once per test session in the tmp zoo
cache of tests/conftest.py, 10-60 s), against a gradient-masked "defence" (inputs rounded to
quarter steps before digits-cnn) and against an unchanged copy of itself.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from modelshield.assess import SECTIONS, AssessmentPlan, render_html, run
from modelshield.assess._section import ATLAS
from modelshield.assess.plan import DefensesPlan
from modelshield.assess.sections import DefensesSection, evasion_severity
from modelshield.errors import ConfigError, EvaluationWarning
from modelshield.models import as_model

N = 100
# Lighter than the defaults (200 points, 40 steps, 500 queries) to keep the tests quick.
LIGHT: dict[str, Any] = {"n": N, "steps": 20, "square_queries": 300}


class RoundInput(nn.Module):
    """Quantises inputs to quarter steps before the classifier: autograd gives exactly zero gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.inner(torch.round(x * 4) / 4)
        return out


def _assess(model: Any, x: Tensor, y: Tensor, *, name: str = "digits-cnn", **plan: Any) -> dict[str, Any]:
    result = run(model, x, y, plan=AssessmentPlan(sections=("defenses",), defenses=DefensesPlan(**plan)),
                 model_info={"name": name}, data_info={"name": "digits"})
    report: dict[str, Any] = result.to_dict()
    json.dumps(report, allow_nan=False)  # the report is JSON as it stands
    return report


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, Tensor, Tensor]:
    from modelshield import zoo

    x, y = zoo.test_split("digits-cnn", n=N)
    return zoo.load("digits-cnn").module, x, y


@pytest.fixture(scope="module")
def at_report(digits: tuple[nn.Module, Tensor, Tensor]) -> dict[str, Any]:
    """digits-cnn assessed with no defended model named: the zoo's digits-cnn-at is used."""
    model, x, y = digits
    return _assess(model, x, y, **LIGHT)


def _section(report: dict[str, Any]) -> dict[str, Any]:
    (s,) = report["sections"]
    assert s["id"] == "defenses"
    out: dict[str, Any] = s
    return out


def test_registered_opt_in_and_plan_checks() -> None:
    assert isinstance(SECTIONS["defenses"], DefensesSection)
    assert "defenses" not in AssessmentPlan().sections
    assert {"AML.T0015", "AML.T0043"} <= set(ATLAS)
    assert DefensesPlan(curve_factors=(1.5, 0.5)).curve_factors == (0.5, 1.0, 1.5)  # eps itself added
    with pytest.raises(ConfigError, match="'defended' must name a torch zoo model; got 'phishing-gbm'"):
        DefensesPlan(defended="phishing-gbm")
    with pytest.raises(ConfigError, match="'name' must be one of"):
        DefensesPlan(defended="digits-cnn-xx")
    with pytest.raises(ConfigError, match=r"'defended' must be a torch\.nn\.Module, a zoo name or None"):
        DefensesPlan(defended=3)  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(ConfigError, match="'eps' must be"):
        DefensesPlan(eps=0.0)
    with pytest.raises(ConfigError, match="'curve_factors' must"):
        DefensesPlan(curve_factors=())
    plan = AssessmentPlan(sections=("defenses",), defenses=DefensesPlan(defended=nn.Linear(2, 2)))
    sub: Any = plan.to_dict()["defenses"]
    assert sub["defended"] == "nn.Module (Linear)"


def test_adversarial_training_holds(at_report: dict[str, Any],
                                    digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    from modelshield import zoo
    from modelshield.models.load import weights_sha256

    s = _section(at_report)
    m = s["metrics"]
    und, dfd = m["undefended"], m["defended"]
    assert m["eps"] == 0.1 and "digits-cnn-at" in m["eps_source"]  # the zoo model's training eps
    assert dfd["name"] == "digits-cnn-at" and und["name"] == "digits-cnn"
    assert dfd["flags"] == [] and dfd["robust_claim_allowed"] is True
    assert dfd["robust_accuracy"] > und["robust_accuracy"] + m["tolerance"]
    assert m["verdict"] == "holds" and m["holds"] is True
    assert s["summary"].startswith("The defence holds at eps=0.1")
    # The worst case is per point over every attack, so never above any single attack.
    for r in (und, dfd):
        assert r["robust_accuracy"] <= min(r["attack_robust_accuracy"], r["ensemble_robust_accuracy"]) + 1e-9
    # Clean accuracy of the defended model, recomputed directly on the same points.
    _, x, y = digits
    at = zoo.load("digits-cnn-at").module
    with torch.no_grad():
        direct = float((at(x).argmax(1) == y).double().mean())
    assert dfd["clean_accuracy"] == pytest.approx(direct, abs=1e-6)
    assert s["severity"] == evasion_severity(dfd["clean_accuracy"], dfd["robust_accuracy"])
    assert s["headline"]["defended_robust_accuracy"] == dfd["robust_accuracy"]
    assert s["headline"]["defense_gain"] == pytest.approx(dfd["robust_accuracy"] - und["robust_accuracy"],
                                                          abs=1e-6)
    assert s["headline"]["defended_masking_flags"] == 0.0
    table, curve = s["tables"]
    assert table["columns"][0] == "model" and table["columns"][-2:] == ["masking flags", "verdict"]
    assert [r[-1] for r in table["rows"]] == ["baseline", "holds"]
    assert table["rows"][1][-2] == "none"
    assert curve["columns"] == ["model", "eps=0", "eps=0.025", "eps=0.05", "eps=0.1", "eps=0.15"]
    for row, r in zip(curve["rows"], (und, dfd), strict=True):
        assert row[1] == pytest.approx(r["clean_accuracy"], abs=1e-4)
        assert row[4] == pytest.approx(r["ensemble_robust_accuracy"], abs=1e-4)
    assert {a["id"] for a in s["atlas"]} == {"AML.T0015", "AML.T0043"}
    for word in ("TRADES", "randomized smoothing", "distillation alone"):
        assert word in s["recommendation"]
    (fig,) = s["figures"]
    assert base64.b64decode(fig["png_base64"])[:8] == b"\x89PNG\r\n\x1a\n" and fig["how_to_read"]
    assert s["provenance"]["defended"]["weights_sha256"] == weights_sha256(at)
    assert 'id="section-defenses"' in render_html(at_report)


def test_gradient_masked_defence_is_flagged_and_never_holds(digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = digits
    masked = RoundInput(model).eval()
    with pytest.warns(EvaluationWarning, match="Gradient masking"):
        report = _assess(model, x, y, defended=masked, name="digits-cnn", eps=0.1, **LIGHT)
    s = _section(report)
    m = s["metrics"]
    dfd = m["defended"]
    names = {f["name"] for f in dfd["flags"]}
    assert "zero_gradients" in names and dfd["robust_claim_allowed"] is False
    assert all(f["evidence"] and f["explanation"] for f in dfd["flags"])
    assert m["verdict"] == "masked" and m["holds"] is False
    assert "does not hold" in s["summary"] and "not called robust" in s["summary"]
    assert s["severity"] in ("high", "critical")
    assert s["headline"]["defended_masking_flags"] == float(len(dfd["flags"]))
    assert s["tables"][0]["rows"][1][-1] == "masked"
    assert s["warnings"]  # each flag's explanation
    # PGD is blind on the rounded model; the per-point worst case (Square included) is lower.
    assert dfd["robust_accuracy"] < dfd["attack_robust_accuracy"]


def test_an_unchanged_model_is_no_gain(digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = digits
    s = _section(_assess(model, x, y, defended=copy.deepcopy(model), name="digits-cnn", eps=0.1, **LIGHT))
    m = s["metrics"]
    assert m["defended"]["flags"] == []
    assert abs(m["defense_gain"]) <= m["tolerance"]
    assert m["verdict"] == "no gain" and "does not hold" in s["summary"]


def _probs(x: Tensor) -> Tensor:
    return torch.full((x.shape[0], 10), 0.1)


@pytest.mark.parametrize(("model", "name", "needle"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "my-model",
     "pass a defended model: --defended PATH or a zoo name"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "fashion-cnn",
     "no adversarially trained zoo counterpart"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "mnist-cnn", "zoo train mnist-cnn-at"),
    (as_model(_probs, n_classes=10), "digits-cnn", "black box"),
])
def test_skipped_with_the_reason(model: Any, name: str, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield import zoo

    # A slow counterpart (mnist-cnn-at, ~1 h) is skipped when not cached, never trained implicitly.
    monkeypatch.setattr(zoo, "is_cached", lambda n: False)
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("the section must not train or load"))
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(20, dtype=torch.long)
    s = _section(_assess(model, x, y, name=name))
    assert s["severity"] == "none" and s["summary"].startswith("Skipped:")
    assert s["metrics"]["skipped"] is True and needle in s["metrics"]["reason"]
    assert not s["figures"] and not s["headline"]


@pytest.mark.parametrize(("defended", "match"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), r"must return \(N, 10\) logits"),
    (nn.Linear(10, 10), r"must accept the assessed inputs of shape \(1, 8, 8\)"),
])
def test_incompatible_defended_model_is_a_config_error(defended: nn.Module, match: str) -> None:
    """The section fails with the ConfigError's one line; the report (and other sections) survive."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(20, dtype=torch.long)
    s = _section(_assess(model, x, y, name="m", defended=defended, eps=0.1))
    assert s["metrics"]["failed"] is True and s["metrics"]["error"] == "ConfigError"
    assert re.search(match, s["summary"]) and s["severity"] == "none" and s["warnings"]


def test_cli_defended_needs_the_section_and_a_real_model(tmp_path: Any) -> None:
    from modelshield.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["assess", "--model", "digits-cnn", "--out", str(tmp_path / "a"),
                              "--sections", "evasion", "--defended", "digits-cnn-at", "--n", "20"])
    assert res.exit_code == 2 and "is used by the defenses section" in res.output
    res = runner.invoke(app, ["assess", "--model", "digits-cnn", "--out", str(tmp_path / "b"),
                              "--sections", "defenses", "--defended", str(tmp_path / "none.pt"), "--n", "20"])
    assert res.exit_code == 2 and "'--defended' must be a zoo name" in res.output


def test_cli_defended_model_file(tmp_path: Any, digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    """--defended FILE is loaded like --model and added to the default sections."""
    from modelshield.cli.app import app
    from modelshield.models.load import save_model

    model, _, _ = digits
    save_model(copy.deepcopy(model), tmp_path / "copy.pt", arch="cnn-8x8")
    res = CliRunner().invoke(app, ["--threads", "1", "assess", "--model", "digits-cnn", "--out",
                                   str(tmp_path / "r"), "--defended", str(tmp_path / "copy.pt"),
                                   "--n", "30", "--attacks", "fgsm", "--eps", "0.1", "--blackbox-n", "5",
                                   "--query-budgets", "50", "--hsj-budgets", "50",
                                   "--extraction-budgets", "50", "--extraction-epochs", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [x["id"] for x in report["sections"]] == ["evasion", "blackbox", "extraction", "defenses"]
    s = report["sections"][3]
    assert s["metrics"]["defended"]["name"] == "copy.pt" and s["metrics"]["verdict"] == "no gain"
    assert s["metrics"]["eps"] == 0.1 and s["metrics"]["eps_source"] == "evasion headline eps"
