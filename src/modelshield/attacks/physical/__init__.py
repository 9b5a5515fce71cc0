"""Physical-world evasion: one pattern an attacker can print, that works wherever it is placed.

- :class:`AdversarialPatch` (Brown et al., 2017): a patch trained with expectation over
  transformation (location, rotation, scale, light);
- :class:`Sticker` (RP2, Eykholt et al., 2018): a perturbation confined to a mask, printable
  (non-printability score, total variation), optimised over views of the whole scene;
- :class:`UniversalPerturbation` (Moosavi-Dezfooli et al., 2017, and the SGD variant of
  Shafahi et al.): one small perturbation within eps that fools most inputs.

Each returns a :class:`PhysicalPattern`; :func:`evaluate_pattern` tests it on held-out images
under freshly drawn conditions, re-verified on the model.

Example:
    patch = AdversarialPatch(size=0.05)(model, x_train, y_train)
    evaluate_pattern(model, patch, x_test, y_test).success_rate
"""

from __future__ import annotations

from modelshield.attacks.physical.evaluate import EVAL_SEED, evaluate_pattern, size_curve, strength_curve
from modelshield.attacks.physical.files import load_mask, load_palette, save_pattern_png, save_sheet
from modelshield.attacks.physical.patch import AdversarialPatch
from modelshield.attacks.physical.results import PhysicalEvaluation, PhysicalPattern, stamp
from modelshield.attacks.physical.sticker import Sticker, default_palette, non_printability, total_variation
from modelshield.attacks.physical.transforms import (
    Transforms,
    largest_patch_side,
    max_patch_share,
    patch_side,
    place_patch,
    view_scene,
)
from modelshield.attacks.physical.universal import UniversalPerturbation

__all__ = [
    "EVAL_SEED",
    "AdversarialPatch",
    "PhysicalEvaluation",
    "PhysicalPattern",
    "Sticker",
    "Transforms",
    "UniversalPerturbation",
    "default_palette",
    "evaluate_pattern",
    "largest_patch_side",
    "load_mask",
    "load_palette",
    "max_patch_share",
    "non_printability",
    "patch_side",
    "place_patch",
    "save_pattern_png",
    "save_sheet",
    "size_curve",
    "stamp",
    "strength_curve",
    "total_variation",
    "view_scene",
]
