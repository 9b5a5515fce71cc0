"""ExtractionResult: the stolen copy, the victim queries it cost and its quality curve."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["CurvePoint", "ExtractionResult"]


def _json_float(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 6)


@dataclass(frozen=True, kw_only=True, slots=True)
class CurvePoint:
    """Quality of the copy after ``queries`` victim queries, measured on the evaluation set.

    Attributes:
        queries: victim queries the copy was trained on (the attacker's spend so far).
        fidelity: share of evaluation points where copy and victim predict the same label.
        accuracy: share of evaluation points the copy labels correctly.
        transfer_rate: share of adversarial examples crafted on the copy (and successful on
            it) that also fool the victim, on points the victim classifies correctly; None when
            no transfer attack was given, nan when no point qualified.
    """

    queries: int
    fidelity: float
    accuracy: float
    transfer_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "queries": self.queries,
            "fidelity": _json_float(self.fidelity),
            "accuracy": _json_float(self.accuracy),
        }
        if self.transfer_rate is not None:
            out["transfer_rate"] = _json_float(self.transfer_rate)
        return out


class CurveReadout:
    """``fidelity``, ``accuracy`` and ``at(queries)`` read from a result's ``curve`` (the final
    point, or the point at a query count); shared by the image/tabular and text extraction results."""

    __slots__ = ()
    curve: tuple[CurvePoint, ...]

    @property
    def fidelity(self) -> float:
        """Fidelity of the final copy (nan without evaluation data)."""
        return self.curve[-1].fidelity if self.curve else math.nan

    @property
    def accuracy(self) -> float:
        """Test accuracy of the final copy (nan without evaluation data)."""
        return self.curve[-1].accuracy if self.curve else math.nan

    def at(self, queries: int) -> CurvePoint:
        """The curve point recorded at exactly ``queries`` victim queries (KeyError if none)."""
        for point in self.curve:
            if point.queries == queries:
                return point
        recorded = [p.queries for p in self.curve]
        raise KeyError(f"no curve point at {queries} queries; recorded: {recorded}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractionResult(CurveReadout):
    """What a model-extraction attack produced.

    Attributes:
        attack: the attack's class name.
        params: the attack's configuration (provenance for every number below).
        copy: the stolen model: a ``torch.nn.Module`` returning logits (for the equation-solving
            attack a :class:`~modelshield.attacks.extraction.LinearCopy`, which also has a
            scikit-learn-style ``predict_proba``).
        queries: victim queries the attack spent; equal to the change of the victim's own
            query counter over the call (evaluation queries excluded, see ``eval_queries``).
        curve: copy quality at each checkpoint of the query budget (empty without eval data).
        eval_queries: victim queries made only to *measure* the copy (victim labels on the
            evaluation set, transfer replays); they are not charged to the attacker and are
            removed from the victim's counter (a wrapped callable still sees them).
        time_s: wall time of the call.
        extra: attack-specific JSON-safe details.
    """

    attack: str
    params: dict[str, Any]
    copy: nn.Module
    queries: int
    curve: tuple[CurvePoint, ...] = ()
    eval_queries: int = 0
    time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors, no model)."""
        return {
            "attack": self.attack,
            "queries": self.queries,
            "eval_queries": self.eval_queries,
            "fidelity": _json_float(self.fidelity),
            "accuracy": _json_float(self.accuracy),
            "curve": [p.to_dict() for p in self.curve],
            "copy": type(self.copy).__name__,
            "time_s": round(self.time_s, 4),
            "params": self.params,
            **self.extra,
        }
