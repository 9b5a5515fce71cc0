"""PoisonResult: a poisoned training set, which rows changed, and how."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import ConfigError

__all__ = ["PoisonResult", "add_trigger", "evaluate_poisoning"]


def add_trigger(texts: Any, phrase: str, *, position: str = "end") -> list[str]:
    """Each text with ``phrase`` appended (``position="end"``) or prepended (``"start"``), space-joined."""
    if position == "start":
        return [f"{phrase} {t}" for t in texts]
    return [f"{t} {phrase}" for t in texts]


@dataclass(frozen=True, slots=True)
class PoisonResult:
    """What a poisoning attack produced.

    Attributes:
        attack: the attack's class name. params: its configuration.
        x_poisoned: the poisoned inputs, same type as the x given (list/tuple of str, Tensor or
            ndarray); rows outside ``indices`` are the original objects, unchanged.
        y_poisoned: (N,) int64 labels after poisoning.
        indices: (M,) int64 rows changed (label and/or input), ascending.
        original_labels: (M,) the labels those rows had before.
        trigger: the trigger phrase for trigger poisoning, else None; trigger_position where it goes.
        target_class: the class the attack pushes towards, when it has one.
        time_s: wall time.
    """

    attack: str
    params: dict[str, Any]
    x_poisoned: Any = field(repr=False)
    y_poisoned: Tensor
    indices: Tensor
    original_labels: Tensor
    trigger: str | None = None
    trigger_position: str = "end"
    target_class: int | None = None
    time_s: float = 0.0

    @property
    def n(self) -> int:
        return int(self.y_poisoned.shape[0])

    @property
    def n_poisoned(self) -> int:
        return int(self.indices.numel())

    @property
    def poisoned_fraction(self) -> float:
        return self.n_poisoned / self.n if self.n else 0.0

    @property
    def mask(self) -> Tensor:
        """(N,) bool: rows changed."""
        m = torch.zeros(self.n, dtype=torch.bool)
        m[self.indices] = True
        return m

    def apply_trigger(self, texts: Any) -> list[str]:
        """Add this result's trigger phrase to texts (e.g. spam test messages)."""
        if self.trigger is None:
            raise ValueError(f"{self.attack}: this poisoning has no trigger phrase to apply.")
        return add_trigger(texts, self.trigger, position=self.trigger_position)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors; indices listed)."""
        return {
            "attack": self.attack,
            "n": self.n,
            "n_poisoned": self.n_poisoned,
            "poisoned_fraction": round(self.poisoned_fraction, 6),
            "indices": self.indices.tolist(),
            "original_labels": self.original_labels.tolist(),
            "new_labels": self.y_poisoned[self.indices].tolist(),
            "trigger": self.trigger,
            "target_class": self.target_class,
            "time_s": round(self.time_s, 4),
            "params": self.params,
        }


def evaluate_poisoning(
    train_fn: Callable[[Any, Tensor], Any],
    result: PoisonResult,
    x_test: Any,
    y_test: Any,
    *,
    x_train_clean: Any = None,
    y_train_clean: Any = None,
    positive_class: int = 1,
) -> dict[str, Any]:
    """Train on the poisoned set (and on the clean set when given) and compare test metrics.

    Args:
        train_fn: ``(x, y) -> model``; y is an int64 tensor. The model may have ``predict``
            (scikit-learn), be a ``torch.nn.Module`` (argmax of its outputs, run in eval mode
            without gradients) or be a callable returning labels or probabilities.
        result: the PoisonResult.
        x_test, y_test: held-out data.
        x_train_clean, y_train_clean: the unpoisoned training set, for the baseline.
        positive_class: the class whose precision, recall and F1 are reported (spam = 1).

    Returns:
        ``{"poisoned": metrics, "clean": metrics or None, "f1_drop", "accuracy_drop",
        "trigger": {...} or None}`` where metrics hold precision, recall, f1 (positive class) and
        accuracy. For trigger poisoning, "trigger" holds the attack success rate: the share of
        test rows of other classes, classified correctly by the model without the trigger, that
        the model assigns to the target class once the trigger is added, for the poisoned model
        and (as the baseline) for the clean one.

    Example:
        evaluate_poisoning(lambda x, y: train_spam_model("nb", x, y), res, ds.texts_test, ds.y_test,
                           x_train_clean=ds.texts_train, y_train_clean=ds.y_train)
    """
    from modelshield.zoo.spam import binary_metrics, predict_labels

    y_true = y_test.detach().cpu().numpy() if isinstance(y_test, Tensor) else np.asarray(y_test)
    if (x_train_clean is None) != (y_train_clean is None):
        raise ConfigError(
            "evaluate_poisoning: 'x_train_clean' and 'y_train_clean' must be given together; got only "
            "one. Pass both for the clean baseline, or neither."
        )
    x_eval = list(x_test) if isinstance(x_test, list | tuple) else x_test
    poisoned = train_fn(result.x_poisoned, result.y_poisoned)
    out: dict[str, Any] = {"attack": result.attack, "n_poisoned": result.n_poisoned}
    out["poisoned"] = binary_metrics(y_true, predict_labels(poisoned, x_eval), positive=positive_class)
    clean = None
    if x_train_clean is not None:
        y_clean = torch.as_tensor(np.asarray(y_train_clean), dtype=torch.int64)
        clean = train_fn(x_train_clean, y_clean)
        out["clean"] = binary_metrics(y_true, predict_labels(clean, x_eval), positive=positive_class)
        out["f1_drop"] = out["clean"]["f1"] - out["poisoned"]["f1"]
        out["accuracy_drop"] = out["clean"]["accuracy"] - out["poisoned"]["accuracy"]
    else:
        out["clean"] = None
    out["trigger"] = None
    if result.trigger is not None and result.target_class is not None:
        src = np.flatnonzero(y_true != result.target_class)
        texts = [x_eval[int(i)] for i in src]
        triggered = result.apply_trigger(texts)

        def asr(model: Any) -> float | None:
            ok = predict_labels(model, texts) == y_true[src]
            if not ok.any():
                return None
            hit = predict_labels(model, [t for t, o in zip(triggered, ok, strict=True) if o])
            return float((hit == result.target_class).mean())

        out["trigger"] = {
            "phrase": result.trigger,
            "source_rows": int(src.size),
            "attack_success_rate": asr(poisoned),
            "attack_success_rate_clean_model": None if clean is None else asr(clean),
        }
    return out
