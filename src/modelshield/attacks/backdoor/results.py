"""BackdoorResult: a poisoned training set, which rows were poisoned, and the trigger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield.attacks.backdoor.triggers import Trigger

__all__ = ["BackdoorResult"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BackdoorResult:
    """What a backdoor attack produced (not PoisonResult: its trigger is a tensor-valued object).

    Attributes:
        attack: the attack's class name. params: its configuration.
        x_poisoned: the poisoned training inputs (same type, shape and dtype as the x given; a
            list of str for text). Rows outside ``indices`` equal the input rows.
        y_poisoned: (N,) int64 labels after poisoning.
        indices: (M,) int64 rows carrying the trigger, ascending (the ground truth a training-set
            detector should find).
        original_labels: (M,) labels those rows had before.
        target: the class the trigger sends inputs to.
        trigger: the trigger (``apply``, ``to_dict``, ``image`` for display).
        time_s: wall time of the call.
        extra: attack-specific JSON-safe details (e.g. WaNet's noise-mode rows).
    """

    attack: str
    params: dict[str, Any]
    x_poisoned: Any = field(repr=False)
    y_poisoned: Tensor = field(repr=False)
    indices: Tensor
    original_labels: Tensor = field(repr=False)
    target: int
    trigger: Trigger = field(repr=False)
    time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y_poisoned.shape[0])

    @property
    def n_poisoned(self) -> int:
        return int(self.indices.numel())

    @property
    def poison_rate(self) -> float:
        return self.n_poisoned / self.n if self.n else 0.0

    @property
    def mask(self) -> Tensor:
        """(N,) bool: rows carrying the trigger."""
        m = torch.zeros(self.n, dtype=torch.bool, device=self.indices.device)
        m[self.indices] = True
        return m

    @property
    def labels_changed(self) -> bool:
        """True for dirty-label attacks (BadNets, blend, WaNet), False for clean-label ones."""
        return bool((self.original_labels != self.target).any())

    def apply_trigger(self, x: Any) -> Any:
        """Triggered copies of test inputs x (same shape; texts for a phrase trigger)."""
        return self.trigger.apply(x)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors)."""
        return {
            "attack": self.attack,
            "target": self.target,
            "n": self.n,
            "n_poisoned": self.n_poisoned,
            "poison_rate": round(self.poison_rate, 6),
            "labels_changed": self.labels_changed,
            "trigger": self.trigger.to_dict(),
            "time_s": round(self.time_s, 4),
            "params": self.params,
            **self.extra,
        }
