"""Backdoor attacks: plant a trigger in a training set so that triggered inputs go to a target class.

Each attack is a frozen config called as ``attack(model, x_train, y_train) -> BackdoorResult``
(``model`` is None for data-only attacks; CleanLabel needs a surrogate). Evaluate with
``evaluate_backdoor(train_fn, result, x_test, y_test)`` (clean accuracy and attack success
rate) or ``attack_success_rate(model, result, x_test, y_test)`` on a model you trained;
``modelshield.experiments.backdoor.plant_backdoor(attack, train_fn, x_train, y_train, x_test,
y_test)`` does it all.
"""

from __future__ import annotations

from modelshield.attacks.backdoor.badnets import BadNets
from modelshield.attacks.backdoor.blend import Blend
from modelshield.attacks.backdoor.clean_label import CleanLabel
from modelshield.attacks.backdoor.evaluate import (
    BackdoorEvaluation,
    attack_success_rate,
    clean_accuracy,
    evaluate_backdoor,
    make_train_fn,
    predict_labels,
)
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.tabular import FeatureBackdoor
from modelshield.attacks.backdoor.text import PhraseBackdoor
from modelshield.attacks.backdoor.triggers import (
    FeatureTrigger,
    PhraseTrigger,
    StampTrigger,
    Trigger,
    WarpTrigger,
)
from modelshield.attacks.backdoor.wanet import WaNet

__all__ = [
    "BackdoorEvaluation",
    "BackdoorResult",
    "BadNets",
    "Blend",
    "CleanLabel",
    "FeatureBackdoor",
    "FeatureTrigger",
    "PhraseBackdoor",
    "PhraseTrigger",
    "StampTrigger",
    "Trigger",
    "WaNet",
    "WarpTrigger",
    "attack_success_rate",
    "clean_accuracy",
    "evaluate_backdoor",
    "make_train_fn",
    "predict_labels",
]
