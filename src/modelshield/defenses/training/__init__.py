"""Training-time defences against evasion: adversarial training (PGD, TRADES, fast FGSM) and
defensive distillation (a baseline known to mask gradients).

Every trainer trains the given model in place, returns a ``TrainingReport`` and draws its
randomness from a private ``torch.Generator``.

Example:
    report = AdversarialTrainer(method="trades", eps=0.1, epochs=20).fit(model, (x, y))
    report.epochs[-1].train_adv_accuracy
"""

from __future__ import annotations

from modelshield import zoo as _zoo
from modelshield.defenses.training.adversarial import (
    METHODS,
    AdversarialTrainer,
    EpochStats,
    TrainingReport,
    detect_catastrophic_overfitting,
    epoch_overfits,
)
from modelshield.defenses.training.distillation import DefensiveDistillation, DistillationResult
from modelshield.defenses.training.engine import OPTIMIZERS, SCHEDULES, lr_at
from modelshield.defenses.training.trades import trades_loss
from modelshield.defenses.training.zoo_entries import train_adversarial_entry

_zoo.register_adversarial_trainer(train_adversarial_entry)  # the zoo cannot import defences

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "AdversarialTrainer",
    "DefensiveDistillation",
    "DistillationResult",
    "EpochStats",
    "TrainingReport",
    "detect_catastrophic_overfitting",
    "epoch_overfits",
    "lr_at",
    "trades_loss",
    "train_adversarial_entry",
]
