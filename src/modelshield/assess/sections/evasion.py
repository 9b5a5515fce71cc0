"""The white-box evasion section: robust accuracy against eps for each attack of the plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelshield.assess._batched import run_in_batches
from modelshield.assess._plots import examples_grid, is_image, robustness_curve
from modelshield.assess._section import (
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
    points_line,
    skipped_section,
)
from modelshield.assess.plan import EvasionPlan
from modelshield.assess.sanity import check_eps_curves, warn_findings
from modelshield.attacks.evasion.registry import build_attack
from modelshield.attacks.results import EvasionResult

__all__ = ["SEVERITY_THRESHOLDS", "EvasionSection", "evasion_severity"]

SEVERITY_THRESHOLDS: tuple[tuple[float, Severity], ...] = (
    (0.90, "none"),
    (0.75, "low"),
    (0.50, "medium"),
    (0.20, "high"),
)
"""``(minimum ratio, severity)`` pairs, checked in order; a lower ratio is ``"critical"``.

The ratio is robust accuracy / clean accuracy at the headline eps, i.e. the share of correctly
classified points that survive the strongest attack:

=================  ==========
ratio              severity
=================  ==========
>= 0.90            none
[0.75, 0.90)       low
[0.50, 0.75)       medium
[0.20, 0.50)       high
< 0.20             critical
=================  ==========
"""


def evasion_severity(clean_accuracy: float, robust_accuracy: float) -> Severity:
    """Severity of an evasion result from the robust / clean accuracy ratio.

    See ``SEVERITY_THRESHOLDS``. A model with no correctly classified point (clean accuracy 0
    or nan) is ``"critical"``: there is nothing left to protect.
    """
    if not clean_accuracy > 0:
        return "critical"
    ratio = robust_accuracy / clean_accuracy
    for minimum, severity in SEVERITY_THRESHOLDS:
        if ratio >= minimum:
            return severity
    return "critical"


def _recommendation(norm: str, eps: float) -> str:
    base = (
        f"Retrain with PGD adversarial training (Madry et al., 2018) or TRADES (Zhang et al., "
        f"2019) at eps >= {eps:g} in the L-{norm} norm, and re-run this assessment with stronger "
        "attacks (more steps, APGD, restarts) to confirm the gain is not gradient masking."
    )
    if norm == "2":
        base += (
            " For a certified L2 guarantee, wrap the model in randomized smoothing "
            "(Cohen et al., 2019)."
        )
    return base + " In deployment, monitor inputs for adversarial perturbations and rate-limit queries."


def _row(name: str, r: EvasionResult) -> tuple[Any, ...]:
    return (
        name,
        json_float(r.robust_accuracy, 4),
        json_float(r.attack_success_rate, 4),
        json_float(r.max_perturbation, 4),
        json_float(r.median_perturbation, 4),
        r.queries_forward,
        r.queries_backward,
        round(r.time_s, 2),
    )


@dataclass(frozen=True, slots=True)
class EvasionSection:
    """Section runner for white-box evasion (MITRE ATLAS AML.T0015 via AML.T0043.000).

    Runs every attack of ``ctx.plan.evasion`` at every eps on the assessment points in batches,
    then reports robust accuracy against eps, an example grid, a per-attack table at the headline
    eps, a severity (see ``evasion_severity``) and sanity findings (see ``assess.sanity``),
    which are also emitted as EvaluationWarning.

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).
    """

    id: str = "evasion"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        from modelshield.models import TorchModel

        if not isinstance(ctx.model, TorchModel):
            return skipped_section(
                self.id, "White-box evasion",
                "the white-box attacks need the model's input gradients, and this model is answered "
                f"only through its outputs ({ctx.model_info.get('format') or 'black-box'}); the "
                "blackbox section measures query-only evasion instead.",
            )
        plan: EvasionPlan = ctx.plan.evasion
        n = int(ctx.x.shape[0])
        n_batches = -(-n // ctx.batch_size)
        total = len(plan.attacks) * len(plan.eps) * n_batches
        curves: dict[str, list[EvasionResult]] = {}
        settings: dict[str, Any] = {}
        for a, name in enumerate(plan.attacks):
            curve = []
            for e, eps in enumerate(plan.eps):
                offset = (a * len(plan.eps) + e) * n_batches
                done = ctx.evasion_results.get((name, eps))
                if done is not None:  # computed by runner jobs (point shards), merged by the driver
                    curve.append(done)
                    if progress is not None:
                        progress(offset + n_batches, total, f"{name} eps={eps:g}")
                    continue
                attack = build_attack(name, eps=eps, norm=plan.norm, steps=plan.steps, seed=ctx.seed)
                curve.append(run_in_batches(
                    attack, ctx.model, ctx.x, ctx.y, batch_size=ctx.batch_size, progress=progress,
                    label=f"{name} eps={eps:g}", offset=offset, total=total,
                ))
            curves[name] = curve
            head = curve[plan.eps.index(plan.headline_eps)]
            settings[name] = {"class": head.attack, **head.params, "eps": list(plan.eps)}

        at = {name: curve[plan.eps.index(plan.headline_eps)] for name, curve in curves.items()}
        worst_name = min(at, key=lambda k: at[k].robust_accuracy)
        worst = at[worst_name]
        clean, robust = worst.clean_accuracy, worst.robust_accuracy
        severity = evasion_severity(clean, robust)
        sanity = check_eps_curves(curves)
        warn_findings(sanity)
        norm_txt = f"L-{plan.norm}"

        figures = [Figure(
            title="Robust accuracy against eps",
            caption=(f"Accuracy on {n} points under each attack as the {norm_txt} budget grows; the "
                     "dashed line is clean accuracy, the dotted line the headline eps."),
            how_to_read=("Each line is an attack: the lower it falls, the more inputs the attacker can flip "
                         "at that budget; the gap to the dashed clean line at the dotted headline eps is "
                         "what the attack costs."),
            png_base64=robustness_curve(curves, headline_eps=plan.headline_eps, norm=plan.norm),
        )]
        classes = ctx.data_info.get("classes")
        png, shown = examples_grid(worst, ctx.x, bounds=ctx.bounds,
                                   classes=list(classes) if classes else None)
        image = is_image(tuple(ctx.x.shape[1:]))
        kind = "images" if image else "perturbation per feature"
        figures.append(Figure(
            title=f"Examples: {worst_name} at eps={plan.headline_eps:g}",
            caption=(f"{len(shown)} assessment points ({kind}); broken points first. Titles give the "
                     "true label, the clean prediction and the prediction on the adversarial input"
                     + (" (red when wrong)." if image else ".")),
            how_to_read=(("Each column is one input: a red title in the middle row means the attack changed "
                          "the answer; the bottom row magnifies the change, whose real size |δ|max is in "
                          "its title.") if image else
                         ("Each panel is one input: a bar is how much the attack moved that feature (up: "
                          "raised, down: lowered); the title says whether the prediction changed "
                          "(adv pred vs true).")),
            png_base64=png,
        ))
        tables = [
            Table(
                title=f"Attacks at the headline eps={plan.headline_eps:g} ({norm_txt})",
                columns=("attack", "robust accuracy", "attack success rate", "max perturbation",
                         "median perturbation", "forward queries", "backward queries", "time (s)"),
                rows=tuple(_row(name, r) for name, r in at.items()),
            ),
            Table(
                title="Robust accuracy by eps",
                columns=("attack", *(f"eps={e:g}" for e in plan.eps)),
                rows=tuple((name, *(json_float(r.robust_accuracy, 4) for r in curve))
                           for name, curve in curves.items()),
            ),
        ]
        ratio = robust / clean if clean > 0 else math.nan
        broken_at = next((r.eps for r in curves[worst_name] if r.eps and r.robust_accuracy < 0.5 * clean),
                         None)
        findings = [
            f"Clean accuracy on the {n} assessment points is {100 * clean:.1f}%.",
            f"At eps={plan.headline_eps:g} ({norm_txt}) the strongest attack, {worst_name}, lowers "
            f"accuracy to {100 * robust:.1f}% (robust/clean ratio {ratio:.2f}): severity {severity}.",
        ]
        if broken_at is not None:
            findings.append(f"Accuracy falls below half of clean accuracy from eps={broken_at:g} on.")
        summary = (f"White-box {norm_txt} attacks at eps={plan.headline_eps:g} reduce accuracy from "
                   f"{100 * clean:.1f}% to {100 * robust:.1f}% ({worst_name}).")
        headline = {
            "clean_accuracy": json_float(clean),
            "robust_accuracy": json_float(robust),
            "attack_success_rate": json_float(worst.attack_success_rate),
        }
        metrics = {
            **headline,
            "headline_eps": plan.headline_eps,
            "norm": plan.norm,
            "n": n,
            "worst_attack": worst_name,
            "robust_to_clean_ratio": json_float(ratio),
            "curves": {name: [_point(r) for r in curve] for name, curve in curves.items()},
        }
        return Section(
            id=self.id,
            title=f"Evasion (white-box, {norm_txt})",
            summary=summary,
            severity=severity,
            atlas=atlas("AML.T0015", "AML.T0043", "AML.T0043.000"),
            recommendation=_recommendation(plan.norm, plan.headline_eps),
            metrics=metrics,
            headline=headline,
            findings=tuple(findings),
            figures=tuple(figures),
            tables=tuple(tables),
            warnings=tuple(sanity),
            provenance={"plan": plan.to_dict(), "attacks": settings},
            points=points_line(n, n),
        )


def _point(r: EvasionResult) -> dict[str, Any]:
    d = r.to_dict()
    d.pop("params", None)
    return d
