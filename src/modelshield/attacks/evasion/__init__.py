"""Evasion attacks: inputs crafted at inference time to be misclassified."""

from __future__ import annotations

from modelshield.attacks.evasion.apgd import APGD, APGDT
from modelshield.attacks.evasion.cw import CarliniWagnerL2
from modelshield.attacks.evasion.deepfool import DeepFool
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.hopskipjump import HopSkipJump
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.evasion.registry import EVASION_ATTACKS, build_attack
from modelshield.attacks.evasion.simba import SimBA
from modelshield.attacks.evasion.square import Square
from modelshield.attacks.evasion.sweep import sweep
from modelshield.attacks.evasion.transfer import Transfer

__all__ = [
    "APGD",
    "APGDT",
    "EVASION_ATTACKS",
    "FGSM",
    "PGD",
    "CarliniWagnerL2",
    "DeepFool",
    "Ensemble",
    "EvasionAttack",
    "HopSkipJump",
    "SimBA",
    "Square",
    "Transfer",
    "build_attack",
    "sweep",
]
