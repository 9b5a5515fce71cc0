"""Attacks on machine-learning models, and the results they return."""

from __future__ import annotations

from modelshield.attacks.evasion import FGSM, PGD
from modelshield.attacks.results import EvasionResult

__all__ = ["FGSM", "PGD", "EvasionResult"]
