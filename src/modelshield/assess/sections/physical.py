"""The "physical" report section: printable adversarial patches and universal perturbations against
an image model, and what PatchCleanser and the masking-consistency detector do against them.

An attacker who can put something in front of the camera (MITRE ATLAS AML.T0041, Physical
Environment Access) prints one pattern that works on any input, wherever it lands. The section
trains an untargeted ``AdversarialPatch`` (Brown et al., 2017; expectation over transformation)
per size of ``ctx.plan.physical`` on the attacker's training images (the model's training split:
the user's, or the built-in data set's) and tests each on held-out assessment points under freshly
drawn placements, rotations, scales and lighting, re-verified on the model. The headline-size
patch is re-tested under stronger transformations, against PatchCleanser (double masking,
certified against any patch of that size; Xiang et al., 2022) and against the masking-consistency
detector calibrated on clean training images. A universal perturbation (Moosavi-Dezfooli et al.,
2017; SGD variant of Shafahi et al.) at the evasion plan's headline eps gives the digital
counterpart. Severity comes from the held-out success of the headline patch
(``PHYSICAL_SEVERITY_THRESHOLDS``).

References: T. Brown et al., "Adversarial Patch", 2017 (arXiv:1712.09665); A. Athalye et al.,
"Synthesizing Robust Adversarial Examples", ICML 2018; C. Xiang, S. Mahloujifar and P. Mittal,
"PatchCleanser", USENIX Security 2022; S. Moosavi-Dezfooli et al., "Universal adversarial
perturbations", CVPR 2017.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from modelshield._typing import Norm
from modelshield.assess._plots import display_image, is_image, png_base64
from modelshield.assess._section import (
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    is_text_model,
    json_float,
    points_line,
    skipped_section,
)
from modelshield.assess.plan import PhysicalPlan
from modelshield.attacks.physical import (
    EVAL_SEED,
    AdversarialPatch,
    PhysicalEvaluation,
    PhysicalPattern,
    UniversalPerturbation,
    evaluate_pattern,
    size_curve,
    strength_curve,
)
from modelshield.defenses.certification import MaskingConsistencyDetector, PatchCleanser
from modelshield.errors import MissingDataError
from modelshield.models import TorchModel

__all__ = ["PHYSICAL_SEVERITY_THRESHOLDS", "PhysicalSection", "examples_figure", "footprints",
           "physical_severity", "size_figure", "strength_figure"]

TITLE = "Physical-world evasion (adversarial patches)"

PHYSICAL_SEVERITY_THRESHOLDS: tuple[tuple[float, Severity], ...] = (
    (0.5, "high"),
    (0.2, "medium"),
    (0.0, "low"),
)
"""``(minimum success rate, severity)`` pairs, checked in order, on the held-out success of the
untargeted patch of the plan's ``headline_size`` (5% of the image by default):

==============  ========
success rate    severity
==============  ========
>= 0.5          high
[0.2, 0.5)      medium
< 0.2           low
no eligible     none
==============  ========

Never ``"none"`` when measured: one printed sticker that fools even a few views is a working
attack on an undefended model (no patch defence is certified unless PatchCleanser is deployed).
For scale: on mnist-cnn a 5% patch reaches about 15% held-out success (low) and a 10% patch
about 28% (300 steps).
"""

_RECOMMENDATION = (
    "Put PatchCleanser (double masking; modelshield.defenses.certification.PatchCleanser) around the "
    "classifier: it works with any model and certifies, per input, that no patch of the given size "
    "anywhere changes its label; size its patch to the largest sticker you must withstand (after "
    "rotation and scale). Raise the certified share by fine-tuning the model on masked inputs first "
    "(masked_training with the same PatchCleanser: the paper's base model) or other patch-augmented "
    "training (Cutout, adversarial-patch training). Put the "
    "masking-consistency detector (MaskingConsistencyDetector) in front of the model to flag and log "
    "inputs whose label flips under masking, knowing an adaptive attacker can evade it. Check inputs "
    "before they reach the model: camera placement and framing that keep stickers out of view, "
    "saturation and out-of-distribution checks on high-contrast blobs, and several views or frames per "
    "decision."
)

_ATLAS = ("AML.T0041", "AML.T0043")


def physical_severity(success_rate: float) -> Severity:
    """Severity from the headline patch's held-out success rate (``PHYSICAL_SEVERITY_THRESHOLDS``);
    nan (no correctly classified held-out view) gives ``"none"``."""
    if math.isnan(success_rate):
        return "none"
    for minimum, severity in PHYSICAL_SEVERITY_THRESHOLDS:
        if success_rate >= minimum:
            return severity
    return "low"


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def _rate(mask: Tensor, among: Tensor | None = None) -> float:
    """Share of True in mask (restricted to ``among``); nan when empty."""
    sel = mask if among is None else mask[among]
    return float(sel.double().mean()) if sel.numel() else math.nan


# --------------------------------------------------------------------------------------------
# Figures


def size_figure(rows: Sequence[dict[str, Any]], *, headline: float) -> str:
    """Held-out (and training) success against the patch's share of the image; base64 PNG."""
    fig = MplFigure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    share = [100 * float(r["share"]) for r in rows]
    held = [float("nan") if r["success_rate"] is None else r["success_rate"] for r in rows]
    train = [float("nan") if r["train_success"] is None else r["train_success"] for r in rows]
    ax.plot(share, held, marker="o", ms=5, lw=1.8, color="#d1242f", label="held-out, fresh conditions")
    ax.plot(share, train, marker="s", ms=4, lw=1.2, ls="--", color="#57606a",
            label="training images (attacker's estimate)")
    labelled: set[int] = set()
    for x, y, r in zip(share, held, rows, strict=True):
        if not math.isnan(y) and r["side"] not in labelled:  # sizes that round to one side share a label
            labelled.add(r["side"])
            ax.annotate(f"{r['side']}x{r['side']} px", (x, y), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=7, color="#57606a")
    ax.margins(x=0.08)
    head = [100 * float(r["share"]) for r in rows if r["size"] == headline]
    if head:
        ax.axvline(head[0], color="#bf8700", ls=":", lw=1.2, label=f"headline size {headline:g}")
    ax.set_xlabel("patch area (% of the image)")
    ax.set_ylabel("success rate (untargeted)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return png_base64(fig)


def strength_figure(rows: Sequence[dict[str, Any]]) -> str:
    """Held-out success of one patch against the strength of the transformations; base64 PNG."""
    fig = MplFigure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    s = [float(r["strength"]) for r in rows]
    ax.plot(s, [float("nan") if r["success_rate"] is None else r["success_rate"] for r in rows],
            marker="o", ms=5, lw=1.8, color="#d1242f", label="success rate")
    ax.plot(s, [float("nan") if r["fooling_rate"] is None else r["fooling_rate"] for r in rows],
            marker="^", ms=4, lw=1.2, ls="--", color="#1f6feb", label="fooling rate (label changed)")
    ax.axvline(1.0, color="#bf8700", ls=":", lw=1.2, label="trained-for conditions")
    ax.set_xlabel("transformation strength (x the patch's own rotation, scale, light, noise ranges)")
    ax.set_ylabel("rate on held-out views")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return png_base64(fig)


def examples_figure(
    x: Tensor, x_patched: Tensor, y: Tensor, clean_pred: Tensor, patched_pred: Tensor, patch: Tensor, *,
    bounds: tuple[float, float], classes: Sequence[str] | None = None, k: int = 6,
) -> tuple[str, list[int]]:
    """The patch, then held-out images clean (top) and patched (bottom) with the model's answers;
    base64 PNG and the rows shown (patches that fool the model first)."""
    fooled = ((clean_pred == y) & (patched_pred != y)).cpu()
    order = [*fooled.nonzero().flatten().tolist(), *(~fooled).nonzero().flatten().tolist()]
    idx = order[:k]

    def name(c: int) -> str:
        return classes[c] if classes is not None and 0 <= c < len(classes) else str(c)

    fig = MplFigure(figsize=(1.5 * (len(idx) + 1), 3.6), layout="constrained")
    axes = fig.subplots(2, len(idx) + 1, squeeze=False)
    for ax in axes.flatten():
        ax.set_xticks([])
        ax.set_yticks([])
    patch_img = display_image(patch, bounds)
    axes[0][0].imshow(patch_img.numpy(), cmap="gray" if patch_img.dim() == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
    axes[0][0].set_title(f"the patch\n{patch.shape[-2]}x{patch.shape[-1]} px", fontsize=8)
    axes[1][0].axis("off")
    for j, i in enumerate(idx, start=1):
        for row, (img, title, bad) in enumerate((
            (display_image(x[i], bounds), f"true {name(int(y[i]))}\npred {name(int(clean_pred[i]))}",
             int(clean_pred[i]) != int(y[i])),
            (display_image(x_patched[i], bounds), f"patched: {name(int(patched_pred[i]))}",
             int(patched_pred[i]) != int(y[i])),
        )):
            ax = axes[row][j]
            ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=8, color="#d1242f" if bad else "#1f2328")
    axes[0][1].set_ylabel("clean", fontsize=9)
    axes[1][1].set_ylabel("patched", fontsize=9)
    return png_base64(fig), idx


# --------------------------------------------------------------------------------------------
# The attacker's images


@dataclass(frozen=True, slots=True)
class _Data:
    """Training images the attacker optimises on, and the held-out points everything is tested on."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    source: dict[str, Any]


def _attacker_data(ctx: AssessmentContext, plan: PhysicalPlan, warnings: list[str]) -> _Data:
    """The training split that fits the model (the user's, else the built-in data set's), sampled to
    ``plan.train_n`` with a generator seeded by ``ctx.seed``; the first ``plan.n`` assessment points
    held out. Without a training split, the first half of the assessment points trains and the
    second half is held out (with a warning)."""
    from modelshield.data import DATASETS, load_dataset

    shape = tuple(ctx.x.shape[1:])
    lo, hi = ctx.bounds
    name = str(ctx.data_info.get("name"))
    x_tr: Tensor | None = None
    y_tr: Tensor | None = None
    source: dict[str, Any] = {}
    if ctx.train is not None and isinstance(ctx.train[0], Tensor) and tuple(ctx.train[0].shape[1:]) == shape:
        x_tr, y_tr = ctx.train[0], torch.as_tensor(ctx.train[1]).long()
        source = {"kind": "train-split", "name": f"{name} training split (the user's)"}
    elif ctx.data_info.get("format") in (None, "builtin") and name in DATASETS:
        try:
            ds = load_dataset(name)
        except MissingDataError as exc:
            why = " ".join(str(exc).split()[:12])
            warnings.append(f"The {name} training split is not available ({why}...); the patches were "
                            "trained on the first half of the assessment points instead.")
        else:
            if tuple(ds.x_train.shape[1:]) == shape:
                x_tr, y_tr = ds.x_train, ds.y_train
                source = {"kind": "train-split", "name": f"{name} training split", "sha256": ds.sha256}
    x_te, y_te = ctx.x, ctx.y
    if x_tr is None or y_tr is None or x_tr.shape[0] == 0:
        half = int(ctx.x.shape[0]) // 2
        x_tr, y_tr, x_te, y_te = ctx.x[:half], ctx.y[:half], ctx.x[half:], ctx.y[half:]
        source = {"kind": "assessment-points", "name": "the first half of the assessment points"}
        if not warnings:
            warnings.append("No training split fits this model, so the patches were trained on the first "
                            "half of the assessment points and tested on the second half (an attacker with "
                            "test-distribution images); pass the model's data file so its training split is "
                            "used.")
    gen = torch.Generator().manual_seed(ctx.seed)
    order = torch.randperm(int(x_tr.shape[0]), generator=gen)
    if plan.train_n is not None:
        order = order[: plan.train_n]
    x_tr = x_tr[order].detach().float().clamp(lo, hi).to(ctx.x.device)
    y_tr = y_tr[order].to(ctx.x.device)
    if plan.n is not None:
        x_te, y_te = x_te[: plan.n], y_te[: plan.n]
    source.update({"train_rows": int(x_tr.shape[0]), "test_rows": int(x_te.shape[0]),
                   "sample_seed": ctx.seed})
    return _Data(x_tr, y_tr, x_te, y_te, source)


def _points(data: _Data, total: int, *, certified: int) -> str:
    """``Section.points``: the held-out images the patches are tested on, what trained them, and the
    subset PatchCleanser and the detector run on."""
    test = int(data.x_test.shape[0])
    defence = (f"; PatchCleanser and the masking detector on the first {certified} of them (each image "
               "costs a forward pass per mask pair)" if certified < test else "")
    if data.source.get("kind") == "assessment-points":
        return (f"the second half of the {total} assessment points ({test} held-out images; the first "
                f"half trained the patches, as no training split fits this model){defence}")
    held = points_line(test, total, why="set PhysicalPlan.n to test the patches on more of them")
    return (f"{held} as held-out images (the patches were trained on {data.source['train_rows']} images "
            f"of the {data.source['name']}){defence}")


def footprints(x: Tensor, x_patched: Tensor) -> Tensor:
    """(N, 2) int64 height and width of the bounding box of the pixels the patch changed in each image
    of x (N, C, H, W); (0, 0) when nothing changed. A view whose box fits in a PatchCleanser patch is
    one its certificate for that patch size covers."""
    changed = (x_patched != x).any(1)  # (N, H, W): any channel changed

    def extent(m: Tensor) -> Tensor:
        idx = torch.arange(m.shape[1], device=m.device).expand_as(m)
        first = torch.where(m, idx, m.shape[1]).min(1).values
        last = torch.where(m, idx, -1).max(1).values
        return (last - first + 1).clamp_min(0)

    return torch.stack([extent(changed.any(2)), extent(changed.any(1))], 1)


# --------------------------------------------------------------------------------------------
# The section


@dataclass(frozen=True, kw_only=True, slots=True)
class PhysicalSection:
    """Section runner ``"physical"``: adversarial patches, a universal perturbation, PatchCleanser and
    the masking-consistency detector (MITRE ATLAS AML.T0041 and AML.T0043).

    Opt-in (``AssessmentPlan(sections=(..., "physical"))``, ``modelshield assess --sections
    ...,physical``): it trains one patch per size. Settings live in ``ctx.plan.physical``
    (``PhysicalPlan``). White-box torch image models only; other models get a section saying why
    it was skipped. Every number is seeded (``ctx.seed`` for the attacks and the training sample,
    ``EVAL_SEED + ctx.seed`` for the test conditions): a rerun gives the same report numbers.

    Cost with the defaults (3 patches x 300 steps, 500 held-out points, 100 certified), measured on
    two shared CPU cores: about 10 s on digits-cnn (one torch thread) and 5 min on mnist-cnn (two
    threads): about 3 min training the patches, 45 s for PatchCleanser's 100 x 666 masked passes,
    35 s for the universal perturbation, the rest testing on held-out views.
    """

    id: str = "physical"

    def skip_reason(self, ctx: AssessmentContext) -> str | None:
        """Why the section cannot run on the context's model, or None when it can."""
        shape = tuple(ctx.x.shape[1:])
        if is_text_model(ctx) or ctx.x.dim() != 4 or not is_image(shape):
            return (f"the inputs have shape {shape}, not images (C, H, W); a printed patch is a threat to "
                    "image models only.")
        if not isinstance(ctx.model, TorchModel):
            return ("the model is a black box (outputs only); training a patch needs gradients with respect "
                    "to the input, so only white-box torch image classifiers are assessed.")
        if int(ctx.x.shape[0]) < 2:
            return f"only {int(ctx.x.shape[0])} assessment point; the patches need held-out points."
        return None

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        why = self.skip_reason(ctx)
        if why is not None:
            if progress is not None:
                progress(1, 1, "physical: skipped")
            return dataclasses.replace(skipped_section(self.id, TITLE, why), atlas=atlas(*_ATLAS))
        plan: PhysicalPlan = getattr(ctx.plan, "physical", None) or PhysicalPlan()
        return _Run(ctx, plan, progress).section(self.id)


class _Run:
    """One run of the section on a white-box image model (holds the context while parts are built)."""

    def __init__(self, ctx: AssessmentContext, plan: PhysicalPlan, progress: Progress | None) -> None:
        assert isinstance(ctx.model, TorchModel)  # checked by PhysicalSection.skip_reason
        self.ctx, self.plan, self.progress = ctx, plan, progress
        self.model: TorchModel = ctx.model
        names = ctx.data_info.get("classes")
        self.classes: list[str] | None = [str(c) for c in names] if names else None
        self.findings: list[str] = []
        self.warnings: list[str] = []
        self.figures: list[Figure] = []
        self.tables: list[Table] = []
        self.eval_seed = EVAL_SEED + ctx.seed
        self.total = len(plan.sizes) + 4
        self.universal_params: dict[str, Any] | None = None
        self.started = time.perf_counter()

    def tick(self, done: int, text: str) -> None:
        if self.progress is not None:
            self.progress(done, self.total, f"physical: {text}")

    def section(self, section_id: str) -> Section:
        ctx, plan = self.ctx, self.plan
        data = _attacker_data(ctx, plan, self.warnings)
        self.tick(0, f"{len(plan.sizes)} patches on {data.source['train_rows']} training images")
        attack = AdversarialPatch(size=plan.headline_size, steps=plan.steps, batch_size=plan.batch_size,
                                  lr=plan.lr, seed=ctx.seed)

        def sizes_progress(done: int, total: int, text: str) -> None:
            self.tick(done, text)

        curve = size_curve(self.model, attack, data.x_train, data.y_train, data.x_test, data.y_test,
                           sizes=plan.sizes, draws=plan.draws, seed=self.eval_seed, progress=sizes_progress)
        head_i = plan.sizes.index(plan.headline_size)
        head_patch, head_eval = curve[head_i]
        sizes = self.sizes_part(curve, data)
        strengths = self.strength_part(head_patch, data)
        self.tick(len(plan.sizes) + 1, "universal perturbation")
        universal = self.universal_part(data)
        self.tick(len(plan.sizes) + 2, "PatchCleanser")
        defence, cert_acc, defended_acc, detector_tpr = self.defence_part(head_patch, data)
        self.tick(len(plan.sizes) + 4, "done")

        success = head_eval.success_rate
        severity = physical_severity(success)
        side = int(head_patch.pattern.shape[-1])
        headline: dict[str, float | None] = {
            "physical_patch_success_rate": json_float(success),
            "physical_universal_fooling_rate": None if universal is None else universal["fooling_rate"],
            "physical_certified_accuracy": json_float(cert_acc),
            "physical_defended_accuracy": json_float(defended_acc),
            "physical_detection_rate": json_float(detector_tpr),
        }
        clean = head_eval.evasion.clean_accuracy
        self.findings.insert(0, (
            f"An untargeted adversarial patch of {head_patch.share:.1%} of the image ({side}x{side} pixels), "
            f"trained for {plan.steps} steps on {data.source['train_rows']} images of "
            f"{data.source['name']}, fools the model on {_pct(success)} of {head_eval.n_eligible} correctly "
            f"classified held-out views ({int(data.x_test.shape[0])} images x {head_eval.draws} fresh "
            f"placements, rotations, scales and lighting; every answer re-queried): accuracy falls from "
            f"{_pct(clean)} to {_pct(head_eval.evasion.robust_accuracy)}."))
        if head_eval.n_eligible < 30:
            self.warnings.append(f"Only {head_eval.n_eligible} correctly classified held-out views: the "
                                 "success rate is a rough estimate; raise the plan's n.")
        metrics: dict[str, Any] = {
            **headline,
            "headline_size": plan.headline_size,
            "patch_share": json_float(head_patch.share),
            "patch_pixels": [side, side],
            "clean_accuracy": json_float(clean),
            "accuracy_with_patch": json_float(head_eval.evasion.robust_accuracy),
            "eligible_views": head_eval.n_eligible,
            "sizes": sizes,
            "strengths": strengths,
            "universal": universal,
            "defences": defence,
            "data": dict(data.source),
            "time_s": round(time.perf_counter() - self.started, 3),
        }
        summary = (f"A {head_patch.share:.1%} adversarial patch fools {_pct(success)} of held-out views; "
                   f"PatchCleanser certifies {_pct(cert_acc)} and keeps {_pct(defended_acc)} correct under "
                   f"the patch; the masking detector flags {_pct(detector_tpr)} of patched views.")
        attacks: dict[str, Any] = {"AdversarialPatch": {**{k: v for k, v in head_patch.params.items()
                                                           if k != "size"}, "sizes": list(plan.sizes)}}
        if self.universal_params is not None:
            attacks["UniversalPerturbation"] = self.universal_params
        return Section(
            id=section_id, title=TITLE, summary=summary, severity=severity, atlas=atlas(*_ATLAS),
            recommendation=_RECOMMENDATION, metrics=metrics, headline=headline, findings=tuple(self.findings),
            figures=tuple(self.figures), tables=tuple(self.tables), warnings=tuple(self.warnings),
            provenance={"plan": plan.to_dict(), "attacks": attacks, "data": dict(data.source),
                        "eval_seed": self.eval_seed,
                        "transforms": head_patch.transforms.to_dict()},
            points=_points(data, int(ctx.x.shape[0]), certified=defence["points"]),
        )

    # -- parts ---------------------------------------------------------------------------------

    def sizes_part(self, curve: Sequence[tuple[PhysicalPattern, PhysicalEvaluation]],
                   data: _Data) -> list[dict[str, Any]]:
        plan = self.plan
        rows: list[dict[str, Any]] = []
        for size, (patch, ev) in zip(plan.sizes, curve, strict=True):
            rows.append({
                "size": size, "share": json_float(patch.share), "side": int(patch.pattern.shape[-1]),
                "success_rate": json_float(ev.success_rate), "fooling_rate": json_float(ev.fooling_rate),
                "accuracy_with_patch": json_float(ev.evasion.robust_accuracy),
                "train_success": json_float(patch.train_success), "eligible": ev.n_eligible,
                "views": ev.evasion.n, "queries_forward": patch.queries_forward,
                "queries_backward": patch.queries_backward, "time_s": round(patch.time_s, 3),
            })
        h, w = int(data.x_test.shape[2]), int(data.x_test.shape[3])
        by_side: dict[int, list[float]] = {}
        for r in rows:
            by_side.setdefault(r["side"], []).append(r["size"])
        for side, same in by_side.items():
            if len(same) > 1:
                listed = ", ".join(f"{s:g}" for s in same[:-1]) + f" and {same[-1]:g}"
                self.findings.append(
                    f"Sizes {listed} round to the same {side}x{side}-pixel patch on these {h}x{w} images "
                    "(patch_side: the smallest square covering the share), so their numbers are the same.")
        self.findings.append("Held-out success by patch size: " + "; ".join(
            f"{r['size']:g} ({r['side']}x{r['side']} px, {100 * (r['share'] or 0):.1f}% of the image): "
            f"{_pct(r['success_rate'])}" for r in rows) + ".")
        self.figures.append(Figure(
            title="Adversarial patch success against patch size",
            caption=(f"Untargeted patches trained on the attacker's images ({plan.steps} steps each), "
                     f"tested on held-out points under {plan.draws} freshly drawn placements and conditions "
                     "per image (solid) and, as the attacker would estimate it, on training images "
                     "(dashed)."),
            how_to_read=("Higher is worse: the solid red line is the share of held-out views a patch of "
                         "that size fools; where the dashed line sits above it, the attacker's own "
                         "estimate is too optimistic."),
            png_base64=size_figure(rows, headline=plan.headline_size)))
        self.tables.append(Table(
            title="Adversarial patches by size (held-out, fresh conditions)",
            columns=("size (share of image)", "patch (pixels)", "success rate", "fooling rate",
                     "accuracy with patch", "training success rate", "eligible views"),
            rows=tuple((r["size"], f"{r['side']}x{r['side']}", r["success_rate"], r["fooling_rate"],
                        r["accuracy_with_patch"], r["train_success"], r["eligible"]) for r in rows)))
        return rows

    def strength_part(self, patch: PhysicalPattern, data: _Data) -> list[dict[str, Any]]:
        plan = self.plan
        self.tick(len(plan.sizes), "stronger transformations")
        curve = strength_curve(self.model, patch, data.x_test, data.y_test, strengths=plan.strengths,
                               draws=plan.draws, seed=self.eval_seed)
        rows = [{"strength": ev.strength, "success_rate": json_float(ev.success_rate),
                 "fooling_rate": json_float(ev.fooling_rate),
                 "accuracy_with_patch": json_float(ev.evasion.robust_accuracy), "eligible": ev.n_eligible}
                for ev in curve]
        top, bottom = rows[-1], rows[0]
        self.findings.append(
            f"Under transformations {top['strength']:g}x the ranges the patch was trained for, it fools "
            f"{_pct(top['success_rate'])} of held-out views ({_pct(bottom['success_rate'])} at strength "
            f"{bottom['strength']:g}).")
        self.figures.append(Figure(
            title=f"Headline patch ({plan.headline_size:g} of the image) under stronger transformations",
            caption=("Success (eligible views fooled) and fooling rate (label changed) when rotation, "
                     "scale, lighting and noise ranges are multiplied by the strength; 1 is what the patch "
                     "was trained for, 0 a digital patch at a random place."),
            how_to_read=("Higher is worse: lines that stay high right of the dotted line at 1 mean the patch "
                         "survives harsher real-world conditions than it was trained for; a steep drop "
                         "means it is fragile."),
            png_base64=strength_figure(rows)))
        self.tables.append(Table(
            title="Headline patch against transformation strength",
            columns=("strength", "success rate", "fooling rate", "accuracy with patch", "eligible views"),
            rows=tuple((r["strength"], r["success_rate"], r["fooling_rate"], r["accuracy_with_patch"],
                        r["eligible"]) for r in rows)))
        return rows

    def universal_part(self, data: _Data) -> dict[str, Any] | None:
        plan, ctx = self.plan, self.ctx
        evasion = getattr(ctx.plan, "evasion", None)
        eps = plan.universal_eps if plan.universal_eps is not None else getattr(evasion, "headline_eps", None)
        norm: Norm = getattr(evasion, "norm", "inf")
        if eps is None or not eps > 0:
            self.findings.append("No universal perturbation was trained: the plan has no headline eps above "
                                 "0 (set the evasion plan's headline_eps or PhysicalPlan.universal_eps).")
            return None
        uap = UniversalPerturbation(eps=float(eps), norm=norm, max_passes=plan.universal_passes,
                                    batch_size=plan.batch_size, seed=ctx.seed)(self.model, data.x_train,
                                                                              data.y_train)
        ev = evaluate_pattern(self.model, uap, data.x_test, data.y_test, seed=self.eval_seed)
        out = {"eps": float(eps), "norm": norm, "fooling_rate": json_float(ev.fooling_rate),
               "success_rate": json_float(ev.success_rate),
               "accuracy_with_perturbation": json_float(ev.evasion.robust_accuracy),
               "train_fooling_rate": json_float(uap.train_success), "passes": uap.steps,
               "eligible": ev.n_eligible, "time_s": round(uap.time_s, 3)}
        self.universal_params = uap.params
        where = ("the evasion plan's headline budget" if plan.universal_eps is None
                 else "the plan's universal_eps")
        self.findings.append(
            f"One universal perturbation (L-{norm} eps={float(eps):g}, {where}; SGD, {uap.steps} passes over "
            f"the training images) changes the label of {_pct(ev.fooling_rate)} of held-out images and fools "
            f"{_pct(ev.success_rate)} of the correctly classified ones: a single digital overlay (e.g. a "
            "transparent film on the lens) needs no per-input optimisation.")
        return out

    def defence_part(self, patch: PhysicalPattern, data: _Data) -> tuple[dict[str, Any], float, float, float]:
        """PatchCleanser (certified, clean and defended accuracy) and the masking-consistency detector
        on the first ``certify_n`` held-out points, against one patched view of each."""
        plan, ctx = self.plan, self.ctx
        k = min(plan.certify_n, int(data.x_test.shape[0]))
        x_c, y_c = data.x_test[:k], data.y_test[:k]
        pc = PatchCleanser(patch_size=plan.headline_size, masks_per_axis=plan.masks_per_axis,
                           batch_size=max(ctx.batch_size, 64))
        cert = pc.certify(self.model, x_c, y_c)
        views = evaluate_pattern(self.model, patch, x_c, y_c, draws=1, seed=self.eval_seed + 1)
        x_p = views.evasion.x_adv
        defended = pc.predict(self.model, x_p)
        defended_ok = defended.labels == cert.y
        defended_acc = _rate(defended_ok)
        ph, pw = cert.patch
        boxes = footprints(x_c, x_p)
        fits = (boxes[:, 0] <= ph) & (boxes[:, 1] <= pw)
        violations = int((cert.certified & fits & ~defended_ok).sum())
        # the square side that would cover 95% of the views (what to certify instead)
        cover = int(torch.quantile(boxes.max(1).values.double().cpu(), 0.95, interpolation="higher"))
        self.tick(len(plan.sizes) + 3, "masking-consistency detector")
        n_cal = min(plan.detector_n, int(data.x_train.shape[0]))
        det = MaskingConsistencyDetector(patch_size=plan.headline_size, masks_per_axis=plan.masks_per_axis,
                                         fpr=plan.fpr, batch_size=max(ctx.batch_size, 64))
        det.fit(self.model, data.x_train[:n_cal])
        res = det.evaluate(self.model, x_c, x_p)
        fooled = views.evasion.success & views.evasion.eligible
        tpr_fooled = _rate(res.patched_scores.cpu() > res.threshold, fooled.cpu())
        undefended = views.evasion.robust_accuracy
        self.findings.append(
            f"PatchCleanser ({cert.n_masks} masks of {cert.mask_size[0]}x{cert.mask_size[1]} pixels, "
            f"{plan.masks_per_axis} per axis) certifies {_pct(cert.certified_accuracy)} of {k} held-out "
            f"points against any {ph}x{pw}-pixel patch anywhere (a guarantee, whatever the patch holds); its "
            f"accuracy is {_pct(cert.accuracy)} on clean inputs (undefended {_pct(cert.clean_accuracy)}) and "
            f"{_pct(defended_acc)} under the trained patch (undefended {_pct(undefended)}).")
        self.findings.append(
            f"{_pct(_rate(fits))} of the patched views change pixels within one {ph}x{pw} window only; "
            "rotation, scale and edge blending spread the others beyond the certified size, where the "
            f"certificate does not apply; certifying a {cover}x{cover}-pixel patch would cover 95% of them.")
        if defended_acc < undefended:
            self.findings.append(
                f"Here PatchCleanser costs more accuracy than the patch does ({_pct(defended_acc)} defended "
                f"against {_pct(undefended)} undefended under the patch): its masks hide too much of these "
                "images for this model. Fine-tune it on masked inputs first (modelshield.defenses."
                "certification.masked_training with the same PatchCleanser).")
        if violations:
            self.warnings.append(
                f"{violations} certified point(s) whose patch lies within the certified size got a wrong "
                "defended label: the certificate was violated, which points to a bug; report it with this "
                "file.")
        if n_cal < plan.detector_n:
            self.warnings.append(f"The detector was calibrated on {n_cal} clean training images, fewer than "
                                 f"the plan's {plan.detector_n}.")
        self.findings.append(
            f"The masking-consistency detector, calibrated on {n_cal} clean training images for "
            f"{plan.fpr:.0%} false positives, flags {_pct(res.tpr)} of the patched held-out views "
            f"({_pct(tpr_fooled)} of those that fool the model) and {_pct(res.fpr)} of the clean ones (AUROC "
            f"{res.auroc:.3f}); an attacker who knows it can train patches that survive masking.")
        figure, shown = examples_figure(x_c, x_p, y_c, views.evasion.clean_pred, views.evasion.adv_pred,
                                        patch.pattern, bounds=ctx.bounds, classes=self.classes,
                                        k=plan.examples)
        self.figures.append(Figure(
            title=f"Held-out images with the {patch.share:.1%} patch",
            caption=("The trained patch, then held-out images clean (top) and with the patch under one "
                     "fresh draw of placement and conditions (bottom), with the model's answers (red: "
                     "wrong). Patches that fool the model are shown first."),
            how_to_read=("A column whose top title is black (right) and bottom title red (wrong) is an "
                         "input the patch fooled; the more such columns, the more dangerous the patch."),
            png_base64=figure))
        self.tables.append(Table(
            title=(f"Defences against the {patch.share:.1%} patch ({k} held-out points, one patched view "
                   "each)"),
            columns=("defence", "clean accuracy", "accuracy under the patch", "certified accuracy",
                     "detection rate (TPR)", "false-positive rate"),
            rows=(("none", json_float(cert.clean_accuracy), json_float(undefended), None, None, None),
                  ("PatchCleanser", json_float(cert.accuracy), json_float(defended_acc),
                   json_float(cert.certified_accuracy), None, None),
                  ("masking-consistency detector", None, None, None, json_float(res.tpr),
                   json_float(res.fpr)))))
        out = {
            "points": k,
            "patchcleanser": {**cert.to_dict(), "defended_accuracy": json_float(defended_acc),
                              "undefended_accuracy_with_patch": json_float(undefended),
                              "footprint_within_patch": json_float(_rate(fits)),
                              "footprint_side_95": cover,
                              "certificate_violations": violations, "defended_cases": defended.to_dict()},
            "detector": {**res.to_dict(), "tpr_on_fooling_views": json_float(tpr_fooled), "n_fit": n_cal},
            "examples": shown,
        }
        return out, cert.certified_accuracy, defended_acc, res.tpr
