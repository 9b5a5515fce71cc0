"""Robustness curves: one attack run per budget, built on dataclasses.replace."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from torch import Tensor

from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, as_model

__all__ = ["sweep", "with_eps"]


def with_eps(attack: EvasionAttack, eps: float) -> EvasionAttack:
    """A copy of attack with budget eps (for an Ensemble: every member that has an eps field).

    Raises:
        ConfigError: the attack has no ``eps`` field, or eps is invalid for it.
    """
    from modelshield.attacks.evasion.ensemble import Ensemble

    if isinstance(attack, Ensemble):
        return dataclasses.replace(attack, members=tuple(with_eps(m, eps) for m in attack.members))
    if not dataclasses.is_dataclass(attack) or "eps" not in {f.name for f in dataclasses.fields(attack)}:
        raise ConfigError(
            f"sweep: 'attack' must be an attack dataclass with an 'eps' field; got "
            f"{type(attack).__name__}. Sweep a budgeted attack such as PGD or APGD."
        )
    new: EvasionAttack = dataclasses.replace(attack, eps=eps)
    return new


def sweep(
    attack: EvasionAttack,
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    eps: Sequence[float],
    target: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[EvasionResult]:
    """Run attack once per budget in eps and return the results in the same order.

    Each run is an independent call of ``dataclasses.replace(attack, eps=e)`` (for an
    Ensemble, eps is replaced in each member), so seeded attacks give the same result as
    calling them directly. The model is adapted once, so its query counter spans the sweep.

    Args:
        attack: a budgeted evasion attack (its own eps is ignored).
        model: the model (torch module, callable, or an adapted Model).
        x, y: (N, ...) inputs and (N,) true labels.
        eps: the budgets, in the attack's norm and input units.
        target: optional (N,) target classes (targeted attacks).
        progress: called as ``progress(done, total)`` after each budget.

    Raises:
        ConfigError: eps is empty, or a budget is invalid for the attack.

    Example:
        curve = sweep(PGD(eps=0.0), model, x, y, eps=[0.0, 0.05, 0.1])
        [r.robust_accuracy for r in curve]
    """
    budgets = list(eps)
    if not budgets:
        raise ConfigError("sweep: 'eps' must be a non-empty sequence of budgets; got []. "
                          "Pass e.g. eps=[0.0, 0.05, 0.1].")
    attacks = [with_eps(attack, e) for e in budgets]  # validate every budget before any work
    m = as_model(model)
    out: list[EvasionResult] = []
    for i, a in enumerate(attacks):
        out.append(a(m, x, y, target=target))
        if progress is not None:
            progress(i + 1, len(attacks))
    return out
