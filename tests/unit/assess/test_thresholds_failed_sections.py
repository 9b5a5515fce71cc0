"""``--fail-under`` on a metric whose section failed or was skipped misses the gate (held-out #16).

A section's ``ModelShieldError`` becomes a failed section (``failed_section``) with no metrics;
a threshold on one of its metrics used to raise "unknown metric" (exit 2), as if the name were
misspelt. It must instead be a missed threshold (exit 1) that names the section and the reason,
so a gate never passes, or errors as a usage mistake, on a number that was never measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from modelshield.assess import (
    SECTIONS,
    Assessment,
    AssessmentContext,
    AssessmentPlan,
    Progress,
    Section,
    check_thresholds,
    parse_threshold,
)
from modelshield.assess._section import skipped_section
from modelshield.assess.suite import run
from modelshield.errors import ConfigError, ModelCapabilityError


@dataclass(frozen=True)
class _Fixed:
    id: str
    error: Exception | None = None
    headline: str = "robust_accuracy"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        if self.error is not None:
            raise self.error
        return Section(id=self.id, title="fine", summary="ran", severity="low", headline={self.headline: 0.5},
                       metrics={"extra": 0.25})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    import modelshield.assess.sections  # noqa: F401  # the built-ins register on import

    table = dict(SECTIONS)
    monkeypatch.setattr("modelshield.assess._section.SECTIONS", table)
    monkeypatch.setattr("modelshield.assess.suite.SECTIONS", table)
    yield table


def _run(sections: tuple[str, ...]) -> Assessment:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(8, 4)
    return run(net, x, net(x).argmax(1), plan=AssessmentPlan(sections=sections, n=8),
               model_info={"name": "t"}, data_info={"name": "d"})


def test_threshold_on_a_failed_sections_metric_is_a_miss_naming_the_reason(
        registry: dict[str, object]) -> None:
    registry["evasion"] = _Fixed("evasion", ConfigError("EvasionSection: 'eps' must be > 0; got -1. Fix it."))
    registry["blackbox"] = _Fixed("blackbox", headline="blackbox_robust_accuracy")
    result = _run(("evasion", "blackbox"))
    thresholds = [parse_threshold("robust_accuracy=0.6"), parse_threshold("blackbox_robust_accuracy=0.4"),
                  parse_threshold("evasion.robust_to_clean_ratio=0.5")]
    for source in (result, result.to_dict()):  # the Assessment and the report.json dict agree
        failures = check_thresholds(source, thresholds)
        assert len(failures) == 2, failures  # blackbox 0.5 >= 0.4 holds
        bare, dotted = failures
        assert bare.startswith("robust_accuracy was not measured: the section 'evasion' failed")
        assert "failed (ConfigError: EvasionSection: 'eps' must be > 0; got -1. Fix it). " in bare
        assert "threshold robust_accuracy>=0.6" in bare
        assert dotted.startswith(
            "evasion.robust_to_clean_ratio was not measured: the section 'evasion' failed")


def test_threshold_on_a_skipped_sections_metric_is_a_miss() -> None:
    report = {"summary": {"metrics": {"clean_accuracy": 0.9}},
              "sections": [skipped_section("text-evasion", "Text evasion", "the model is not a text model.")
                           .to_dict()]}
    (msg,) = check_thresholds(report, [parse_threshold("text_evasion_success_rate<=0.1")])
    assert "the section 'text-evasion' skipped (the model is not a text model). " in msg


def test_a_user_sections_bare_metric_is_a_miss_when_that_section_failed(registry: dict[str, object]) -> None:
    error = ModelCapabilityError("MyCheck: needs gradients; got a black box.")
    registry["my-check"] = _Fixed("my-check", error)
    result = _run(("my-check",))
    (msg,) = check_thresholds(result, [parse_threshold("my_score=0.5")])
    assert "the section 'my-check' failed (ModelCapabilityError: MyCheck: needs gradients" in msg


def test_unknown_metric_of_sections_that_ran_is_still_a_usage_error(registry: dict[str, object]) -> None:
    registry["evasion"] = _Fixed("evasion")
    registry["blackbox"] = _Fixed("blackbox", ConfigError("boom"), headline="blackbox_robust_accuracy")
    result = _run(("evasion", "blackbox"))
    with pytest.raises(ConfigError, match=r"summary metrics .*robust_accuracy.*got 'robust_acc'"):
        check_thresholds(result, [parse_threshold("robust_acc=0.5")])
    with pytest.raises(ConfigError, match=r"got 'evasion\.nope'"):  # evasion ran: its dotted names are known
        check_thresholds(result, [parse_threshold("evasion.nope=0.5")])
