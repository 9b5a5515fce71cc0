"""Evasion attacks by CLI name, and a builder that turns (name, eps, norm, steps, seed) into one."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion._protocol import EvasionAttack
from modelshield.attacks.evasion.apgd import APGD, APGDT
from modelshield.attacks.evasion.cw import CarliniWagnerL2
from modelshield.attacks.evasion.deepfool import DeepFool
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.pgd import PGD
from modelshield.errors import ConfigError

__all__ = ["EVASION_ATTACKS", "build_attack"]



def _cw(eps: float, norm: Norm, steps: int | None, seed: int | None) -> EvasionAttack:
    if norm != "2":
        raise ConfigError(
            f"build_attack: 'norm' must be '2' for 'cw'; got {norm!r}. Carlini-Wagner is an L2 "
            "attack: pass norm='2' and an L2 eps, or use 'apgd-ce' for L-inf."
        )
    return CarliniWagnerL2(eps=eps, steps=steps or 1000)


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
}
"""CLI name -> builder ``(eps, norm, steps, seed) -> attack``; steps None means the attack's default."""


def build_attack(
    name: str, *, eps: float, norm: Norm = "inf", steps: int | None = None, seed: int | None = 0
) -> EvasionAttack:
    """Build the evasion attack registered under name (see EVASION_ATTACKS).

    Minimum-norm attacks (``cw``, ``deepfool``) get eps as their budget. Arguments an attack
    does not use (FGSM's steps and seed) are ignored.

    Raises:
        ConfigError: unknown name (the message lists the known ones and the closest match),
            or a setting the attack rejects.

    Example:
        attack = build_attack("apgd-ce", eps=0.1)
        attack(model, x, y).robust_accuracy
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
    attack = EVASION_ATTACKS[key](eps, norm, steps, seed)
    return attack  # type: ignore[return-value]  # every registered builder returns an attack
