"""Blended backdoor: a random-noise key blended into a share of the training set."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.backdoor._common import (
    check_rate,
    check_target_config,
    poison_dirty_label,
    prepare,
)
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import StampTrigger, blend_trigger
from modelshield.attacks.ops import make_generator
from modelshield.attacks.verify import attack_params

__all__ = ["Blend"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Blend:
    """Blended-injection backdoor (dirty label): ``x' = (1 - alpha) * x + alpha * key``.

    The key is a fixed uniform-noise image drawn from ``seed`` (Chen et al.'s random-pattern
    key), blended over the whole image into ``round(rate * N)`` non-target training images,
    which are relabelled ``target``. Test inputs are triggered with the same alpha.

    Args:
        target: the class triggered inputs should be sent to.
        rate: share of the training set to poison, in (0, 1).
        alpha: blend ratio in (0, 1]; Chen et al. use 0.2 for poisoning.
        bounds: the input range of the images and the key.
        seed: seed for the key and the row choice; None draws fresh entropy.

    Reference: X. Chen, C. Liu, B. Li, K. Lu and D. Song, "Targeted Backdoor Attacks on Deep
    Learning Systems Using Data Poisoning", arXiv:1712.05526, 2017.

    Example:
        res = Blend(target=0, rate=0.05, alpha=0.2)(None, x_train, y_train)
    """

    target: int
    rate: float
    alpha: float = 0.2
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="Blend")
        check_rate(self.rate, owner="Blend")
        check_range("alpha", self.alpha, owner="Blend", low=0.0, high=1.0, low_open=True,
                    fix="Use a small blend ratio such as alpha=0.2.")

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult:
        """Poison (x, y); ``model`` is unused (pass None: a data-only attack)."""
        started = time.perf_counter()
        x, y = prepare(x, y, target=self.target, bounds=self.bounds, owner="Blend")
        gen = make_generator(self.seed, torch.device("cpu"))
        mask, key = blend_trigger((int(x.shape[1]), int(x.shape[2]), int(x.shape[3])), alpha=self.alpha,
                                  generator=gen, bounds=self.bounds)
        trigger = StampTrigger(mask=mask.to(x.device), pattern=key.to(x.device), kind="blend")
        # The row choice uses its own stream (seed + 1) so that changing alpha keeps the same rows.
        x_p, y_p, idx, orig = poison_dirty_label(
            x, y, target=self.target, rate=self.rate,
            seed=None if self.seed is None else self.seed + 1, transform=trigger.apply, owner="Blend",
        )
        return BackdoorResult(
            attack="Blend", params=attack_params(self), x_poisoned=x_p, y_poisoned=y_p,
            indices=idx, original_labels=orig, target=self.target, trigger=trigger,
            time_s=time.perf_counter() - started,
        )
