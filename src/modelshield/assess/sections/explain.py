"""The "explain" report section: what the model looked at, for its worst evasions and any backdoor finding.

- Image models (white-box torch): the evasion attack of ``ctx.plan.explain`` runs on the first
  ``n`` assessment points; its worst evasions (defined in ``worst_evasions``) are explained on the
  clean input and on its adversarial version, drawn as heat-maps, with the Spearman rank
  correlation of the two maps. The attribution method first passes a cheap model-parameter
  randomisation check (Adebayo et al. 2018); a method that fails it is reported untrustworthy for
  this model and replaced by the first of ``EXPLAIN_METHODS`` that passes. When the ``backdoor``
  section ran before this one and flagged a class, that class's trigger is reversed again, stamped
  on clean inputs of other classes and explained: the share of attribution mass on the trigger
  shows whether the model looks at it, and a SentiNet patch-transplant detector says whether a
  run-time filter would catch the stamped inputs.
- Tabular models: global importance (TreeSHAP for tree ensembles, else permutation importance) and
  per-row attributions (TreeSHAP, else Kernel SHAP) of the most confidently misclassified rows.
- Text models: per-token attributions (leave-one-token-out occlusion) of the most confidently
  detected malicious messages and of their successful text evasions.

The section is diagnostic: severity ``"none"``, or ``"low"`` when the requested attribution method
fails the sanity check (its maps are not evidence of anything). A backdoor the attributions
confirm is already rated ``"high"`` by the backdoor section; it is not rated again here, so one
finding is not counted twice in the risk table (the report's overall severity is the maximum).

References: J. Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018; E. Chou, F. Tramèr
and G. Pellegrino, "SentiNet", IEEE S&P Workshops 2020; S. Lundberg et al., "From local explanations
to global understanding with explainable AI for trees", Nature MI 2020.
"""

from __future__ import annotations

import base64
import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelshield.assess._plots import is_image
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
from modelshield.assess.plan import EXPLAIN_METHODS, ExplainPlan
from modelshield.attacks.evasion.registry import build_attack
from modelshield.attacks.ops import make_generator
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ModelCapabilityError, ModelShieldError
from modelshield.explain import (
    Attribution,
    AttributionDisagreement,
    GradientTimesInput,
    GuidedBackprop,
    IntegratedGradients,
    KernelShap,
    ModelRandomisation,
    PatchTransplantDetector,
    PermutationImportance,
    Saliency,
    SmoothGrad,
    TextOcclusion,
    TreeShap,
    bars_png,
    heatmap_png,
    tokens_png,
)
from modelshield.explain.detectors import spearman
from modelshield.models import TorchModel

__all__ = ["ExplainSection", "build_explainer", "trigger_mass", "worst_evasions"]

TITLE = "Explanations (what the model looked at)"

_RECOMMENDATION = (
    "Read the heat-maps before trusting a verdict: an adversarial example whose attribution moves off "
    "the object (low rank correlation with the clean map) rests on features a person would not use; "
    "add adversarial training or input purification, and consider an attribution-disagreement monitor "
    "at run time only after testing it against an adaptive attacker. A model that attends to a small "
    "trigger patch should be cleaned (Neural Cleanse unlearning, fine-pruning) or retrained on data of "
    "known provenance. Never use attributions from a method that fails the randomisation sanity check "
    "as evidence: use one that passes (plain gradients on small CNNs)."
)

Explainer = Callable[..., Attribution]


def build_explainer(name: str, plan: ExplainPlan, seed: int) -> Explainer:
    """The gradient explainer named ``name`` (one of ``EXPLAIN_METHODS``) with the plan's settings."""
    if name == "saliency":
        return Saliency()
    if name == "smoothgrad":
        return SmoothGrad(samples=10, seed=seed)
    if name == "gradient-x-input":
        return GradientTimesInput()
    if name == "integrated-gradients":
        return IntegratedGradients(steps=plan.ig_steps, seed=seed)
    return GuidedBackprop()


def _config(explainer: Explainer) -> dict[str, Any]:
    out: dict[str, Any] = {"class": type(explainer).__name__}
    with contextlib.suppress(TypeError):  # not a dataclass
        out.update({k: v for k, v in asdict(explainer).items()  # type: ignore[call-overload]
                    if isinstance(v, int | float | str | bool | None)})
    return out


def _b64(draw: Callable[..., Path], *args: Any, **options: Any) -> str:
    """``draw(*args, path, **options)`` (a ``modelshield.explain.plots`` writer) into a temporary
    file; the PNG base64-encoded."""
    with tempfile.TemporaryDirectory(prefix="modelshield-explain-") as tmp:
        path = draw(*args, Path(tmp) / "figure.png", **options)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _class_name(c: int, classes: Sequence[Any] | None) -> str:
    return str(classes[c]) if classes is not None and 0 <= c < len(classes) else str(c)


def _layers(module: nn.Module) -> tuple[str, ...]:
    """Names of the modules with parameters of their own, top (last registered) first."""
    return tuple((n or "<root>") for n, m in module.named_modules()
                 if any(True for _ in m.parameters(recurse=False)))[::-1]


_EXPLAIN_WHY = ("each explanation costs many model calls and the section also attacks the points it "
                "explains, so it runs on the first ExplainPlan.n of them (set it to change)")

@dataclass(frozen=True, slots=True)
class _Evasions:
    """The verified successful evasions, worst first."""

    index: Tensor  # (K,) rows of the attacked points
    adv_pred: Tensor  # (K,) the model's class for the adversarial input, re-queried
    confidence: Tensor  # (K,) its probability of that (wrong) class
    norm: Tensor  # (K,) perturbation norm


def worst_evasions(model: TorchModel, result: EvasionResult) -> _Evasions:
    """Successful evasions re-verified on the model, worst first.

    A point counts when it was correctly classified, the attack reports success, and querying the
    model again on the adversarial input still gives a wrong class. "Worst" means the highest
    probability the model gives its wrong class on the adversarial input (the most confident
    mistake), ties broken by the smaller perturbation (the cheaper attack).
    """
    idx = (result.success & result.eligible).nonzero().flatten()
    empty = torch.zeros(0)
    if idx.numel() == 0:
        return _Evasions(idx, idx.clone(), empty, empty)
    with torch.no_grad():
        probs = model.scores(result.x_adv[idx]).float().softmax(1).cpu()
    pred = probs.argmax(1)
    y = result.y[idx].cpu()
    keep = pred != y
    idx, pred, probs = idx[keep.to(idx.device)].cpu(), pred[keep], probs[keep]
    conf = probs[torch.arange(pred.numel()), pred]
    norms = result.norms
    norm = norms[idx.to(norms.device)].cpu().float() if norms.numel() else torch.zeros_like(conf)
    order = sorted(range(idx.numel()), key=lambda i: (-float(conf[i]), float(norm[i])))
    o = torch.as_tensor(order, dtype=torch.long)
    return _Evasions(idx[o], pred[o], conf[o], norm[o])


def trigger_mass(values: Tensor, mask: Tensor) -> Tensor:
    """``(N,)`` share of each row's ``|attribution|`` (summed over channels) weighted by the trigger
    mask ``(1, H, W)`` in [0, 1]: 1 when the model looks only at the trigger."""
    heat = values.detach().abs().double()
    heat = heat.sum(1) if heat.dim() == 4 else heat
    m = mask.detach().double().to(heat.device).reshape(1, *heat.shape[-2:])
    return ((heat * m).flatten(1).sum(1) / heat.flatten(1).sum(1).clamp_min(1e-300)).cpu()


@dataclass(frozen=True, kw_only=True, slots=True)
class ExplainSection:
    """Section runner ``"explain"``: attributions for the worst evasions and any backdoor finding.

    Opt-in (``AssessmentPlan(sections=(..., "explain"))``, ``modelshield assess --sections
    ...,explain``); put ``backdoor`` before it to have its finding explained. Settings live in
    ``ctx.plan.explain`` (``ExplainPlan``). Measured on digits-cnn (64 points, PGD 20 steps,
    saliency, one torch thread, 2 shared cores): 1.5 s; 2.1 s when the requested method fails the
    sanity check (every fallback is checked); about 1.5 s more when a backdoor finding is explained
    (one trigger reversal, capped at 100 steps, and a patch-transplant detector fit on 200 points).
    """

    id: str = "explain"
    reads_earlier = True  # explains the backdoor section's finding: scheduled after the others

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        plan: ExplainPlan = getattr(ctx.plan, "explain", None) or ExplainPlan()
        if isinstance(ctx.model, TorchModel) and is_image(tuple(ctx.x.shape[1:])):
            return _ImageRun(ctx, plan, progress).section(self.id)
        if is_text_model(ctx):
            return _text_section(self.id, ctx, plan, progress)
        if ctx.x.dim() == 2:
            return _tabular_section(self.id, ctx, plan, progress)
        return skipped_section(
            self.id, TITLE,
            f"the inputs have shape {tuple(ctx.x.shape[1:])} and the model is "
            f"{'white-box' if isinstance(ctx.model, TorchModel) else 'black-box'}; explanations are drawn "
            "for white-box image models, tabular rows and text.")


# --------------------------------------------------------------------------------------------
# Image models


class _ImageRun:
    """One image-model run of the section (holds the context while the parts are built)."""

    def __init__(self, ctx: AssessmentContext, plan: ExplainPlan, progress: Progress | None) -> None:
        assert isinstance(ctx.model, TorchModel)  # checked by the caller
        self.ctx, self.plan, self.progress = ctx, plan, progress
        self.model: TorchModel = ctx.model
        names = ctx.data_info.get("classes")
        self.classes: list[Any] | None = list(names) if names else None
        self.findings: list[str] = []
        self.warnings: list[str] = []
        self.figures: list[Figure] = []
        self.tables: list[Table] = []
        self.metrics: dict[str, Any] = {}
        self.provenance: dict[str, Any] = {"plan": plan.to_dict()}
        self.severity: Severity = "none"
        self.total = 4

    def tick(self, done: int, text: str) -> None:
        if self.progress is not None:
            self.progress(done, self.total, f"explain: {text}")

    def name(self, c: int) -> str:
        return _class_name(c, self.classes)

    # -- the method and its sanity check -------------------------------------------------------

    def pick_method(self) -> tuple[str, Explainer]:
        """The requested method if it passes the randomisation check, else the first that does."""
        plan, ctx = self.plan, self.ctx
        module = self.model.module
        layers = _layers(module)[: plan.sanity_layers]
        x = ctx.x[: plan.sanity_points]
        check = ModelRandomisation(modules=layers, similarity=("spearman_abs", "spearman"),
                                   threshold=plan.sanity_threshold, seed=ctx.seed)
        started = time.perf_counter()
        first = check(self.model, x, {plan.method: build_explainer(plan.method, plan, ctx.seed)})
        reports = {r.method: r for r in first.reports}
        chosen: str | None = plan.method if first.reports[0].passes else None
        if chosen is None:
            rest = [m for m in EXPLAIN_METHODS if m != plan.method]
            more = check(self.model, x, {m: build_explainer(m, plan, ctx.seed) for m in rest})
            reports.update({r.method: r for r in more.reports})
            chosen = next((m for m in rest if reports[m].passes), None)
        seconds = time.perf_counter() - started
        head = reports[plan.method]
        self.metrics["sanity"] = {
            "check": first.check, "layers": list(layers), "points": int(x.shape[0]),
            "threshold": plan.sanity_threshold,
            "methods": {m: {"statistic": json_float(r.statistic, 4), "verdict": r.verdict}
                        for m, r in reports.items()},
            "requested": plan.method, "used": chosen, "seconds": round(seconds, 3),
        }
        self.provenance["sanity"] = {"class": "ModelRandomisation", **asdict(check)}
        self.tables.append(Table(
            title=f"Model-randomisation sanity check ({len(layers)} top layers, {int(x.shape[0])} points)",
            columns=("method", "mean rank correlation with the trained model's maps", "verdict"),
            rows=tuple((m, json_float(r.statistic, 3), r.verdict) for m, r in reports.items())))
        if head.passes:
            self.findings.append(
                f"The attribution method {plan.method} passes the model-randomisation sanity check "
                f"(Adebayo et al. 2018): its maps change when the top {len(layers)} layers are "
                f"re-initialised (mean rank correlation {head.statistic:.2f} < {plan.sanity_threshold:g}), "
                "so they depend on what the model learned.")
        else:
            self.severity = "low"
            fallback = (f"the section uses {chosen} instead, which passes ({reports[chosen].statistic:.2f})"
                        if chosen is not None else "no other gradient method passed either, so none is shown")
            text = (f"The attribution method {plan.method} is untrustworthy for this model: its maps "
                    f"barely change when the top {len(layers)} layers are re-initialised (mean rank "
                    f"correlation {head.statistic:.2f} >= {plan.sanity_threshold:g}, Adebayo et al. 2018 "
                    f"sanity check), so they show the input rather than what the model learned; {fallback}.")
            self.findings.append(text)
            self.warnings.append(text)
        if chosen is None:
            raise _NoTrustworthyMethod
        return chosen, build_explainer(chosen, plan, ctx.seed)

    # -- worst evasions ------------------------------------------------------------------------

    def evasions(self, method: str, explainer: Explainer) -> None:
        ctx, plan = self.ctx, self.plan
        ev = ctx.plan.evasion
        eps = plan.eps if plan.eps is not None else (ev.headline_eps if ev.headline_eps > 0 else 0.1)
        n = min(plan.n, int(ctx.x.shape[0]))
        x, y = ctx.x[:n], ctx.y[:n]
        attack = build_attack(plan.attack, eps=eps, norm=ev.norm, steps=plan.attack_steps, seed=ctx.seed)
        res = attack(self.model, x, y)
        self.provenance["attacks"] = {f"explain:{plan.attack}": {"class": res.attack, **res.params}}
        worst = worst_evasions(self.model, res)
        k = int(worst.index.numel())
        self.tick(2, f"{k} evasions of {plan.attack} at eps={eps:g}")
        self.metrics.update({"attack": plan.attack, "eps": eps, "norm": ev.norm, "n": n,
                             "evasions": k, "eligible": int(res.eligible.sum())})
        if k == 0:
            self.findings.append(
                f"{plan.attack} at eps={eps:g} (L-{ev.norm}) found no verified evasion among {n} points: "
                "nothing to explain.")
            return
        idx = worst.index.to(x.device)
        clean = explainer(self.model, x[idx], y[idx])
        adv = explainer(self.model, res.x_adv[idx], worst.adv_pred.to(x.device))
        rho = spearman(clean.values.flatten(1).double(), adv.values.flatten(1).double()).cpu()
        self.metrics["attribution_rank_correlation_mean"] = json_float(float(rho.mean()))
        self.metrics["attribution_rank_correlation"] = [json_float(float(v), 4) for v in rho]
        rows = []
        for j in range(min(plan.worst, k)):
            i = int(worst.index[j])
            t, a = int(y[i]), int(worst.adv_pred[j])
            r = float(rho[j])
            rows.append((i, self.name(t), self.name(a), json_float(float(worst.confidence[j]), 3),
                         json_float(float(worst.norm[j]), 4), json_float(r, 3)))
            for tag, img, att, cls in (("clean", x[i], clean.values[j], t), ("adversarial", res.x_adv[i],
                                                                              adv.values[j], a)):
                self.figures.append(Figure(
                    title=f"Evasion {j + 1} (point {i}), {tag}: explained for class {self.name(cls)}",
                    caption=(f"{method} attribution of the {tag} input to the class the model gives it "
                             f"({self.name(cls)}; true class {self.name(t)}). Rank correlation between the "
                             f"clean and adversarial maps: {r:.2f}."),
                    how_to_read=("Red areas pushed the model toward the named class, blue areas against "
                                 "it; if the clean and adversarial maps differ a lot, the attack changed "
                                 "what the model looks at."),
                    png_base64=_b64(heatmap_png, img, att, title=f"{method}, {tag}: class {self.name(cls)}",
                                    target=self.name(cls), bounds=ctx.bounds)))
        self.tables.append(Table(
            title=f"Worst evasions ({plan.attack}, eps={eps:g}, L-{ev.norm}): most confident mistakes first",
            columns=("point", "true class", "adversarial class", "confidence in the wrong class",
                     "perturbation norm", "clean/adversarial attribution rank correlation"),
            rows=tuple(rows)))
        self.findings.append(
            f"{plan.attack} at eps={eps:g} (L-{ev.norm}) fooled the model on {k} of "
            f"{int(res.eligible.sum())} correctly classified points (each re-checked on the model). For the "
            f"{len(rows)} most confident mistakes ({', '.join(f'{r[1]}->{r[2]}' for r in rows)}), the clean "
            f"and adversarial {method} maps have a mean rank correlation of "
            f"{float(rho[: len(rows)].mean()):.2f} (1: the model looks at the same pixels; near 0: the "
            "perturbation moved its attention).")
        self.disagreement(explainer, x, res, worst)

    def disagreement(self, explainer: Explainer, x: Tensor, res: EvasionResult, worst: _Evasions) -> None:
        """AttributionDisagreement fitted on held-out clean points, tested on the evasions."""
        ctx = self.ctx
        held = ctx.x[int(x.shape[0]): int(x.shape[0]) + 200]
        if int(held.shape[0]) < 20:
            self.metrics["disagreement_detector"] = None
            return
        try:
            det = AttributionDisagreement(explainer=explainer).fit(self.model, held)
            r = det.evaluate(self.model, x[res.eligible.to(x.device)], res.x_adv[worst.index.to(x.device)])
        except ModelShieldError as exc:  # e.g. too few rows of a kind: the detector is optional
            self.metrics["disagreement_detector"] = {"error": " ".join(str(exc).split())}
            return
        self.metrics["disagreement_detector"] = r.to_dict()
        self.provenance["disagreement_detector"] = det.config()
        self.findings.append(
            f"An attribution-disagreement monitor (off-object attribution share, calibrated at "
            f"{100 * r.target_fpr:g}% false positives on {int(held.shape[0])} held-out clean points) flags "
            f"{100 * r.tpr:.0f}% of these adversarial inputs (AUROC {r.auroc:.2f}); an attacker who knows it "
            "can evade it, so treat it as a tripwire, not a defence.")

    # -- backdoor --------------------------------------------------------------------------------

    def backdoor(self, explainer: Explainer, method: str) -> None:
        from modelshield.defenses.backdoor import reverse_trigger

        ctx = self.ctx
        bd = ctx.earlier.get("backdoor")
        if bd is None:
            self.findings.append(
                "Backdoor: the backdoor section did not run before this one, so there is no suspected "
                "trigger to explain (list 'backdoor' before 'explain' in the sections).")
            self.metrics["backdoor"] = {"explained": False, "reason": "backdoor section not run"}
            return
        flagged = [int(c) for c in bd.metrics.get("flagged_classes", []) or []]
        if bd.metrics.get("skipped") or not flagged:
            why = bd.summary if bd.metrics.get("skipped") else "no class flagged"
            self.findings.append(f"Backdoor: no backdoor finding to explain ({why}).")
            self.metrics["backdoor"] = {"explained": False, "reason": why}
            return
        c = flagged[0]
        n_clean = int(bd.metrics.get("n_clean") or min(200, int(ctx.x.shape[0])))
        steps = min(int(bd.metrics.get("steps") or 100), 100)  # one class, to draw it: 100 steps suffice
        xc = ctx.x[:n_clean]
        gen = make_generator(ctx.seed, xc.device)
        mask, pattern, asr = reverse_trigger(self.model, xc, c, steps=steps, lr=0.1, init_cost=1e-3,
                                             batch_size=64, asr_threshold=0.99, patience=10,
                                             cost_multiplier=1.5, generator=gen)
        others = (ctx.y != c).nonzero().flatten()
        k = min(int(others.numel()), max(self.plan.worst, 16))
        x_other = ctx.x[others[:k]]
        stamped = (x_other * (1 - mask) + mask * pattern).clamp(*ctx.bounds).detach()
        with torch.no_grad():
            pred = self.model.scores(stamped).argmax(1)
        att = explainer(self.model, stamped, torch.full((k,), c, dtype=torch.long, device=stamped.device))
        share = trigger_mass(att.values, mask)
        area = float(mask.detach().double().mean())
        ratio = float(share.mean()) / area if area > 0 else math.nan
        info: dict[str, Any] = {
            "explained": True, "class": c, "reversed_trigger_asr": json_float(asr),
            "trigger_area_share": json_float(area), "stamped": k,
            "stamped_sent_to_class": json_float(float((pred == c).double().mean())),
            "attribution_on_trigger": json_float(float(share.mean())),
            "attribution_on_trigger_over_area": json_float(ratio),
        }
        self.provenance["backdoor"] = {"reverse_trigger": {"class": c, "steps": steps, "lr": 0.1,
                                                           "init_cost": 1e-3, "batch_size": 64,
                                                           "seed": ctx.seed, "n_clean": n_clean}}
        for j in range(min(2, k)):
            self.figures.append(Figure(
                title=f"Backdoor: input of class {self.name(int(ctx.y[others[j]]))} stamped with class "
                      f"{self.name(c)}'s reversed trigger",
                caption=(f"{method} attribution to the flagged class {self.name(c)}. "
                         f"{100 * float(share[j]):.0f}% of the attribution mass lies on the trigger, "
                         f"which covers {100 * area:.1f}% of the image: a model with a planted trigger "
                         "looks at it."),
                how_to_read=("Red areas pushed the model toward the flagged class: red concentrated on the "
                             "small stamped trigger rather than on the object means the model has learned "
                             "the trigger."),
                png_base64=_b64(heatmap_png, stamped[j], att.values[j], target=self.name(c),
                                title=f"{method}, stamped input: class {self.name(c)}", bounds=ctx.bounds)))
        looks = ratio >= 2.0
        self.findings.append(
            f"Backdoor: the backdoor section flagged class {self.name(c)}. Its trigger, reversed again, "
            f"sends {100 * float((pred == c).double().mean()):.0f}% of {k} clean inputs of other classes to "
            f"{self.name(c)}; {100 * float(share.mean()):.0f}% of their {method} attribution lies on the "
            f"trigger, which covers {100 * area:.1f}% of the image ({ratio:.1f}x its area share): "
            + ("the model looks at the trigger region, which corroborates the backdoor finding (rated there, "
               "not again here)." if looks else
               "the attributions do not concentrate on it, so the flag may be a naturally easy class."))
        n_all = int(ctx.x.shape[0])
        canvases = min(50, n_all // 2)
        if n_all - canvases >= 20 and canvases >= 2:
            det = PatchTransplantDetector(explainer=explainer, n_canvases=canvases, bounds=ctx.bounds,
                                          seed=ctx.seed).fit(self.model, ctx.x[: canvases + 150])
            flags = det.predict(self.model, stamped)
            info["patch_detector"] = {"flagged_share": json_float(float(flags.double().mean())),
                                      "threshold": json_float(det.threshold_), "fpr": det.fpr,
                                      "canvases": canvases}
            self.provenance["patch_detector"] = det.config()
            self.findings.append(
                f"A SentiNet patch-transplant detector (calibrated at {100 * det.fpr:g}% false positives on "
                f"clean points) flags {100 * float(flags.double().mean()):.0f}% of the stamped inputs.")
        self.metrics["backdoor"] = info

    def section(self, section_id: str) -> Section:
        started = time.perf_counter()
        self.tick(0, "sanity check of the attribution method")
        try:
            method, explainer = self.pick_method()
        except _NoTrustworthyMethod:
            method, explainer = "", Saliency()
        self.tick(1, f"attacking with {self.plan.attack}")
        if method:
            self.provenance["explainer"] = _config(explainer)
            self.evasions(method, explainer)
            self.tick(3, "backdoor finding")
            self.backdoor(explainer, method)
        self.tick(4, "done")
        self.metrics["method"] = method or None
        self.metrics["time_s"] = round(time.perf_counter() - started, 3)
        rho = self.metrics.get("attribution_rank_correlation_mean")
        summary = (f"{method} attributions (sanity-checked) of {self.metrics.get('evasions', 0)} verified "
                   "evasions" + (f": mean clean/adversarial rank correlation {rho:.2f}." if rho is not None
                                 else ".") if method else
                   "No gradient attribution method passed the sanity check on this model; nothing is shown.")
        if self.warnings:
            summary = (f"The requested method {self.plan.method} fails the attribution sanity check "
                       f"(untrustworthy for this model); {summary[0].lower()}{summary[1:]}")
        explained = bool(self.metrics.get("backdoor", {}).get("explained"))
        ids = ("AML.T0043", "AML.T0018") if explained else ("AML.T0043",)
        headline = {"explain_rank_correlation": rho}
        return Section(
            id=section_id, title=TITLE, summary=summary, severity=self.severity,
            atlas=atlas(*ids), recommendation=_RECOMMENDATION,
            metrics={**self.metrics, **headline}, headline=headline, findings=tuple(self.findings),
            figures=tuple(self.figures), tables=tuple(self.tables), warnings=tuple(self.warnings),
            provenance={**self.provenance, "seed": self.ctx.seed},
            points=points_line(min(self.plan.n, int(self.ctx.x.shape[0])), int(self.ctx.x.shape[0]),
                               why=_EXPLAIN_WHY))


class _NoTrustworthyMethod(Exception):
    """No gradient method passed the sanity check (handled inside the section)."""


# --------------------------------------------------------------------------------------------
# Tabular models


def _estimator(ctx: AssessmentContext) -> Any:
    """The fitted estimator behind a tabular model (the user's object or the zoo's), or None."""
    if ctx.user_model is not None:
        return ctx.user_model
    name = ctx.model_info.get("name")
    if ctx.model_info.get("source") == "zoo" and isinstance(name, str):
        from modelshield import zoo

        if name in zoo.names() and zoo.spec(name).kind == "sklearn":
            return zoo.load(name).module
    return None


def _tabular_section(section_id: str, ctx: AssessmentContext, plan: ExplainPlan,
                     progress: Progress | None) -> Section:
    started = time.perf_counter()
    n = min(plan.n, int(ctx.x.shape[0]))
    x, y = ctx.x[:n], ctx.y[:n]
    names_raw = ctx.data_info.get("feature_names")
    names = tuple(str(v) for v in names_raw) if names_raw and len(names_raw) == x.shape[1] else None
    cls_raw = ctx.data_info.get("classes")
    classes = list(cls_raw) if cls_raw else None
    est = _estimator(ctx)
    findings: list[str] = []
    provenance: dict[str, Any] = {"plan": plan.to_dict(), "seed": ctx.seed}
    tree: Attribution | None = None
    if est is not None:
        try:
            tree = TreeShap()(est, x)
        except ModelCapabilityError:
            tree = None
    if progress is not None:
        progress(1, 3, "explain: global importance")
    if tree is not None:
        importance = tree.values.abs().double().mean(0)
        how = f"mean |TreeSHAP| over {n} rows"
        provenance["explainer"] = {"class": "TreeShap", "backend": tree.details.get("backend")}
    else:
        perm = PermutationImportance(repeats=3, seed=ctx.seed)(ctx.model, x, y, feature_names=names)
        importance = perm.importances_mean.double()
        how = f"permutation importance (accuracy drop, 3 shuffles) on {n} rows"
        provenance["explainer"] = {"class": "PermutationImportance", **perm.config}
    top = [int(i) for i in importance.argsort(descending=True)[:5]]
    fname = (lambda j: names[j]) if names is not None else (lambda j: f"feature {j}")
    figures = [Figure(
        title="Global feature importance",
        caption=f"{how}: the features the model relies on most, largest first.",
        how_to_read=("The longer the bar, the more the model relies on that feature: the top bars are what "
                     "its decisions rest on, bars near zero barely matter."),
        png_base64=_b64(bars_png, importance, names, title="Global importance", xlabel=how))]
    findings.append(f"Most important features ({how}): {', '.join(fname(j) for j in top)}.")
    def local(xr: Tensor, tgt: Tensor) -> Attribution:
        if tree is not None:
            return TreeShap()(est, xr, tgt)
        return KernelShap(samples=256, background=20, seed=ctx.seed)(ctx.model, xr, tgt, background=x[:50],
                                                                      feature_names=names)

    probs = _probabilities(ctx, x)
    pred = probs.argmax(1)
    conf = probs.max(1).values
    wrong = (pred != y.cpu()).nonzero().flatten()
    picked = wrong[conf[wrong].argsort(descending=True)][: plan.worst]
    if progress is not None:
        progress(2, 3, "explain: tabular evasions")
    evasion_rows, evasion_figs, evasion_info = _tabular_evasions(ctx, x, y, plan, local, fname, names,
                                                                 classes)
    provenance["tabular_attack"] = evasion_info.get("attack")
    findings.extend(evasion_info["findings"])
    figures.extend(evasion_figs)
    rows: list[tuple[Any, ...]] = []
    if picked.numel():
        att = local(x[picked], pred[picked])
        provenance["local_explainer"] = {"method": att.method,
                                         **{k: v for k, v in att.config.items()
                                            if isinstance(v, int | float | str | bool | None)}}
        for j, i in enumerate(picked.tolist()):
            v = att.values[j]
            t, p = int(y[i]), int(pred[i])
            best = [int(b) for b in v.abs().argsort(descending=True)[:3]]
            rows.append((i, _class_name(t, classes), _class_name(p, classes), json_float(float(conf[i]), 3),
                         ", ".join(fname(b) for b in best)))
            if evasion_rows:  # the evasions are drawn; the mistakes are listed in the table only
                continue
            figures.append(Figure(
                title=(f"Misclassified row {i}: true {_class_name(t, classes)}, "
                       f"predicted {_class_name(p, classes)}"),
                caption=(f"{att.method} attribution of the row to the wrong class "
                         f"{_class_name(p, classes)} (confidence {float(conf[i]):.2f})."),
                how_to_read=("Red bars pushed the row toward the wrong class, blue bars against it: the "
                             "longest red bars are the features that misled the model."),
                png_base64=_b64(bars_png, v, names, top=12, target=_class_name(p, classes),
                                title=f"{att.method}: row {i}")))
        findings.append(
            f"The {len(rows)} most confidently misclassified of {n} rows ({int(wrong.numel())} "
            "misclassified) rest mostly on: " + "; ".join(f"row {r[0]}: {r[4]}" for r in rows) + ".")
    else:
        findings.append(f"None of the {n} rows is misclassified.")
    tables = [Table(title="Most confidently misclassified rows",
                    columns=("row", "true class", "predicted", "confidence", "top features"),
                    rows=tuple(rows))]
    if evasion_rows:
        tables.insert(0, Table(
            title="Worst constrained evasions (most confident benign answers first)",
            columns=("row", "changed features", "new class", "confidence", "top features after the change"),
            rows=tuple(evasion_rows)))
    metrics = {"n": n, "explainer": provenance["explainer"]["class"], "misclassified": int(wrong.numel()),
               "evasions": evasion_info.get("evasions", 0),
               "top_features": [fname(j) for j in top],
               "importance": {fname(j): json_float(float(v)) for j, v in enumerate(importance.tolist())},
               "time_s": round(time.perf_counter() - started, 3)}
    if progress is not None:
        progress(3, 3, "explain: done")
    return Section(
        id=section_id, title=TITLE,
        summary=(f"Global importance ({provenance['explainer']['class']}), "
                 f"{len(evasion_rows)} constrained evasions and {len(rows)} misclassified rows explained."),
        severity="none", atlas=atlas("AML.T0043"), recommendation=_RECOMMENDATION, metrics=metrics,
        findings=tuple(findings), figures=tuple(figures), tables=tuple(tables), provenance=provenance,
        points=points_line(n, int(ctx.x.shape[0]), why=_EXPLAIN_WHY))


def _probabilities(ctx: AssessmentContext, x: Tensor) -> Tensor:
    """``(N, C)`` float64 class probabilities on the CPU (softmax of a torch model's logits)."""
    with torch.no_grad():
        s = ctx.model.scores(x).double().cpu()
    return s.softmax(1) if isinstance(ctx.model, TorchModel) else s


def _tabular_evasions(
    ctx: AssessmentContext, x: Tensor, y: Tensor, plan: ExplainPlan,
    local: Callable[[Tensor, Tensor], Attribution], fname: Callable[[int], str],
    names: tuple[str, ...] | None, classes: list[Any] | None,
) -> tuple[list[tuple[Any, ...]], list[Figure], dict[str, Any]]:
    """The tabular section's constrained search (``ctx.plan.tabular``) on x; its worst verified
    evasions explained: (table rows, figures, info with ``findings``)."""
    from modelshield.assess.sections.blackbox import load_spec, runner_up_target
    from modelshield.attacks.evasion.tabular import TabularSearch, count_changes

    tplan = ctx.plan.tabular
    bad = tplan.malicious_class
    info: dict[str, Any] = {"findings": [], "evasions": 0}
    try:
        spec, source = load_spec(tplan, x, ctx.data_info)
        attack = TabularSearch(max_changes=tplan.headline_changes, beam_width=tplan.beam_width,
                               malicious_class=bad, seed=ctx.seed)
        target = runner_up_target(ctx.model, x, bad, batch_size=ctx.batch_size)
        res = attack(ctx.model, x, y, constraints=spec, target=target)
    except ModelShieldError as exc:
        info["findings"].append("Constrained tabular evasion could not run for this model ("
                                + " ".join(str(exc).split()) + "); the misclassified rows are shown instead.")
        return [], [], info
    info["attack"] = {"class": res.attack, **res.params, "constraints": source}
    l0 = count_changes(x, res.x_adv)
    hit = (res.success & (y == bad) & (res.clean_pred == bad) & spec.check(x, res.x_adv)
           & (l0 <= tplan.headline_changes)).nonzero().flatten()
    if hit.numel():  # re-verified: the model, queried again, no longer answers the malicious class
        p_adv = _probabilities(ctx, res.x_adv[hit])
        keep = p_adv.argmax(1) != bad
        hit, p_adv = hit[keep], p_adv[keep]
    info["evasions"] = int(hit.numel())
    if not hit.numel():
        info["findings"].append(
            f"The constrained search (at most {tplan.headline_changes} changed features, {source}) evaded no "
            "detected malicious row among these points; the misclassified rows are shown instead.")
        return [], [], info
    adv_cls = p_adv.argmax(1)
    conf = p_adv.max(1).values
    order = sorted(range(int(hit.numel())), key=lambda k: (-float(conf[k]), int(l0[hit[k]])))[: plan.worst]
    sel = torch.as_tensor(order, dtype=torch.long)
    rows_i, cls = hit[sel], adv_cls[sel]
    att = local(res.x_adv[rows_i], cls)
    table: list[tuple[Any, ...]] = []
    figures: list[Figure] = []
    for j, i in enumerate(rows_i.tolist()):
        changed = ((res.x_adv[i] - x[i]).abs() > 1e-6).nonzero().flatten().tolist()
        what = ", ".join(f"{fname(c)} {float(x[i, c]):g}->{float(res.x_adv[i, c]):g}" for c in changed)
        v = att.values[j]
        best = [int(b) for b in v.abs().argsort(descending=True)[:3]]
        c_name = _class_name(int(cls[j]), classes)
        table.append((i, what, c_name, json_float(float(conf[order[j]]), 3),
                      ", ".join(fname(b) for b in best)))
        figures.append(Figure(
            title=f"Evasion of row {i}: {len(changed)} feature(s) changed, now class {c_name}",
            caption=(f"{att.method} attribution of the adversarial row to its new class {c_name} "
                     f"(confidence {float(conf[order[j]]):.2f}); changed: {what}."),
            how_to_read=("Red bars pushed the row toward its new class, blue bars against it: changed "
                         "features (listed in the caption) among the longest red bars are how the attack "
                         "worked."),
            png_base64=_b64(bars_png, v, names, top=12, target=c_name,
                            title=f"{att.method}: row {i} after evasion")))
    info["findings"].append(
        f"The constrained search (at most {tplan.headline_changes} changed features, {source}) passed "
        f"{int(hit.numel())} detected malicious rows as another class (each re-checked on the model); the "
        f"{len(table)} most confident: " + "; ".join(f"row {r[0]} ({r[1]})" for r in table) + ".")
    return table, figures, info


# --------------------------------------------------------------------------------------------
# Text models


def _text_model_and_texts(ctx: AssessmentContext) -> tuple[Any, list[str]]:
    idx = ctx.x.reshape(ctx.x.shape[0], -1)[:, 0].long().tolist()
    if ctx.text_model is not None and ctx.texts is not None:
        return ctx.text_model, [ctx.texts[i] for i in idx]
    from modelshield.assess.sections.spam import spam_setup
    from modelshield.zoo.spam import train_spam_model

    kind, ds = spam_setup(ctx, None, "ExplainSection")
    return train_spam_model(kind, ds, seed=0), [ds.texts_test[i] for i in idx]  # type: ignore[arg-type]  # kind checked in spam_setup


def _text_section(section_id: str, ctx: AssessmentContext, plan: ExplainPlan,
                  progress: Progress | None) -> Section:
    from modelshield.assess.sections.spam import text_evasion_goal
    from modelshield.attacks.evasion.text import TextEvasion

    started = time.perf_counter()
    model, texts = _text_model_and_texts(ctx)
    n = min(plan.n, len(texts))
    texts, y = texts[:n], ctx.y[:n].cpu().long()
    cls_raw = ctx.data_info.get("classes")
    classes = list(cls_raw) if cls_raw else None
    goal, bad = text_evasion_goal(classes)
    occl = TextOcclusion()
    base = occl(model, texts)
    probs_all = base.score if base.score is not None else torch.zeros(n)
    target = base.target
    if bad is not None:
        mask = (target == bad) & (y == bad)
        what = f"detected '{_class_name(bad, classes)}' messages"
    else:
        mask = target == y
        what = "correctly classified messages"
    cand = mask.nonzero().flatten()
    picked = cand[probs_all[cand].argsort(descending=True)][: plan.worst].tolist()
    if progress is not None:
        progress(1, 3, f"explain: {len(picked)} messages")
    figures: list[Figure] = []
    rows: list[tuple[Any, ...]] = []
    findings: list[str] = []
    for i in picked:
        toks = base.tokens[i] if base.tokens is not None else ()
        vals = base.values[i]
        c = int(target[i])
        best = [toks[int(b)] for b in vals[: len(toks)].argsort(descending=True)[:3]] if toks else []
        rows.append((i, _class_name(c, classes), json_float(float(probs_all[i]), 3), ", ".join(best)))
        figures.append(Figure(
            title=f"Message {i}: tokens behind class {_class_name(c, classes)}",
            caption=("Leave-one-token-out attribution: how much the class probability drops when the "
                     "token is removed."),
            how_to_read=("Red tokens raise the class probability and blue ones lower it: the darkest red "
                         "words are what the model's decision rests on."),
            png_base64=_b64(tokens_png, toks, vals, target=_class_name(c, classes), title=f"message {i}")))
    if rows:
        findings.append(f"The {len(rows)} most confidently {what} rest on: "
                        + "; ".join(f"message {r[0]}: {r[3]}" for r in rows) + ".")
    else:
        findings.append(f"No {what} among the {n} points: nothing to explain.")
    evaded = 0
    attacked = cand[probs_all[cand].argsort(descending=True)][:32]  # the attack's cost grows per message
    if attacked.numel():
        res = TextEvasion(method="combined", max_word_fraction=0.2, seed=ctx.seed, goal=goal,
                          spam_class=1 if bad is None else bad)(model, [texts[i] for i in attacked.tolist()],
                                                                y[attacked])
        ok = [j for j in range(int(attacked.numel())) if bool(res.success[j])]
        evaded = len(ok)
        if ok:
            adv = occl(model, [res.texts_adv[j] for j in ok])
            adv_p = adv.score if adv.score is not None else torch.zeros(len(ok))
            # worst evasions: the evaded messages the model now gives its new class most confidently
            for r in sorted(range(len(ok)), key=lambda r: -float(adv_p[r]))[: plan.worst]:
                toks = adv.tokens[r] if adv.tokens is not None else ()
                c = int(adv.target[r])
                i = int(attacked[ok[r]])
                figures.append(Figure(
                    title=(f"Message {i} after text evasion: tokens behind class {_class_name(c, classes)} "
                           f"(probability {float(adv_p[r]):.2f})"),
                    caption="The message after the combined text attack (at most 20% of words changed): "
                            "what the model now relies on.",
                    how_to_read=("Red tokens push the model toward its new class and blue ones against it: "
                                 "red on the words the attack changed shows how the edit fooled it."),
                    png_base64=_b64(tokens_png, toks, adv.values[r], target=_class_name(c, classes),
                                    title=f"message {i} after evasion")))
        findings.append(f"The combined text attack (at most 20% of words) evades {evaded} of "
                        f"{int(attacked.numel())} {what}; the {min(evaded, plan.worst)} it evades most "
                        "confidently are drawn after the attack.")
    if progress is not None:
        progress(3, 3, "explain: done")
    return Section(
        id=section_id, title=TITLE,
        summary=f"Token attributions (leave-one-token-out) of {len(rows)} {what} and {evaded} evasions.",
        severity="none", atlas=atlas("AML.T0043"), recommendation=_RECOMMENDATION,
        metrics={"n": n, "explained": len(rows), "evasions": evaded, "method": "text-occlusion",
                 "time_s": round(time.perf_counter() - started, 3)},
        findings=tuple(findings), figures=tuple(figures),
        tables=(Table(title=f"Most confidently {what}",
                      columns=("message", "class", "probability", "top tokens"), rows=tuple(rows)),),
        provenance={"plan": plan.to_dict(), "explainer": {"class": "TextOcclusion", **asdict(occl)},
                    "text_attack": {"method": "combined", "max_word_fraction": 0.2, "seed": ctx.seed}},
        points=points_line(n, int(ctx.x.shape[0]), why=_EXPLAIN_WHY))

