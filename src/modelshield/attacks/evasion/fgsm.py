"""Fast Gradient Sign Method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.losses import loss_fn_for
from modelshield.attacks.ops import clip_to_bounds, normalize_grad
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import ModelLike, eval_mode

__all__ = ["FGSM"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FGSM:
    """Fast Gradient Sign Method: one step of size eps along the loss gradient's sign.

    With ``norm="2"`` the step is eps along the L2-normalised gradient (the "fast gradient
    method"). Untargeted steps up the cross-entropy of the true label; targeted steps down the
    cross-entropy of the target.

    Args:
        eps: perturbation budget in input units (e.g. 8/255 for images in [0, 1]).
        norm: ``"inf"`` (sign step) or ``"2"``.

    Reference: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015 (arXiv:1412.6572).

    Example:
        result = FGSM(eps=0.1)(model, x, y)
        result.robust_accuracy
    """

    eps: float
    norm: Norm = "inf"

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("eps", self.eps, owner="FGSM", low=0.0,
                    fix="Give eps in input units, e.g. eps=8/255 for images in [0, 1].")
        check_choice("norm", self.norm, NORMS, owner="FGSM")

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="FGSM", gradients=True)
        m = call.gradient_model
        with eval_mode(m):
            loss = loss_fn_for("ce", call.y, call.target, m.n_classes)
            logits, grad = m.value_and_grad(call.x, loss)
            x_adv = clip_to_bounds(call.x + self.eps * normalize_grad(grad, self.norm), m.bounds)
            return call.finish(x_adv, attack=self, eps=self.eps, norm=self.norm,
                               clean_pred=logits.argmax(1))
