"""Constraint-respecting evasion of tabular classifiers (e.g. phishing-website detectors).

``ConstraintSpec`` says what an attacker can change; ``TabularSearch`` (black-box, scores)
and ``TabularPGD`` (PyTorch models) find rows that the model classifies as benign and that
satisfy the spec, with at most ``max_changes`` features changed.
"""

from __future__ import annotations

from modelshield.attacks.evasion.tabular.constraints import (
    DIRECTIONS,
    ConstraintSpec,
    Direction,
    FeatureConstraint,
    Relation,
    count_changes,
)
from modelshield.attacks.evasion.tabular.gradient import TabularPGD
from modelshield.attacks.evasion.tabular.search import TabularSearch

__all__ = [
    "DIRECTIONS",
    "ConstraintSpec",
    "Direction",
    "FeatureConstraint",
    "Relation",
    "TabularPGD",
    "TabularSearch",
    "count_changes",
]
