"""Result dataclasses returned by attacks: outputs plus their verified metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["EvasionResult", "merge_extra"]


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
        extra: attack-specific JSON-safe details (e.g. per-member counts of an ensemble), and
            how verification read a non-deterministic model (``stochastic``, ``nondeterminism``,
            ``votes``; see ``verify_evasion``).
        point_queries: (N,) forward queries spent on each point, for query-based attacks.
        model_errors: (N,) bool: the model answered NaN or inf on x or on the returned input.
            Such rows are never successes (x_adv is x there; a clean error has clean_pred -1).
            None means no such check was made (results built by hand).
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
    model_errors: Tensor | None = None

    @property
    def n_model_errors(self) -> int:
        """Rows on which the model answered NaN or inf (0 when unchecked)."""
        return 0 if self.model_errors is None else int(self.model_errors.sum())

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
            "model_errors": self.n_model_errors,
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
            extra=merge_extra([p.extra for p in parts], [p.n for p in parts]),
            point_queries=None if first.point_queries is None
            else torch.cat([p.point_queries for p in parts if p.point_queries is not None]),
            model_errors=None if any(p.model_errors is None for p in parts)
            else torch.cat([p.model_errors for p in parts if p.model_errors is not None]),
        )


_ALL_KEYS = frozenset({"determinism_checked"})
"""Boolean extras that hold for a merged result only when they hold for every part."""
_SAME_KEYS = frozenset({"votes"})
"""Numeric extras that are settings, not counts: the merged value is the largest."""


def _merge_values(key: str, values: list[Any], weights: list[int]) -> Any:
    """One extra value from the values of consecutive batches (see ``merge_extra``)."""
    present = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    if not present:
        return None
    vals = [v for v, _ in present]
    if all(isinstance(v, bool) for v in vals):
        return all(vals) if key in _ALL_KEYS else any(vals)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        if key in _SAME_KEYS:
            return max(vals)
        if all(isinstance(v, int) for v in vals) or key.endswith("time_s"):
            total = sum(vals)
            return round(total, 4) if isinstance(total, float) else total
        weight = sum(w for _, w in present)
        return round(sum(v * w for v, w in present) / max(weight, 1), 6)
    if all(isinstance(v, dict) for v in vals):
        return merge_extra(vals, [w for _, w in present])
    if all(isinstance(v, list) for v in vals) and len({len(v) for v in vals}) == 1:
        return [_merge_values(key, list(col), [w for _, w in present]) for col in zip(*vals, strict=True)]
    if all(isinstance(v, str) for v in vals):
        return ",".join(dict.fromkeys(vals))
    return vals[0]


def merge_extra(extras: Sequence[dict[str, Any]], weights: Sequence[int]) -> dict[str, Any]:
    """Merge the ``extra`` dicts of results on consecutive batches.

    Counts (ints) and times (``*time_s``) add up, flags are true when any part's is (all, for
    ``determinism_checked``), other numbers are averaged weighted by the parts' sizes, per-member
    lists (``Ensemble``) are merged member by member, and differing strings are joined.
    """
    keys: dict[str, None] = {}
    for e in extras:
        keys.update(dict.fromkeys(e))
    return {k: _merge_values(k, [e.get(k) for e in extras], list(weights)) for k in keys}
