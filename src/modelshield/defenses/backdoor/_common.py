"""Helpers shared by the backdoor defences: fitted checks, input checks, detection metrics."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from modelshield.errors import InputError, NotFittedError

__all__ = ["MAD_CONSTANT", "anomaly_indices", "check_clean_set", "check_fitted", "check_xy",
           "detection_metrics", "high_outliers"]

MAD_CONSTANT = 1.4826
"""Consistency constant that makes the MAD estimate the standard deviation of normal data."""


def anomaly_indices(norms: Tensor) -> Tensor:
    """(C,) |l_c - median(l)| / (1.4826 * median(|l - median(l)|)) for (C,) values, e.g. trigger norms.

    Neural Cleanse's anomaly index (Wang et al. 2019): how many robust standard deviations a
    class's value lies from the median of all classes.
    """
    med = norms.median()
    mad = MAD_CONSTANT * (norms - med).abs().median()
    return (norms - med).abs() / mad.clamp_min(1e-12)


def high_outliers(stats: dict[int, float]) -> dict[int, float]:
    """{class: anomaly index} for per-class statistics, 0 for values at or below the median.

    Used by the training-set detectors to ask whether a class's split statistic stands out
    from the other classes' (a planted sub-population) rather than matching them (a natural
    one). Fewer than 3 classes cannot be compared: every index is then +inf (no veto).
    """
    if len(stats) < 3:
        return {c: math.inf for c in stats}
    keys = list(stats)
    vals = torch.tensor([stats[c] for c in keys], dtype=torch.float64)
    idx = anomaly_indices(vals)
    med = vals.median()
    return {c: float(i) if float(v) > float(med) else 0.0 for c, v, i in zip(keys, vals, idx, strict=True)}


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
