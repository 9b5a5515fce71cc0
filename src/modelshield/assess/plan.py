"""What an assessment runs: the shared settings and each threat's sub-plan."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.registry import EVASION_ATTACKS, build_attack
from modelshield.errors import ConfigError

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_EPS", "AssessmentPlan", "EvasionPlan"]

DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "ensemble")
DEFAULT_EPS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)




@dataclass(frozen=True, kw_only=True, slots=True)
class EvasionPlan:
    """The white-box evasion part of an assessment.

    Every attack is run at every eps of the grid on the assessment points, so the report can
    draw robust accuracy against eps; the headline numbers and the severity use ``headline_eps``.

    Args:
        attacks: names from ``modelshield.attacks.evasion.registry.EVASION_ATTACKS``.
        eps: the eps grid in input units; sorted and de-duplicated, ``headline_eps`` is added.
        headline_eps: the budget the severity and summary metrics are read at.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations for iterative attacks; None uses each attack's default.

    Raises:
        ConfigError: an unknown attack name, an empty or negative eps grid, a bad norm or steps.
    """

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    eps: tuple[float, ...] = DEFAULT_EPS
    headline_eps: float = 0.1
    norm: Norm = "inf"
    steps: int | None = None

    def __post_init__(self) -> None:
        attacks = tuple(self.attacks)
        if not attacks:
            raise ConfigError(
                "EvasionPlan: 'attacks' must name at least one attack; got (). "
                "Use e.g. attacks=('fgsm', 'pgd')."
            )
        for name in attacks:
            check_choice("attacks", name, tuple(EVASION_ATTACKS), owner="EvasionPlan",
                         fix="Pick names from modelshield.attacks.evasion.registry.EVASION_ATTACKS.")
        if len(set(attacks)) != len(attacks):
            raise ConfigError(
                f"EvasionPlan: 'attacks' must not repeat a name; got {attacks!r}. List each once."
            )
        check_range("headline_eps", self.headline_eps, owner="EvasionPlan", low=0.0,
                    fix="Give eps in input units, e.g. 0.1 for images in [0, 1].")
        grid = tuple(self.eps)
        if not grid:
            raise ConfigError(
                "EvasionPlan: 'eps' must hold at least one budget; got (). Use e.g. eps=(0.0, 0.1, 0.3)."
            )
        for e in grid:
            check_range("eps", e, owner="EvasionPlan", low=0.0,
                        fix="Give every eps in input units, e.g. eps=(0.0, 0.1, 0.3).")
        # The headline budget is always part of the curve, so the plot and the table agree.
        values = sorted({float(e) for e in (*grid, self.headline_eps)})
        check_choice("norm", self.norm, NORMS, owner="EvasionPlan")
        if self.steps is not None:
            check_range("steps", self.steps, owner="EvasionPlan", low=1, integer=True,
                        fix="Use None for each attack's default.")
        for name in attacks:  # fail now, not after an hour, on settings an attack rejects
            build_attack(name, eps=self.headline_eps, norm=self.norm, steps=self.steps, seed=0)
        object.__setattr__(self, "attacks", attacks)
        object.__setattr__(self, "eps", tuple(values))
        object.__setattr__(self, "headline_eps", float(self.headline_eps))

    def to_dict(self) -> dict[str, object]:
        return {
            "attacks": list(self.attacks),
            "eps": list(self.eps),
            "headline_eps": self.headline_eps,
            "norm": self.norm,
            "steps": self.steps,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class AssessmentPlan:
    """Which sections to run, on how many points, and each section's sub-plan.

    Args:
        sections: ids of registered section runners (``modelshield.assess.SECTIONS``), run in order.
        n: number of assessment points (the first n of x); None uses all.
        batch_size: rows per attack call (bounds memory; results are merged).
        seed: seed given to every attack (each builds its own generator).
        evasion: the sub-plan of the ``"evasion"`` section.

    Raises:
        ConfigError: bad n, batch_size or seed, or an empty section list.

    Example:
        plan = AssessmentPlan(n=300, evasion=EvasionPlan(attacks=("fgsm", "pgd")))
    """

    sections: tuple[str, ...] = ("evasion",)
    n: int | None = None
    batch_size: int = 250
    seed: int = 0
    evasion: EvasionPlan = field(default_factory=EvasionPlan)

    def __post_init__(self) -> None:
        sections = tuple(self.sections)
        if not sections:
            raise ConfigError(
                "AssessmentPlan: 'sections' must name at least one section; got (). "
                "Use sections=('evasion',)."
            )
        object.__setattr__(self, "sections", sections)
        if self.n is not None:
            check_range("n", self.n, owner="AssessmentPlan", low=1, integer=True,
                        fix="Use None to assess every point.")
        check_range("batch_size", self.batch_size, owner="AssessmentPlan", low=1, integer=True)
        check_range("seed", self.seed, owner="AssessmentPlan", integer=True)

    def to_dict(self) -> dict[str, object]:
        return {
            "sections": list(self.sections),
            "n": self.n,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "evasion": self.evasion.to_dict(),
        }


def parse_floats(text: str, *, name: str, owner: str) -> tuple[float, ...]:
    """Parse a comma-separated list of finite numbers, e.g. ``"0,0.05,0.1"``."""
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise ConfigError(
                f"{owner}: {name!r} must be a comma-separated list of numbers; got {text!r} "
                f"(bad item {part!r}). Write e.g. 0,0.05,0.1."
            )
        out.append(v)
    return tuple(out)
