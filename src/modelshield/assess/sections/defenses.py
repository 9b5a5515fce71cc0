"""The "defenses" report section: a defended model against the undefended one, with masking checks.

Both models are attacked on the same points at the same budget (PGD, the standard Ensemble,
FGSM, Square) by ``assess.masking.check_gradient_masking``, which also looks for the signs of
gradient masking of Carlini et al. (2019). The defence is said to hold only when the defended
model is still a classifier (clean accuracy above chance and within ``MAX_CLEAN_DROP`` of the
undefended model's), shows no sign of masking, and its per-point worst-case robust accuracy
beats the undefended model's by more than noise; a flagged model is never called robust, and a
defended model at chance is a failed defence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from matplotlib.figure import Figure as MplFigure
from torch import nn

from modelshield.assess._plots import png_base64
from modelshield.assess._section import (
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
    max_severity,
    points_line,
)
from modelshield.assess.masking import MaskingReport, check_gradient_masking
from modelshield.assess.plan import DefensesPlan
from modelshield.assess.sections.evasion import evasion_severity
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.results import EvasionResult
from modelshield.defenses.usable import MAX_CLEAN_DROP, Usability, check_usable
from modelshield.errors import ConfigError
from modelshield.models import TorchModel, eval_mode

__all__ = ["DefensesSection", "Verdict", "comparison_figure", "defended_usability", "defense_verdict"]

Verdict: TypeAlias = Literal["holds", "masked", "no gain", "failed"]

TITLE = "Evasion defences (defended vs undefended model)"

RECOMMENDATION = (
    "Use adversarial training at the threat model's budget: PGD adversarial training (Madry et al., "
    "2018) or TRADES (Zhang et al., 2019) (modelshield.defenses.training.AdversarialTrainer, "
    "`modelshield defend adversarial-training`). For a certified L2 guarantee, wrap the model in "
    "randomized smoothing (Cohen et al., 2019; `modelshield certify`). Never rely on defensive "
    "distillation alone: it masks gradients and is broken by attacks on the logits (Carlini and "
    "Wagner, 2017). Judge any defence by its worst case under strong and black-box attacks "
    "(Ensemble, Square) with the gradient-masking checks clean, as this section does."
)


def defended_usability(defended: MaskingReport, undefended: MaskingReport, *,
                       max_drop: float = MAX_CLEAN_DROP) -> Usability:
    """``check_usable`` of the defended model: against chance (as ``check_gradient_masking``
    measured it on these points) and against the undefended model's clean accuracy."""
    base = defended.usability if defended.usability is not None else undefended.usability
    if base is None:  # reports built by hand: only the comparison with the undefended model
        return check_usable(defended.clean_accuracy, n=defended.n, n_classes=2, chance=0.0,
                            reference_accuracy=undefended.clean_accuracy, max_drop=max_drop)
    return check_usable(defended.clean_accuracy, n=defended.n, n_classes=base.n_classes,
                        chance=base.chance_accuracy, reference_accuracy=undefended.clean_accuracy,
                        max_drop=max_drop)


def defense_verdict(defended: MaskingReport, undefended: MaskingReport, *, tol: float,
                    max_drop: float = MAX_CLEAN_DROP) -> Verdict:
    """``"failed"`` when the defended model is not usable (clean accuracy at chance, or more than
    ``max_drop`` below the undefended model's: ``defended_usability``), else ``"masked"`` when it
    raises any masking flag, else ``"holds"`` when its worst-case robust accuracy beats the
    undefended model's by more than ``tol``, else ``"no gain"``."""
    if not defended_usability(defended, undefended, max_drop=max_drop).usable:
        return "failed"
    if defended.flags:
        return "masked"
    if defended.robust_accuracy - undefended.robust_accuracy > tol:
        return "holds"
    return "no gain"


def comparison_figure(
    curves: Mapping[str, tuple[list[float], list[float]]],
    *,
    worst: Mapping[str, float],
    eps: float,
    norm: str,
) -> str:
    """Robust accuracy against eps, one line per model, the worst case at eps marked; base64 PNG.

    Args:
        curves: label -> (eps values, accuracies); eps 0 is the clean accuracy.
        worst: label -> per-point worst-case robust accuracy at ``eps``.
        eps: the compared budget (dotted line). norm: for the axis label.
    """
    colors = ("#57606a", "#1f6feb", "#d1242f", "#2da44e")
    fig = MplFigure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.8, color=color, label=f"{label} (Ensemble)")
        if label in worst:
            ax.plot([eps], [worst[label]], marker="x", ms=9, mew=2, ls="none", color=color,
                    label=f"{label}: worst case at eps")
    ax.axvline(eps, color="#bf8700", ls=":", lw=1.2, label=f"eps={eps:g}")
    ax.set_xlabel(f"eps (L-{norm} norm)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return png_base64(fig)


def _skipped(section_id: str, reason: str, settings: dict[str, Any]) -> Section:
    return Section(
        id=section_id, title=TITLE, summary=f"Skipped: {reason}", severity="none",
        metrics={"skipped": True, "reason": reason}, findings=(f"Not run: {reason}",),
        recommendation=RECOMMENDATION, atlas=atlas("AML.T0015", "AML.T0043"),
        provenance={"plan": settings},
    )


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


@dataclass(frozen=True, slots=True)
class _Defended:
    module: nn.Module
    name: str
    source: str
    zoo_eps: float | None
    zoo_bounds: tuple[float, float] | None


def _counterpart(ctx: AssessmentContext, plan: DefensesPlan,
                 progress: Progress | None) -> _Defended | str:
    """The defended model, or why there is none (a skip reason)."""
    from modelshield import zoo

    if not isinstance(ctx.model, TorchModel):
        return ("the assessed model is a black box (outputs only); the comparison runs white-box "
                "gradient attacks on both models, so only torch classifiers are compared.")
    if isinstance(plan.defended, nn.Module):
        return _Defended(module=plan.defended, name=plan.name or type(plan.defended).__name__, source="plan",
                         zoo_eps=None, zoo_bounds=None)
    name = plan.defended
    if name is None:
        assessed = ctx.model_info.get("name")
        candidate = f"{assessed}-at"
        if not isinstance(assessed, str) or assessed not in zoo.names() or candidate not in zoo.names():
            return (f"no defended model to compare with (the assessed model {assessed!r} has no "
                    "adversarially trained zoo counterpart '<name>-at'); pass a defended model: "
                    "--defended PATH or a zoo name (DefensesPlan(defended=...)).")
        name = candidate
        if zoo.spec(name).slow and not zoo.is_cached(name):
            return (f"the assessed model's defended counterpart {name!r} is not cached and takes about "
                    f"an hour to train ({zoo.spec(name).description}); train it once with "
                    f"`modelshield zoo train {name}`, or pass it explicitly (--defended {name}) to "
                    "train it as part of this assessment.")

    def tick(done: int, total: int, text: str) -> None:
        if progress is not None:
            progress(done, total, f"defenses: {name}: {text}")

    if not zoo.is_cached(name):
        tick(0, 1, f"not cached, training it first ({zoo.spec(name).description})")
    zm = zoo.load(name, progress=tick)
    if not isinstance(zm.module, nn.Module):  # refused by DefensesPlan; kept for zoo changes
        return f"the zoo model {name!r} is not a torch module; pass a white-box defended model."
    return _Defended(module=zm.module, name=plan.name or name, source="zoo", zoo_eps=zm.spec.eps,
                     zoo_bounds=zm.spec.bounds)


def _check_compatible(ctx: AssessmentContext, assessed: TorchModel, d: _Defended) -> None:
    """Raise ConfigError when the defended model cannot stand in for the assessed one."""
    owner = "DefensesSection"
    if d.zoo_bounds is not None and tuple(d.zoo_bounds) != tuple(ctx.bounds):
        raise ConfigError(
            f"{owner}: the defended zoo model {d.name!r} must take inputs in the assessed bounds "
            f"{ctx.bounds}; got {d.zoo_bounds}. Pick a defended model trained on the same data."
        )
    probe = ctx.x[:1]
    shape = tuple(probe.shape[1:])
    defended = TorchModel(d.module, bounds=ctx.bounds)
    if defended.device is not None and defended.device != probe.device:
        raise ConfigError(
            f"{owner}: the defended model {d.name!r} must be on the assessed inputs' device {probe.device}; "
            f"got {defended.device}. Move it with .to('{probe.device}') before the assessment."
        )
    with torch.no_grad(), eval_mode(assessed), eval_mode(defended):
        ref = assessed.module(probe)
        try:
            out = d.module(probe)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{owner}: the defended model {d.name!r} must accept the assessed inputs of shape "
                f"{shape}; got {type(exc).__name__}: {exc}. Pass a defended version of the same model."
            ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != ref.shape[1]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{owner}: the defended model {d.name!r} must return (N, {ref.shape[1]}) logits like the "
            f"assessed model; got {got}. Pass a defended version of the same classifier."
        )


def _resolve_eps(ctx: AssessmentContext, plan: DefensesPlan, d: _Defended) -> tuple[float, str]:
    """The compared budget and where it comes from."""
    if plan.eps is not None:
        return plan.eps, "plan"
    if d.zoo_eps is not None and plan.norm == "inf":
        return float(d.zoo_eps), f"training eps of zoo model {d.name!r}"
    evasion = getattr(ctx.plan, "evasion", None)
    head = getattr(evasion, "headline_eps", 0.0)
    if evasion is not None and getattr(evasion, "norm", None) == plan.norm and head > 0:
        return float(head), "evasion headline eps"
    raise ConfigError(
        f"DefensesSection: 'eps' must be known for the comparison; got none (DefensesPlan.eps is None, "
        f"{d.name!r} is not an adversarially trained zoo model and the evasion plan has no positive "
        f"L-{plan.norm} headline eps). Pass DefensesPlan(eps=...)."
    )


@dataclass(frozen=True, slots=True)
class _Run:
    label: str
    name: str
    report: MaskingReport
    curve: tuple[list[float], list[float]]

    def row(self, verdict: str) -> tuple[Any, ...]:
        r = self.report
        return (f"{self.label}: {self.name}", json_float(r.clean_accuracy, 4),
                json_float(r.attack_robust_accuracy, 4), json_float(r.ensemble_robust_accuracy, 4),
                json_float(r.robust_accuracy, 4), ", ".join(r.flag_names) or "none", verdict)

    def metrics(self) -> dict[str, Any]:
        return {"name": self.name, **self.report.to_dict(),
                "ensemble_curve": [[e, json_float(a)] for e, a in zip(*self.curve, strict=True)]}


@dataclass(frozen=True, slots=True)
class DefensesSection:
    """Section runner: does an evasion defence hold? (MITRE ATLAS AML.T0015 via AML.T0043)

    Compares the defended counterpart of the assessed model (``ctx.plan.defenses``, see
    ``DefensesPlan``; by default the zoo entry ``<name>-at`` of an assessed zoo model) with the
    assessed, undefended model on the same ``n`` points at one budget eps. For each model
    ``check_gradient_masking`` runs PGD (``steps``, ``loss``), the standard Ensemble (APGD-CE +
    APGD-T, ``steps`` each), FGSM, Square (``square_queries``), reseeded PGD and a PGD eps
    sweep up to an unbounded budget, and reports the per-point worst case over the attacks at
    eps and every sign of gradient masking with its evidence; the Ensemble is also run at
    ``curve_factors * eps`` for a robust-accuracy-against-eps plot of both models.

    Verdict (``defense_verdict``): ``"failed"`` when the defended model is not a usable
    classifier (clean accuracy at chance, or more than ``MAX_CLEAN_DROP`` = 15 points below the
    undefended model's; a constant prediction is "robust" to everything, so its robust
    accuracy means nothing); ``"holds"`` only when the defended model is usable, raises no
    masking flag and its worst-case robust accuracy beats the undefended model's by more than the
    noise tolerance ``DefensesPlan.tol`` (default ``max(0.03, 3 / n)``, also used by the checks);
    ``"masked"`` when it raises a flag (it is then never called robust, whatever its numbers);
    ``"no gain"`` otherwise. Severity is
    ``evasion_severity`` of the defended model's worst case (robust / clean ratio), raised to at
    least ``"high"`` when it is flagged or failed.

    Skipped with the reason for a black-box assessed model and when no defended model is known.
    Opt-in: ``AssessmentPlan(sections=(..., "defenses"))`` or ``modelshield assess --sections
    evasion,defenses --defended PATH|ZOO_NAME``. Cost on one torch thread (200 digits points,
    digits-cnn vs digits-cnn-at, default settings): about 15-25 s.

    Reference: Carlini et al., "On Evaluating Adversarial Robustness", 2019 (arXiv:1902.06705);
    Athalye, Carlini and Wagner, ICML 2018 (arXiv:1802.00420); Croce and Hein, ICML 2020
    (arXiv:2003.01690).
    """

    id: str = "defenses"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        plan: DefensesPlan = ctx.plan.defenses
        found = _counterpart(ctx, plan, progress)
        if isinstance(found, str):
            if progress is not None:
                progress(1, 1, "defenses: skipped")
            return _skipped(self.id, found, plan.to_dict())
        if not isinstance(ctx.model, TorchModel):  # narrowed by _counterpart; for mypy
            raise RuntimeError("unreachable: _counterpart skips black-box models")
        assessed = ctx.model
        if found.source != "plan":  # the section's own zoo copy runs where the assessed model does;
            found.module.to(ctx.x.device)  # a model handed in the plan is never moved (check below)
        _check_compatible(ctx, assessed, found)
        eps, eps_source = _resolve_eps(ctx, plan, found)
        n = int(ctx.x.shape[0]) if plan.n is None else min(plan.n, int(ctx.x.shape[0]))
        x, y = ctx.x[:n], ctx.y[:n]
        defended = TorchModel(found.module, bounds=ctx.bounds)
        tol = plan.tol if plan.tol is not None else max(0.03, 3.0 / n)
        extra = [f for f in plan.curve_factors if f != 1.0]
        total = 2 * (1 + len(extra))
        done = 0

        def step(text: str) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, f"defenses: {text}")

        runs: list[_Run] = []
        attacks: dict[str, Any] = {}
        for label, name, m in (("undefended", str(ctx.model_info.get("name", "model")), assessed),
                               ("defended", found.name, defended)):
            with eval_mode(m):
                rep = check_gradient_masking(
                    m, x, y, eps=eps, norm=plan.norm,
                    attack=PGD(eps=eps, norm=plan.norm, steps=plan.steps, loss=plan.loss,
                               seed=ctx.seed),
                    ensemble=Ensemble.standard(eps, plan.norm, seed=ctx.seed, steps=plan.steps),
                    square_queries=plan.square_queries, seeds=plan.seeds, tol=tol, seed=ctx.seed)
                step(f"{label} model: masking checks at eps={eps:g}")
                at: dict[float, EvasionResult] = {1.0: rep.results["ensemble"]}
                for f in extra:
                    at[f] = Ensemble.standard(eps * f, plan.norm, seed=ctx.seed, steps=plan.steps)(m, x, y)
                    step(f"{label} model: Ensemble at eps={eps * f:g}")
            xs = [0.0, *(eps * f for f in plan.curve_factors)]
            ys = [rep.clean_accuracy, *(at[f].robust_accuracy for f in plan.curve_factors)]
            runs.append(_Run(label=label, name=name, report=rep, curve=(xs, ys)))
            if not attacks:
                for key in ("attack", "ensemble", "fgsm", "square"):
                    res = rep.results[key]
                    attacks[f"defenses/{key}"] = {"class": res.attack, **res.params}
        return self._section(plan, found, runs, eps, eps_source, n, tol, attacks, total=int(ctx.x.shape[0]))

    def _section(self, plan: DefensesPlan, found: _Defended, runs: list[_Run], eps: float,
                 eps_source: str, n: int, tol: float, attacks: dict[str, Any], *, total: int) -> Section:
        from modelshield.models.load import weights_sha256

        und, dfd = runs
        u, d = und.report, dfd.report
        verdict = defense_verdict(d, u, tol=tol)
        usability = defended_usability(d, u)
        gain = d.robust_accuracy - u.robust_accuracy
        severity: Severity = evasion_severity(d.clean_accuracy, d.robust_accuracy)
        if d.flags or not usability.usable:
            severity = max_severity([severity, "high"])
        norm_txt = f"L-{plan.norm}"
        budget = f"eps={eps:g} ({norm_txt})"
        if verdict == "failed":
            summary = (f"The defence failed: {dfd.name} is not a usable classifier ({usability.reason}), "
                       f"so its robust accuracy at {budget} ({_pct(d.robust_accuracy)}) means nothing "
                       "and it is not called robust.")
        elif verdict == "holds":
            summary = (f"The defence holds at {budget}: worst-case robust accuracy {_pct(d.robust_accuracy)} "
                       f"({dfd.name}) against {_pct(u.robust_accuracy)} undefended ({und.name}), with no "
                       "sign of gradient masking.")
        elif verdict == "masked":
            summary = (f"The defence does not hold: {dfd.name} shows gradient masking "
                       f"({', '.join(d.flag_names)}), so it is not called robust; its worst case over "
                       f"all attacks at {budget} is {_pct(d.robust_accuracy)} against "
                       f"{_pct(u.robust_accuracy)} undefended.")
        else:
            summary = (f"The defence does not hold at {budget}: worst-case robust accuracy "
                       f"{_pct(d.robust_accuracy)} ({dfd.name}) against {_pct(u.robust_accuracy)} "
                       f"undefended ({und.name}), no gain beyond the noise of {_pct(tol)}.")
        findings = [
            f"Both models were attacked on the same {n} assessment points at {budget} (eps from the "
            f"{eps_source}): PGD ({plan.steps} steps, {plan.loss} loss), the Ensemble (APGD-CE + "
            f"APGD-T, {plan.steps} steps each), FGSM and Square ({plan.square_queries} queries); the "
            "worst case is per point over all of them.",
            f"Undefended {und.name}: clean {_pct(u.clean_accuracy)}, PGD {_pct(u.attack_robust_accuracy)}, "
            f"Ensemble {_pct(u.ensemble_robust_accuracy)}, worst case {_pct(u.robust_accuracy)}.",
            f"Defended {dfd.name}: clean {_pct(d.clean_accuracy)}, PGD {_pct(d.attack_robust_accuracy)}, "
            f"Ensemble {_pct(d.ensemble_robust_accuracy)}, worst case {_pct(d.robust_accuracy)} "
            f"(change {100 * gain:+.1f} points; clean accuracy "
            f"{100 * (d.clean_accuracy - u.clean_accuracy):+.1f} points).",
        ]
        if not usability.usable:
            findings.append(
                f"Failed defence: {dfd.name} is not usable: {usability.reason}. A model that does not "
                "classify clean inputs cannot be fooled, so no robustness claim is made for it.")
        if d.flags:
            findings.append(
                f"Gradient masking on {dfd.name}: {', '.join(d.flag_names)}. Its robust accuracy "
                "under gradient attacks overstates its robustness; only the worst case counts, and "
                "no robustness claim is made for it.")
        else:
            findings.append(f"No gradient-masking check fired on {dfd.name} (Carlini et al., 2019).")
        findings.append(f"Verdict: {verdict} (severity {severity}).")
        warnings = [f"{r.label} model {r.name}: {f.explanation}" for r in runs for f in r.report.flags]
        if u.flags:
            warnings.append(
                f"The undefended model {und.name} also raised masking flags ({', '.join(u.flag_names)}): "
                "its robust accuracy may be overstated, which understates the defence's gain.")
        rows = [und.row("baseline"), dfd.row(verdict)]
        tables = [
            Table(title=f"Defended vs undefended at {budget}",
                  columns=("model", "clean", f"PGD ({plan.loss})", "Ensemble", "worst case", "masking flags",
                           "verdict"),
                  rows=rows),
            Table(title="Ensemble robust accuracy by eps (eps=0: clean accuracy)",
                  columns=("model", *(f"eps={e:g}" for e in und.curve[0])),
                  rows=[(f"{r.label}: {r.name}", *(json_float(a, 4) for a in r.curve[1])) for r in runs]),
        ]
        labels = {r.label: f"{r.label} ({r.name}{', masking flagged' if r.report.flags else ''})"
                  for r in runs}
        figure = Figure(
            title="Robust accuracy against eps: defended vs undefended",
            caption=(f"Accuracy of both models on the same {n} points under the Ensemble as the "
                     f"{norm_txt} budget grows (eps=0 is clean accuracy); crosses mark the per-point "
                     f"worst case over every attack at eps={eps:g}. A flagged model's curve is not "
                     "evidence of robustness."),
            how_to_read=("Higher is better: the defence helps if its line stays above the undefended one "
                         "as eps grows; a cross below its line at the dotted eps means other attacks break "
                         "points the Ensemble missed."),
            png_base64=comparison_figure({labels[r.label]: r.curve for r in runs},
                                         worst={labels[r.label]: r.report.robust_accuracy for r in runs},
                                         eps=eps, norm=plan.norm),
        )
        headline = {
            "defended_clean_accuracy": json_float(d.clean_accuracy),
            "defended_robust_accuracy": json_float(d.robust_accuracy),
            "undefended_robust_accuracy": json_float(u.robust_accuracy),
            "defense_gain": json_float(gain),
            "defended_masking_flags": float(len(d.flags)),
        }
        metrics = {
            **headline,
            "verdict": verdict,
            "holds": verdict == "holds",
            "usable": usability.usable,
            "usability": usability.to_dict(),
            "robust_claim_allowed": d.robust_claim_allowed and usability.usable,
            "eps": eps,
            "eps_source": eps_source,
            "norm": plan.norm,
            "n": n,
            "tolerance": json_float(tol),
            "undefended": und.metrics(),
            "defended": dfd.metrics(),
        }
        defended_info = {"name": found.name, "source": found.source,
                         "weights_sha256": weights_sha256(found.module)}
        return Section(
            id=self.id, title=TITLE, summary=summary, severity=severity,
            atlas=atlas("AML.T0015", "AML.T0043"), recommendation=RECOMMENDATION,
            metrics=metrics, headline=headline, findings=tuple(findings), figures=(figure,),
            tables=tuple(tables), warnings=tuple(warnings),
            provenance={"plan": plan.to_dict(), "defended": defended_info, "attacks": attacks},
            points=points_line(n, total, why=(
                "both models face the Ensemble, PGD and Square at several budgets plus the gradient-"
                "masking checks, so this section runs on a subset (set DefensesPlan.n to change it)")),
        )
