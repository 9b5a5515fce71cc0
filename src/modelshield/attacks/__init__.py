"""Attacks on machine-learning models, and the results they return.

Evasion attacks live in :mod:`modelshield.attacks.evasion` (white-box, black-box and, in
:mod:`modelshield.attacks.evasion.tabular`, constraint-respecting tabular attacks).
"""

from __future__ import annotations

from modelshield.attacks.evasion import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    CarliniWagnerL2,
    DeepFool,
    Ensemble,
    EvasionAttack,
    HopSkipJump,
    SimBA,
    Square,
    Transfer,
    build_attack,
    sweep,
)
from modelshield.attacks.results import EvasionResult

__all__ = [
    "APGD",
    "APGDT",
    "FGSM",
    "PGD",
    "CarliniWagnerL2",
    "DeepFool",
    "Ensemble",
    "EvasionAttack",
    "EvasionResult",
    "HopSkipJump",
    "SimBA",
    "Square",
    "Transfer",
    "build_attack",
    "sweep",
]
