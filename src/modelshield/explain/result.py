"""The one result shape every explainer returns: :class:`Attribution`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Attribution"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Attribution:
    """Attributions of a batch of inputs to the model's score for one class each.

    Attributes:
        method: the explainer's name (e.g. ``"integrated-gradients"``, ``"kernel-shap"``).
        values: attributions, a float tensor of the inputs' shape ``(N, *input_shape)`` (tabular:
            ``(N, D)``; text: ``(N, T)`` over the tokens in ``tokens``, padded with 0).
        target: ``(N,)`` int64, the class each row's attributions explain.
        baseline_score: ``(N,)`` the model's score for ``target`` at the baseline / expected value
            (``E[f(background)]`` for SHAP, ``f(baseline)`` for Integrated Gradients), or None.
        score: ``(N,)`` the model's score for ``target`` at the input, or None.
        feature_names: tabular column names, when known.
        tokens: text: each row's tokens, in order (``values[i, :len(tokens[i])]`` are theirs).
        details: method-specific figures, JSON-able (e.g. ``{"completeness_gap": [...], "steps":
            50}``, ``{"samples": 2048}``).
        config: the explainer's settings, for reproducibility.
        seconds: wall time of the call.
    """

    method: str
    values: Tensor
    target: Tensor
    baseline_score: Tensor | None = None
    score: Tensor | None = None
    feature_names: tuple[str, ...] | None = None
    tokens: tuple[tuple[str, ...], ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def completeness_gap(self) -> Tensor | None:
        """``|sum(values) - (score - baseline_score)|`` per row (Sundararajan et al. 2017's
        completeness / SHAP's local accuracy), or None when either score is unknown."""
        if self.score is None or self.baseline_score is None:
            return None
        total = self.values.flatten(1).sum(dim=1).double()
        return (total - (self.score.double() - self.baseline_score.double())).abs()

    def to_dict(self, *, with_values: bool = False) -> dict[str, Any]:
        """JSON-able summary (values only when asked: they can be large)."""
        gap = self.completeness_gap
        out: dict[str, Any] = {
            "method": self.method, "n": int(self.values.shape[0]), "shape": list(self.values.shape[1:]),
            "target": self.target.tolist(), "details": dict(self.details), "config": dict(self.config),
            "seconds": round(self.seconds, 4),
            "completeness_gap_max": None if gap is None else float(gap.max()) if gap.numel() else 0.0,
        }
        if self.feature_names is not None:
            out["feature_names"] = list(self.feature_names)
        if with_values:
            out["values"] = self.values.tolist()
        return out
