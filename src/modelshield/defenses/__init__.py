"""Defences: training-data validation (``modelshield.defenses.data``) and, later, more."""

from __future__ import annotations

from modelshield.defenses import data, extraction
from modelshield.defenses.extraction import PRADA, ClientBudget, harden, honest_cost

__all__ = ["PRADA", "ClientBudget", "data", "extraction", "harden", "honest_cost"]
