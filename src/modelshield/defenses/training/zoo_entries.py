"""The training step of the zoo's adversarially trained entries (``digits-cnn-at``, ``mnist-cnn-at``).

The zoo sits below attacks and defences, so it cannot import them; it calls the function that
``modelshield.defenses.training`` registers on import (``zoo.register_adversarial_trainer``).
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor, nn

from modelshield._typing import Progress
from modelshield.attacks.evasion import PGD
from modelshield.defenses.training.adversarial import AdversarialTrainer

__all__ = ["train_adversarial_entry"]


def train_adversarial_entry(
    module: nn.Module,
    *,
    eps: float,
    bounds: tuple[float, float],
    recipe: dict[str, Any],
    train: tuple[Tensor, Tensor],
    check: tuple[Tensor, Tensor],
    progress: Progress | None,
) -> tuple[float, float]:
    """Adversarially train module in place with recipe, then measure its PGD-20 robust accuracy.

    Args:
        module: the freshly built architecture (trained in place, left in eval mode).
        eps: L-inf budget trained for and checked at.
        bounds: input range.
        recipe: ``AdversarialTrainer`` settings (method, epochs, steps, ...).
        train: training inputs and labels.
        check: the points of the robustness check.
        progress: optional ``progress(done, total, message)`` callback.

    Returns:
        ``(training seconds, PGD-20 robust accuracy on check)``.
    """
    trainer = AdversarialTrainer(eps=eps, bounds=bounds, **recipe)
    start = time.perf_counter()
    trainer.fit(module, train, progress=progress)
    train_time = time.perf_counter() - start
    module.eval()
    robust = PGD(eps=eps, steps=20, seed=0)(module, *check).robust_accuracy
    return train_time, robust
