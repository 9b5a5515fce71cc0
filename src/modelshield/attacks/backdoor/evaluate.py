"""Train on a poisoned set and measure clean accuracy and attack success rate (ASR)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import Trigger
from modelshield.errors import ConfigError, InputError
from modelshield.models import predict_labels as labels_of

__all__ = [
    "BackdoorEvaluation",
    "TrainFn",
    "attack_success_rate",
    "clean_accuracy",
    "evaluate_backdoor",
    "make_train_fn",
    "predict_labels",
]

TrainFn = Callable[[Any, Tensor], Any]
"""train_fn(x, y) -> model: trains a fresh model on (x, y) (y int64) and returns it."""


def predict_labels(model: Any, x: Any, *, batch_size: int = 1024) -> Tensor:
    """(N,) int64 CPU labels from a torch module (batched argmax in eval mode, no grad, training
    flags restored), a modelshield Model, or a predict()/callable object (e.g. scikit-learn)."""
    return labels_of(model, x, batch_size=batch_size).cpu()


def _labels(y: Any) -> Tensor:
    return (y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))).long().cpu()


def clean_accuracy(model: Any, x: Any, y: Any) -> float:
    """Top-1 accuracy of model on (x, y)."""
    yt = _labels(y)
    return float((predict_labels(model, x) == yt).float().mean()) if yt.numel() else math.nan


def _n_classes(model: Any) -> int | None:
    from modelshield.models import CallableModel, TorchModel, infer_n_classes

    if isinstance(model, TorchModel):
        return model.n_classes_known
    if isinstance(model, CallableModel):
        return None
    if isinstance(model, nn.Module):
        return infer_n_classes(model)
    classes = getattr(model, "classes_", None)
    return len(classes) if classes is not None else None


def attack_success_rate(
    model: Any,
    trigger: BackdoorResult | Trigger,
    x_test: Any,
    y_test: Any,
    *,
    target: int | None = None,
) -> float:
    """Share of triggered test inputs whose true class is not ``target`` classified as ``target``.

    Args:
        model: the (possibly backdoored) classifier: a torch module, a Model, or an object with
            ``predict`` / a callable (text, tabular).
        trigger: a BackdoorResult (its trigger and target are used) or a bare trigger.
        x_test, y_test: clean test inputs and their labels.
        target: the target class; defaults to the result's target (required for a bare trigger).

    Returns:
        The ASR in [0, 1] (nan when every test input is of the target class).

    Raises:
        ConfigError: no target given, or a target the model does not have.

    Example:
        attack_success_rate(model, result, x_test, y_test)
    """
    trig = trigger.trigger if isinstance(trigger, BackdoorResult) else trigger
    tgt = trigger.target if (isinstance(trigger, BackdoorResult) and target is None) else target
    if tgt is None:
        raise ConfigError(
            "attack_success_rate: 'target' must be given with a bare trigger; got None. "
            "Pass target=..., or pass the BackdoorResult."
        )
    n_classes = _n_classes(model)
    if not isinstance(tgt, int) or tgt < 0 or (n_classes is not None and tgt >= n_classes):
        raise ConfigError(
            f"attack_success_rate: 'target' must be a class of the model (0..{(n_classes or 0) - 1}); "
            f"got {tgt!r} (that class does not exist). Use the target the backdoor was planted for."
        )
    yt = _labels(y_test)
    if yt.shape[0] != (int(x_test.shape[0]) if isinstance(x_test, Tensor) else len(x_test)):
        raise InputError(
            f"attack_success_rate: y_test must have one label per row of x_test; got {yt.shape[0]}. "
            "Pass matching x_test and y_test."
        )
    src = (yt != tgt).nonzero().squeeze(1)
    if src.numel() == 0:
        return math.nan
    x_src: Any = (x_test[src.to(x_test.device)] if isinstance(x_test, Tensor)
                  else [x_test[int(i)] for i in src])
    pred = predict_labels(model, trig.apply(x_src))
    return float((pred == tgt).float().mean())


@dataclass(frozen=True, kw_only=True, slots=True)
class BackdoorEvaluation:
    """Test metrics of a model trained on a poisoned set (and of a clean baseline when trained).

    Attributes:
        attack, target: from the BackdoorResult.
        clean_accuracy: accuracy of the backdoored model on clean test inputs.
        asr: attack success rate of the backdoored model (see ``attack_success_rate``).
        baseline_clean_accuracy, baseline_asr: the same for a model trained on the clean set
            (None when no clean set was given); baseline_asr is the trigger's natural effect.
        model, baseline_model: the trained models (for detectors and removal; not in to_dict).
        time_s: wall time (training included).
    """

    attack: str
    target: int
    clean_accuracy: float
    asr: float
    n_test: int
    baseline_clean_accuracy: float | None = None
    baseline_asr: float | None = None
    model: Any = field(default=None, repr=False)
    baseline_model: Any = field(default=None, repr=False)
    time_s: float = 0.0

    @property
    def accuracy_drop(self) -> float | None:
        """Baseline clean accuracy minus backdoored clean accuracy (None without a baseline)."""
        if self.baseline_clean_accuracy is None:
            return None
        return self.baseline_clean_accuracy - self.clean_accuracy

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None or math.isnan(v) else round(v, 6)

        return {
            "attack": self.attack,
            "target": self.target,
            "n_test": self.n_test,
            "clean_accuracy": r(self.clean_accuracy),
            "attack_success_rate": r(self.asr),
            "baseline_clean_accuracy": r(self.baseline_clean_accuracy),
            "baseline_attack_success_rate": r(self.baseline_asr),
            "accuracy_drop": r(self.accuracy_drop),
            "time_s": round(self.time_s, 4),
        }


def evaluate_backdoor(
    train_fn: TrainFn,
    result: BackdoorResult,
    x_test: Any,
    y_test: Any,
    *,
    x_train_clean: Any = None,
    y_train_clean: Any = None,
) -> BackdoorEvaluation:
    """Train on the poisoned set (and on the clean one when given); measure accuracy and ASR.

    Args:
        train_fn: ``(x, y) -> model``, training a fresh model (any PyTorch loop; see
            ``make_train_fn`` for the zoo's deterministic one).
        result: the BackdoorResult.
        x_test, y_test: clean held-out data.
        x_train_clean, y_train_clean: the unpoisoned training set, for the baseline.

    Returns:
        A BackdoorEvaluation holding the metrics and the trained model(s).

    Example:
        ev = evaluate_backdoor(make_train_fn("lenet-28", epochs=2), res, x_test, y_test)
        ev.asr, ev.clean_accuracy
    """
    if (x_train_clean is None) != (y_train_clean is None):
        raise ConfigError(
            "evaluate_backdoor: 'x_train_clean' and 'y_train_clean' must be given together; got only "
            "one. Pass both for the clean baseline, or neither."
        )
    started = time.perf_counter()
    model = train_fn(result.x_poisoned, result.y_poisoned)
    acc = clean_accuracy(model, x_test, y_test)
    asr = attack_success_rate(model, result, x_test, y_test)
    base = base_acc = base_asr = None
    if x_train_clean is not None:
        base = train_fn(x_train_clean, _labels(y_train_clean).to(result.y_poisoned.device))
        base_acc = clean_accuracy(base, x_test, y_test)
        base_asr = attack_success_rate(base, result, x_test, y_test)
    return BackdoorEvaluation(
        attack=result.attack, target=result.target, clean_accuracy=acc, asr=asr,
        n_test=int(_labels(y_test).numel()), baseline_clean_accuracy=base_acc, baseline_asr=base_asr,
        model=model, baseline_model=base, time_s=time.perf_counter() - started,
    )


def make_train_fn(
    arch: str | Callable[[], nn.Module],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> Callable[[Tensor, Tensor], nn.Module]:
    """A train_fn using the zoo's deterministic loop (AdamW, one-cycle, private generators).

    Args:
        arch: a zoo architecture name (``"cnn-8x8"``, ``"lenet-28"``) or a factory returning a
            fresh module.
        epochs, batch_size, lr, weight_decay, seed: the zoo Recipe.

    Example:
        train = make_train_fn("lenet-28", epochs=2)
        model = train(x_train, y_train)
    """
    from modelshield.models.archs import build, check_arch
    from modelshield.zoo.training import Recipe, fit

    if isinstance(arch, str):
        check_arch(arch, owner="make_train_fn")
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed)

    def train(x: Tensor, y: Tensor) -> nn.Module:
        module = build(arch, seed=seed) if isinstance(arch, str) else arch()
        fit(module, x, y, recipe)
        return module

    return train
