"""TRADES: the clean loss plus a KL term that pulls adversarial outputs towards the clean ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._typing import Norm
from modelshield.defenses.training._inner import maximize_loss
from modelshield.models import TorchModel

__all__ = ["kl_to_clean", "trades_adversary", "trades_loss"]


def kl_to_clean(p_clean: Tensor) -> Callable[[Tensor], Tensor]:
    """A function logits (N, C) -> (N,) KL(p_clean || softmax(logits)), p_clean (N, C) fixed."""
    log_p = p_clean.clamp_min(1e-12).log()

    def fn(logits: Tensor) -> Tensor:
        out: Tensor = (p_clean * (log_p - F.log_softmax(logits, dim=1))).sum(1)
        return out

    return fn


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """Scalar TRADES objective: CE(f(x), y) + beta * mean KL(p(x) || p(x_adv)).

    Gradients flow through both the clean and the adversarial logits, as in the reference
    implementation (``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))``, summed over the batch
    and divided by its size).

    Reference: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled Trade-off
    between Robustness and Accuracy", ICML 2019 (arXiv:1901.08573).
    """
    natural = F.cross_entropy(logits_clean, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1),
                      reduction="batchmean")
    return natural + beta * robust


def trades_adversary(
    m: TorchModel,
    x: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> Tensor:
    """(N, ...) TRADES inner maximisation: PGD on KL(p(x) || p(x')) from x + 0.001 * N(0, I).

    The model must already be in eval mode (``eval_mode``); the clean probabilities are fixed.
    """
    with torch.no_grad():
        p_clean = F.softmax(m.logits(x), dim=1)
    return maximize_loss(m, x, kl_to_clean(p_clean), eps=eps, norm=norm, steps=steps,
                         step_size=step_size, init="gaussian", generator=generator)
