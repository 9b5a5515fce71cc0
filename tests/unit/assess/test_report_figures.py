"""Report figures: every axis with tick labels is labelled, and every figure has a reading guide."""

from __future__ import annotations

import ast
import base64
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure as MplFigure

import modelshield.assess.sections as sections_pkg
from modelshield._figures import check_axes_labelled
from modelshield.assess import Figure, Section
from modelshield.assess._plots import png_base64
from modelshield.assess.sections.blackbox import _budget_figure, _tabular_figure
from modelshield.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _no_warning(fig: MplFigure) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return png_base64(fig)


def _line(fig: MplFigure, *, xlabel: str = "", ylabel: str = "", title: str = "") -> MplFigure:
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def test_png_base64_warns_for_an_axis_with_ticks_but_no_label() -> None:
    with pytest.warns(UserWarning, match=r"report figure curve: axes without a y label"):
        png_base64(_line(MplFigure(), xlabel="eps", title="curve"))
    with pytest.warns(UserWarning, match=r"report figure big title: axes without a x label"):
        fig = _line(MplFigure(), ylabel="accuracy")
        fig.suptitle("big title")
        png_base64(fig)


def test_labelled_axes_and_pictures_without_ticks_pass() -> None:
    assert base64.b64decode(_no_warning(_line(MplFigure(), xlabel="eps", ylabel="accuracy")))[:8] == PNG_MAGIC
    fig = MplFigure()
    axes = fig.subplots(1, 2)
    axes[0].imshow(np.zeros((4, 4)))
    axes[0].axis("off")
    axes[1].imshow(np.ones((4, 4)))
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    _no_warning(fig)
    fig = _line(MplFigure())  # figure-wide labels cover every axes
    fig.supxlabel("eps")
    fig.supylabel("accuracy")
    _no_warning(fig)


def test_one_label_per_grid_column_or_row_is_enough() -> None:
    fig = MplFigure()
    axes = fig.subplots(2, 2)
    for ax in axes.flat:
        ax.plot([0, 1], [0, 1])
    axes[1][0].set_xlabel("x0")
    axes[1][1].set_xlabel("x1")
    axes[0][0].set_ylabel("y0")
    axes[1][0].set_ylabel("y1")
    _no_warning(fig)
    axes[1][1].set_xlabel("")  # column 1 has no x label left
    with pytest.warns(UserWarning, match="axes without a x label"):
        png_base64(fig)


def test_a_twin_axis_and_a_colour_bar_need_their_own_label() -> None:
    fig = _line(MplFigure(), xlabel="queries", ylabel="share")
    twin = fig.axes[0].twinx()
    twin.plot([0, 1, 2], [5, 3, 1])
    with pytest.warns(UserWarning, match="axes without a y label"):
        png_base64(fig)
    twin.set_ylabel("median L2")
    _no_warning(fig)
    fig = MplFigure()
    ax = fig.add_subplot()
    bar = fig.colorbar(ax.imshow(np.arange(16.0).reshape(4, 4)), ax=ax)
    ax.set_axis_off()
    with pytest.warns(UserWarning, match="axes without a y label"):
        png_base64(fig)
    bar.set_label("attribution")
    _no_warning(fig)


def test_check_axes_labelled_points_at_its_caller() -> None:
    fig = _line(MplFigure(), xlabel="eps")
    with pytest.warns(UserWarning) as record:
        png_base64(fig)
    assert Path(record[0].filename).name == Path(__file__).name  # stacklevel: png_base64's caller
    with pytest.warns(UserWarning) as record:
        check_axes_labelled(fig)
    assert Path(record[0].filename).name == Path(__file__).name


def test_blackbox_budget_figure_shows_hopskipjump_success_and_l2() -> None:
    curve = [{"budget": b, "success_rate": r, "robust_accuracy": 0.9 - r} for b, r in ((10, 0.1), (100, 0.4))]
    hsj = [{"budget": b, "median_l2": l2, "success_rate": 1.0, "success_within_eps": w}
           for b, l2, w in ((50, 3.0, 0.2), (200, 1.5, 0.5), (800, None, None))]
    for png in (_budget_figure(curve, hsj, 0.1), _budget_figure([], hsj, 0.1), _budget_figure(curve, [], 0.1),
                _tabular_figure([{"max_changes": 1, "success_rate": 0.5}], {}),
                _tabular_figure([{"max_changes": 1, "success_rate": 0.5}], {"a": 3, "b": 1})):
        assert base64.b64decode(png)[:8] == PNG_MAGIC  # and no warning: every axis is labelled


def test_how_to_read_round_trips_and_is_one_line() -> None:
    fig = Figure(title="t", caption="what is plotted", png_base64="AA==", how_to_read="Lower is worse.")
    sec = Section(id="s", title="S", summary="x", severity="none", figures=(fig,))
    back = Section.from_dict(sec.to_dict())
    assert back.figures[0].how_to_read == "Lower is worse." and back.figures[0] == fig
    old = sec.to_dict()
    del old["figures"][0]["how_to_read"]  # a report written before the field existed
    assert Section.from_dict(old).figures[0].how_to_read == ""
    with pytest.raises(ConfigError, match="how_to_read must be one line"):
        Figure(title="t", caption="c", png_base64="AA==", how_to_read="one\ntwo")


def _figure_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id == "Figure"]


def test_every_built_in_figure_passes_a_reading_guide() -> None:
    """Static, so that it covers branches the section tests do not reach (label-only, skipped parts)."""
    root = Path(sections_pkg.__file__).parent
    calls = {p.name: _figure_calls(p) for p in sorted([*root.glob("*.py"), root.parent / "_plots.py"])}
    assert sum(len(c) for c in calls.values()) >= 20
    for name, found in calls.items():
        for call in found:
            kw = {k.arg: k.value for k in call.keywords}
            assert "how_to_read" in kw, f"{name}:{call.lineno}: Figure(...) without how_to_read="
            value = kw["how_to_read"]
            assert not (isinstance(value, ast.Constant) and not value.value), f"{name}:{call.lineno}: empty"
            strings = [n.value for n in ast.walk(value)
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            assert strings and all("\n" not in s for s in strings), f"{name}:{call.lineno}"
