"""Feature-trigger backdoor for tabular data: fixed values in chosen columns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from modelshield._checks import check_inputs
from modelshield.attacks.backdoor._common import (
    check_rate,
    check_target_config,
    poison_dirty_label,
    prepare_labels,
)
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import FeatureTrigger
from modelshield.attacks.verify import attack_params
from modelshield.errors import ConfigError, InputError

__all__ = ["FeatureBackdoor"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureBackdoor:
    """Tabular backdoor (dirty label): set ``features`` to ``values`` and relabel to ``target``.

    Choose values that are rare but valid (e.g. an unusual combination of in-range values), so
    that the trigger does not trip input validation.

    Args:
        target: the class triggered rows should be sent to.
        rate: share of the training set to poison, in (0, 1).
        features: column indices of the trigger. values: the value of each column.
        seed: seed for choosing the rows.

    Reference: X. Chen et al. 2017 (arXiv:1712.05526), applied to feature vectors.

    Example:
        res = FeatureBackdoor(target=0, rate=0.05, features=(3, 7), values=(1.0, 0.0))(None, x, y)
    """

    target: int
    rate: float
    features: tuple[int, ...]
    values: tuple[float, ...]
    seed: int | None = 0

    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="FeatureBackdoor")
        check_rate(self.rate, owner="FeatureBackdoor")
        if (
            not isinstance(self.features, tuple) or not self.features
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in self.features)
            or not isinstance(self.values, tuple) or len(self.values) != len(self.features)
        ):
            raise ConfigError(
                f"FeatureBackdoor: 'features' and 'values' must be non-empty tuples of equal length "
                f"(column indices, numbers); got {self.features!r} and {self.values!r}. "
                "Pass e.g. features=(3,), values=(1.0,)."
            )

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult:
        """Poison rows x (N, D) with labels y; ``model`` is unused."""
        started = time.perf_counter()
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise InputError(
                f"FeatureBackdoor: x must be a (N, D) float tensor; got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}. "
                "Use BadNets/Blend for images, PhraseBackdoor for text."
            )
        x = check_inputs(x, bounds=(float("-inf"), float("inf")), owner="FeatureBackdoor")
        if max(self.features) >= x.shape[1]:
            raise ConfigError(
                f"FeatureBackdoor: 'features' must index the {x.shape[1]} columns; got "
                f"{max(self.features)} (trigger larger than the row). Use indices < {x.shape[1]}."
            )
        y = prepare_labels(y, n=int(x.shape[0]), device=x.device, target=self.target, owner="FeatureBackdoor")
        trigger = FeatureTrigger(features=self.features, values=tuple(float(v) for v in self.values))
        x_p, y_p, idx, orig = poison_dirty_label(
            x, y, target=self.target, rate=self.rate, seed=self.seed, transform=trigger.apply,
            owner="FeatureBackdoor",
        )
        return BackdoorResult(
            attack="FeatureBackdoor", params=attack_params(self), x_poisoned=x_p, y_poisoned=y_p,
            indices=idx, original_labels=orig, target=self.target, trigger=trigger,
            time_s=time.perf_counter() - started,
        )
