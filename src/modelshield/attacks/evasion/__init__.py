"""Evasion attacks: inputs crafted at inference time to be misclassified."""

from __future__ import annotations

from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.pgd import PGD

__all__ = ["FGSM", "PGD"]
