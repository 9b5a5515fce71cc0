"""The "physical" report section on digits-cnn: patches by size on the training split, tested held
out; the strength curve, the universal perturbation, PatchCleanser and the masking detector; seeded
reruns; skipped on models it cannot attack; bad plan values."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield import zoo
from modelshield.assess import SECTIONS, AssessmentContext, AssessmentPlan, Section
from modelshield.assess._section import ATLAS
from modelshield.assess.plan import PhysicalPlan
from modelshield.assess.report import report_numbers
from modelshield.assess.sections import PhysicalSection
from modelshield.assess.sections.physical import footprints, physical_severity
from modelshield.assess.suite import jsonable
from modelshield.assess.thresholds import HEADLINE_METRICS
from modelshield.data import load_digits
from modelshield.errors import ConfigError
from modelshield.models import as_model

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = [str(i) for i in range(10)]
# Small enough for a unit test (about 1 s on one thread), large enough for every part to have data.
SMALL = PhysicalPlan(steps=20, batch_size=32, n=120, train_n=300, certify_n=30, detector_n=40,
                     strengths=(0.0, 1.0, 2.0), universal_passes=1, examples=3)


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_digits()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return zoo.load("digits-cnn").module  # trained once per session cache (a few seconds)


def _ctx(model: Any, x: Tensor, y: Tensor, *, plan: PhysicalPlan = SMALL, eps: float = 0.1,
         data_info: dict[str, Any] | None = None,
         train: tuple[Any, Tensor] | None = None) -> AssessmentContext:
    from modelshield.assess import EvasionPlan

    return AssessmentContext(
        model=as_model(model, bounds=(0.0, 1.0)), x=x, y=y,
        plan=AssessmentPlan(sections=("physical",), physical=plan,
                            evasion=EvasionPlan(eps=(0.0, eps), headline_eps=eps)),
        model_info={"name": "digits-cnn"},
        data_info=data_info if data_info is not None else {"name": "digits", "classes": CLASSES},
        bounds=(0.0, 1.0), seed=0, batch_size=250, train=train)


@pytest.fixture(scope="module")
def section(cnn: nn.Module, digits: Any) -> Section:
    return PhysicalSection()(_ctx(cnn, digits.x_test, digits.y_test), None)


def test_registered_opt_in_and_cited() -> None:
    from modelshield.cli.assess import IMAGE_SECTIONS

    assert isinstance(SECTIONS["physical"], PhysicalSection)
    assert "physical" not in AssessmentPlan().sections and "physical" not in IMAGE_SECTIONS
    assert ATLAS["AML.T0041"] == "Physical Environment Access"
    assert AssessmentPlan(sections=("physical",), physical=SMALL).to_dict()["physical"]["steps"] == 20
    assert "physical" not in AssessmentPlan(sections=("evasion",)).to_dict()


def test_section_reports_patches_defences_figures_and_atlas(section: Section) -> None:
    m = section.metrics
    assert {a["id"] for a in section.atlas} == {"AML.T0041", "AML.T0043"}
    assert set(section.headline) == set(HEADLINE_METRICS["physical"])
    assert [r["size"] for r in m["sizes"]] == [0.03, 0.05, 0.1]
    assert [r["side"] for r in m["sizes"]] == [2, 2, 3]  # patch_side on 8x8 images
    assert m["data"]["kind"] == "train-split" and m["data"]["train_rows"] == 300
    assert m["data"]["test_rows"] == 120
    head = next(r for r in m["sizes"] if r["size"] == 0.05)
    assert section.headline["physical_patch_success_rate"] == head["success_rate"]
    assert 0.0 <= head["success_rate"] <= 1.0 and head["views"] == 120 * 4
    assert section.severity == physical_severity(head["success_rate"])
    assert [r["strength"] for r in m["strengths"]] == [0.0, 1.0, 2.0]
    assert m["strengths"][1]["success_rate"] == head["success_rate"]  # strength 1: the same draws
    assert m["universal"]["eps"] == 0.1 and m["universal"]["norm"] == "inf"
    assert section.headline["physical_universal_fooling_rate"] == m["universal"]["fooling_rate"]
    pc = m["defences"]["patchcleanser"]
    assert pc["points"] == 30 and pc["patch"] == [2, 2] and pc["certificate_violations"] == 0
    assert section.headline["physical_certified_accuracy"] == pc["certified_accuracy"]
    assert section.headline["physical_defended_accuracy"] == pc["defended_accuracy"]
    det = m["defences"]["detector"]
    assert det["n_fit"] == 40 and det["n_clean"] == 30 and det["n_patched"] == 30
    assert section.headline["physical_detection_rate"] == det["tpr"]
    assert len(section.figures) == 3
    for fig in section.figures:
        assert base64.b64decode(fig.png_base64, validate=True).startswith(PNG) and fig.how_to_read
    assert "patch size" in section.figures[0].title and "Held-out images" in section.figures[2].title
    assert section.provenance["plan"] == SMALL.to_dict()
    assert section.provenance["attacks"]["AdversarialPatch"]["sizes"] == [0.03, 0.05, 0.1]
    assert "PatchCleanser" in section.recommendation and "masking-consistency" in section.recommendation


def test_certified_accuracy_is_at_most_defended_accuracy(section: Section) -> None:
    pc = section.metrics["defences"]["patchcleanser"]
    assert pc["certified_accuracy"] <= pc["accuracy"]  # certified points are correct (Theorem 1)
    assert pc["certified_accuracy"] <= pc["defended_accuracy"]


def test_rerun_gives_identical_numbers_and_survives_json(cnn: nn.Module, digits: Any,
                                                        section: Section) -> None:
    again = PhysicalSection()(_ctx(cnn, digits.x_test, digits.y_test), None)
    first = report_numbers({"sections": [section.to_dict()]})
    assert report_numbers({"sections": [again.to_dict()]}) == first
    shipped = json.loads(json.dumps(jsonable(section.to_dict())))  # what a runner worker sends back
    assert report_numbers({"sections": [Section.from_dict(shipped).to_dict()]}) == first


def test_plan_round_trips_through_the_runner_spec() -> None:
    from modelshield.runner.assess import plan_from_spec, plan_spec

    plan = AssessmentPlan(sections=("physical",), physical=SMALL)
    assert plan_from_spec(json.loads(json.dumps(plan_spec(plan)))).physical == SMALL
    assert PhysicalPlan.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError, match="unknown colour"):
        PhysicalPlan.from_dict({**SMALL.to_dict(), "colour": 1})


def test_without_a_training_split_half_the_points_train_and_no_eps_skips_the_universal(
        cnn: nn.Module, digits: Any) -> None:
    plan = PhysicalPlan(sizes=(0.1,), headline_size=0.1, steps=5, n=None, certify_n=10, detector_n=20,
                        strengths=(1.0,), universal_eps=0.0, examples=2)
    info = {"name": "mine.npz", "format": "npz", "classes": CLASSES}
    s = PhysicalSection()(_ctx(cnn, digits.x_test[:80], digits.y_test[:80], plan=plan, data_info=info), None)
    assert s.metrics["data"]["kind"] == "assessment-points"
    assert s.metrics["data"]["train_rows"] == 40 and s.metrics["data"]["test_rows"] == 40
    assert any("first half of the assessment points" in w for w in s.warnings)
    assert s.metrics["universal"] is None and s.headline["physical_universal_fooling_rate"] is None
    assert any("No universal perturbation" in f for f in s.findings)


def test_the_users_training_split_is_used(cnn: nn.Module, digits: Any) -> None:
    plan = PhysicalPlan(sizes=(0.05,), steps=2, n=20, train_n=None, certify_n=5, detector_n=20,
                        strengths=(1.0,), universal_eps=0.0, examples=1)
    train = (digits.x_train[:50], digits.y_train[:50])
    info = {"name": "mine.npz", "format": "npz", "classes": CLASSES}
    s = PhysicalSection()(_ctx(cnn, digits.x_test, digits.y_test, plan=plan, data_info=info, train=train),
                          None)
    assert s.metrics["data"]["kind"] == "train-split" and s.metrics["data"]["train_rows"] == 50
    assert s.metrics["defences"]["detector"]["n_fit"] == 20


def test_not_applicable_to_tabular_or_black_box_models(digits: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 4, generator=gen)
    y = (x[:, 0] > 0.5).long()
    clf = LogisticRegression().fit(x.numpy(), y.numpy())
    tab = PhysicalSection()(_ctx(clf, x, y, data_info={"name": "rows", "classes": ["a", "b"]}), None)
    assert tab.severity == "none" and tab.metrics["skipped"] is True
    assert "not images" in tab.metrics["reason"] and not tab.figures and not tab.headline
    assert {a["id"] for a in tab.atlas} == {"AML.T0041", "AML.T0043"}
    net = zoo.load("digits-cnn").module

    def black_box(xb: Tensor) -> Tensor:
        with torch.no_grad():
            return net(xb).softmax(1)

    bb = PhysicalSection()(_ctx(black_box, digits.x_test[:20], digits.y_test[:20]), None)
    assert bb.metrics["skipped"] is True and "black box" in bb.metrics["reason"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sizes": (0.05, 1.5)}, r"'sizes' must hold numbers in \(0, 1\); got 1.5"),
    ({"sizes": (0.0,)}, r"'sizes' must hold numbers in \(0, 1\); got 0.0"),
    ({"sizes": ()}, "'sizes' must hold at least one value"),
    ({"headline_size": 1.0}, r"'headline_size' must be a number in \(0, 1\); got 1.0"),
    ({"steps": 0}, "'steps' must be an int in .*; got 0. Use a positive integer, e.g. steps=300"),
    ({"draws": 1.5}, "'draws' must be an int"),
    ({"strengths": (-1.0,)}, r"'strengths' must hold numbers in \[0, 4\]; got -1.0"),
    ({"lr": 0.0}, "'lr' must be a number in"),
    ({"universal_eps": -0.1}, "'universal_eps' must be a number in"),
    ({"fpr": 0.7}, "'fpr' must be a number in"),
    ({"fpr": 0.05, "detector_n": 10}, "'detector_n' must be an int in .*needs at least 20 clean images"),
    ({"n": 0}, "'n' must be an int in"),
])
def test_bad_plan_values_raise_one_clear_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        PhysicalPlan(**kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("PhysicalPlan: ")


def test_severity_thresholds() -> None:
    assert physical_severity(0.5) == "high" and physical_severity(0.2) == "medium"
    assert physical_severity(0.19) == "low" and physical_severity(0.0) == "low"
    assert physical_severity(math.nan) == "none"


def test_footprints_are_the_boxes_of_the_changed_pixels() -> None:
    x = torch.zeros(3, 1, 8, 8)
    xp = x.clone()
    xp[0, 0, 2:4, 5:7] = 1.0  # a 2x2 patch
    xp[1, 0, 2:5, 5:7] = 0.5  # 3 rows, 2 columns
    xp[1, 0, 7, 0] = 0.1  # one stray pixel far away widens the box
    assert footprints(x, xp).tolist() == [[2, 2], [6, 7], [0, 0]]  # unchanged: nothing to cover
