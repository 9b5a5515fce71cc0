"""Plant a backdoor end to end: poison a training set, train a model on it, measure the backdoor."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from modelshield._checks import check_choice
from modelshield._typing import Progress
from modelshield.attacks.backdoor.badnets import BadNets
from modelshield.attacks.backdoor.blend import Blend
from modelshield.attacks.backdoor.clean_label import CleanLabel
from modelshield.attacks.backdoor.evaluate import BackdoorEvaluation, evaluate_backdoor
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.wanet import WaNet

__all__ = ["IMAGE_BACKDOOR_ATTACKS", "BackdoorAttack", "PlantResult", "build_backdoor_attack",
           "plant_backdoor"]

IMAGE_BACKDOOR_ATTACKS: tuple[str, ...] = ("badnets", "blend", "clean-label", "wanet")
"""Names ``build_backdoor_attack`` knows (the image attacks of ``modelshield backdoor plant``)."""


"""``progress(done, total, description)``, called before each stage."""


class BackdoorAttack(Protocol):
    """A backdoor attack: ``attack(model_or_None, x_train, y_train) -> BackdoorResult``."""

    needs_model: ClassVar[bool]

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult: ...


def build_backdoor_attack(
    name: str,
    *,
    target: int,
    rate: float,
    patch_size: int = 3,
    alpha: float = 0.2,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> BadNets | Blend | CleanLabel | WaNet:
    """An image backdoor attack by name, from the settings ``modelshield backdoor plant`` takes.

    Args:
        name: one of ``IMAGE_BACKDOOR_ATTACKS``.
        target: the class the trigger sends inputs to. rate: share of the training set poisoned.
        patch_size: patch side in pixels (badnets, clean-label). alpha: blend opacity (blend).
        bounds: the input range. seed: the attack's seed.

    Raises:
        ConfigError: an unknown name, or settings the attack rejects.

    Example:
        attack = build_backdoor_attack("badnets", target=0, rate=0.05)
    """
    check_choice("name", name, IMAGE_BACKDOOR_ATTACKS, owner="build_backdoor_attack")
    if name == "badnets":
        return BadNets(target=target, rate=rate, patch_size=patch_size, bounds=bounds, seed=seed)
    if name == "blend":
        return Blend(target=target, rate=rate, alpha=alpha, bounds=bounds, seed=seed)
    if name == "clean-label":
        return CleanLabel(target=target, rate=rate, patch_size=patch_size, bounds=bounds, seed=seed)
    return WaNet(target=target, rate=rate, bounds=bounds, seed=seed)


@dataclass(frozen=True, kw_only=True, slots=True)
class PlantResult:
    """A planted backdoor: the poisoned set, the model trained on it and what the backdoor does.

    Attributes:
        poison: the attack's BackdoorResult (poisoned set, poisoned rows, trigger).
        evaluation: clean accuracy and attack success rate of the trained model on the test
            set (and of a model trained on the clean set when ``baseline=True``).
        changed_indices: (M,) int64 rows whose *inputs* the attack changed, ascending (what
            to store to rebuild the poisoned set; relabelled rows are ``poison.indices``).
        surrogate: the clean surrogate a model-based attack (clean-label) was given, else None.
        time_s: wall time, training included.
    """

    poison: BackdoorResult
    evaluation: BackdoorEvaluation
    changed_indices: Tensor = field(repr=False)
    surrogate: nn.Module | None = field(default=None, repr=False)
    time_s: float = 0.0

    @property
    def model(self) -> nn.Module:
        """The model trained on the poisoned set."""
        m: nn.Module = self.evaluation.model
        return m

    @property
    def clean_accuracy(self) -> float:
        return self.evaluation.clean_accuracy

    @property
    def attack_success_rate(self) -> float:
        return self.evaluation.asr

    @property
    def n_test(self) -> int:
        return self.evaluation.n_test

    @property
    def summary(self) -> dict[str, Any]:
        """JSON-safe summary: the attack, the poisoned rows and the backdoor's test metrics."""
        ev = self.evaluation.to_dict()
        return {
            "attack": self.poison.to_dict(),
            "indices": self.poison.indices.tolist(),
            "original_labels": self.poison.original_labels.tolist(),
            "n_changed_inputs": int(self.changed_indices.numel()),
            "clean_accuracy": ev["clean_accuracy"],
            "attack_success_rate": ev["attack_success_rate"],
            "n_test": ev["n_test"],
            "baseline_clean_accuracy": ev["baseline_clean_accuracy"],
            "baseline_attack_success_rate": ev["baseline_attack_success_rate"],
            "time_s": round(self.time_s, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        """The same as ``summary``."""
        return self.summary


def plant_backdoor(
    attack: BackdoorAttack,
    train_fn: Callable[[Tensor, Tensor], nn.Module],
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    baseline: bool = False,
    progress: Progress | None = None,
) -> PlantResult:
    """Poison ``(x_train, y_train)`` with ``attack``, train a model on it and measure the backdoor.

    A model-based attack (``attack.needs_model``, e.g. clean-label) first gets a surrogate
    trained on the clean set with ``train_fn``. The inputs are not modified.

    Args:
        attack: a backdoor attack (e.g. ``BadNets(target=0, rate=0.05)``; see
            ``build_backdoor_attack``).
        train_fn: ``(x, y) -> model`` training a fresh torch model (e.g. ``make_train_fn``).
        x_train, y_train: the clean training set. x_test, y_test: clean held-out data.
        baseline: also train on the clean set, for the clean model's accuracy and the trigger's
            natural success rate (one more training run).
        progress: ``progress(done, total, description)`` before each stage.

    Returns:
        A PlantResult (the trained model is ``result.model``).

    Raises:
        ConfigError / InputError: from the attack (e.g. a trigger larger than the image).

    Reference: T. Gu, B. Dolan-Gavitt and S. Garg, "BadNets", arXiv:1708.06733, 2017 (the
    poison-train-measure protocol).

    Example:
        res = plant_backdoor(BadNets(target=0, rate=0.05), make_train_fn("cnn-8x8", epochs=10),
                             x_train, y_train, x_test, y_test)
        res.clean_accuracy, res.attack_success_rate
    """
    started = time.perf_counter()
    total = 3 + int(baseline)

    def tick(done: int, text: str) -> None:
        if progress is not None:
            progress(done, total, text)

    surrogate = None
    if attack.needs_model:
        tick(0, "training a clean surrogate")
        surrogate = train_fn(x_train, y_train)
    tick(1, f"{type(attack).__name__}: poisoning the training set")
    res = attack(surrogate, x_train, y_train)
    tick(2, "training on the poisoned set" + (" (and on the clean set)" if baseline else ""))
    ev = evaluate_backdoor(train_fn, res, x_test, y_test,
                           x_train_clean=x_train if baseline else None,
                           y_train_clean=y_train if baseline else None)
    tick(total, "done")
    x_p = res.x_poisoned
    changed = (x_p != x_train).flatten(1).any(1).nonzero().squeeze(1).cpu()
    return PlantResult(poison=res, evaluation=ev, changed_indices=changed, surrogate=surrogate,
                       time_s=time.perf_counter() - started)
