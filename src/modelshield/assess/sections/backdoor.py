"""The "Backdoor" report section: inspect the assessed model for a planted trigger (Neural Cleanse, STRIP)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from modelshield._checks import check_range
from modelshield.assess._plots import display_image, is_image, png_base64
from modelshield.assess._section import (
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
)
from modelshield.defenses.backdoor import STRIP, NeuralCleanse, NeuralCleanseReport, ScanReport, scan_model
from modelshield.models import TorchModel

__all__ = ["BackdoorSection", "anomaly_figure", "trigger_figure"]

TITLE = "Backdoor (model inspection: Neural Cleanse, STRIP)"

_RECOMMENDATION = (
    "If a class is flagged: (1) remove the backdoor by unlearning, i.e. fine-tune on clean data "
    "stamped with the reversed trigger and kept at its true label (Neural Cleanse's mitigation; "
    "modelshield.defenses.backdoor.Unlearning), or fine-pruning (FinePruning); (2) if you hold the "
    "training set, find the poisoned rows with activation clustering or spectral signatures "
    "(ActivationClustering, SpectralSignatures; `modelshield backdoor scan --train-set`) and retrain "
    "without the flagged rows (retrain_without); (3) at run time, put STRIP in front of the model to "
    "reject inputs whose prediction does not change under superimposition. Whatever the verdict, "
    "train only on data of known provenance and keep the hashes of training sets and weights."
)


def anomaly_figure(nc: NeuralCleanseReport, *, classes: Sequence[str] | None = None) -> str:
    """Bar chart of the Neural Cleanse anomaly index per class with the cut-off line; base64 PNG.

    Red bars are flagged classes (index above the cut-off and a trigger smaller than the
    median), grey bars classes whose trigger is *larger* than the median (never a backdoor
    sign), blue the others.
    """
    names = [classes[c] if classes is not None and c < len(classes) else str(c) for c in nc.classes]
    med = float(nc.norms.median())
    colors = ["#d1242f" if c in nc.flagged else "#8c959f" if float(nc.norms[i]) > med else "#1f6feb"
              for i, c in enumerate(nc.classes)]
    fig = MplFigure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), [float(v) for v in nc.anomaly_index], color=colors, width=0.7)
    ax.axhline(nc.threshold, color="#bf8700", ls="--", lw=1.2, label=f"cut-off {nc.threshold:g}")
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=0 if len(names) <= 12 else 90)
    ax.set_xlabel("class")
    ax.set_ylabel("anomaly index (MAD)")
    ax.set_ylim(0, max(nc.threshold * 1.25, float(nc.anomaly_index.max()) * 1.1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    return png_base64(fig)


def trigger_figure(
    nc: NeuralCleanseReport,
    shown: Sequence[int],
    example: Tensor,
    *,
    bounds: tuple[float, float],
    classes: Sequence[str] | None = None,
) -> str:
    """Reversed triggers of the classes ``shown``: mask, mask * pattern and a stamped example; base64 PNG."""
    lo, hi = bounds
    fig = MplFigure(figsize=(1.8 * len(shown) + 0.6, 5.2), layout="constrained")
    axes = fig.subplots(3, len(shown), squeeze=False)
    for j, c in enumerate(shown):
        i = nc.classes.index(c)
        trig = nc.triggers[i]
        name = classes[c] if classes is not None and c < len(classes) else str(c)
        panels = (
            (trig.mask.detach().float().cpu()[0], f"class {name}\nAI {float(nc.anomaly_index[i]):.2f}, "
                                                  f"L1 {float(nc.norms[i]):.1f}"),
            (display_image(trig.image, (lo, hi)), "mask x pattern"),
            (display_image(trig.apply(example[None])[0], (lo, hi)), "stamped input"),
        )
        for row, (img, title) in enumerate(panels):
            ax = axes[row][j]
            ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=8, color="#d1242f" if (row == 0 and c in nc.flagged) else "#1f2328")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("mask", fontsize=9)
    axes[1][0].set_ylabel("trigger", fontsize=9)
    axes[2][0].set_ylabel("example", fontsize=9)
    return png_base64(fig)


def _target_asr(nc: NeuralCleanseReport) -> float:
    """The success rate Neural Cleanse's reversal aimed for (its ``asr_threshold`` parameter)."""
    v = nc.params.get("asr_threshold", 0.99)
    return float(v) if isinstance(v, int | float) and not math.isnan(float(v)) else 0.99


def _skipped(section_id: str, reason: str, settings: dict[str, Any]) -> Section:
    return Section(
        id=section_id, title=TITLE, summary=f"Skipped: {reason}", severity="none",
        metrics={"skipped": True, "reason": reason}, findings=(f"Not run: {reason}",),
        recommendation=("For a model this section cannot inspect, check the training data instead: "
                        "ActivationClustering / SpectralSignatures on the training set, and STRIP at "
                        "run time (it needs class scores only)."),
        atlas=atlas("AML.T0018", "AML.T0020"), provenance={"settings": settings},
    )


def _points(n: int, total: int, hold: bool) -> str:
    """``Section.points``: which assessment points calibrate the scan and which measure STRIP."""
    used = (f"all {total} assessment points" if n >= total else
            f"the first {n} of the {total} assessment points")
    tail = (f"; the other {total - n} measure STRIP's false alarms on unseen inputs" if hold else
            "; too few others are left to measure STRIP's false alarms on unseen inputs")
    return (f"the model itself (a trigger reversed for every class), with {used} as the clean "
            f"inputs that Neural Cleanse optimises on and STRIP calibrates on{tail}")


@dataclass(frozen=True, kw_only=True, slots=True)
class BackdoorSection:
    """Section runner: is a backdoor planted in the assessed model? (MITRE ATLAS AML.T0018)

    Runs ``scan_model`` on the first ``n_clean`` assessment points: Neural Cleanse reverses
    the smallest trigger for every class and flags classes whose trigger is anomalously small
    (MAD anomaly index above 2 with a norm below the median); STRIP is calibrated at ``frr``
    false rejection and, for each flagged class, asked to catch held-out clean inputs (the
    remaining assessment points) stamped with the reversed trigger. Severity: ``"high"`` when
    Neural Cleanse flags a class, else ``"none"`` (which does not prove absence).

    Only white-box torch image classifiers (gradients are needed) with at least 3 classes
    are inspected; for other models the section says why it was skipped.

    Settings were chosen on the 8x8 digits CNN (200 clean points; 2 shared CPU cores, one
    torch thread): with 100 steps the clean zoo ``digits-cnn`` reached an anomaly index of
    2.5 (class 3, flagged) for one of four seeds, with 200 steps its largest index was
    0.9-1.1 over four seeds while a BadNets model (5% poison, target 0) scored 3.1-8.7 (always
    class 0 alone). Cost on one torch thread: about 6 s on digits-cnn, 28 s on the MNIST LeNet
    (lenet-28), so the section is opt-in: ``AssessmentPlan(sections=(..., "backdoor"))`` or
    ``modelshield assess --sections evasion,backdoor``; change settings with
    ``register_section(BackdoorSection(...), replace=True)``.

    Args:
        n_clean: clean points for Neural Cleanse and STRIP calibration (the first of the
            assessment points; at least 20).
        steps: Neural Cleanse optimisation steps per class. batch_size: its mini-batch.
        frr: STRIP's false-rejection rate on clean inputs. n_overlays: STRIP superimpositions.
        n_shown: reversed triggers drawn (the classes with the smallest triggers).

    Reference: B. Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
    Neural Networks", IEEE S&P 2019; Y. Gao et al., "STRIP: A Defence Against Trojan Attacks
    on Deep Neural Networks", ACSAC 2019.
    """

    id: str = "backdoor"
    n_clean: int = 200
    steps: int = 200
    batch_size: int = 64
    frr: float = 0.05
    n_overlays: int = 20
    n_shown: int = 3

    def __post_init__(self) -> None:
        owner = "BackdoorSection"
        check_range("n_clean", self.n_clean, owner=owner, low=20, integer=True,
                    fix="Neural Cleanse needs a few hundred clean points, e.g. n_clean=200.")
        check_range("steps", self.steps, owner=owner, low=1, integer=True)
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)
        check_range("frr", self.frr, owner=owner, low=0.0, high=0.5, low_open=True,
                    fix="Give STRIP's false-rejection rate on clean inputs, e.g. frr=0.05.")
        check_range("n_overlays", self.n_overlays, owner=owner, low=1, integer=True)
        check_range("n_shown", self.n_shown, owner=owner, low=1, integer=True)

    def settings(self) -> dict[str, Any]:
        """The section's configuration as a JSON-safe dict."""
        return {"n_clean": self.n_clean, "steps": self.steps, "batch_size": self.batch_size,
                "frr": self.frr, "n_overlays": self.n_overlays, "n_shown": self.n_shown}

    def skip_reason(self, ctx: AssessmentContext) -> str | None:
        """Why this section cannot inspect the context's model, or None when it can."""
        shape = tuple(ctx.x.shape[1:])
        if not isinstance(ctx.model, TorchModel):
            return ("the model is a black box (outputs only); Neural Cleanse needs gradients with "
                    "respect to the input, so only white-box torch image classifiers are inspected.")
        if not is_image(shape):
            return (f"the inputs have shape {shape}, not images (C, H, W); trigger reversal "
                    "looks for a small image patch.")
        m = ctx.model
        n_classes = m.n_classes_known if m.n_classes_known is not None else int(m.scores(ctx.x[:1]).shape[1])
        if n_classes < 3:
            return (f"the model has {n_classes} classes; the anomaly test compares the classes' "
                    "triggers and needs at least 3.")
        if int(ctx.x.shape[0]) < 20:
            return f"only {int(ctx.x.shape[0])} assessment points; Neural Cleanse needs at least 20."
        return None

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        why = self.skip_reason(ctx)
        if why is not None:
            if progress is not None:
                progress(1, 1, "backdoor: skipped")
            return _skipped(self.id, why, self.settings())
        n = min(self.n_clean, int(ctx.x.shape[0]))
        xc, yc = ctx.x[:n], ctx.y[:n]
        hold = int(ctx.x.shape[0]) - n >= 20
        nc_cfg = NeuralCleanse(steps=self.steps, batch_size=self.batch_size, bounds=ctx.bounds, seed=ctx.seed)
        strip_cfg = STRIP(frr=self.frr, n_overlays=self.n_overlays, bounds=ctx.bounds, seed=ctx.seed)

        def tick(done: int, total: int, text: str) -> None:
            if progress is not None:
                progress(done, total, f"backdoor: {text}")

        report = scan_model(ctx.model, xc, yc, x_holdout=ctx.x[n:] if hold else None,
                            y_holdout=ctx.y[n:] if hold else None, neural_cleanse=nc_cfg, strip=strip_cfg,
                            progress=tick)
        return self._section(ctx, report, n, hold)

    def _section(self, ctx: AssessmentContext, report: ScanReport, n: int, hold: bool) -> Section:
        nc = report.neural_cleanse
        names = ctx.data_info.get("classes")
        classes = list(names) if names else None

        def name(c: int) -> str:
            return classes[c] if classes is not None and c < len(classes) else str(c)

        flagged = list(nc.flagged)
        order = sorted(range(len(nc.classes)), key=lambda i: float(nc.norms[i]))
        shown = [nc.classes[i] for i in order[: self.n_shown]]
        med = float(nc.norms.median())
        low = order[0]
        strip_s = report.strip_summary()
        severity: Severity = "high" if flagged else "none"
        eval_set = "held-out" if hold else "calibration"
        findings = [
            f"Neural Cleanse reversed the smallest trigger for each of the {len(nc.classes)} classes on "
            f"{n} clean assessment points ({self.steps} steps per class): the smallest belongs to class "
            f"{name(nc.classes[low])} (mask L1 {float(nc.norms[low]):.1f}, median {med:.1f}, anomaly index "
            f"{float(nc.anomaly_index[low]):.2f}).",
        ]
        if flagged:
            findings.append(
                f"Class(es) {', '.join(name(c) for c in flagged)} exceed the anomaly-index cut-off "
                f"{nc.threshold:g} with a trigger smaller than the median: a small input pattern sends "
                "almost any input there, the signature of a planted backdoor (verdict: backdoor).")
        else:
            findings.append(
                f"No class exceeds the anomaly-index cut-off {nc.threshold:g}: no backdoor found by Neural "
                "Cleanse; this does not prove absence (large, blended, warping or input-specific triggers "
                "and backdoors planted on several classes can escape it).")
        hold_rej = strip_s.get("false_rejection_holdout")
        findings.append(
            f"STRIP calibrated at {100 * self.frr:g}% false rejection ({self.n_overlays} overlays): entropy "
            f"threshold {strip_s['threshold']:.4f}"
            + (f"; it rejects {100 * hold_rej:.1f}% of {report.n_holdout} held-out clean points."
               if hold_rej is not None else "."))
        for c, rate in report.trigger_detection.items():
            findings.append(
                f"STRIP catches {100 * rate:.1f}% of the {eval_set} clean inputs of other classes stamped "
                f"with class {name(c)}'s reversed trigger" + (" (a run-time filter would stop most triggered "
                                                         "inputs)." if rate >= 0.5 else "."))
        warnings: list[str] = []
        if flagged:
            warnings.append(
                "Neural Cleanse compares classes with each other: a class that is naturally easy to reach "
                "can pass the cut-off on a clean model (measured: class 3 of an 8x8 digits CNN trained "
                "for 10 epochs, anomaly index 2.5-3.6). Look at the reversed trigger (a compact patch "
                "is a backdoor sign, a diffuse stroke a natural feature) and at STRIP's catch rate "
                "before acting.")
        for c, rate in report.trigger_detection.items():
            if not rate >= 0.5:
                warnings.append(
                    f"STRIP catches only {100 * rate:.1f}% of inputs stamped with class {name(c)}'s reversed "
                    "trigger: it does not act like a planted trigger, so the flag may be a naturally easy "
                    "class (on digits: 11-16% for such a false flag, 98% for a real BadNets trigger).")
        weak = [c for i, c in enumerate(nc.classes) if float(nc.asr[i]) < _target_asr(nc)]
        if weak:
            warnings.append(
                f"The reversed triggers of {len(weak)} class(es) did not reach the target success rate "
                f"({', '.join(name(c) for c in weak)}): raise steps for a reliable comparison.")
        if n < 100:
            warnings.append(f"Only {n} clean points: Neural Cleanse's triggers may overfit them; use 200+.")
        headline = {"backdoor_max_anomaly_index": json_float(nc.max_anomaly_index),
                    "backdoor_flagged_classes": float(len(flagged))}
        metrics: dict[str, Any] = {
            **headline,
            "verdict": "backdoor" if flagged else "no backdoor found",
            "flagged_classes": flagged,
            "suspect": nc.suspect,
            "threshold": nc.threshold,
            "n_clean": n,
            "steps": self.steps,
            "classes": report.per_class(),
            "neural_cleanse": nc.to_dict(),
            "strip": strip_s,
            "time_s": round(report.time_s, 3),
        }
        example_pool = ctx.x[:n][ctx.y[:n] != nc.classes[order[0]]]
        example = example_pool[0] if example_pool.shape[0] else ctx.x[0]
        figures = (
            Figure(title="Neural Cleanse anomaly index per class",
                   caption=(f"MAD anomaly index of each class's reversed-trigger size; the dashed line is "
                            f"the cut-off {nc.threshold:g}."),
                   how_to_read=("Red bars are flagged classes (above the dashed cut-off with a trigger "
                                "smaller than the median) that may hide a backdoor; grey bars (larger "
                                "triggers) are never a backdoor sign."),
                   png_base64=anomaly_figure(nc, classes=classes)),
            Figure(title=f"Reversed triggers of the {len(shown)} most suspicious classes",
                   caption=("Per class (smallest trigger first): the mask Neural Cleanse found (white = "
                            "pixels it uses), the trigger drawn (mask x pattern), and a clean input stamped "
                            "with it."),
                   how_to_read=("Look for a small, compact white blob in the top row: a backdoor trigger is "
                                "usually a tiny patch, a natural class needs a large scattered mask; red "
                                "titles are flagged classes."),
                   png_base64=trigger_figure(nc, shown, example, bounds=ctx.bounds, classes=classes)),
        )
        table = Table(
            title="Neural Cleanse per class",
            columns=("class", "trigger L1 norm", "anomaly index", "trigger success on clean points",
                     "verdict"),
            rows=tuple((name(row["class"]), json_float(row["norm"], 3), json_float(row["anomaly_index"], 3),
                        json_float(row["trigger_asr"], 3), row["verdict"]) for row in report.per_class()),
        )
        top = nc.max_anomaly_index
        summary = (f"Neural Cleanse flags class(es) {', '.join(name(c) for c in flagged)} as a backdoor "
                   f"target (anomaly index {top:.2f} > {nc.threshold:g})." if flagged else
                   f"No backdoor found by Neural Cleanse (largest anomaly index {top:.2f} <= "
                   f"{nc.threshold:g}); this does not prove absence.")
        return Section(
            id=self.id, title=TITLE, summary=summary, severity=severity,
            atlas=atlas("AML.T0018", "AML.T0020"), recommendation=_RECOMMENDATION,
            metrics=metrics, headline=headline, findings=tuple(findings), figures=figures,
            tables=(table,), warnings=tuple(warnings),
            provenance={"settings": self.settings(), "attacks": {"NeuralCleanse": nc.params},
                        "strip": {"frr": self.frr, "n_overlays": self.n_overlays, "seed": ctx.seed}},
            points=_points(n, int(ctx.x.shape[0]), hold),
        )
