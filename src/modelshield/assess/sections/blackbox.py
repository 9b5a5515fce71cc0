"""Query-only exposure sections: black-box attacks on image models and constrained tabular evasion.

``BlackBoxSection`` (id ``"blackbox"``): how many queries an attacker who only sees the
model's outputs needs, with Square (scores) and HopSkipJump (labels only). A label-only model
(no probabilities, no decision margins) gets HopSkipJump alone, Square skipped with the reason.
``TabularSection`` (id ``"tabular"``): how many attacker-controlled features must change for a
detected malicious row to pass as benign, with every adversarial row valid under a constraint
spec. A label-only model is searched by its labels alone (``label_scores``).

Scores of an estimator without ``predict_proba`` are its ``decision_function`` margins (see
``modelshield.models.as_model``): the sections say so, and use them as any score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from modelshield.assess._batched import run_in_batches
from modelshield.assess._plots import png_base64
from modelshield.assess._section import (
    ATLAS,
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Table,
    atlas,
    is_text_model,
    json_float,
    points_line,
    skipped_section,
)
from modelshield.assess.plan import BlackBoxPlan, TabularPlan
from modelshield.assess.sanity import check_model_answers, warn_findings
from modelshield.assess.sections.data_validation import class_label
from modelshield.assess.sections.evasion import evasion_severity
from modelshield.attacks.evasion.hopskipjump import HopSkipJump
from modelshield.attacks.evasion.square import Square
from modelshield.attacks.evasion.tabular import ConstraintSpec, TabularSearch, count_changes
from modelshield.attacks.ops import lp_norms
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ConfigError
from modelshield.models import CallableModel

__all__ = ["BlackBoxSection", "TabularSection", "budget_curve", "changes_curve", "is_label_only",
           "label_scores", "load_spec", "runner_up_target", "score_notes"]

ATLAS.setdefault("AML.T0040", "ML Model Inference API Access")

_BLUE, _RED, _GREY = "#1f6feb", "#d1242f", "#57606a"


# --------------------------------------------------------------------------------------------
# Pure helpers (tested directly)
# --------------------------------------------------------------------------------------------


def budget_curve(result: EvasionResult, budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Success and robust accuracy within each query budget, from one query-attack result.

    A point counts as broken within budget b when the attack broke it (verified) after at most
    b forward queries (``point_queries``, its clean query included). Query attacks stop
    querying a point once it is broken, so this is what the same run stopped after b queries
    per point would have achieved.

    Raises:
        ConfigError: the result has no per-point query counts.
    """
    if result.point_queries is None:
        raise ConfigError(
            "budget_curve: 'result' must come from a query-based attack (point_queries set); got "
            f"a {result.attack} result without them. Use Square, SimBA or HopSkipJump."
        )
    broken_any = result.success & result.eligible
    n_eligible = int(result.eligible.sum())
    out = []
    for b in budgets:
        broken = broken_any & (result.point_queries <= b)
        out.append({
            "budget": int(b),
            "broken": int(broken.sum()),
            "success_rate": json_float(int(broken.sum()) / n_eligible) if n_eligible else None,
            "robust_accuracy": json_float(float((result.clean_correct & ~broken).float().mean())),
        })
    return out


def changes_curve(
    x: Tensor, x_adv: Tensor, success: Tensor, attacked: Tensor, budgets: Sequence[int]
) -> list[dict[str, Any]]:
    """Success rate over attacked rows when at most k features may change, for each k."""
    l0 = count_changes(x, x_adv)
    n_att = int(attacked.sum())
    out = []
    for k in budgets:
        hit = success & attacked & (l0 <= k)
        out.append({"max_changes": int(k), "successes": int(hit.sum()),
                    "success_rate": json_float(int(hit.sum()) / n_att) if n_att else None})
    return out


def is_label_only(model: Any, x: Tensor, *, batch_size: int) -> bool:
    """True when the model answers labels only (no probabilities, no decision margins).

    A black box's clean answers on x are read first (``predict``, one query per row): they
    decide what a callable answers, and an estimator's margins are checked against its
    ``predict`` on exactly these points (a disagreement makes it label-only, with a note).
    """
    if not isinstance(model, CallableModel):
        return False
    with torch.no_grad():
        for chunk in torch.split(x, max(1, batch_size)):
            model.predict(chunk)
    return model.output == "labels"


def score_notes(model: Any) -> tuple[str | None, list[str]]:
    """What the model's scores are (``"probabilities"``, ``"margins"``, ``"labels"``, or None for a
    white-box model's logits) and the adapter's notes about them."""
    if not isinstance(model, CallableModel):
        return None, []
    return model.score_kind, list(model.notes)


def label_scores(model: CallableModel) -> CallableModel:
    """A label-only model seen through one-hot scores of its labels, for a decision-based search.

    ``TabularSearch`` ranks candidate rows by score; with one-hot scores every candidate that
    flips the label ranks first and the others tie, so the search is exact for one change (every
    single-feature move is tried) and unguided beyond (ties keep the first candidates). Each
    scored row is one ``predict`` query on ``model`` (counted there).
    """
    n_classes = model.n_classes

    def one_hot(x_np: Any) -> Any:
        with torch.no_grad():
            labels = model.predict(torch.as_tensor(x_np))
        return torch.nn.functional.one_hot(labels.long().cpu(), n_classes).float().numpy()

    return CallableModel(one_hot, bounds=model.bounds, output="proba", n_classes=n_classes)


def load_spec(plan: TabularPlan, x: Tensor, data_info: Mapping[str, Any]) -> tuple[ConstraintSpec, str]:
    """The constraint spec of a tabular assessment and a line saying where it came from.

    ``plan.constraints`` (YAML/JSON) if given; else the shipped phishing spec for the
    phishing-websites data; else a spec inferred from the assessment rows (every feature
    mutable within its observed values: a weak threat model, flagged in the report).
    """
    names = data_info.get("feature_names")
    feature_names = tuple(str(n) for n in names) if names else tuple(f"x{j}" for j in range(x.shape[1]))
    if plan.constraints is not None:
        path = str(plan.constraints)
        if path.lower().endswith(".json"):
            return ConstraintSpec.from_json(path, feature_names=feature_names), path
        return ConstraintSpec.from_yaml(path, feature_names=feature_names), path
    if data_info.get("name") == "phishing-websites":
        from modelshield.data.phishing import PHISHING_CONSTRAINTS

        return (ConstraintSpec.from_yaml(PHISHING_CONSTRAINTS, feature_names=feature_names),
                "the shipped phishing spec (modelshield/data/phishing_constraints.yaml)")
    return ConstraintSpec.infer(x, feature_names), "inferred from the assessment rows (all mutable)"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _budget_figure(curve: list[dict[str, Any]], hsj: list[dict[str, Any]], eps: float) -> str:
    fig = MplFigure(figsize=(8.6, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    b = [p["budget"] for p in curve]
    if curve:
        ax1.plot(b, [p["success_rate"] or 0.0 for p in curve], marker="o", color=_RED, label="success rate")
        ax1.plot(b, [p["robust_accuracy"] or 0.0 for p in curve], marker="s", color=_BLUE,
                 label="robust accuracy")
        ax1.set_xscale("log")
        ax1.legend(fontsize=8, frameon=False)
    else:
        ax1.text(0.5, 0.5, "Square not run\n(the model answers labels only)", ha="center", va="center",
                 transform=ax1.transAxes)
        ax1.set_axis_off()  # no data: no scale to read
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_xlabel("queries per point")
    ax1.set_ylabel("share of points")
    ax1.set_title(f"Square (scores), L-inf eps={eps:g}", fontsize=9)
    ax1.grid(alpha=0.3)
    if hsj:
        hb = [p["budget"] for p in hsj]
        within = [p["success_within_eps"] if p["success_within_eps"] is not None else math.nan for p in hsj]
        med = [p["median_l2"] if p["median_l2"] is not None else math.nan for p in hsj]
        lines = ax2.plot(hb, within, marker="o", color=_RED, label=f"broken within L-inf eps={eps:g}")
        ax2.set_xscale("log")
        ax2.set_xticks(hb, [str(b) for b in hb])  # the budgets run; log minor labels would overlap
        ax2.minorticks_off()
        ax2.set_ylim(-0.03, 1.03)
        ax2.set_xlabel("queries per point")
        ax2.set_ylabel(f"broken within L-inf eps={eps:g}")
        ax2.grid(alpha=0.3)
        l2 = ax2.twinx()
        lines += l2.plot(hb, med, marker="s", ms=4, ls="--", color=_GREY, label="median L2 (right axis)")
        l2.set_ylim(bottom=0.0)
        l2.set_ylabel("median L2 of adversarial points", color=_GREY)
        l2.tick_params(axis="y", colors=_GREY)
        fig.legend(lines, [ln.get_label() for ln in lines], fontsize=8, frameon=False, ncol=2,
                   loc="outside lower right")  # below the panel: the two y scales leave no free corner
    else:
        ax2.text(0.5, 0.5, "HopSkipJump not run", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_axis_off()
    ax2.set_title("HopSkipJump (labels only)", fontsize=9)
    return png_base64(fig)


def _tabular_figure(curve: list[dict[str, Any]], used: Mapping[str, int], top: int = 10) -> str:
    fig = MplFigure(figsize=(8.6, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ks = [p["max_changes"] for p in curve]
    ax1.plot(ks, [p["success_rate"] or 0.0 for p in curve], marker="o", color=_RED)
    ax1.set_xticks(ks)
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_xlabel("most features changed per row")
    ax1.set_ylabel("evasion success rate")
    ax1.set_title("Detected malicious rows passed as benign", fontsize=9)
    ax1.grid(alpha=0.3)
    items = sorted(used.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if items:
        names = [k for k, _ in items][::-1]
        ax2.barh(names, [v for _, v in items][::-1], color=_BLUE)
        ax2.tick_params(axis="y", labelsize=7)
        ax2.set_xlabel("successful rows changing the feature")
        ax2.set_ylabel("feature")
    else:
        ax2.text(0.5, 0.5, "no successful row", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_axis_off()
    ax2.set_title("Features the attacker used most", fontsize=9)
    return png_base64(fig)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_BLACKBOX_ADVICE = (
    "Treat the prediction API as the attack surface: return labels (or coarse, rounded scores) "
    "rather than full probabilities, rate-limit and budget queries per client, and monitor "
    "query streams for the many near-duplicate inputs that Square and HopSkipJump send (stateful "
    "detection, e.g. Chen, Carlini and Wagner 2020). Labels alone do not stop HopSkipJump, so "
    "also harden the model itself (adversarial training at the eps of this section) and "
    "re-assess."
)

_TABULAR_ADVICE = (
    "Feature-level hardening: make the features the attacker controls (URL and page content) "
    "less decisive, e.g. by constraining or regularising their weight, or by leaning on features "
    "the attacker cannot change (domain age, registration, traffic, index); retrain with "
    "constraint-aware adversarial examples (the rows this attack finds, labelled malicious), "
    "and re-assess with the same constraint spec. Watch for probing: many near-identical "
    "submissions that differ in one or two features."
)


def broken_within(res: EvasionResult, x: Tensor, eps: float) -> Tensor:
    """(N,) bool: eligible points a minimum-norm attack broke within L-inf ``eps`` (tolerance 1e-6)."""
    return res.success & res.eligible & (lp_norms(res.x_adv - x, "inf") <= eps + 1e-6)


def hsj_point(res: EvasionResult, x: Tensor, budget: int, eps: float) -> dict[str, Any]:
    """One HopSkipJump budget's row: median L2, success at any size, and success within L-inf eps.

    HopSkipJump is a minimum-norm attack: it spends its whole budget shrinking a perturbation
    that already misclassifies, so "queries per success" equals the budget and says nothing;
    success within the section's L-inf ``eps`` at each budget is what grows with the queries.
    """
    within = broken_within(res, x, eps)
    n_eligible = int(res.eligible.sum())
    return {"budget": budget, "median_l2": json_float(res.median_perturbation),
            "success_rate": json_float(res.attack_success_rate),
            "success_within_eps": json_float(int(within.sum()) / n_eligible) if n_eligible else None}


def _which_points(n: int, ctx: AssessmentContext) -> str:
    """``Section.points``: all the assessment points, or the first n of them and why."""
    return points_line(n, int(ctx.x.shape[0]), why=(
        "each query-only attack costs up to its budget in model queries per point, so this section "
        "runs on a subset (set BlackBoxPlan.n to change it)"))


def _subset_note(n: int, ctx: AssessmentContext) -> str:
    """" on the first n of the N assessment points" when the section ran on a subset, else ""."""
    total = int(ctx.x.shape[0])
    return f" on the first {n} of the {total} assessment points" if n < total else ""


@dataclass(frozen=True, slots=True)
class BlackBoxSection:
    """Section runner: black-box exposure of an image or tabular model (MITRE ATLAS AML.T0043.001).

    Square (Andriushchenko et al., ECCV 2020) with the model's scores, read at every query
    budget of ``ctx.plan.blackbox``, and HopSkipJump (Chen, Jordan and Wainwright, IEEE S&P
    2020) with labels only, its median L2 distance per budget. Severity from Square's robust
    accuracy at the largest budget (see ``evasion_severity``). On tabular rows the perturbations
    ignore feature constraints (the section warns; the ``"tabular"`` section respects them).

    A label-only model (a callable answering labels, an estimator with only ``predict``, or one
    whose margins disagree with its ``predict``) gets HopSkipJump alone: Square is skipped with
    the reason, and the severity comes from the points HopSkipJump breaks within L-inf ``eps``
    at its largest budget (a minimum-L2 attack, so an upper bound on the robust accuracy).
    Margins (``decision_function``) count as scores; the section says when they were used.
    """

    id: str = "blackbox"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        if is_text_model(ctx):
            return skipped_section(
                self.id, "Black-box exposure (query-only attacks)",
                "this is a text model: its inputs are messages, which pixel-space attacks (Square, "
                "HopSkipJump) cannot perturb (they would only move row indices between messages). "
                "See the text-evasion section for query-only attacks on text.")
        plan: BlackBoxPlan = ctx.plan.blackbox
        x, y = (ctx.x, ctx.y) if plan.n is None else (ctx.x[: plan.n], ctx.y[: plan.n])
        label_only = is_label_only(ctx.model, x, batch_size=ctx.batch_size)
        kind, model_notes = score_notes(ctx.model)
        if label_only:
            return self._labels_only(ctx, plan, x, y, progress, model_notes)
        n = int(x.shape[0])
        n_batches = -(-n // ctx.batch_size)
        total = (1 + len(plan.hsj_budgets)) * n_batches
        top = max(plan.budgets)
        square = Square(eps=plan.eps, norm="inf", max_queries=top, seed=ctx.seed)
        sq = run_in_batches(square, ctx.model, x, y, batch_size=ctx.batch_size, progress=progress,
                            label=f"square {top} queries", total=total)
        curve = budget_curve(sq, plan.budgets)
        hsj_curve: list[dict[str, Any]] = []
        settings: dict[str, Any] = {"square": {"class": sq.attack, **sq.params,
                                               "budgets": list(plan.budgets)}}
        for i, b in enumerate(plan.hsj_budgets):
            res = run_in_batches(HopSkipJump(norm="2", max_queries=b, seed=ctx.seed), ctx.model, x, y,
                                 batch_size=ctx.batch_size, progress=progress, label=f"hsj {b} queries",
                                 offset=(1 + i) * n_batches, total=total)
            hsj_curve.append(hsj_point(res, x, b, plan.eps))
            settings[f"hsj@{b}"] = {"class": res.attack, **res.params}
        notes = check_model_answers({"square": [sq]})
        warn_findings(notes)
        if x.dim() == 2 or ctx.model_info.get("modality") == "tabular":
            notes.append(
                "Tabular rows: Square and HopSkipJump change every feature freely within the data's "
                f"bounds {ctx.bounds} (no constraint spec, no integer or categorical features), so "
                "this is an upper bound on query-only exposure; the tabular section gives the "
                "constraint-respecting view.")
        clean = sq.clean_accuracy
        last = curve[-1]
        robust = float(last["robust_accuracy"] or 0.0)
        severity = evasion_severity(clean, robust)
        med_q, mean_q = sq.queries_per_success
        half = next((p["budget"] for p in curve if (p["success_rate"] or 0.0) >= 0.5), None)
        findings = [
            f"Clean accuracy on these {n} points is {100 * clean:.1f}%.",
            f"With only the model's {'decision margins' if kind == 'margins' else 'scores'}, Square at "
            f"L-inf eps={plan.eps:g} lowers accuracy to "
            f"{100 * robust:.1f}% within {top} queries per point (success rate "
            f"{100 * (last['success_rate'] or 0.0):.1f}%; median {med_q:g} queries per success).",
        ]
        if half is not None:
            findings.append(f"Half of the correctly classified points break within {half} queries each.")
        if kind == "margins":
            findings.append(
                "The model has no predict_proba: Square read its decision_function margins (not "
                "probabilities; their argmax equals its predict on every query), as an attacker holding "
                "the model file could.")
        if hsj_curve:
            h = hsj_curve[-1]
            l2 = "n/a" if h["median_l2"] is None else f"{h['median_l2']:.3g}"
            findings.append(
                f"With labels only, HopSkipJump finds misclassified inputs at a median L2 distance of "
                f"{l2} after {h['budget']} queries per point.")
        tables = [
            Table(title=f"Square (scores, L-inf eps={plan.eps:g}) by query budget",
                  columns=("queries per point", "success rate", "robust accuracy", "points broken"),
                  rows=tuple((p["budget"], p["success_rate"], p["robust_accuracy"], p["broken"])
                             for p in curve)),
        ]
        if hsj_curve:
            tables.append(Table(
                title="HopSkipJump (labels only, L2, minimum norm) by query budget",
                columns=("queries per point", "median L2", "misclassification rate (any size)",
                         f"success within L-inf eps={plan.eps:g}"),
                rows=tuple((p["budget"], p["median_l2"], p["success_rate"], p["success_within_eps"])
                           for p in hsj_curve)))
        figures = [Figure(
            title="Black-box attack strength against query budget",
            caption=(f"Left: Square's success rate and the robust accuracy on {n} points as the "
                     "per-point query budget grows (one run, read at each budget). Right: the share "
                     f"of eligible points HopSkipJump breaks within L-inf eps={plan.eps:g} (solid) and "
                     "the median L2 distance of its misclassified inputs (dashed, right axis)."),
            how_to_read=("The higher the red lines, the more points the attacker breaks with that many "
                         "queries (blue robust accuracy falls as they rise); on the right, a falling dashed "
                         "grey line means smaller changes suffice."),
            png_base64=_budget_figure(curve, hsj_curve, plan.eps),
        )]
        headline = {"blackbox_robust_accuracy": json_float(robust),
                    "blackbox_success_rate": last["success_rate"]}
        metrics = {
            **headline, "n": n, "eps": plan.eps, "clean_accuracy": json_float(clean),
            "median_queries_per_success": json_float(med_q), "mean_queries_per_success": json_float(mean_q),
            "square_curve": curve, "hsj_curve": hsj_curve,
        }
        return Section(
            id=self.id,
            title="Black-box exposure (query-only attacks)",
            summary=(f"Seeing only outputs, an attacker lowers accuracy from {100 * clean:.1f}% to "
                     f"{100 * robust:.1f}% with {top} queries per point (Square, L-inf eps={plan.eps:g})"
                     f"{_subset_note(n, ctx)}."),
            severity=severity,
            atlas=atlas("AML.T0040", "AML.T0043.001", "AML.T0015"),
            recommendation=_BLACKBOX_ADVICE,
            metrics=metrics,
            headline=headline,
            findings=tuple(findings),
            figures=tuple(figures),
            tables=tuple(tables),
            warnings=tuple(notes),
            provenance={"plan": plan.to_dict(), "attacks": settings, "scores": kind,
                        "model_notes": model_notes},
            points=_which_points(n, ctx),
        )

    def _labels_only(self, ctx: AssessmentContext, plan: BlackBoxPlan, x: Tensor, y: Tensor,
                     progress: Progress | None, model_notes: list[str]) -> Section:
        """HopSkipJump alone, for a model that answers labels only; Square skipped with the reason."""
        title = "Black-box exposure (query-only attacks)"
        square_reason = ("the model answers labels only (no probabilities and no decision_function "
                         "margins), and Square needs class scores; HopSkipJump needs only labels")
        if not plan.hsj_budgets:
            return skipped_section(self.id, title, f"{square_reason}, but no HopSkipJump budget was planned "
                                   "(hsj_budgets is empty). Plan at least one, e.g. --hsj-budgets 300.")
        n = int(x.shape[0])
        n_batches = -(-n // ctx.batch_size)
        total = len(plan.hsj_budgets) * n_batches
        hsj_curve: list[dict[str, Any]] = []
        settings: dict[str, Any] = {"square": {"skipped": square_reason}}
        results: list[EvasionResult] = []
        for i, b in enumerate(plan.hsj_budgets):
            res = run_in_batches(HopSkipJump(norm="2", max_queries=b, seed=ctx.seed), ctx.model, x, y,
                                 batch_size=ctx.batch_size, progress=progress, label=f"hsj {b} queries",
                                 offset=i * n_batches, total=total)
            results.append(res)
            hsj_curve.append(hsj_point(res, x, b, plan.eps))
            settings[f"hsj@{b}"] = {"class": res.attack, **res.params}
        notes = check_model_answers({"hopskipjump": results})
        warn_findings(notes)
        if x.dim() == 2 or ctx.model_info.get("modality") == "tabular":
            notes.append(
                "Tabular rows: HopSkipJump changes every feature freely within the data's bounds "
                f"{ctx.bounds} (no constraint spec, no integer or categorical features), so this is an "
                "upper bound on query-only exposure; the tabular section gives the constraint-respecting "
                "view.")
        last, top = results[-1], plan.hsj_budgets[-1]
        broken = broken_within(last, x, plan.eps)
        n_eligible = int(last.eligible.sum())
        clean = last.clean_accuracy
        robust = float((last.clean_correct & ~broken).float().mean()) if n else math.nan
        rate = int(broken.sum()) / n_eligible if n_eligible else None
        severity = evasion_severity(clean, robust)
        h = hsj_curve[-1]
        l2 = "n/a" if h["median_l2"] is None else f"{h['median_l2']:.3g}"
        findings = [
            "The model answers labels only (no probabilities, no decision_function margins): Square, "
            "which needs class scores, was not run; HopSkipJump needs only the predicted labels.",
            f"Clean accuracy on these {n} points is {100 * clean:.1f}%.",
            f"With labels only, HopSkipJump finds misclassified inputs for "
            f"{100 * (last.attack_success_rate or 0.0):.1f}% of the correctly classified points at a median "
            f"L2 distance of {l2} after {top} queries per point.",
            f"Of those, the ones within L-inf eps={plan.eps:g} lower accuracy to {100 * robust:.1f}% "
            f"(success rate {100 * (rate or 0.0):.1f}%); HopSkipJump minimises L2, not L-inf, so this "
            "overstates the robust accuracy.",
        ]
        headline = {"blackbox_robust_accuracy": json_float(robust),
                    "blackbox_success_rate": json_float(rate) if rate is not None else None}
        metrics = {
            **headline, "n": n, "eps": plan.eps, "clean_accuracy": json_float(clean), "label_only": True,
            "square_skipped": square_reason, "square_curve": [], "hsj_curve": hsj_curve,
        }
        tables = (Table(
            title="HopSkipJump (labels only, L2, minimum norm) by query budget",
            columns=("queries per point", "median L2", "misclassification rate (any size)",
                     f"success within L-inf eps={plan.eps:g}"),
            rows=tuple((p["budget"], p["median_l2"], p["success_rate"], p["success_within_eps"])
                       for p in hsj_curve)),)
        figure = Figure(
            title="Black-box attack strength against query budget",
            caption=("Left: Square was not run (it needs scores; the model answers labels only). Right: "
                     f"the share of eligible points HopSkipJump breaks within L-inf eps={plan.eps:g} "
                     "(solid) and the median L2 distance of its misclassified inputs (dashed, right "
                     "axis)."),
            how_to_read=("Read the right panel: the higher the red line climbs with more queries, the more "
                         "points the attacker breaks within eps; a falling dashed grey line means ever "
                         "smaller changes suffice."),
            png_base64=_budget_figure([], hsj_curve, plan.eps),
        )
        return Section(
            id=self.id, title=title,
            summary=(f"Seeing only labels, HopSkipJump lowers accuracy within L-inf eps={plan.eps:g} from "
                     f"{100 * clean:.1f}% to {100 * robust:.1f}% with {top} queries per point"
                     f"{_subset_note(n, ctx)}; Square skipped (labels only)."),
            severity=severity,
            atlas=atlas("AML.T0040", "AML.T0043.001", "AML.T0015"),
            recommendation=_BLACKBOX_ADVICE,
            metrics=metrics, headline=headline, findings=tuple(findings), figures=(figure,), tables=tables,
            warnings=tuple(notes),
            provenance={"plan": plan.to_dict(), "attacks": settings, "scores": "labels",
                        "model_notes": model_notes},
            points=_which_points(n, ctx),
        )


@dataclass(frozen=True, slots=True)
class TabularSection:
    """Section runner: constraint-respecting evasion of a tabular detector (MITRE ATLAS AML.T0015).

    ``TabularSearch`` (scores only) on the detected malicious rows, read at each L0 budget of
    ``ctx.plan.tabular``; every returned row is re-checked against the constraint spec (valid
    rows must be 100%). Severity from the share of detected malicious rows that still get
    caught at the headline budget (see ``evasion_severity``). A binary model's rows are pushed
    toward the other class; with more than two classes, toward each row's runner-up class
    (``runner_up_target``), "benign" then meaning "not the malicious class".

    A label-only model is searched by its labels alone (``label_scores``): success is still a
    label flip, verified by a fresh query, so the search runs; it is exact for one changed
    feature and unguided beyond, a lower bound on what a label-only attacker achieves (the
    report says so). Decision margins count as scores (the report says when they were used).
    """

    id: str = "tabular"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        plan: TabularPlan = ctx.plan.tabular
        spec, source = load_spec(plan, ctx.x, ctx.data_info)
        top = max(plan.max_changes)
        attack = TabularSearch(max_changes=top, beam_width=plan.beam_width,
                               malicious_class=plan.malicious_class, seed=ctx.seed)
        if progress is not None:
            progress(0, 1, f"tabular search, up to {top} changes")
        label_only = is_label_only(ctx.model, ctx.x, batch_size=ctx.batch_size)
        kind, model_notes = score_notes(ctx.model)
        model = label_scores(ctx.model) if label_only and isinstance(ctx.model, CallableModel) else ctx.model
        target = runner_up_target(model, ctx.x, plan.malicious_class, batch_size=ctx.batch_size)
        res = attack(model, ctx.x, ctx.y, constraints=spec, target=target)
        if progress is not None:
            progress(1, 1, f"tabular search, up to {top} changes")
        x = ctx.x
        l0 = count_changes(x, res.x_adv)
        valid = spec.check(x, res.x_adv) & (l0 <= top)
        mal = ctx.y == plan.malicious_class
        attacked = mal & (res.clean_pred == plan.malicious_class)
        curve = changes_curve(x, res.x_adv, res.success, attacked, plan.max_changes)
        at = next(p for p in curve if p["max_changes"] == plan.headline_changes)
        rate = float(at["success_rate"] or 0.0)
        hit = res.success & attacked & (l0 <= plan.headline_changes)
        cols = ((res.x_adv - x).abs() > 1e-6)[hit].sum(0).tolist()
        used = {spec.feature_names[j]: int(c) for j, c in enumerate(cols) if c}
        n_mal = int(mal.sum())
        recall_before = int(attacked.sum()) / n_mal if n_mal else math.nan
        recall_after = (int(attacked.sum()) - int(hit.sum())) / n_mal if n_mal else math.nan
        severity = evasion_severity(1.0, 1.0 - rate)
        valid_share = float(valid.float().mean()) if valid.numel() else 1.0
        q = res.point_queries[attacked].double() if res.point_queries is not None else torch.zeros(0)
        most = ", ".join(f"{k} ({v})" for k, v in sorted(used.items(), key=lambda kv: -kv[1])[:5]) or "none"
        findings = [
            f"The model detects {int(attacked.sum())} of the {n_mal} malicious rows "
            f"(recall {100 * recall_before:.1f}%).",
            f"Changing at most {plan.headline_changes} attacker-controlled features, "
            f"{100 * rate:.1f}% of them pass as benign; recall falls to {100 * recall_after:.1f}%.",
            f"Every adversarial row satisfies the constraint spec ({source}): "
            f"{100 * valid_share:.1f}% valid rows.",
            f"Features the attacker changed most: {most}.",
        ]
        if q.numel():
            findings.append(f"Median {float(q.median()):g} model queries per attacked row.")
        if target is not None:
            findings.append(
                "The model has more than two classes: each detected malicious "
                f"({class_label(plan.malicious_class, ctx.data_info.get('classes'))}) row was pushed "
                "toward its runner-up class (the other "
                "class with the highest clean score) and counts as passed when the model gives it "
                "that class; an attacker content with any other class does at least as well.")
        if label_only:
            findings.append(
                "The model answers labels only (no probabilities, no decision_function margins): the search "
                "ranked candidate rows by their label alone, so it found every single-feature evasion and "
                "searched blindly beyond one change; an attacker with scores may do better (a lower bound)."
                + (" With more than two classes and labels only, each row's target is the first class other "
                   "than the malicious one." if target is not None else ""))
        elif kind == "margins":
            findings.append(
                "The model has no predict_proba: the search ranked candidates by its decision_function "
                "margins (not probabilities; their argmax equals its predict on every query).")
        warnings: list[str] = []
        if source.startswith("inferred"):
            warnings.append("The constraint spec was inferred from the data (every feature mutable): "
                            "write a spec of what an attacker really controls for a realistic number.")
        if valid_share < 1.0:
            warnings.append(f"{int((~valid).sum())} returned rows break the constraint spec.")
        headline = {"tabular_success_rate": json_float(rate),
                    "malicious_recall_after": json_float(recall_after),
                    "tabular_valid_rows": json_float(valid_share)}
        metrics = {
            **headline, "n": int(x.shape[0]), "malicious_rows": n_mal, "attacked_rows": int(attacked.sum()),
            "label_only": label_only,
            "malicious_recall_before": json_float(recall_before), "headline_changes": plan.headline_changes,
            "invalid_rows": int((~valid).sum()), "constraints": source,
            "median_queries_per_attacked_row": json_float(float(q.median())) if q.numel() else None,
            "changes_curve": curve, "features_used": used,
        }
        tables = [
            Table(title="Evasion success by number of changed features",
                  columns=("most features changed", "rows passed as benign", "success rate"),
                  rows=tuple((p["max_changes"], p["successes"], p["success_rate"]) for p in curve)),
            Table(title=f"Features used by the attacker (at most {plan.headline_changes} changes)",
                  columns=("feature", "successful rows changing it"),
                  rows=tuple(sorted(used.items(), key=lambda kv: (-kv[1], kv[0])))),
        ]
        return Section(
            id=self.id,
            title="Tabular evasion (constraint-respecting, query-only)",
            summary=(f"Changing at most {plan.headline_changes} attacker-controlled features passes "
                     f"{100 * rate:.1f}% of detected malicious rows as benign; all adversarial rows valid."
                     if valid_share == 1.0 else
                     f"{100 * rate:.1f}% of detected malicious rows pass as benign with at most "
                     f"{plan.headline_changes} changes."),
            severity=severity,
            atlas=atlas("AML.T0015", "AML.T0043.001", "AML.T0040"),
            recommendation=_TABULAR_ADVICE,
            metrics=metrics,
            headline=headline,
            findings=tuple(findings),
            figures=(Figure(
                title="Evasion against the number of changed features",
                caption=("Left: share of detected malicious rows the search passes as benign when at "
                         "most k features may change (one search; it stops a row at its first "
                         "evading change set). Right: how often each feature was changed in the "
                         f"successful rows at k={plan.headline_changes}."),
                how_to_read=("Left: the higher the line, the more malicious rows slip through with that "
                             "few changed features; right: the longest bars are the features to harden "
                             "or monitor first."),
                png_base64=_tabular_figure(curve, used),
            ),),
            tables=tuple(tables),
            warnings=tuple(warnings),
            provenance={"plan": plan.to_dict(), "constraints": source,
                        "target": "runner-up class" if target is not None else "the other class",
                        "attacks": {"tabular": {"class": res.attack, **res.params}}, "scores": kind,
                        "ranking": "labels (one-hot)" if label_only else "scores",
                        "model_notes": model_notes},
            points=(f"{points_line(len(x), len(x))}: the {int(attacked.sum())} malicious rows the model "
                    "detects are attacked (an undetected row needs no attack; a legitimate one none)"),
        )


def runner_up_target(model: Any, x: Tensor, malicious_class: int, *, batch_size: int) -> Tensor | None:
    """Per-row target class for a model with more than two classes, else None (binary: the other class).

    ``TabularSearch`` is targeted; with C > 2 classes there is no single benign class, so each row
    is pushed toward its runner-up: the class other than ``malicious_class`` with the highest clean
    score (the nearest way out of the malicious class, costing one query per row). An untargeted
    attacker, content with any other class, succeeds at least as often.
    """
    with torch.no_grad():
        scores = torch.cat([model.scores(chunk) for chunk in torch.split(x, max(1, batch_size))])
    if scores.dim() != 2 or scores.shape[1] <= 2:
        return None
    masked = scores.detach().clone().double()
    if 0 <= malicious_class < masked.shape[1]:
        masked[:, malicious_class] = -math.inf
    return masked.argmax(1).to(x.device)
