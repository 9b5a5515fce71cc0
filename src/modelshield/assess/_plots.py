"""Report figures drawn with matplotlib's object API (Agg canvas, no pyplot state) as base64 PNG."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from modelshield._figures import check_axes_labelled
from modelshield.attacks.results import EvasionResult

__all__ = ["check_axes_labelled", "display_image", "examples_grid", "is_image", "png_base64",
           "robustness_curve"]

_COLORS = ("#1f6feb", "#d1242f", "#2da44e", "#8250df", "#bf8700", "#0a7d8c", "#cf222e", "#57606a")


def png_base64(fig: MplFigure) -> str:
    """Render fig to PNG and return it base64-encoded (ASCII).

    Warns (``UserWarning``, an error under the test suite) for an axis that shows tick labels
    without an axis label: see :func:`check_axes_labelled`.
    """
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    check_axes_labelled(fig, stacklevel=3)  # tick labels are filled in once drawn; 3: png_base64's caller
    return base64.b64encode(buf.getvalue()).decode("ascii")


def is_image(shape: Sequence[int]) -> bool:
    """True for one input of shape (H, W), (1, H, W) or (3, H, W)."""
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def robustness_curve(
    curves: Mapping[str, Sequence[EvasionResult]], *, headline_eps: float, norm: str
) -> str:
    """Line plot of robust accuracy against eps, one line per attack; base64 PNG."""
    fig = MplFigure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    clean = None
    for i, (name, curve) in enumerate(curves.items()):
        eps = [r.eps or 0.0 for r in curve]
        ax.plot(eps, [r.robust_accuracy for r in curve], marker="o", ms=4, lw=1.8,
                color=_COLORS[i % len(_COLORS)], label=name)
        clean = curve[0].clean_accuracy if curve else clean
    if clean is not None:
        ax.axhline(clean, color="#57606a", ls="--", lw=1, label="clean")
    ax.axvline(headline_eps, color="#bf8700", ls=":", lw=1.2, label=f"headline eps={headline_eps:g}")
    ax.set_xlabel(f"eps (L-{'inf' if norm == 'inf' else norm} norm)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return png_base64(fig)


def display_image(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """(H, W) or (H, W, 3) image scaled to [0, 1] for imshow."""
    lo, hi = bounds
    img = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if img.dim() == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    return img


def examples_grid(
    result: EvasionResult,
    x: Tensor,
    *,
    bounds: tuple[float, float],
    classes: Sequence[str] | None = None,
    k: int = 8,
) -> tuple[str, list[int]]:
    """Clean and adversarial examples with their labels; base64 PNG and the row indices shown.

    Successful attacks come first, then other points. Image inputs show clean, adversarial and
    the (rescaled) perturbation; other inputs show a bar chart of the perturbation per feature.
    """
    broken = (result.success & result.eligible).nonzero().flatten().tolist()
    shown = set(broken)
    others = [i for i in range(result.n) if i not in shown]
    idx = [*broken, *others][: k if is_image(x.shape[1:]) else min(k, 4)]

    def name(c: int) -> str:
        return classes[c] if classes is not None and c < len(classes) else str(c)

    if is_image(x.shape[1:]):
        fig = MplFigure(figsize=(1.5 * len(idx), 5.0), layout="constrained")
        axes = fig.subplots(3, len(idx), squeeze=False)
        for j, i in enumerate(idx):
            delta = (result.x_adv[i] - x[i]).detach().float().cpu()
            scale = float(delta.abs().max()) or 1.0
            d_img = delta / (2 * scale) + 0.5
            d_img = d_img[0] if d_img.dim() == 3 and d_img.shape[0] == 1 else d_img
            if d_img.dim() == 3:
                d_img = d_img.permute(1, 2, 0)
            panels = (
                (display_image(x[i], bounds),
                 f"true {name(int(result.y[i]))}\npred {name(int(result.clean_pred[i]))}"),
                (display_image(result.x_adv[i], bounds), f"adv pred {name(int(result.adv_pred[i]))}"),
                (d_img, f"|δ|max {scale:.2g}"),
            )
            for row, (img, title) in enumerate(panels):
                ax = axes[row][j]
                ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1,
                          interpolation="nearest")
                ok = row != 1 or int(result.adv_pred[i]) == int(result.y[i])
                ax.set_title(title, fontsize=8, color="#1f2328" if ok else "#d1242f")
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0][0].set_ylabel("clean", fontsize=9)
        axes[1][0].set_ylabel("adversarial", fontsize=9)
        axes[2][0].set_ylabel("perturbation", fontsize=9)
        return png_base64(fig), idx
    fig = MplFigure(figsize=(6.4, 1.7 * len(idx)), layout="constrained")
    axes = fig.subplots(len(idx), 1, squeeze=False)
    for j, i in enumerate(idx):
        delta = (result.x_adv[i] - x[i]).detach().float().cpu().flatten()
        ax = axes[j][0]
        ax.bar(torch.arange(delta.numel()).numpy(), delta.numpy(), color=_COLORS[0], width=0.8)
        ax.axhline(0, color="#57606a", lw=0.8)
        ax.set_title(
            f"point {i}: true {name(int(result.y[i]))}, clean pred {name(int(result.clean_pred[i]))}, "
            f"adv pred {name(int(result.adv_pred[i]))}", fontsize=8)
        ax.set_ylabel("δ", fontsize=8)
    axes[-1][0].set_xlabel("feature")
    return png_base64(fig), idx
