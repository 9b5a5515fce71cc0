"""Plans validate at construction; sections, severities and the plugin registry behave."""

from __future__ import annotations

import pytest

from modelshield.assess import (
    SECTIONS,
    SEVERITY_THRESHOLDS,
    AssessmentContext,
    AssessmentPlan,
    EvasionPlan,
    Section,
    Table,
    atlas,
    evasion_severity,
    max_severity,
    register_section,
)
from modelshield.assess.plan import parse_floats
from modelshield.errors import ConfigError


@pytest.mark.parametrize(
    ("clean", "robust", "expected"),
    [
        (1.0, 1.0, "none"),
        (1.0, 0.90, "none"),  # ratio 0.90 is the lower edge of "none"
        (0.8, 0.70, "low"),  # 0.875
        (1.0, 0.75, "low"),
        (0.8, 0.40, "medium"),  # 0.5
        (1.0, 0.49, "high"),
        (0.5, 0.10, "high"),  # 0.2
        (1.0, 0.19, "critical"),
        (1.0, 0.0, "critical"),
        (0.0, 0.0, "critical"),  # nothing classified correctly
        (float("nan"), float("nan"), "critical"),
    ],
)
def test_evasion_severity_follows_the_documented_ratio_thresholds(clean: float, robust: float,
                                                                  expected: str) -> None:
    assert evasion_severity(clean, robust) == expected


def test_severity_thresholds_are_decreasing() -> None:
    minimums = [m for m, _ in SEVERITY_THRESHOLDS]
    assert minimums == sorted(minimums, reverse=True)


def test_max_severity() -> None:
    assert max_severity(["low", "critical", "none"]) == "critical"
    assert max_severity(["none", "medium", "low"]) == "medium"
    assert max_severity([]) == "none"


def test_evasion_plan_sorts_the_grid_and_adds_the_headline_eps() -> None:
    plan = EvasionPlan(eps=[0.3, 0.0, 0.3], headline_eps=0.1)  # type: ignore[arg-type]
    assert plan.eps == (0.0, 0.1, 0.3)


def test_evasion_plan_rejects_unknown_attack() -> None:
    with pytest.raises(ConfigError, match=r"EvasionPlan: 'attacks' must be one of .*got 'pgdd'"):
        EvasionPlan(attacks=("fgsm", "pgdd"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attacks": ()}, "'attacks' must name at least one"),
        ({"attacks": ("pgd", "pgd")}, "must not repeat"),
        ({"eps": ()}, "'eps' must hold at least one"),
        ({"eps": (0.0, -0.1)}, r"'eps' must be a number in \[0.0, inf\]; got -0.1"),
        ({"headline_eps": float("nan")}, "'headline_eps'"),
        ({"norm": "1"}, "'norm' must be one of 'inf', '2'; got '1'"),
        ({"steps": 0}, "'steps' must be an int"),
        ({"attacks": ("cw",), "norm": "inf"}, "'norm' must be '2' for 'cw'"),
    ],
)
def test_evasion_plan_rejects_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EvasionPlan(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n": 0}, "'n'"), ({"batch_size": 0}, "'batch_size'"), ({"seed": 1.5}, "'seed'"),
     ({"sections": ()}, "'sections'")],
)
def test_assessment_plan_rejects_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AssessmentPlan(**kwargs)  # type: ignore[arg-type]


def test_parse_floats() -> None:
    assert parse_floats("0, 0.05,1e-1", name="--eps", owner="cli") == (0.0, 0.05, 0.1)
    with pytest.raises(ConfigError, match=r"cli: '--eps' must be a comma-separated list.*bad item 'x'"):
        parse_floats("0,x", name="--eps", owner="cli")


def test_section_rejects_unknown_severity() -> None:
    with pytest.raises(ConfigError, match="'severity' must be one of"):
        Section(id="s", title="S", summary="", severity="severe")  # type: ignore[arg-type]


def test_table_rows_must_match_columns() -> None:
    with pytest.raises(ConfigError, match="row 1 must have 2 cells"):
        Table(title="t", columns=("a", "b"), rows=((1, 2), (3,)))


def test_atlas_names_techniques_and_rejects_unknown_ids() -> None:
    assert atlas("AML.T0015") == ({"id": "AML.T0015", "name": "Evade ML Model"},)
    with pytest.raises(ConfigError, match="'atlas id' must be one of"):
        atlas("AML.T9999")


def test_section_to_dict_is_plain_json() -> None:
    s = Section(id="s", title="S", summary="sum", severity="low", atlas=atlas("AML.T0043"),
                findings=["a"], tables=[Table(title="t", columns=("c",), rows=[(1,)])])
    d = s.to_dict()
    assert d["findings"] == ["a"] and d["tables"] == [{"title": "t", "columns": ["c"], "rows": [[1]]}]
    assert d["atlas"] == [{"id": "AML.T0043", "name": "Craft Adversarial Data"}]


class _Dummy:
    id = "dummy-test-section"

    def __call__(self, ctx: AssessmentContext, progress: object) -> Section:
        return Section(id=self.id, title="Dummy", summary="", severity="none")


def test_register_section_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modelshield.assess._section.SECTIONS", dict(SECTIONS))
    from modelshield.assess import _section

    register_section(_Dummy())
    assert "dummy-test-section" in _section.SECTIONS
    with pytest.raises(ConfigError, match="'id' must be unique; got 'dummy-test-section'"):
        register_section(_Dummy())
    register_section(_Dummy(), replace=True)
