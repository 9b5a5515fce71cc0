"""Evasion attacks by CLI name, and a builder that turns (name, eps, norm, steps, seed) into one.

The query-only (black-box) names ``square``, ``simba`` and ``hsj`` also take a per-point query
budget, ``max_queries``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.apgd import APGD, APGDT
from modelshield.attacks.evasion.cw import CarliniWagnerL2
from modelshield.attacks.evasion.deepfool import DeepFool
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.hopskipjump import HopSkipJump
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.evasion.simba import SimBA
from modelshield.attacks.evasion.square import Square
from modelshield.errors import ConfigError

__all__ = ["BLACK_BOX_ATTACKS", "DEFAULT_MAX_QUERIES", "EVASION_ATTACKS", "build_attack"]

DEFAULT_MAX_QUERIES = 1000
"""Per-point query budget of the black-box names when ``max_queries`` is None."""

def _cw(eps: float, norm: Norm, steps: int | None, seed: int | None) -> EvasionAttack:
    if norm != "2":
        raise ConfigError(
            f"build_attack: 'norm' must be '2' for 'cw'; got {norm!r}. Carlini-Wagner is an L2 "
            "attack: pass norm='2' and an L2 eps, or use 'apgd-ce' for L-inf."
        )
    return CarliniWagnerL2(eps=eps, steps=steps or 1000)


def _square(eps: float, norm: Norm, steps: int | None, seed: int | None, *,
            max_queries: int = DEFAULT_MAX_QUERIES) -> EvasionAttack:
    return Square(eps=eps, norm=norm, max_queries=max_queries, seed=seed)


def _simba(eps: float, norm: Norm, steps: int | None, seed: int | None, *,
           max_queries: int = DEFAULT_MAX_QUERIES) -> EvasionAttack:
    # L-inf: one step moves a pixel by eps (the ball's corner); L2: SimBA's 0.2, at most eps.
    step = eps if norm == "inf" else min(0.2, eps)
    return SimBA(eps=eps, norm=norm, eps_step=step if step > 0 else 0.2, max_queries=max_queries,
                 seed=seed)


def _hsj(eps: float, norm: Norm, steps: int | None, seed: int | None, *,
         max_queries: int = DEFAULT_MAX_QUERIES) -> EvasionAttack:
    return HopSkipJump(eps=eps, norm=norm, steps=steps, max_queries=max_queries, seed=seed)


EVASION_ATTACKS: dict[str, Callable[..., object]] = {
    "fgsm": lambda eps, norm, steps, seed: FGSM(eps=eps, norm=norm),
    "pgd": lambda eps, norm, steps, seed: PGD(eps=eps, norm=norm, steps=steps or 40, seed=seed),
    "apgd-ce": lambda eps, norm, steps, seed: APGD(eps=eps, norm=norm, steps=steps or 100, loss="ce",
                                                   seed=seed),
    "apgd-dlr": lambda eps, norm, steps, seed: APGD(eps=eps, norm=norm, steps=steps or 100, loss="dlr",
                                                    seed=seed),
    "apgd-t": lambda eps, norm, steps, seed: APGDT(eps=eps, norm=norm, steps=steps or 100, seed=seed),
    "cw": _cw,
    "deepfool": lambda eps, norm, steps, seed: DeepFool(eps=eps, norm=norm, steps=steps or 50),
    "ensemble": lambda eps, norm, steps, seed: Ensemble.standard(eps, norm, seed=seed, steps=steps or 100),
    "square": _square,
    "simba": _simba,
    "hsj": _hsj,
}
"""CLI name -> builder ``(eps, norm, steps, seed) -> attack``; steps None means the attack's default.

The builders of ``BLACK_BOX_ATTACKS`` also take ``max_queries=`` (keyword)."""

BLACK_BOX_ATTACKS: frozenset[str] = frozenset({"square", "simba", "hsj"})
"""Names of query-only attacks: they need scores (square, simba) or labels (hsj), no gradients."""


def build_attack(
    name: str,
    *,
    eps: float,
    norm: Norm = "inf",
    steps: int | None = None,
    seed: int | None = 0,
    max_queries: int | None = None,
) -> EvasionAttack:
    """Build the evasion attack registered under name (see EVASION_ATTACKS).

    Minimum-norm attacks (``cw``, ``deepfool``) get eps as their budget. Arguments an attack
    does not use (FGSM's steps and seed) are ignored. Black-box names (``BLACK_BOX_ATTACKS``):
    ``square`` (Square, L-inf/L2) and ``simba`` (SimBA-pixel; its step is eps for L-inf, at most
    0.2 for L2) ignore ``steps``; ``hsj`` (HopSkipJump, labels only) takes ``steps`` as its
    number of gradient-estimation iterations (None: until the budget is spent). Their budget is
    ``max_queries`` forward queries per point (None: ``DEFAULT_MAX_QUERIES``).

    Raises:
        ConfigError: unknown name (the message lists the known ones and the closest match),
            max_queries given for a white-box attack, or a setting the attack rejects.

    Example:
        attack = build_attack("apgd-ce", eps=0.1)
        attack(model, x, y).robust_accuracy
        build_attack("square", eps=0.3, max_queries=1000)
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in EVASION_ATTACKS:
        close = difflib.get_close_matches(str(name).lower(), list(EVASION_ATTACKS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"build_attack: 'name' must be one of {', '.join(EVASION_ATTACKS)}; got {name!r}.{hint}"
        )
    check_choice("norm", norm, NORMS, owner="build_attack")
    if steps is not None:
        check_range("steps", steps, owner="build_attack", low=1, integer=True)
    if key in BLACK_BOX_ATTACKS:
        budget = DEFAULT_MAX_QUERIES if max_queries is None else max_queries
        check_range("max_queries", budget, owner="build_attack", low=1, integer=True,
                    fix="Give the forward queries allowed per point, e.g. max_queries=1000.")
        attack = EVASION_ATTACKS[key](eps, norm, steps, seed, max_queries=budget)
    elif max_queries is not None:
        raise ConfigError(
            f"build_attack: 'max_queries' must be None for the white-box attack {key!r}; got "
            f"{max_queries!r}. Query budgets apply to {', '.join(sorted(BLACK_BOX_ATTACKS))}; "
            "use 'steps' for white-box attacks."
        )
    else:
        attack = EVASION_ATTACKS[key](eps, norm, steps, seed)
    return attack  # type: ignore[return-value]  # every registered builder returns an attack
