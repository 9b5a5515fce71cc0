"""One section's error does not discard the others' results; multi-class tabular targets (held-out #4).

``assess.run`` turns a ``ModelShieldError`` raised by a section into a failed section (severity
"none", the reason, a warning) and keeps going; an ``IntegrityError`` or an unexpected exception
still propagates. ``runner_up_target`` gives ``TabularSearch`` a target per row for models with
more than two classes (it required one and aborted the default tabular run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from modelshield.assess import SECTIONS, AssessmentContext, AssessmentPlan, Progress, Section
from modelshield.assess.sections.blackbox import runner_up_target
from modelshield.assess.suite import run
from modelshield.errors import ConfigError, IntegrityError, ModelCapabilityError
from modelshield.models import as_model


@dataclass(frozen=True)
class _Fixed:
    id: str
    error: BaseException | None = None

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        if self.error is not None:
            raise self.error
        return Section(id=self.id, title="fine", summary="ran", severity="low",
                       headline={f"{self.id.replace('-', '_')}_metric": 0.5})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    import modelshield.assess.sections  # noqa: F401  # the built-ins register on import

    table = dict(SECTIONS)
    monkeypatch.setattr("modelshield.assess._section.SECTIONS", table)
    monkeypatch.setattr("modelshield.assess.suite.SECTIONS", table)
    yield table


def _points() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(12, 4)
    return net, x, net(x).argmax(1)


def _run(sections: tuple[str, ...]) -> object:
    net, x, y = _points()
    return run(net, x, y, plan=AssessmentPlan(sections=sections, n=12), model_info={"name": "t"},
               data_info={"name": "d"})


def test_a_section_error_becomes_a_failed_section_and_the_run_goes_on(registry: dict[str, object]) -> None:
    registry["ok-a"] = _Fixed("ok-a")
    error = ConfigError("TabularSearch: 'target' must be given; got None.\n Fix.")
    registry["bad-b"] = _Fixed("bad-b", error)
    registry["ok-c"] = _Fixed("ok-c")
    registry["bad-d"] = _Fixed("bad-d", ModelCapabilityError("needs gradients"))
    result = _run(("ok-a", "bad-b", "ok-c", "bad-d"))
    sections = {s.id: s for s in result.sections}  # type: ignore[attr-defined]
    assert list(sections) == ["ok-a", "bad-b", "ok-c", "bad-d"]
    assert sections["ok-a"].summary == "ran" and sections["ok-c"].summary == "ran"
    bad = sections["bad-b"]
    assert bad.severity == "none"
    assert bad.metrics["skipped"] is True and bad.metrics["failed"] is True
    assert bad.metrics["error"] == "ConfigError"
    assert bad.metrics["reason"] == "TabularSearch: 'target' must be given; got None. Fix."  # one line
    assert bad.summary.startswith("Failed: TabularSearch")
    assert len(bad.warnings) == 1 and "not assessed" in bad.warnings[0]
    assert sections["bad-d"].metrics["error"] == "ModelCapabilityError"
    report = result.to_dict()  # type: ignore[attr-defined]
    assert report["summary"]["severity"] == "low"
    assert report["summary"]["metrics"] == {"ok_a_metric": 0.5, "ok_c_metric": 0.5}
    assert report["provenance"]["sections"]["bad-b"]["failed"] is True


@pytest.mark.parametrize("error", [RuntimeError("bug"), IndexError("index 2 is out of bounds"),
                                   IntegrityError("signature does not verify")])
def test_unexpected_and_integrity_errors_still_propagate(registry: dict[str, object],
                                                         error: BaseException) -> None:
    registry["ok-a"] = _Fixed("ok-a")
    registry["boom"] = _Fixed("boom", error)
    with pytest.raises(type(error), match=str(error)):
        _run(("ok-a", "boom"))


def test_runner_up_target_for_multi_class_models() -> None:
    net, x, _ = _points()
    model = as_model(net, bounds=(0.0, 1.0))
    target = runner_up_target(model, x, 1, batch_size=5)
    assert target is not None and target.shape == (12,)
    scores = net(x).detach()
    scores[:, 1] = -float("inf")
    assert torch.equal(target, scores.argmax(1))
    assert bool((target != 1).all())
    binary = as_model(nn.Sequential(nn.Linear(4, 2)).eval(), bounds=(0.0, 1.0))
    assert runner_up_target(binary, x, 1, batch_size=5) is None
