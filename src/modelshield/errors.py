"""The modelshield exception tree and warning categories.

    ModelShieldError(Exception)
    ├── ConfigError(ValueError)             bad attack / defence / command settings
    ├── InputError(ValueError)              bad tensors: shape, dtype, NaN, bounds, labels, device
    ├── DataError(ValueError)               a data set that cannot be read or is malformed
    │   └── MissingDataError(FileNotFoundError)
    ├── IntegrityError(ValueError)          a signature, manifest or trust-policy check failed
    ├── ModelCapabilityError(TypeError)     the model cannot do what the caller needs
    ├── QueryBudgetExceeded(RuntimeError)   a query budget ran out
    ├── QueryRefused(RuntimeError)          a served model refused a query (blocked, rate-limited, down)
    └── NotFittedError(ValueError, AttributeError)

    EvaluationWarning(UserWarning)          "this result may be misleading"

Each error also inherits the matching builtin so that ``except ValueError`` keeps working.
Messages follow one template: ``"<Owner>: <what> must be <constraint>; got <value>. <Fix>."``
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "EvaluationWarning",
    "InputError",
    "IntegrityError",
    "MissingDataError",
    "ModelCapabilityError",
    "ModelShieldError",
    "NotFittedError",
    "QueryBudgetExceeded",
    "QueryRefused",
]


class ModelShieldError(Exception):
    """Root of every error modelshield raises on purpose."""


class ConfigError(ModelShieldError, ValueError):
    """A setting (attack, defence, command option) is invalid."""


class InputError(ModelShieldError, ValueError):
    """Input tensors are malformed: shape, dtype, NaN/inf, out of bounds, bad labels, device."""


class DataError(ModelShieldError, ValueError):
    """A data set cannot be read or is malformed."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder does not exist."""


class IntegrityError(ModelShieldError, ValueError):
    """A signature, dataset manifest or trust-policy check failed: an artifact may have been tampered with."""


class ModelCapabilityError(ModelShieldError, TypeError):
    """The model cannot do what the caller needs (e.g. gradients from a black-box model)."""


class QueryBudgetExceeded(ModelShieldError, RuntimeError):
    """A model's query budget ran out."""


class QueryRefused(ModelShieldError, RuntimeError):
    """A served model (a modelshield gateway) refused a query, so a query attack must stop.

    Attributes:
        status: the HTTP status (401, 403, 413, 429, 5xx), or None when no answer came (network).
        decision: the gateway's decision name ("blocked", "rate-limited", "budget-exhausted", ...).
        detail: the gateway's own explanation.
        retry_after_s: the ``Retry-After`` seconds sent with the refusal, if any.
    """

    def __init__(self, message: str, *, status: int | None = None, decision: str = "refused",
                 detail: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.decision = decision
        self.detail = detail
        self.retry_after_s = retry_after_s


class NotFittedError(ModelShieldError, ValueError, AttributeError):
    """A stateful object was used before ``fit``."""


class EvaluationWarning(UserWarning):
    """A result may be misleading (e.g. signs of gradient masking)."""
