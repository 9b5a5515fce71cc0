"""Helpers shared by the backdoor defences: fitted checks, input checks, detection metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modelshield.errors import InputError, NotFittedError

__all__ = ["check_clean_set", "check_fitted", "check_xy", "detection_metrics"]


def check_fitted(obj: object, attr: str) -> None:
    """Raise NotFittedError in scikit-learn's wording unless ``obj.<attr>`` is set."""
    if getattr(obj, attr, None) is None:
        raise NotFittedError(
            f"This {type(obj).__name__} instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator."
        )


def check_xy(x: object, y: object, *, owner: str) -> tuple[Tensor, Tensor]:
    """x a float tensor with a batch dimension, y matching (N,) int labels; returned as given / int64."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise InputError(
            f"{owner}: x must be a float tensor of shape (N, ...); got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}. "
            "Convert with torch.as_tensor(x, dtype=torch.float32)."
        )
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"{owner}: y must be an int tensor of shape ({x.shape[0]},); got "
            f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}. Pass one label per row."
        )
    return x, y.long()


def check_clean_set(n: int, minimum: int, *, owner: str, what: str = "clean set") -> None:
    """InputError when a clean set has fewer than minimum rows."""
    if n < minimum:
        raise InputError(
            f"{owner}: the {what} must have at least {minimum} rows; got {n} (clean set too small). "
            "Pass more held-out clean inputs."
        )


def detection_metrics(flagged: Any, poisoned: Any, n: int) -> dict[str, float]:
    """Precision, recall and F1 of flagged row indices against the true poisoned indices among n rows.

    Example:
        detection_metrics(detector.flagged_indices_, result.indices, result.n)
    """
    f = torch.zeros(n, dtype=torch.bool)
    p = torch.zeros(n, dtype=torch.bool)
    f[torch.as_tensor(flagged, dtype=torch.long).cpu()] = True
    p[torch.as_tensor(poisoned, dtype=torch.long).cpu()] = True
    tp = float((f & p).sum())
    prec = tp / float(f.sum()) if bool(f.any()) else 0.0
    rec = tp / float(p.sum()) if bool(p.any()) else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "n_flagged": float(f.sum())}
