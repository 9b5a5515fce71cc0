"""The "backdoor" report section: Neural Cleanse + STRIP on the assessed model, skipped for models
it cannot inspect. Digits: the clean zoo digits-cnn and a BadNets model (5% poison to class 0)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield.assess import SECTIONS, AssessmentPlan, render_html, run
from modelshield.assess._section import ATLAS, AssessmentContext
from modelshield.assess.sections import BackdoorSection
from modelshield.assess.sections.backdoor import anomaly_figure, trigger_figure
from modelshield.attacks.backdoor import BadNets, make_train_fn
from modelshield.data import load_digits
from modelshield.defenses.backdoor import NeuralCleanse
from modelshield.errors import ConfigError
from modelshield.models import as_model

N = 300  # 200 clean points for Neural Cleanse / STRIP, 100 held out


def _assess(model: Any, x: Tensor, y: Tensor, n: int | None = N) -> dict[str, Any]:
    result = run(model, x, y, plan=AssessmentPlan(sections=("backdoor",), n=n),
                 model_info={"name": "m"}, data_info={"name": "digits"})
    report: dict[str, Any] = result.to_dict()
    json.dumps(report, allow_nan=False)  # the report is JSON as it stands
    return report


def _png(b64: str) -> bytes:
    return base64.b64decode(b64)[:8]


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_digits()


@pytest.fixture(scope="module")
def backdoored_report(digits: Any) -> dict[str, Any]:
    res = BadNets(target=0, rate=0.05)(None, digits.x_train, digits.y_train)
    model = make_train_fn("cnn-8x8", epochs=10, batch_size=32)(res.x_poisoned, res.y_poisoned)
    return _assess(model, digits.x_test, digits.y_test)


@pytest.fixture(scope="module")
def clean_report(digits: Any) -> dict[str, Any]:
    from modelshield import zoo

    return _assess(zoo.load("digits-cnn").module, digits.x_test, digits.y_test)


def test_registered_with_its_atlas_technique() -> None:
    assert isinstance(SECTIONS["backdoor"], BackdoorSection)
    assert ATLAS["AML.T0018"] == "Backdoor ML Model"
    with pytest.raises(ConfigError, match="'n_clean' must be"):
        BackdoorSection(n_clean=5)
    with pytest.raises(ConfigError, match="'frr' must be"):
        BackdoorSection(frr=0.0)


def test_flags_the_target_of_a_backdoored_digits_model(backdoored_report: dict[str, Any]) -> None:
    (s,) = backdoored_report["sections"]
    assert s["id"] == "backdoor" and s["severity"] == "high"
    assert backdoored_report["summary"]["severity"] == "high"
    m = s["metrics"]
    assert m["flagged_classes"] == [0] and m["verdict"] == "backdoor"
    assert s["headline"]["backdoor_max_anomaly_index"] > 2.0
    assert s["headline"]["backdoor_flagged_classes"] == 1.0
    assert {a["id"] for a in s["atlas"]} == {"AML.T0018", "AML.T0020"}
    for word in ("Unlearning", "retrain", "STRIP"):
        assert word in s["recommendation"]
    (table,) = s["tables"]
    assert [r[0] for r in table["rows"]] == [str(c) for c in range(10)]
    assert [r[-1] for r in table["rows"]] == ["backdoor" if c == 0 else "clean" for c in range(10)]
    # The anomaly index is |norm - median| / (1.4826 * MAD), recomputed from the reported norms.
    norms = torch.tensor(m["neural_cleanse"]["norms"])
    med = norms.median()
    ai = (norms - med).abs() / (1.4826 * (norms - med).abs().median())
    assert torch.allclose(ai, torch.tensor(m["neural_cleanse"]["anomaly_index"]), atol=1e-4)
    assert len(s["figures"]) == 2 and all(_png(f["png_base64"]) == b"\x89PNG\r\n\x1a\n" for f in s["figures"])
    assert all(f["how_to_read"] for f in s["figures"])  # every figure has its reading guide
    strip = m["strip"]
    assert strip["n_clean"] == 200 and strip["n_holdout"] == N - 200
    assert strip["reversed_trigger_detection"]["0"] > 0.5
    assert any("STRIP catches" in f for f in s["findings"])
    assert s["warnings"]  # a flag comes with the caveat on naturally easy classes
    assert 'id="section-backdoor"' in render_html(backdoored_report)


def test_clean_digits_cnn_is_not_flagged(clean_report: dict[str, Any]) -> None:
    (s,) = clean_report["sections"]
    assert s["severity"] == "none" and s["metrics"]["flagged_classes"] == []
    assert s["headline"]["backdoor_max_anomaly_index"] <= 2.0
    assert "does not prove absence" in s["summary"]
    assert all(r[-1] == "clean" for r in s["tables"][0]["rows"])
    assert s["metrics"]["strip"]["reversed_trigger_detection"] == {}


def _probs(x: Tensor) -> Tensor:
    return torch.full((x.shape[0], 10), 0.1)


@pytest.mark.parametrize(("model", "shape", "needle"), [
    (as_model(_probs, n_classes=10), (1, 8, 8), "black box"),
    (nn.Sequential(nn.Linear(64, 10)), (64,), "not images"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), (1, 8, 8), "needs at least 3"),
])
def test_skipped_with_the_reason(model: Any, shape: tuple[int, ...], needle: str) -> None:
    x = torch.rand(40, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(40, dtype=torch.long)
    (s,) = _assess(model, x, y, n=None)["sections"]
    assert s["severity"] == "none" and s["summary"].startswith("Skipped:")
    assert s["metrics"]["skipped"] is True and needle in s["metrics"]["reason"]
    assert not s["figures"] and not s["headline"]


def test_too_few_points_is_skipped() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    m = as_model(net)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = AssessmentContext(model=m, x=x, y=torch.zeros(10, dtype=torch.long), plan=AssessmentPlan(),
                            model_info={}, data_info={}, bounds=(0.0, 1.0), seed=0, batch_size=10)
    s = BackdoorSection()(ctx, None)
    assert "at least 20" in s.summary and s.severity == "none"


def test_figures_render_pngs() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    nc = NeuralCleanse(steps=3, batch_size=8)(net, x)
    assert _png(anomaly_figure(nc, classes=["a", "b", "c", "d"])) == b"\x89PNG\r\n\x1a\n"
    assert _png(trigger_figure(nc, [0, 2], x[0], bounds=(0.0, 1.0))) == b"\x89PNG\r\n\x1a\n"
