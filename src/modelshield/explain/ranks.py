"""Rank statistics shared by the sanity checks and the detectors: average ranks and Spearman's rho."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_ranks", "rank_correlation"]


def average_ranks(values: Tensor) -> Tensor:
    """(N, D) -> (N, D) float64 0-based ranks within each row, ties given their average rank."""
    v = values.detach().double().contiguous()
    ordered, _ = v.sort(dim=1)
    low = torch.searchsorted(ordered, v, right=False)
    high = torch.searchsorted(ordered, v, right=True)
    return (low + high - 1).double() / 2.0


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row of a with the same row of b: (N, ...) x2 -> (N,) float64.

    Ties get their average rank (Spearman's rho is then the Pearson correlation of the ranks). A row
    that is constant in a or in b shares no rank order with the other and scores 0.
    """
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    norm = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(dim=1) / norm.clamp_min(1e-300)
    return torch.where(norm > 0, rho, torch.zeros_like(rho))
