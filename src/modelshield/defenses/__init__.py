"""Defences: training-data validation (``modelshield.defenses.data``) and, later, more."""

from __future__ import annotations

from modelshield.defenses import data

__all__ = ["data"]
