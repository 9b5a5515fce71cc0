"""The EvasionAttack protocol: the shape every evasion attack has (no base class)."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from torch import Tensor

from modelshield.attacks.results import EvasionResult
from modelshield.models import ModelLike

__all__ = ["EvasionAttack"]


@runtime_checkable
class EvasionAttack(Protocol):
    """An evasion attack: a frozen config called on ``(model, x, y)``, returning a verified result.

    ``needs_gradients`` says whether the attack needs a white-box (torch) model. Passing
    ``target=`` (N,) class indices makes the call targeted.
    """

    needs_gradients: ClassVar[bool]

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult: ...
