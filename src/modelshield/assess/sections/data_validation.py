"""Validation of the user's own training data, as the poisoning section's finding for a user's model.

Measuring how much poisoning hurts a model retrains it on poisoned data, which needs the model's
training recipe; a user's model is run as given. What can be checked without the recipe is the
training file itself: rows whose label disagrees with what the rest of the data says (confident
learning) and identical rows with different labels, the traces a label-flipping poisoner leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelshield.assess._section import (
    AssessmentContext,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
    skipped_section,
)

__all__ = ["DATA_SEVERITY_THRESHOLDS", "class_label", "data_validation_section", "data_validation_severity",
           "name_classes"]

DATA_SEVERITY_THRESHOLDS: tuple[tuple[float, Severity], ...] = (
    (0.10, "high"),
    (0.03, "medium"),
    (0.005, "low"),
)
"""``(minimum share of training rows flagged, severity)``, checked in order; less is ``"none"``.

A row counts when confident learning calls its label an issue or it is the minority label of a
group of identical rows with different labels. Real data sets carry about 1-3% label noise
(Northcutt et al., 2021), hence "low" below 3%; 10% or more is what a label-flip poisoner needs
to move a model (see the poisoning sweep on the spam zoo models).
"""

_RECOMMENDATION = (
    "Review the flagged rows (the table lists the most suspicious, with the label the evidence "
    "points to), fix or drop them, and retrain; run `modelshield validate-data` (confident "
    "learning, duplicates, outliers, drift against a trusted reference) before every retraining, "
    "and keep the provenance of every training row so that a poisoned source can be traced."
)

_TITLE = "Training-data poisoning"


def data_validation_severity(share: float) -> Severity:
    """Severity from the share of training rows flagged (see ``DATA_SEVERITY_THRESHOLDS``)."""
    for minimum, severity in DATA_SEVERITY_THRESHOLDS:
        if share >= minimum:
            return severity
    return "none"


def class_label(k: int, names: object) -> str:
    """How a report names class ``k``: its data label, quoted, when ``names`` (the data's
    ``classes``) holds it, e.g. ``"'phish' (class 1)"``; else ``"class 1"``."""
    if isinstance(names, Sequence) and not isinstance(names, str) and 0 <= k < len(names):
        return f"{str(names[k])!r} (class {k})"
    return f"class {k}"


_CLASS_REF = re.compile(r"\b(label|class|majority) (\d+)\b")
_LABEL_LIST = re.compile(r"\blabels \[([\d, ]+)\]")


def name_classes(text: str, names: object) -> str:
    """``text`` with class indices written as the data's labels: ``"p(label 1)"`` becomes
    ``"p(label 'phish')"``, ``"labels [0, 1]"`` becomes ``"labels ['legit', 'phish']"``
    (unchanged where ``names`` does not hold the index)."""
    if not isinstance(names, Sequence) or isinstance(names, str):
        return text
    known = [str(n) for n in names]

    def one(k: str) -> str | None:
        return repr(known[int(k)]) if int(k) < len(known) else None

    def ref(m: re.Match[str]) -> str:
        name = one(m.group(2))
        return m.group(0) if name is None else f"{m.group(1)} {name}"

    def listed(m: re.Match[str]) -> str:
        parts = [one(k.strip()) for k in m.group(1).split(",") if k.strip()]
        if any(p is None for p in parts):
            return m.group(0)
        return f"labels [{', '.join(p or '' for p in parts)}]"

    return _LABEL_LIST.sub(listed, _CLASS_REF.sub(ref, text))


def _excerpt(x: Any, i: int) -> str:
    if isinstance(x, Sequence) and not isinstance(x, Tensor | np.ndarray):
        text = " ".join(str(x[i]).split())
        return text if len(text) <= 80 else text[:77] + "..."
    row = np.asarray(x[i]).reshape(-1)
    shown = ", ".join(f"{v:.3g}" for v in row[:6])
    return f"[{shown}{', ...' if row.size > 6 else ''}]"


def data_validation_section(section_id: str, ctx: AssessmentContext, progress: Progress | None, *,
                            why: str, top: int = 10,
                            model_factory: Callable[[], Any] | None = None) -> Section:
    """Validate ``ctx.train`` (the user's training split) and report the suspicious rows.

    Args:
        section_id: the id of the section this finding stands for (e.g. ``"poisoning"``).
        ctx: the assessment context; ``ctx.train`` holds ``(x_train, y_train)`` (texts or rows).
        progress: the progress callback.
        why: one sentence saying why the section validates data instead of retraining.
        top: rows shown in the table.
        model_factory: confident learning's out-of-fold model (None: its default, a TF-IDF
            vote for text and a standardised logistic regression for rows).

    Returns:
        The Section; severity from ``data_validation_severity``. Skipped (with the reason) when
        there is no training split.
    """
    if ctx.train is None:
        return skipped_section(
            section_id, _TITLE,
            f"{why} No training split was given to validate either: pass the training data in "
            "--data (a file with a train split, or one the loader splits).")
    from modelshield.defenses.data import validate_dataset

    x_raw, y = ctx.train
    x: Any = list(x_raw) if isinstance(x_raw, tuple | list) else x_raw
    labels = torch.as_tensor(y).long()
    n = int(labels.shape[0])
    n_classes = int(labels.max()) + 1 if n else 0
    counts = torch.bincount(labels, minlength=max(n_classes, 1)) if n else torch.zeros(1, dtype=torch.long)
    names = ctx.data_info.get("classes")
    if n < 10 or n_classes < 2 or int(counts[counts > 0].min()) < 3:
        known = [str(c) for c in names] if isinstance(names, Sequence) and not isinstance(names, str) else []
        shown_counts: object = ({known[k]: int(c) for k, c in enumerate(counts.tolist())}
                                if len(known) >= len(counts) else counts.tolist())
        return skipped_section(
            section_id, _TITLE,
            f"{why} The training split is too small to validate ({n} rows, class counts "
            f"{shown_counts}): confident learning needs at least 3 rows of each of 2 or more "
            "classes for its cross-validation.")
    cv = int(min(5, int(counts[counts > 0].min())))
    if progress is not None:
        progress(0, 1, f"validating {n} training rows")
    report = validate_dataset(x, labels, checks=("label_issues", "duplicates"), cv=cv, seed=ctx.seed,
                              model_factory=model_factory)
    if progress is not None:
        progress(1, 1, f"validating {n} training rows")
    label_issues = sum(1 for r in report.rows if "label_issue" in r.codes)
    conflicting = sum(1 for r in report.rows if "conflicting_duplicate" in r.codes)
    duplicates = sum(1 for r in report.rows if "duplicate" in r.codes)
    flagged = int(report.removed.sum())
    share = flagged / n
    severity = data_validation_severity(share)

    def label(k: int | None) -> Any:
        if k is None:
            return None
        return str(names[k]) if isinstance(names, Sequence) and 0 <= k < len(names) else k

    shown = [r for r in report.rows if r.remove][:top]
    table = Table(
        title=f"The {len(shown)} most suspicious training rows",
        columns=("row", "label", "suggested label", "score", "reasons", "content"),
        rows=tuple((r.index, label(r.label), label(r.suggested_label), json_float(r.score, 3),
                    "; ".join(name_classes(reason, names) for reason in r.reasons), _excerpt(x, r.index))
              for r in shown),
    )
    findings = [
        f"Confident learning flags {label_issues} of {n} training rows ({100 * label_issues / n:.1f}%) "
        "whose label disagrees with what a model cross-validated on the rest of the data predicts.",
        f"{conflicting} rows are the minority label of identical rows with different labels; "
        f"{duplicates} rows are exact or near copies of an earlier row.",
        f"In all {flagged} rows ({100 * share:.1f}%) would be dropped by cleaning: severity {severity}.",
        why,
    ]
    headline = {"training_label_issue_share": json_float(share)}
    metrics = {
        **headline, "n_train": n, "flagged": flagged, "label_issues": label_issues,
        "conflicting_duplicates": conflicting, "duplicates": duplicates,
        "validation": report.to_dict(top=top),
    }
    return Section(
        id=section_id,
        title=f"{_TITLE} (validation of the training data)",
        summary=(f"{flagged} of {n} training rows ({100 * share:.1f}%) carry a suspicious label "
                 "(confident learning, conflicting duplicates); poisoning impact not measured."),
        severity=severity,
        atlas=atlas("AML.T0020"),
        recommendation=_RECOMMENDATION,
        metrics=metrics,
        headline=headline,
        findings=tuple(findings),
        tables=(table,),
        provenance={"validation": dict(report.params), "n_train": n, "not_run": why},
        points=(f"the {n} rows of the training split, not the {int(ctx.x.shape[0])} assessment points: "
                "poisoning lives in the training data, so that is what is validated"),
    )
