"""Result dataclasses returned by attacks: outputs plus their verified metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["EvasionResult"]


def _rate(mask: Tensor, over: Tensor | None = None) -> float:
    """Mean of a bool mask, optionally over the rows where ``over`` holds (nan if none)."""
    if over is not None:
        mask = mask[over]
    return float(mask.double().mean()) if mask.numel() else math.nan


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


@dataclass(frozen=True, slots=True)
class EvasionResult:
    """What an evasion attack produced, re-verified on the model.

    Attributes:
        attack: the attack's class name.
        params: the attack's configuration (provenance for every number below).
        x_adv: (N, ...) adversarial inputs, same shape/dtype/device as x. Rows that failed
            verification (outside the eps-ball or bounds) are replaced by the clean input.
        y: (N,) true labels. target: (N,) target labels for a targeted attack, else None.
        clean_pred, adv_pred: (N,) labels the model gave x and x_adv (adv_pred from a fresh query).
        success: (N,) bool: x_adv is valid and misclassified (untargeted) or hits the target.
        valid: (N,) bool: x_adv lies within eps (norm) of x and inside the bounds (tol 1e-6).
        norms: (N,) perturbation size ||x_adv - x|| in the attack's norm.
        queries_forward, queries_backward: input rows scored / differentiated, verification included.
        time_s: wall time of the call.
        extra: attack-specific JSON-safe details (e.g. per-member counts of an ensemble).
        point_queries: (N,) forward queries spent on each point, for query-based attacks.
    """

    attack: str
    params: dict[str, Any]
    x_adv: Tensor
    y: Tensor
    target: Tensor | None
    clean_pred: Tensor
    adv_pred: Tensor
    success: Tensor
    valid: Tensor
    norms: Tensor
    norm: str | None
    eps: float | None
    queries_forward: int
    queries_backward: int
    time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    point_queries: Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def clean_correct(self) -> Tensor:
        return self.clean_pred == self.y

    @property
    def clean_accuracy(self) -> float:
        return _rate(self.clean_correct)

    @property
    def robust_correct(self) -> Tensor:
        """(N,) bool: correct on the clean input and on the (valid) adversarial input."""
        return self.clean_correct & (self.adv_pred == self.y)

    @property
    def robust_accuracy(self) -> float:
        return _rate(self.robust_correct)

    @property
    def eligible(self) -> Tensor:
        """(N,) bool: points the attack had to break (clean-correct, and not already the target)."""
        ok = self.clean_correct
        return ok & (self.y != self.target) if self.target is not None else ok

    @property
    def attack_success_rate(self) -> float:
        """Share of eligible points broken (nan when none is eligible)."""
        return _rate(self.success, self.eligible)

    @property
    def max_perturbation(self) -> float:
        return float(self.norms.max()) if self.norms.numel() else 0.0

    @property
    def median_perturbation(self) -> float:
        """Median perturbation over successful eligible points (nan when none)."""
        sel = self.norms[self.success & self.eligible]
        return float(sel.median()) if sel.numel() else math.nan

    @property
    def queries_per_success(self) -> tuple[float, float]:
        """(median, mean) forward queries per successful eligible point (nan when unknown)."""
        if self.point_queries is None:
            return math.nan, math.nan
        sel = self.point_queries[self.success & self.eligible].double()
        if not sel.numel():
            return math.nan, math.nan
        return float(sel.median()), float(sel.mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors)."""
        per_point: dict[str, Any] = {}
        if self.point_queries is not None:
            med, mean = self.queries_per_success
            per_point = {"median_queries_per_success": _json_float(med),
                         "mean_queries_per_success": _json_float(mean)}
        return {
            "attack": self.attack,
            "eps": self.eps,
            "norm": self.norm,
            "targeted": self.targeted,
            "n": self.n,
            "clean_accuracy": _json_float(self.clean_accuracy),
            "robust_accuracy": _json_float(self.robust_accuracy),
            "attack_success_rate": _json_float(self.attack_success_rate),
            "max_perturbation": _json_float(self.max_perturbation),
            "median_perturbation": _json_float(self.median_perturbation),
            "invalid_points": int((~self.valid).sum()),
            "queries_forward": self.queries_forward,
            "queries_backward": self.queries_backward,
            "time_s": round(self.time_s, 4),
            **per_point,
            "params": self.params,
            **self.extra,
        }

    @classmethod
    def concat(cls, parts: Sequence[EvasionResult]) -> EvasionResult:
        """Join results of the same attack on consecutive batches into one."""
        if not parts:
            raise ValueError("EvasionResult.concat: need at least one result")
        first = parts[0]
        targets = [p.target for p in parts]
        return cls(
            attack=first.attack,
            params=first.params,
            x_adv=torch.cat([p.x_adv for p in parts]),
            y=torch.cat([p.y for p in parts]),
            target=None if targets[0] is None else torch.cat([t for t in targets if t is not None]),
            clean_pred=torch.cat([p.clean_pred for p in parts]),
            adv_pred=torch.cat([p.adv_pred for p in parts]),
            success=torch.cat([p.success for p in parts]),
            valid=torch.cat([p.valid for p in parts]),
            norms=torch.cat([p.norms for p in parts]),
            norm=first.norm,
            eps=first.eps,
            queries_forward=sum(p.queries_forward for p in parts),
            queries_backward=sum(p.queries_backward for p in parts),
            time_s=sum(p.time_s for p in parts),
            extra=first.extra,
            point_queries=None if first.point_queries is None
            else torch.cat([p.point_queries for p in parts if p.point_queries is not None]),
        )
