"""modelshield: attack, audit and harden machine-learning models against adversarial AI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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
    from modelshield.models import as_model

_LAZY = {
    **dict.fromkeys(("APGD", "APGDT", "FGSM", "PGD", "CarliniWagnerL2", "DeepFool", "Ensemble",
                     "EvasionResult", "HopSkipJump", "SimBA", "Square", "Transfer", "build_attack", "sweep"),
                    "modelshield.attacks"),
    "as_model": "modelshield.models",
}
"""Re-exports imported on first use (PEP 562), so that ``import modelshield`` and the commands
that need no model (``modelshield scan``, ``sign``, ``audit``) start without importing torch."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelshield' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
