"""Model extraction: stealing a classifier through its prediction API, and measuring the copy.

Every attack follows the extraction call convention ``attack(victim, x_pool, y=None, *,
eval_data=None, ...) -> ExtractionResult``: the victim is anything ``as_model`` accepts and is
used only through ``scores``/``predict`` (queries counted, budgets enforced).

``TextExtraction`` steals a text classifier (``list[str] -> probabilities``) from a pool of
texts instead, with a TF-IDF + logistic-regression surrogate.

Scenarios (pools, output hardening, PRADA replay: ``run_extraction``, ``load_pool``, ``QueryLog``)
live one layer up, in ``modelshield.experiments.extraction``.
"""

from __future__ import annotations

from modelshield.attacks.extraction._train import Standardise, is_unscaled
from modelshield.attacks.extraction.equation_solving import EquationSolving, LinearCopy
from modelshield.attacks.extraction.jacobian import JacobianAugmentation
from modelshield.attacks.extraction.knockoff import KnockoffNets
from modelshield.attacks.extraction.metrics import accuracy, fidelity, transferability
from modelshield.attacks.extraction.results import CurvePoint, ExtractionResult
from modelshield.attacks.extraction.text import TextCopy, TextExtraction, TextExtractionResult

__all__ = [
    "CurvePoint",
    "EquationSolving",
    "ExtractionResult",
    "JacobianAugmentation",
    "KnockoffNets",
    "LinearCopy",
    "Standardise",
    "TextCopy",
    "TextExtraction",
    "TextExtractionResult",
    "accuracy",
    "fidelity",
    "is_unscaled",
    "transferability",
]
