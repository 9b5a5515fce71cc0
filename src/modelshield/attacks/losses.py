"""Choosing an attack loss for a model: CE, DLR, or the margin loss when DLR is undefined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

from modelshield.attacks.ops import ce_loss, cw_margin_loss, dlr_loss

__all__ = ["LOSSES", "Loss", "loss_fn_for", "resolve_loss"]

Loss = Literal["ce", "dlr", "margin"]
LOSSES: tuple[Loss, ...] = ("ce", "dlr", "margin")


def resolve_loss(loss: Loss, n_classes: int, targeted: bool) -> Loss:
    """The loss actually used: DLR needs >= 3 classes (targeted: >= 4), else the margin loss."""
    if loss == "dlr" and n_classes < (4 if targeted else 3):
        return "margin"
    return loss


def loss_fn_for(
    loss: Loss, y: Tensor, target: Tensor | None, n_classes: int
) -> Callable[[Tensor], Tensor]:
    """A function logits (N, C) -> (N,) loss to *maximise*, for labels y (and target, if any).

    The function is row-aligned with y/target; callers that shrink the batch build a new one
    for the active rows (see ``loss_fn_for`` used with indexed labels).
    """
    kind = resolve_loss(loss, n_classes, target is not None)
    if target is None:
        if kind == "ce":
            return lambda z: ce_loss(z, y)
        if kind == "dlr":
            return lambda z: dlr_loss(z, y)
        return lambda z: cw_margin_loss(z, y)
    if kind == "ce":
        return lambda z: -ce_loss(z, target)
    if kind == "dlr":
        return lambda z: dlr_loss(z, y, target)
    # margin toward the target: z_t - max_{j != t} z_j
    return lambda z: -cw_margin_loss(z, target)
