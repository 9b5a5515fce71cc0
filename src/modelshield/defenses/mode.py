"""Checks shared by the evasion defences: a model left in training mode, data on the wrong device."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modelshield.errors import InputError

__all__ = ["require_eval_mode", "require_same_device"]


def require_eval_mode(module: object, *, owner: str) -> None:
    """Raise InputError when an nn.Module (or a TorchModel's module) has a submodule in training mode.

    Dropout and BatchNorm behave randomly or batch-dependently in training mode, so counts,
    scores and attack results computed on such a model would not describe the deployed model.
    """
    inner = getattr(module, "module", module)
    if not isinstance(inner, nn.Module):
        return
    training = [name or type(inner).__name__ for name, sub in inner.named_modules() if sub.training]
    if training:
        raise InputError(
            f"{owner}: the model must be in eval mode; got {len(training)} submodule(s) in training "
            f"mode (first: {training[0]!r}). Call model.eval() before evaluating a defence "
            "(Dropout/BatchNorm in training mode would make the results random)."
        )


def require_same_device(x: Tensor, device: torch.device | None, *, owner: str, what: str = "x") -> None:
    """Raise InputError unless x lives on device (no check when device is None)."""
    if device is not None and x.device != device:
        raise InputError(
            f"{owner}: {what} must be on the model's device {device}; got a tensor on {x.device}. "
            f"Move the data with {what}.to('{device}') (the model is never moved for you)."
        )
