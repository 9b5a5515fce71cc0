"""Pictures of attributions: image heat-maps, tabular bar charts and highlighted text tokens.

Drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display), so figures are
never registered globally and are freed with their last reference; every PNG has a fixed size
(``figsize x dpi``) and no timestamp, so the same input gives the same bytes. Signed attributions use
one diverging colour map centred on zero (:func:`signed_limit`): red raises the explained class's
score, blue lowers it, white does nothing.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from torch import Tensor

from modelshield._figures import check_axes_labelled
from modelshield._io import write_atomic
from modelshield.errors import InputError

__all__ = [
    "CMAP",
    "DPI",
    "bars_png",
    "heatmap_png",
    "signed_colors",
    "signed_limit",
    "tokens_html",
    "tokens_png",
]

CMAP = "RdBu_r"
"""The diverging colour map of every picture: blue (negative), white (zero), red (positive)."""
DPI = 100
"""Pixels per inch of every PNG (a figure of ``figsize`` inches is ``figsize * DPI`` pixels)."""

_GUIDE = "red raises the score of class {t}, blue lowers it, white: no effect"


def _array(values: Tensor | np.ndarray | Sequence[float], owner: str, name: str) -> np.ndarray:
    arr = (values.detach().cpu().double().numpy() if isinstance(values, Tensor)
           else np.asarray(values, dtype=np.float64))
    if arr.size and not np.isfinite(arr).all():
        raise InputError(f"{owner}: {name} must be finite; got {int((~np.isfinite(arr)).sum())} NaN or "
                         "infinite values. Check the explainer's result before plotting it.")
    return arr


def signed_limit(values: Tensor | np.ndarray | Sequence[float]) -> float:
    """The symmetric colour range ``[-L, L]`` for values: ``L = max |value|`` (1.0 when all are zero)."""
    arr = _array(values, "signed_limit", "values")
    limit = float(np.abs(arr).max()) if arr.size else 0.0
    return limit if limit > 0.0 else 1.0


def _norm(limit: float) -> Normalize:
    return Normalize(vmin=-limit, vmax=limit)


def _cmap() -> Colormap:
    return colormaps[CMAP]


def signed_colors(values: Tensor | np.ndarray | Sequence[float], *, limit: float | None = None) -> np.ndarray:
    """RGBA colours ``(*values.shape, 4)`` in [0, 1] of values on the diverging map centred on zero
    (``limit``: the range's half-width, default :func:`signed_limit`); 0 maps to the map's centre."""
    arr = _array(values, "signed_colors", "values")
    half = signed_limit(arr) if limit is None else float(limit)
    return np.asarray(_cmap()(_norm(half)(arr)), dtype=np.float64)


def _save(fig: Figure, path: str | Path, overwrite: bool) -> Path:
    """Render fig to PNG bytes (no metadata timestamp), write them atomically, release the figure.

    Warns for an axis with tick labels but no axis label (:func:`check_axes_labelled`)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        check_axes_labelled(fig, stacklevel=4)  # once drawn; 4: the caller of heatmap_png etc.
    finally:
        fig.clear()  # drop the artists now rather than at the next garbage collection
    return write_atomic(path, buf.getvalue(), force=overwrite)


def _image_2d(x: np.ndarray, owner: str, name: str) -> np.ndarray:
    """(H, W) or (H, W, 3) from (H, W), (1, H, W) or (3, H, W)."""
    if x.ndim == 2:
        return np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 1:
        return np.asarray(x[0])
    if x.ndim == 3 and x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    raise InputError(f"{owner}: {name} must be one image of shape (H, W), (1, H, W) or (3, H, W); got "
                     f"{tuple(x.shape)}. Use bars_png for tabular rows and tokens_png for text.")


def heatmap_png(
    image: Tensor | np.ndarray,
    attribution: Tensor | np.ndarray,
    path: str | Path,
    *,
    title: str | None = None,
    target: int | str | None = None,
    bounds: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a three-panel PNG: the input, its signed attribution map, and the map over the input.

    Colour channels are summed into one signed map (Captum's ``visualize_image_attr`` ``"all"``);
    the map uses :data:`CMAP` centred on zero with a colour bar, and the caption says how to read it.

    Args:
        image: one input, ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``.
        attribution: its attributions, the same shape.
        path: the PNG to write (``900 x 340`` pixels).
        title: the figure's title (e.g. the method and the prediction).
        target: the explained class, named in the caption.
        bounds: the input range shown black to white (default: the image's own min and max).
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        InputError: shapes that are not one image, differ between image and attribution, or NaN.
    """
    owner = "heatmap_png"
    img = _array(image if isinstance(image, Tensor) else np.asarray(image), owner, "image")
    att = _array(attribution if isinstance(attribution, Tensor) else np.asarray(attribution), owner,
                 "attribution")
    if img.shape != att.shape:
        raise InputError(f"{owner}: attribution must have the image's shape {tuple(img.shape)}; got "
                         f"{tuple(att.shape)}. Pass one row of Attribution.values with its input.")
    shown = _image_2d(img, owner, "image")
    signed = att.sum(0) if att.ndim == 3 else att
    lo, hi = bounds if bounds is not None else (float(img.min()), float(img.max()))
    gray = np.clip((shown - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(shown)
    limit = signed_limit(signed)
    fig = Figure(figsize=(9.0, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    im = axes[1].imshow(signed, cmap=CMAP, norm=_norm(limit), interpolation="nearest")
    axes[1].set_title("attribution", fontsize=9)
    mono = gray.mean(2) if gray.ndim == 3 else gray
    axes[2].imshow(mono, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[2].imshow(signed, cmap=CMAP, norm=_norm(limit), alpha=0.6, interpolation="nearest")
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    bar = fig.colorbar(im, ax=axes.tolist(), shrink=0.85, pad=0.02)
    bar.set_label("attribution", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    guide = _GUIDE.format(t="?" if target is None else target)
    fig.text(0.5, 0.01, f"Reading: {guide}; scale ±{limit:.3g}.", ha="center", va="bottom", fontsize=8)
    return _save(fig, path, overwrite)


def bars_png(
    values: Tensor | np.ndarray | Sequence[float],
    feature_names: Sequence[str] | None,
    path: str | Path,
    *,
    top: int = 15,
    title: str | None = None,
    target: int | str | None = None,
    xlabel: str = "attribution",
    overwrite: bool = False,
) -> Path:
    """Write a horizontal bar chart of the ``top`` features with the largest ``|value|``, signed.

    Bars are coloured by sign on :data:`CMAP` (red positive, blue negative), largest at the top, each
    labelled with its value; the features left out are summed in the caption.

    Args:
        values: ``(D,)`` one row's attributions (or a global importance).
        feature_names: D names, or None for ``feature 0 .. D-1``.
        path: the PNG to write (``800 x 500`` pixels).
        top: how many features to show (>= 1).
        title: the figure's title.
        target: the explained class, named in the caption (None: the caption reads as importance).
        xlabel: the value axis' label.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        InputError: values not one finite row, names of the wrong count, or top < 1.
    """
    owner = "bars_png"
    arr = _array(values, owner, "values")
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{owner}: values must be one non-empty row (D,); got shape {tuple(arr.shape)}. "
                         "Pass Attribution.values[i] of a tabular model.")
    names = ([f"feature {i}" for i in range(arr.size)] if feature_names is None
             else [str(n) for n in feature_names])
    if len(names) != arr.size:
        raise InputError(f"{owner}: feature_names must name the {arr.size} features; got {len(names)}. "
                         "Pass one name per column, or None.")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"{owner}: top must be an int >= 1; got {top!r}. Use e.g. top=15.")
    order = sorted(range(arr.size), key=lambda i: (-abs(float(arr[i])), i))[:top]  # ties: column order
    shown = arr[order]
    limit = signed_limit(shown)
    colors = signed_colors(np.sign(shown) * 0.8 * limit, limit=limit)
    fig = Figure(figsize=(8.0, 5.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ypos = np.arange(len(order))[::-1]
    ax.barh(ypos, shown, color=colors, edgecolor="#57606a", linewidth=0.5)
    ax.set_yticks(ypos, [names[i] for i in order], fontsize=8)
    ax.set_ylabel("feature", fontsize=8)
    ax.axvline(0.0, color="#24292f", lw=0.8)
    ax.set_xlim(-1.25 * limit, 1.25 * limit)
    ax.tick_params(axis="x", labelsize=8)
    for y, v in zip(ypos, shown, strict=True):
        ax.text(float(v), float(y), f" {v:+.3g} ", va="center", ha="left" if v >= 0 else "right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    rest = [i for i in range(arr.size) if i not in set(order)]
    others = float(arr[rest].sum()) if rest else 0.0
    note = f"\n(top {len(order)} by |value|; {len(rest)} other features sum to {others:+.3g})" if rest else ""
    guide = ("red: larger is more important" if target is None
             else "red raises the score of class " f"{target}, blue lowers it")
    ax.set_xlabel(f"{xlabel}\nReading: {guide}.{note}", fontsize=8)
    return _save(fig, path, overwrite)


def _check_tokens(tokens: Sequence[str], values: Tensor | np.ndarray | Sequence[float], owner: str
                  ) -> tuple[list[str], np.ndarray]:
    toks = [str(t) for t in tokens]
    arr = _array(values, owner, "values").reshape(-1)
    if arr.size < len(toks):
        raise InputError(f"{owner}: values must hold one number per token ({len(toks)}); got {arr.size}. "
                         "Pass Attribution.values[i] with Attribution.tokens[i].")
    return toks, arr[: len(toks)]  # a padded row of Attribution.values: the tokens' part


def _hex(rgba: np.ndarray) -> str:
    r, g, b = (round(255 * float(c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def tokens_html(tokens: Sequence[str], values: Tensor | np.ndarray | Sequence[float]) -> str:
    """An HTML fragment (``<p>`` of ``<span>``s): each token (escaped) on a background coloured by its
    attribution on :data:`CMAP` centred on zero, its value in the ``title`` tooltip."""
    toks, arr = _check_tokens(tokens, values, "tokens_html")
    colors = signed_colors(arr) if arr.size else np.zeros((0, 4))
    spans = [
        f'<span style="background:{_hex(c)};padding:0 2px;border-radius:2px" title="{v:+.4g}">'
        f"{html.escape(t)}</span>"
        for t, v, c in zip(toks, arr.tolist(), colors, strict=True)
    ]
    return '<p class="tokens" style="line-height:1.9">' + " ".join(spans) + "</p>"


def tokens_png(
    tokens: Sequence[str],
    values: Tensor | np.ndarray | Sequence[float],
    path: str | Path,
    *,
    title: str | None = None,
    target: int | str | None = None,
    width: float = 8.0,
    overwrite: bool = False,
) -> Path:
    """Write the text as a PNG, each token on a background coloured by its attribution (wrapped lines).

    Args:
        tokens: the tokens, in order (``Attribution.tokens[i]``).
        values: their attributions (``Attribution.values[i]``; padding beyond the tokens is ignored).
        path: the PNG to write (``width`` inches wide at :data:`DPI`; the height grows with the lines).
        title: the figure's title.
        target: the explained class, named in the caption.
        width: the figure's width in inches.
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    toks, arr = _check_tokens(tokens, values, "tokens_png")
    colors = signed_colors(arr) if arr.size else np.zeros((0, 4))
    limit = signed_limit(arr) if arr.size else 1.0
    chars_per_line = max(20, int(width * 11))
    lines: list[list[int]] = [[]]
    used = 0
    for i, t in enumerate(toks):  # wrap by characters: a monospace font makes widths exact
        if lines[-1] and used + len(t) + 1 > chars_per_line:
            lines.append([])
            used = 0
        lines[-1].append(i)
        used += len(t) + 1
    line_h = 0.3
    height = 0.9 + line_h * len(lines)
    fig = Figure(figsize=(width, height), dpi=DPI)
    char_w = 0.085 / width  # monospace 10 pt: ~0.085 in per character, in figure fractions
    top_y = 1.0 - 0.45 / height
    for row, idx in enumerate(lines):
        x = 0.02
        y = top_y - (row + 0.5) * line_h / height
        for i in idx:
            fig.text(x, y, toks[i], family="monospace", fontsize=10, va="center", ha="left",
                     bbox={"facecolor": colors[i][:3].tolist(), "edgecolor": "none", "pad": 1.5})
            x += (len(toks[i]) + 1) * char_w
    if title:
        fig.text(0.02, 1.0 - 0.2 / height, title, fontsize=10, va="center", ha="left", weight="bold")
    guide = _GUIDE.format(t="?" if target is None else target)
    fig.text(0.02, 0.15 / height, f"Reading: {guide}; scale ±{limit:.3g}.", fontsize=8, va="center",
             ha="left")
    return _save(fig, path, overwrite)

