"""modelshield: attack, audit and harden machine-learning models against adversarial AI."""

from __future__ import annotations

from modelshield.attacks import FGSM, PGD, EvasionResult
from modelshield.errors import (
    ConfigError,
    DataError,
    EvaluationWarning,
    InputError,
    MissingDataError,
    ModelCapabilityError,
    ModelShieldError,
    NotFittedError,
    QueryBudgetExceeded,
)
from modelshield.models import as_model

__version__ = "0.1.0"

__all__ = [
    "FGSM",
    "PGD",
    "ConfigError",
    "DataError",
    "EvaluationWarning",
    "EvasionResult",
    "InputError",
    "MissingDataError",
    "ModelCapabilityError",
    "ModelShieldError",
    "NotFittedError",
    "QueryBudgetExceeded",
    "__version__",
    "as_model",
]
