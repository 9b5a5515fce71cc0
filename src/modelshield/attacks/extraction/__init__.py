"""Model extraction: stealing a classifier through its prediction API, and measuring the copy.

Every attack follows the extraction call convention ``attack(victim, x_pool, y=None, *,
eval_data=None, ...) -> ExtractionResult``: the victim is anything ``as_model`` accepts and is
used only through ``scores``/``predict`` (queries counted, budgets enforced).

``run_extraction`` runs one scenario (pool from ``load_pool``, optional output hardening, the
query stream logged by ``QueryLog`` and replayed through PRADA); see ``experiment``.
"""

from __future__ import annotations

from modelshield.attacks.extraction.equation_solving import EquationSolving, LinearCopy
from modelshield.attacks.extraction.experiment import (
    DEFAULT_POOL,
    DEFENCES,
    EXTRACTION_ATTACKS,
    POOLS,
    ExtractionRun,
    Pool,
    QueryLog,
    build_extraction_attack,
    digits_from_mnist,
    load_pool,
    prada_verdict,
    run_extraction,
)
from modelshield.attacks.extraction.jacobian import JacobianAugmentation
from modelshield.attacks.extraction.knockoff import KnockoffNets
from modelshield.attacks.extraction.metrics import accuracy, fidelity, transferability
from modelshield.attacks.extraction.results import CurvePoint, ExtractionResult

__all__ = [
    "DEFAULT_POOL",
    "DEFENCES",
    "EXTRACTION_ATTACKS",
    "POOLS",
    "CurvePoint",
    "EquationSolving",
    "ExtractionResult",
    "ExtractionRun",
    "JacobianAugmentation",
    "KnockoffNets",
    "LinearCopy",
    "Pool",
    "QueryLog",
    "accuracy",
    "build_extraction_attack",
    "digits_from_mnist",
    "fidelity",
    "load_pool",
    "prada_verdict",
    "run_extraction",
    "transferability",
]
