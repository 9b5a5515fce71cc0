"""modelshield: attack, audit and harden machine-learning models against adversarial AI."""

from __future__ import annotations

from modelshield.attacks import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    CarliniWagnerL2,
    DeepFool,
    Ensemble,
    EvasionResult,
    HopSkipJump,
    SimBA,
    Square,
    Transfer,
    build_attack,
    sweep,
)

# Importing the training defences registers the zoo's adversarial trainer (the zoo, a lower
# layer, cannot import it): zoo.load("digits-cnn-at") works after any modelshield import.
from modelshield.defenses import training as _training  # noqa: F401  (imported for registration)
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
    "APGD",
    "APGDT",
    "FGSM",
    "PGD",
    "CarliniWagnerL2",
    "ConfigError",
    "DataError",
    "DeepFool",
    "Ensemble",
    "EvaluationWarning",
    "EvasionResult",
    "HopSkipJump",
    "InputError",
    "MissingDataError",
    "ModelCapabilityError",
    "ModelShieldError",
    "NotFittedError",
    "QueryBudgetExceeded",
    "SimBA",
    "Square",
    "Transfer",
    "__version__",
    "as_model",
    "build_attack",
    "sweep",
]
