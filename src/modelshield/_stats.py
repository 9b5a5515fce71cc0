"""Detector statistics shared by every package: a threshold from a false-positive rate, and AUROC."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["auroc", "calibrate_threshold"]


def calibrate_threshold(clean_scores: Tensor, fpr: float) -> float:
    """The ``1 - fpr`` quantile of clean scores: flagging ``score > threshold`` keeps at most about
    ``fpr`` of clean inputs (exactly, up to ties, on the calibration set itself). "higher"
    interpolation makes the threshold an observed score."""
    s = clean_scores.detach().double().flatten().cpu()
    return float(torch.quantile(s, 1.0 - fpr, interpolation="higher"))


def auroc(negative: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of scores (positives should score higher): the Mann-Whitney
    probability ``P(pos > neg) + P(pos == neg) / 2``; 0.5 when either set is empty."""
    neg = negative.detach().double().flatten().cpu()
    pos = positive.detach().double().flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        return 0.5
    _, inverse, counts = torch.unique(torch.cat([neg, pos]), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each distinct value's last copy
    ranks = (ends - (counts.double() - 1.0) / 2.0)[inverse]  # ties get their average rank
    n_neg, n_pos = neg.numel(), pos.numel()
    u = float(ranks[n_neg:].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_neg * n_pos)
