"""Is a defended model still a classifier? The usability verdict shared by every defence report.

A defence that leaves the model at chance accuracy (or far below the model it replaces) has
failed, whatever its robust accuracy: a constant prediction is "robust" to every perturbation.
Every defence report (``DefensiveDistillation``, ``check_gradient_masking``, the ``defenses``
report section, ``modelshield defend``) runs its clean accuracy through ``check_usable`` and
never calls an unusable model robust or a defence that produced one as holding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range

__all__ = ["MAX_CLEAN_DROP", "Usability", "chance_accuracy", "check_usable"]

MAX_CLEAN_DROP = 0.15
"""Largest clean-accuracy loss (absolute) against the reference model still called usable.

Adversarial training costs a few points on MNIST and up to about 10 on CIFAR-10 (Madry et al.,
2018); Papernot et al. (2016) report distillation within about 1.5 points. More than 15 points
means the defence destroyed the classifier rather than hardened it.
"""


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


@dataclass(frozen=True, kw_only=True, slots=True)
class Usability:
    """Whether a defended model still classifies clean inputs.

    Attributes:
        usable: False when the clean accuracy is at chance or more than ``max_drop`` below
            the reference model's.
        reason: one sentence with the numbers (why it failed, or what was checked).
        clean_accuracy: the defended model's clean accuracy on ``n`` points.
        chance_accuracy: what a constant prediction scores there (``chance_accuracy``).
        chance_threshold: clean accuracies at or below this count as chance (chance plus
            three binomial standard deviations, at least 5 points).
        n_classes: the class count.
        reference_accuracy: the clean accuracy of the model it replaces (None: not compared).
        reference_name: how the reference is named in ``reason``.
        max_drop: the largest allowed loss against the reference.
    """

    usable: bool
    reason: str
    clean_accuracy: float
    chance_accuracy: float
    chance_threshold: float
    n_classes: int
    reference_accuracy: float | None
    reference_name: str
    max_drop: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {"usable": self.usable, "reason": self.reason,
                "clean_accuracy": round(self.clean_accuracy, 6),
                "chance_accuracy": round(self.chance_accuracy, 6),
                "chance_threshold": round(self.chance_threshold, 6), "n_classes": self.n_classes,
                "reference_accuracy": (None if self.reference_accuracy is None
                                       else round(self.reference_accuracy, 6)),
                "reference_name": self.reference_name, "max_drop": self.max_drop}


def chance_accuracy(y: Tensor, n_classes: int) -> float:
    """What a constant prediction scores on labels y: max(1 / n_classes, majority-class share)."""
    if y.numel() == 0:
        return 1.0 / n_classes
    counts = torch.bincount(y.detach().long().flatten().cpu(), minlength=n_classes)
    return max(1.0 / n_classes, float(counts.max()) / int(y.numel()))


def check_usable(
    clean_accuracy: float,
    *,
    n: int,
    n_classes: int,
    chance: float | None = None,
    reference_accuracy: float | None = None,
    reference_name: str = "the undefended model",
    max_drop: float = MAX_CLEAN_DROP,
) -> Usability:
    """Judge whether a defended model with this clean accuracy is still a usable classifier.

    Args:
        clean_accuracy: accuracy on ``n`` clean points, in [0, 1].
        n: the number of points (sets the noise margin above chance).
        n_classes: classes of the task (>= 2).
        chance: what a constant prediction scores on those points (``chance_accuracy(y, C)``);
            default ``1 / n_classes``.
        reference_accuracy: clean accuracy of the undefended (or teacher) model on the same
            points; None skips the comparison.
        reference_name: the reference as named in the reason.
        max_drop: the largest allowed clean-accuracy loss against the reference.

    Returns:
        Usability: unusable when ``clean_accuracy <= chance + max(0.05, 3 sqrt(chance (1 -
        chance) / n))`` or ``reference_accuracy - clean_accuracy > max_drop``.

    Raises:
        ConfigError: an accuracy outside [0, 1], n < 1, n_classes < 2, max_drop outside [0, 1].

    Example:
        check_usable(0.1, n=200, n_classes=10).reason
        # 'clean accuracy 10.0% is at chance (10 classes; a constant prediction scores 10.0%)'
    """
    owner = "check_usable"
    check_range("clean_accuracy", clean_accuracy, owner=owner, low=0.0, high=1.0)
    check_range("n", n, owner=owner, low=1, integer=True)
    check_range("n_classes", n_classes, owner=owner, low=2, integer=True)
    check_range("max_drop", max_drop, owner=owner, low=0.0, high=1.0)
    if reference_accuracy is not None:
        check_range("reference_accuracy", reference_accuracy, owner=owner, low=0.0, high=1.0)
    base = 1.0 / n_classes if chance is None else chance
    check_range("chance", base, owner=owner, low=0.0, high=1.0)
    threshold = min(1.0, base + max(0.05, 3.0 * math.sqrt(base * (1.0 - base) / n)))
    acc = _pct(clean_accuracy)
    if clean_accuracy <= threshold:
        usable = False
        reason = (f"clean accuracy {acc} is at chance ({n_classes} classes; a constant prediction "
                  f"scores {_pct(base)})")
    elif reference_accuracy is not None and reference_accuracy - clean_accuracy > max_drop + 1e-12:
        usable = False
        reason = (f"clean accuracy {acc} is {100 * (reference_accuracy - clean_accuracy):.1f} points "
                  f"below {reference_name}'s {_pct(reference_accuracy)} (at most "
                  f"{100 * max_drop:.0f} allowed)")
    else:
        usable = True
        ref = ("" if reference_accuracy is None
               else f", {reference_name} {_pct(reference_accuracy)}")
        reason = f"clean accuracy {acc}, chance {_pct(base)}{ref}"
    return Usability(usable=usable, reason=reason, clean_accuracy=float(clean_accuracy),
                     chance_accuracy=base, chance_threshold=threshold, n_classes=n_classes,
                     reference_accuracy=reference_accuracy, reference_name=reference_name,
                     max_drop=max_drop)
