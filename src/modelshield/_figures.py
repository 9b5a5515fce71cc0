"""Checks on matplotlib figures that every package drawing report pictures shares.

A root module so that both ``modelshield.assess`` (report figures) and ``modelshield.explain``
(attribution pictures) can use it without ``explain`` importing ``assess``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

__all__ = ["check_axes_labelled"]


def _has_tick_labels(axis: Axis) -> bool:
    """True when axis is shown with at least one visible, non-empty tick label (major or minor)."""
    return bool(axis.get_visible()) and any(
        t.get_visible() and t.get_text().strip() for t in axis.get_ticklabels(which="both"))


def _axis(ax: Axes, which: Literal["x", "y"]) -> Axis:
    return ax.xaxis if which == "x" else ax.yaxis


def _label(ax: Axes, which: Literal["x", "y"]) -> str:
    return str(ax.get_xlabel() if which == "x" else ax.get_ylabel()).strip()


def _fig_text(fig: Figure, name: str) -> str:
    """The figure's ``sup{name}`` text ("" when unset), by the public getter where matplotlib has it."""
    getter = getattr(fig, f"get_{name}", None)
    if getter is not None:
        return str(getter()).strip()
    text = getattr(fig, f"_{name}", None)  # matplotlib < 3.8 has no get_supxlabel / get_suptitle
    return str(text.get_text()).strip() if text is not None else ""


def _labelled_neighbour(ax: Axes, axes: list[Axes], which: Literal["x", "y"]) -> bool:
    """True when another axes in ax's grid column (x) or row (y) has that label; a twin in the very
    same cell does not count (its axis has its own scale)."""
    spec = ax.get_subplotspec()
    if spec is None:
        return False
    grid = spec.get_gridspec()
    for other in axes:
        o_spec = other.get_subplotspec() if other is not ax else None
        if o_spec is None or o_spec.get_gridspec() is not grid:
            continue
        if o_spec.rowspan == spec.rowspan and o_spec.colspan == spec.colspan:
            continue
        line, o_line = (spec.colspan, o_spec.colspan) if which == "x" else (spec.rowspan, o_spec.rowspan)
        if set(line) & set(o_line) and _label(other, which):
            return True
    return False


def check_axes_labelled(fig: Figure, *, stacklevel: int = 2) -> None:
    """Warn (``UserWarning``) for each shown axis with tick labels but no axis label.

    Call it after the figure was drawn (e.g. after ``savefig``), when tick labels are filled in. An
    x (y) axis passes without its own label when the figure has a ``supxlabel`` (``supylabel``) or
    another axes in the same grid column (row) has one. Axes that are hidden or turned off
    (``set_axis_off``) and axes without tick labels (images with ``set_xticks([])``) are skipped;
    a colour bar is an axes too and needs its label (``Colorbar.set_label``).

    Args:
        fig: the drawn figure.
        stacklevel: passed to ``warnings.warn`` (2: the caller of this function).
    """
    axes = list(fig.get_axes())
    suptitle = _fig_text(fig, "suptitle")
    for ax in axes:
        if not (ax.get_visible() and ax.axison):
            continue
        for which in ("x", "y"):
            if (not _has_tick_labels(_axis(ax, which)) or _label(ax, which)
                    or _fig_text(fig, f"sup{which}label") or _labelled_neighbour(ax, axes, which)):
                continue
            title = (str(ax.get_title()).strip() or str(ax.get_title("left")).strip() or suptitle
                     or "(untitled)")
            warnings.warn(f"report figure {title}: axes without a {which} label", stacklevel=stacklevel)
