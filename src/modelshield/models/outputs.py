"""Reading labels from model outputs, with non-finite answers (NaN, inf) marked, never guessed."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["labels_and_errors", "safe_argmax"]


def safe_argmax(scores: Tensor) -> Tensor:
    """(N,) int64 argmax of (N, C) scores with NaN read as -inf (an all-NaN row gives class 0).

    ``Tensor.argmax`` treats NaN as the largest value, so a NaN would silently become a class.
    """
    if scores.is_floating_point():
        scores = torch.nan_to_num(scores, nan=-torch.inf)
    return scores.argmax(1)


def labels_and_errors(out: Tensor) -> tuple[Tensor, Tensor]:
    """Labels and a (N,) bool mask of model errors from (N, C) scores or (N,) labels.

    A row is a model error when any of its scores is NaN or infinite; its label comes from
    ``safe_argmax`` but must not be trusted (callers count such rows as model errors).
    """
    if out.dim() == 1:
        return out.long(), torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    errors = ~torch.isfinite(out).all(1) if out.is_floating_point() else torch.zeros(
        out.shape[0], dtype=torch.bool, device=out.device)
    return safe_argmax(out), errors
