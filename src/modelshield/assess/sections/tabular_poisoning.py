"""Label-flip poisoning of a user's refittable tabular model, retrained on the user's own data.

For a model whose training recipe can be rebuilt (``modelshield.models.refit.clone_for_refit``:
scikit-learn estimators through ``sklearn.base.clone``, XGBoost and LightGBM boosters from the
parameters and round count they keep), the user's training split is poisoned by flipping a share
of the malicious class's labels to benign, a clone of the model is refitted on it, and the
malicious recall on the assessment points is compared with a clone refitted on the clean split:
the same sweep as the spam poisoning section, with the user's model and data instead of a zoo
recipe. The malicious class is the tabular plan's ``malicious_class`` (the class index the tabular
evasion section attacks); the findings name it, and the benign class, by the data's labels
(``data_info["classes"]``) where they are known. The section reports the recipe it rebuilt.
The clean training split is also validated
(confident learning, conflicting duplicates). A model whose recipe cannot be rebuilt (a plain
callable) gets the validation alone, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelshield._checks import exception_head
from modelshield.assess._section import (
    AssessmentContext,
    Progress,
    Section,
    Table,
    atlas,
    json_float,
    max_severity,
    points_line,
    skipped_section,
)
from modelshield.assess.sections.data_validation import class_label, data_validation_section
from modelshield.assess.sections.spam import poisoning_severity
from modelshield.errors import ModelCapabilityError
from modelshield.models.refit import RefitRecipe, clone_for_refit, refit_predict

__all__ = ["TABULAR_POISON_RATES", "refit_problem", "tabular_poisoning_section"]

TABULAR_POISON_RATES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
"""Shares of the malicious class's training rows whose label is flipped to benign."""

_TITLE = "Training-data poisoning (malicious labels flipped to benign)"
_RECOMMENDATION = (
    "Validate training data before every retraining (confident learning: "
    "modelshield.defenses.data.validate_dataset / `modelshield validate-data`), keep the provenance "
    "of every labelled row, and compare each retrained model's malicious recall with the previous "
    "one on a trusted hold-out set before deploying it."
)


def refit_problem(estimator: Any) -> str | None:
    """Why ``estimator``'s training recipe cannot be rebuilt (``clone_for_refit``), or None when it can."""
    if estimator is None:
        return "the model object is not available to the section."
    try:
        clone_for_refit(estimator)
    except ModelCapabilityError as exc:
        return f"the model cannot be cloned for refitting ({str(exc).split(': ', 1)[-1]})"
    except Exception as exc:  # a user's object: whatever reading its recipe raises means "not refittable"
        return (f"the model cannot be cloned for refitting ({type(exc).__name__}: "
                f"{exception_head(exc, 120)}).")
    return None


def _output_count(estimator: Any, recipe: RefitRecipe) -> int | None:
    """How many classes the given model outputs (its ``classes_`` or the boosted recipe's), if known."""
    classes = getattr(estimator, "classes_", None)
    if classes is not None:
        try:
            return len(classes)
        except TypeError:  # a user's object with an odd classes_: unknown
            return None
    n = getattr(recipe.estimator, "n_classes", None)
    return int(n) if isinstance(n, int) else None


def _recall(pred: np.ndarray, y: np.ndarray, cls: int) -> float:
    rows = y == cls
    return float((pred[rows] == cls).mean()) if rows.any() else float("nan")


def tabular_poisoning_section(section_id: str, ctx: AssessmentContext, progress: Progress | None, *,
                              estimator: Any, rates: Sequence[float] = TABULAR_POISON_RATES,
                              headline_rate: float = 0.1) -> Section:
    """The label-flip sweep on the user's refittable tabular model (see the module docstring).

    Falls back to the validation of the training split alone (``data_validation_section``),
    saying why, when the model cannot be refitted or there is no training split.
    """
    from modelshield.attacks.poisoning.label_flip import RandomLabelFlip
    from modelshield.experiments.poisoning import class_rate

    problem = refit_problem(estimator)
    train = ctx.train
    if train is None or not isinstance(train[0], torch.Tensor):
        problem = problem or "no training split of rows was given to retrain on."
    if problem is not None or train is None:
        return data_validation_section(section_id, ctx, progress,
                                       why=f"Poisoning impact was not measured: {problem}")
    x_tr = train[0].detach().cpu().numpy()
    y_tr = train[1].detach().cpu().numpy().astype(np.int64)
    try:  # with the training rows: parameters a model file does not keep are matched to the model
        recipe: RefitRecipe = clone_for_refit(estimator, x=x_tr, y=y_tr)
    except Exception as exc:  # the user's model: a failed reconstruction is a reason, not a crash
        return data_validation_section(
            section_id, ctx, progress,
            why=(f"Poisoning impact was not measured: rebuilding the model's training recipe failed "
                 f"({type(exc).__name__}: {exception_head(exc, 120)})."))
    x_ev, y_ev = ctx.x.detach().cpu().numpy(), ctx.y.detach().cpu().numpy().astype(np.int64)
    mal = int(getattr(getattr(ctx.plan, "tabular", None), "malicious_class", 1))
    names = ctx.data_info.get("classes")
    known = [str(c) for c in names] if isinstance(names, Sequence) and not isinstance(names, str) else None
    classes = np.unique(y_tr)
    present = [known[k] if known is not None and 0 <= k < len(known) else int(k) for k in classes.tolist()]
    if mal not in classes or classes.size < 2:
        return skipped_section(section_id, _TITLE,
                               f"the training split has no rows of the malicious {class_label(mal, names)} "
                               f"(classes {present}) to flip.")
    benign = int(classes[classes != mal][0]) if classes.size == 2 else None  # the other class present
    mal_text = class_label(mal, names)
    mal_label = known[mal] if known is not None and mal < len(known) else None
    benign_text = class_label(benign, names) if benign is not None else "other classes"
    benign_label = known[benign] if known is not None and benign is not None and benign < len(known) else None
    grid = sorted({0.0, *(float(r) for r in rates), float(headline_rate)})
    with torch.no_grad():
        given = ctx.model.predict(ctx.x).cpu().numpy()
    rows: list[dict[str, Any]] = []
    agreement = float("nan")
    for i, rate in enumerate(grid):
        if progress is not None:
            progress(i, len(grid), f"poisoning: refitting with {100 * rate:g}% of {mal_text} flipped")
        if rate > 0:
            res = RandomLabelFlip(rate=class_rate(rate, y_tr, cls=mal), classes=(mal,), target_class=benign,
                                  seed=ctx.seed)(x_tr, y_tr)
            y_fit, flipped = res.y_poisoned.numpy(), res.n_poisoned
        else:
            y_fit, flipped = y_tr, 0
        try:
            pred = refit_predict(recipe.fit(x_tr, y_fit), x_ev)
        except Exception as exc:  # the user's estimator: a failed refit is a reason, not a crash
            return data_validation_section(
                section_id, ctx, progress,
                why=(f"Poisoning impact was not measured: refitting a clone of the model failed "
                     f"({type(exc).__name__}: {exception_head(exc, 120)})."))
        if rate == 0:
            agreement = float((pred == given).mean())
        rows.append({"rate": rate, "flipped": flipped, "recall": _recall(pred, y_ev, mal),
                     "accuracy": float((pred == y_ev).mean())})
    if progress is not None:
        progress(len(grid), len(grid), "poisoning: done")
    clean = rows[0]
    head = next(r for r in rows if r["rate"] == float(headline_rate))
    drop = clean["recall"] - head["recall"]
    severity = poisoning_severity(drop)
    warnings: list[str] = []
    if agreement < 0.9:
        warnings.append(
            f"A clone refitted on the clean training split agrees with the given model on only "
            f"{100 * agreement:.1f}% of the assessment points: the model was trained with another "
            "recipe or other data, so the sweep measures a stand-in retrained the same way.")
    n_out = _output_count(estimator, recipe)
    if n_out is not None and n_out > classes.size:
        warnings.append(
            f"The model has {n_out} outputs but the training split holds labels of only {classes.size} "
            f"classes ({present}): check that the data are the ones the model was trained on; "
            "the refits are trained on the classes present.")
    has_proba = callable(getattr(recipe.estimator, "predict_proba", None))  # confident learning needs it
    validation = data_validation_section(
        section_id, ctx, None, model_factory=recipe.fresh if has_proba else None,
        why="The clean training split was also validated (what a poisoner's flips would look like).")
    findings = [
        f"Training recipe rebuilt: {recipe.describe()}.",
        f"Malicious class: {mal_text}; benign: {benign_text} (the tabular plan's malicious_class).",
        f"Refitting a clone of the model on the training split ({len(y_tr)} rows) gives malicious "
        f"{mal_text} recall {100 * clean['recall']:.1f}% on {len(y_ev)} assessment points; it "
        f"agrees with the given model on {100 * agreement:.1f}% of them.",
        f"Flipping {100 * float(headline_rate):g}% of the {mal_text} training labels "
        f"({head['flipped']} rows) to {benign_text} changes that "
        f"recall to {100 * head['recall']:.1f}% (a drop of {100 * drop:.1f} points): severity {severity}.",
        *(f for f in validation.findings if not f.startswith("The clean training split")),
    ]
    table = Table(
        title=f"Malicious {mal_text} recall after refitting on poisoned labels",
        columns=("share of class flipped", "rows flipped", "malicious recall", "accuracy"),
        rows=tuple((r["rate"], r["flipped"], json_float(r["recall"], 4), json_float(r["accuracy"], 4))
                   for r in rows),
    )
    headline = {"poisoned_malicious_recall": json_float(head["recall"]),
                **{k: v for k, v in validation.headline.items()}}
    metrics = {
        **headline, "clean_refit_recall": json_float(clean["recall"]), "recall_drop": json_float(drop),
        "refit_agreement": json_float(agreement), "malicious_class": mal, "malicious_label": mal_label,
        "benign_class": benign, "benign_label": benign_label,
        "headline_rate": float(headline_rate),
        "curve": [{k: json_float(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "training_data": dict(validation.metrics),
        "recipe": recipe.to_dict(),
    }
    return Section(
        id=section_id,
        title=_TITLE,
        summary=(f"Flipping {100 * float(headline_rate):g}% of the malicious ({mal_label or f'class {mal}'}) "
                 f"training labels and refitting "
                 f"the model changes its malicious recall from {100 * clean['recall']:.1f}% to "
                 f"{100 * head['recall']:.1f}%."),
        severity=max_severity([severity, validation.severity]),
        atlas=atlas("AML.T0020"),
        recommendation=_RECOMMENDATION,
        metrics=metrics,
        headline=headline,
        findings=tuple(findings),
        tables=(table, *validation.tables),
        warnings=tuple(warnings),
        provenance={"attacks": {"poisoning:label-flip": {"rates": grid, "seed": ctx.seed,
                                                         "malicious_class": mal, "target_class": benign,
                                                         "malicious_label": mal_label,
                                                         "target_label": benign_label}},
                    "estimator": type(estimator).__name__, "recipe": recipe.to_dict(),
                    "validation": dict(validation.provenance)},
        points=(f"{points_line(len(y_ev), len(y_ev))}, on which each refitted model is scored; the "
                f"labels flipped and validated are those of the {len(y_tr)} training rows"),
    )
