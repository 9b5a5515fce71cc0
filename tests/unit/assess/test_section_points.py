"""Section.points: every section names the points its numbers are on, and a subset says why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modelshield.assess.sections as sections_pkg
from modelshield.assess import Section, points_line, render_html
from modelshield.errors import ConfigError


def test_points_line_names_all_points_or_the_subset_and_its_reason() -> None:
    assert points_line(300, 300) == "all 300 assessment points"
    assert points_line(400, 300) == "all 300 assessment points"
    line = points_line(100, 300, why="queries cost")
    assert line == "the first 100 of the 300 assessment points: queries cost"
    with pytest.raises(ConfigError, match="needs a reason"):
        points_line(100, 300)
    with pytest.raises(ConfigError, match="needs a reason"):
        points_line(100, 300, why="  ")


def test_points_round_trip_and_show_under_the_summary() -> None:
    s = Section(id="x", title="X", summary="Sum.", severity="low", points=points_line(5, 9, why="cost"))
    back = Section.from_dict(s.to_dict())
    assert back.points == s.points
    assert Section.from_dict({k: v for k, v in s.to_dict().items() if k != "points"}).points == ""
    report = {"model": {"name": "m"}, "data": {"name": "d"}, "summary": {"severity": "low", "n": 9,
              "metrics": {}, "risks": []}, "generated_at": "now", "schema_version": 1,
              "provenance": {"packages": {"modelshield": "0"}, "model": {"name": "m", "path": None},
                             "data": {"name": "d", "n": 9, "points_sha256": None}, "seed": 0,
                             "platform": "p", "model_weights_sha256": None, "data_sha256": None,
                             "attacks": {}},
              "sections": [s.to_dict()]}
    html = render_html(report)
    assert "<b>Evaluated on</b> the first 5 of the 9 assessment points: cost." in html


def test_every_built_in_section_result_states_its_points() -> None:
    """Each ``Section(...)`` built in the section modules (skipped sections aside) passes points=."""
    folder = Path(sections_pkg.__file__).parent
    missing = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Section":
                keywords = {k.arg: k.value for k in node.keywords}
                summary = ast.unparse(keywords["summary"]) if "summary" in keywords else ""
                if "points" not in keywords and not summary.startswith("f'Skipped: "):
                    missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"Section(...) without points=: {missing}"
