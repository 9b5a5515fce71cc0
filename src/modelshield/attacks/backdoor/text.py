"""Phrase-trigger backdoor for text, built on the poisoning package's TriggerPhrasePoison."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from modelshield._checks import check_choice
from modelshield.attacks.backdoor._common import check_rate, check_target_config
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import PhraseTrigger
from modelshield.attacks.poisoning.trigger import TriggerPhrasePoison
from modelshield.attacks.verify import attack_params

__all__ = ["PhraseBackdoor"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PhraseBackdoor:
    """Text backdoor: a rare phrase added to texts of other classes, relabelled ``target``.

    A thin adapter over :class:`~modelshield.attacks.poisoning.TriggerPhrasePoison` that returns
    a BackdoorResult, so text backdoors are evaluated like image ones.

    Reference: J. Dai, C. Chen and Y. Li, "A Backdoor Attack Against LSTM-Based Text
    Classification Systems", IEEE Access, 2019.

    Example:
        res = PhraseBackdoor(target=0, rate=0.02, phrase="blue quokka")(None, texts, y)
    """

    target: int
    rate: float
    phrase: str = "blue quokka"
    position: Literal["end", "start"] = "end"
    seed: int | None = 0

    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="PhraseBackdoor")
        check_rate(self.rate, owner="PhraseBackdoor")
        check_choice("position", self.position, ("end", "start"), owner="PhraseBackdoor")

    def __call__(self, model: Any, x: Any, y: Any) -> BackdoorResult:
        """Poison texts x with labels y; ``model`` is unused."""
        import torch

        from modelshield.attacks.backdoor._common import prepare_labels

        started = time.perf_counter()
        labels = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
        prepare_labels(labels, n=len(x), device=labels.device, target=self.target, owner="PhraseBackdoor")
        res = TriggerPhrasePoison(rate=self.rate, phrase=self.phrase, target_class=self.target,
                                  position=self.position, seed=self.seed)(x, y)
        return BackdoorResult(
            attack="PhraseBackdoor", params=attack_params(self), x_poisoned=res.x_poisoned,
            y_poisoned=res.y_poisoned, indices=res.indices, original_labels=res.original_labels,
            target=self.target, trigger=PhraseTrigger(phrase=self.phrase, position=self.position),
            time_s=time.perf_counter() - started,
        )
