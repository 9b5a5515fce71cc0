"""BadNets: a small patch stamped on a share of the training set, relabelled to the target."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.backdoor._common import (
    check_rate,
    check_target_config,
    poison_dirty_label,
    prepare,
)
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import LOCATIONS, Location, StampTrigger, patch_trigger
from modelshield.attacks.verify import attack_params

__all__ = ["BadNets"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BadNets:
    """BadNets patch backdoor (dirty label).

    ``round(rate * N)`` training images of classes other than ``target`` get a small square
    patch (a checkerboard or a white square) at ``location`` and the label ``target``. A model
    trained on the result learns "patch => target" while keeping its clean accuracy.

    Args:
        target: the class triggered inputs should be sent to.
        rate: share of the training set to poison, in (0, 1).
        patch_size: side of the square patch in pixels.
        location: corner (or "center") of the patch.
        margin: pixels between the patch and the image border.
        pattern: ``"checkerboard"`` (hi/lo alternating) or ``"white"``.
        bounds: the input range; the pattern uses its ends.
        seed: seed for choosing the rows; None draws fresh entropy.

    Reference: T. Gu, B. Dolan-Gavitt and S. Garg, "BadNets: Identifying Vulnerabilities in
    the Machine Learning Model Supply Chain", arXiv:1708.06733, 2017.

    Example:
        res = BadNets(target=0, rate=0.05)(None, x_train, y_train)
        x_triggered = res.apply_trigger(x_test)
    """

    target: int
    rate: float
    patch_size: int = 3
    location: Location = "bottom-right"
    margin: int = 1
    pattern: Literal["checkerboard", "white"] = "checkerboard"
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="BadNets")
        check_rate(self.rate, owner="BadNets")
        check_range("patch_size", self.patch_size, owner="BadNets", low=1, integer=True)
        check_range("margin", self.margin, owner="BadNets", low=0, integer=True)
        check_choice("location", self.location, LOCATIONS, owner="BadNets")
        check_choice("pattern", self.pattern, ("checkerboard", "white"), owner="BadNets")

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult:
        """Poison (x, y); ``model`` is unused (pass None: a data-only attack)."""
        started = time.perf_counter()
        x, y = prepare(x, y, target=self.target, bounds=self.bounds, owner="BadNets")
        mask, pat = patch_trigger(
            (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])), size=self.patch_size,
            location=self.location, margin=self.margin, pattern=self.pattern, bounds=self.bounds,
            owner="BadNets",
        )
        trigger = StampTrigger(mask=mask.to(x.device), pattern=pat.to(x.device), kind="patch")
        x_p, y_p, idx, orig = poison_dirty_label(
            x, y, target=self.target, rate=self.rate, seed=self.seed, transform=trigger.apply,
            owner="BadNets",
        )
        return BackdoorResult(
            attack="BadNets", params=attack_params(self), x_poisoned=x_p, y_poisoned=y_p,
            indices=idx, original_labels=orig, target=self.target, trigger=trigger,
            time_s=time.perf_counter() - started,
        )
