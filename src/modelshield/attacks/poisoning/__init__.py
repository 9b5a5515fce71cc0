"""Poisoning attacks on training sets (text, tabular, images) and their evaluation.

Each attack is a frozen config called as ``attack(x_train, y_train, *, model=None)`` and returns
a PoisonResult; ``evaluate_poisoning(train_fn, result, x_test, y_test, ...)`` trains on the
poisoned (and clean) sets and compares the test metrics. ``poison_text_dataset`` runs a whole
experiment on a text data set (``modelshield.experiments.poisoning``; rates there are a share of the
spam rows, see ``class_rate``).
"""

from __future__ import annotations

from modelshield.attacks.poisoning.label_flip import RandomLabelFlip, TargetedLabelFlip, n_poison
from modelshield.attacks.poisoning.results import PoisonResult, add_trigger, evaluate_poisoning
from modelshield.attacks.poisoning.trigger import TriggerPhrasePoison

__all__ = [
    "PoisonResult",
    "RandomLabelFlip",
    "TargetedLabelFlip",
    "TriggerPhrasePoison",
    "add_trigger",
    "evaluate_poisoning",
    "n_poison",
]
