"""The inner maximisation of adversarial training: a fixed-step projected ascent on any loss.

The evaluation attack ``PGD`` stops each point at its first misclassified iterate, which is right
for measuring robustness but gives weaker training examples than Madry et al.'s fixed number of
steps; it also only knows the CE/DLR/margin losses, while TRADES maximises a KL divergence. So
training runs this loop, built from the same pure operations as PGD (``random_start``,
``normalize_grad``, ``project``, ``clip_to_bounds``) and the adapter's ``value_and_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from modelshield._typing import Norm
from modelshield.attacks.ops import clip_to_bounds, normalize_grad, project, random_start
from modelshield.models import TorchModel

__all__ = ["Init", "maximize_loss"]

Init = Literal["uniform", "gaussian", "none"]


def maximize_loss(
    m: TorchModel,
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    init: Init,
    generator: torch.Generator,
    init_scale: float = 1e-3,
) -> Tensor:
    """(N, ...) points of the eps-ball around x (inside the bounds) after ``steps`` ascent steps.

    ``loss_fn`` maps (N, C) logits to the (N,) loss to maximise. ``init``: ``"uniform"`` in the
    ball (Madry et al.; Wong et al.), ``"gaussian"`` with std ``init_scale`` (Zhang et al.'s
    TRADES start), or ``"none"``. Every step uses all rows (no early stopping).
    The caller puts the model in eval mode (``eval_mode``) so that no parameter gradient is built.
    """
    bounds = m.bounds
    if init == "uniform":
        x_adv = clip_to_bounds(x + random_start(x, eps, norm, generator), bounds)
    elif init == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = clip_to_bounds(x + project(init_scale * noise, eps, norm), bounds)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        _, grad = m.value_and_grad(x_adv, loss_fn)
        step = x_adv + step_size * normalize_grad(grad, norm)
        x_adv = clip_to_bounds(x + project(step - x, eps, norm), bounds)
    return x_adv.detach()
