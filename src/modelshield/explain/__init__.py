"""Explanations: attributions for every kind of model modelshield takes (work in progress, #19).

Every explainer is a frozen dataclass configured at construction and called with
``(model, x, target=None)``, returning an :class:`Attribution`.
"""

from __future__ import annotations

from modelshield.explain.result import Attribution

__all__ = ["Attribution"]
