"""What an assessment runs: the shared settings and each threat's sub-plan."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.registry import EVASION_ATTACKS, build_attack
from modelshield.attacks.losses import LOSSES, Loss
from modelshield.errors import ConfigError

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_BUDGETS",
    "DEFAULT_EPS",
    "DEFAULT_MAX_CHANGES",
    "EXPLAIN_METHODS",
    "AssessmentPlan",
    "BlackBoxPlan",
    "DefensesPlan",
    "EvasionPlan",
    "ExplainPlan",
    "ExtractionPlan",
    "PhysicalPlan",
    "SupplyChainPlan",
    "TabularPlan",
    "defended_from_ref",
]

DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "ensemble")
DEFAULT_EPS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_BUDGETS: tuple[int, ...] = (100, 300, 1000, 3000)
DEFAULT_MAX_CHANGES: tuple[int, ...] = (1, 2, 3, 5)
DEFAULT_PATCH_SIZES: tuple[float, ...] = (0.03, 0.05, 0.1)
DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def _int_grid(values: tuple[int, ...], *, name: str, owner: str, example: str) -> tuple[int, ...]:
    grid = tuple(values)
    if not grid:
        raise ConfigError(f"{owner}: {name!r} must hold at least one value; got (). Use e.g. {example}.")
    for v in grid:
        check_range(name, v, owner=owner, low=1, integer=True, fix=f"Use positive integers, e.g. {example}.")
    return tuple(sorted(set(grid)))


@dataclass(frozen=True, kw_only=True, slots=True)
class BlackBoxPlan:
    """The black-box exposure part of an assessment of an image model (section ``"blackbox"``).

    One Square run with ``max(budgets)`` queries per point gives the success within each
    smaller budget (its per-point query counts say when each point broke); HopSkipJump (labels
    only, L2, minimum norm) runs once per ``hsj_budgets`` entry.

    Args:
        eps: the Square budget (L-inf, input units).
        budgets: forward queries per point at which Square's success is read.
        hsj_budgets: query budgets of the HopSkipJump runs; () skips HopSkipJump.
        n: points used (the first n of the assessment points); None uses all. Query attacks
            cost ``budget`` forward passes per point, hence a smaller default than the section
            of white-box attacks.

    Raises:
        ConfigError: a negative eps, an empty or non-positive budget grid, a bad n.
    """

    eps: float = 0.1
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    hsj_budgets: tuple[int, ...] = (100, 300, 1000)
    n: int | None = 100

    def __post_init__(self) -> None:
        own = "BlackBoxPlan"
        check_range("eps", self.eps, owner=own, low=0.0, low_open=True,
                    fix="Give the L-inf budget in input units, e.g. eps=0.1.")
        object.__setattr__(self, "budgets", _int_grid(self.budgets, name="budgets", owner=own,
                                                      example="budgets=(100, 1000)"))
        hsj = tuple(self.hsj_budgets)
        if hsj:
            hsj = _int_grid(hsj, name="hsj_budgets", owner=own, example="hsj_budgets=(100, 1000)")
        object.__setattr__(self, "hsj_budgets", hsj)
        if self.n is not None:
            check_range("n", self.n, owner=own, low=1, integer=True, fix="Use None for every point.")
        object.__setattr__(self, "eps", float(self.eps))

    def to_dict(self) -> dict[str, object]:
        return {"eps": self.eps, "budgets": list(self.budgets), "hsj_budgets": list(self.hsj_budgets),
                "n": self.n}


@dataclass(frozen=True, kw_only=True, slots=True)
class TabularPlan:
    """The constrained tabular evasion part of an assessment (section ``"tabular"``).

    Args:
        max_changes: L0 budgets (most features changed per row) at which success is read; one
            search with the largest budget gives them all (the search stops a row at its first
            evading change set, so it is the same search for every smaller budget).
        headline_changes: the budget the severity and summary use (added to ``max_changes``).
        constraints: a constraint spec file (YAML or JSON); None uses the shipped phishing spec
            for the phishing data, else a spec inferred from the assessment rows.
        beam_width: rows kept per search round (1 = greedy).
        malicious_class: the label of the rows the attacker wants to pass as benign.

    Raises:
        ConfigError: an empty or non-positive budget grid, a bad beam width or class.
    """

    max_changes: tuple[int, ...] = DEFAULT_MAX_CHANGES
    headline_changes: int = 3
    constraints: str | Path | None = None
    beam_width: int = 1
    malicious_class: int = 1

    def __post_init__(self) -> None:
        own = "TabularPlan"
        check_range("headline_changes", self.headline_changes, owner=own, low=1, integer=True,
                    fix="Give the L0 budget of the headline, e.g. headline_changes=3.")
        grid = _int_grid((*tuple(self.max_changes), self.headline_changes), name="max_changes", owner=own,
                         example="max_changes=(1, 2, 3)")
        object.__setattr__(self, "max_changes", grid)
        check_range("beam_width", self.beam_width, owner=own, low=1, integer=True)
        check_range("malicious_class", self.malicious_class, owner=own, low=0, integer=True)

    def to_dict(self) -> dict[str, object]:
        return {"max_changes": list(self.max_changes), "headline_changes": self.headline_changes,
                "constraints": None if self.constraints is None else str(self.constraints),
                "beam_width": self.beam_width, "malicious_class": self.malicious_class}




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


EXPLAIN_METHODS: tuple[str, ...] = (
    "saliency", "smoothgrad", "gradient-x-input", "integrated-gradients", "guided-backprop",
)
"""Gradient attribution methods the ``"explain"`` section may use on image models; the order is the
fallback order when a method fails the sanity check (plain gradients first: they pass it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExplainPlan:
    """The explanation part of an assessment (section ``"explain"``): what the model looked at.

    Image models: ``attack`` is run on the first ``n`` assessment points, the ``worst`` successful
    evasions are explained with ``method`` (clean and adversarial input), after the method passed a
    cheap Adebayo et al. (2018) model-randomisation check (``sanity_points`` points, the top
    ``sanity_layers`` layers); a method that fails it is reported untrustworthy and replaced by the
    first of ``EXPLAIN_METHODS`` that passes. Tabular and text models: ``rows`` rows or messages.

    Args:
        method: a name from ``EXPLAIN_METHODS`` (default ``"saliency"``: Integrated Gradients and
            gradient x input keep the input's shape under randomisation, so the check flags them on
            small CNNs; see ``modelshield.explain.sanity.DEFAULT_THRESHOLD``).
        attack: the evasion attack (``EVASION_ATTACKS``) whose worst evasions are explained.
        eps: its budget; None uses the evasion plan's ``headline_eps``.
        attack_steps: its iterations.
        n: points attacked and explained (the first n of the assessment points).
        worst: evasions (image, text) or rows (tabular) shown.
        ig_steps: integration steps when the method is Integrated Gradients.
        sanity_points: points of the randomisation check. sanity_layers: layers it randomises
            (top first). sanity_threshold: its verdict threshold on the mean rank correlation.

    Raises:
        ConfigError: an unknown method or attack, a non-positive eps, count or step number, or a
            threshold outside (0, 1].
    """

    method: str = "saliency"
    attack: str = "pgd"
    eps: float | None = None
    attack_steps: int = 20
    n: int = 64
    worst: int = 3
    ig_steps: int = 16
    sanity_points: int = 16
    sanity_layers: int = 2
    sanity_threshold: float = 0.5

    def __post_init__(self) -> None:
        own = "ExplainPlan"
        check_choice("method", self.method, EXPLAIN_METHODS, owner=own,
                     fix="Pick a gradient method, e.g. method='saliency'.")
        check_choice("attack", self.attack, tuple(EVASION_ATTACKS), owner=own,
                     fix="Pick a name from modelshield.attacks.evasion.registry.EVASION_ATTACKS, e.g. 'pgd'.")
        if self.eps is not None:
            check_range("eps", self.eps, owner=own, low=0.0, low_open=True,
                        fix="Give the attack budget in input units, e.g. eps=0.1, or None for the "
                            "evasion plan's headline eps.")
            object.__setattr__(self, "eps", float(self.eps))
        for name, example in (("attack_steps", 20), ("n", 64), ("worst", 3), ("ig_steps", 16),
                              ("sanity_points", 16), ("sanity_layers", 2)):
            check_range(name, getattr(self, name), owner=own, low=1, integer=True,
                        fix=f"Use a positive integer, e.g. {name}={example}.")
        check_range("sanity_threshold", self.sanity_threshold, owner=own, low=0.0, high=1.0, low_open=True,
                    fix="Give a rank-correlation threshold in (0, 1], e.g. sanity_threshold=0.5.")
        object.__setattr__(self, "sanity_threshold", float(self.sanity_threshold))

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "attack": self.attack, "eps": self.eps,
                "attack_steps": self.attack_steps, "n": self.n, "worst": self.worst,
                "ig_steps": self.ig_steps, "sanity_points": self.sanity_points,
                "sanity_layers": self.sanity_layers, "sanity_threshold": self.sanity_threshold}


def _float_grid(values: object, *, name: str, owner: str, low: float, high: float, low_open: bool,
                high_open: bool, fix: str) -> tuple[float, ...]:
    """values sorted and de-duplicated, each a finite number within the range, or ConfigError naming
    the bad value."""
    grid = tuple(values) if isinstance(values, tuple | list) else (values,)
    if not grid:
        raise ConfigError(f"{owner}: {name!r} must hold at least one value; got (). {fix}.")
    for v in grid:
        ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
              and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
        if not ok:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ConfigError(f"{owner}: {name!r} must hold numbers in {span}; got {v!r} in {grid!r}. {fix}.")
    return tuple(sorted({float(v) for v in grid}))


@dataclass(frozen=True, kw_only=True, slots=True)
class PhysicalPlan:
    """The physical-world evasion part of an assessment (section ``"physical"``, image models).

    One untargeted ``AdversarialPatch`` is trained per size on the attacker's training images and
    tested on held-out assessment points under freshly drawn transformations; the ``headline_size``
    patch is also tested under transformations of growing ``strengths``, against PatchCleanser
    (certified and defended accuracy) and against the masking-consistency detector. A universal
    perturbation is trained at ``universal_eps`` (default: the evasion plan's headline eps).

    Args:
        sizes: patch sizes as shares of the image area, each in (0, 1); ``headline_size`` is added.
        headline_size: the size the severity, PatchCleanser and the detector use.
        steps: optimisation steps per patch (one batch of images and draws each).
        batch_size: images (and draws) per step. lr: Adam's step in input units.
        draws: transformations drawn per held-out image when a patch is tested.
        strengths: multiples of the patch's own transformation ranges (0: none) at which the
            headline patch is re-tested, each in [0, 4].
        universal_eps: budget of the universal perturbation (the evasion plan's norm); None uses the
            evasion plan's ``headline_eps``; 0 (or a headline eps of 0) skips it.
        universal_passes: its passes over the training images (SGD variant).
        n: held-out assessment points the patches are tested on (the first n); None uses all.
        train_n: training images the attacker uses (a seeded sample of the training split); None
            uses all.
        certify_n: held-out points PatchCleanser certifies (each costs M (M + 1) / 2 masked
            forward passes, M <= masks_per_axis ** 2) and the detector is tested on.
        masks_per_axis: PatchCleanser's masks per image axis (the paper's k).
        fpr: the detector's false-positive rate on clean images, in (0, 0.5].
        detector_n: clean training images the detector is calibrated on (at least 1 / fpr).
        examples: held-out images drawn clean and patched.

    Raises:
        ConfigError: a size outside (0, 1), a strength outside [0, 4], a non-positive count, step
            number or lr, a negative eps, an fpr outside (0, 0.5] or too few calibration images.

    Example:
        plan = AssessmentPlan(sections=("evasion", "physical"), physical=PhysicalPlan(steps=100))
    """

    sizes: tuple[float, ...] = DEFAULT_PATCH_SIZES
    headline_size: float = 0.05
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.05
    draws: int = 4
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    universal_eps: float | None = None
    universal_passes: int = 5
    n: int | None = 500
    train_n: int | None = 2000
    certify_n: int = 100
    masks_per_axis: int = 6
    fpr: float = 0.05
    detector_n: int = 200
    examples: int = 6

    def __post_init__(self) -> None:
        own = "PhysicalPlan"
        share = "Give shares of the image area the patch covers, e.g. 0.05 for 5%"
        h = self.headline_size
        if not (isinstance(h, int | float) and not isinstance(h, bool) and 0.0 < h < 1.0):
            raise ConfigError(f"{own}: 'headline_size' must be a number in (0, 1); got {h!r}. "
                              f"{share}: headline_size=0.05.")
        headline = float(h)
        sizes = _float_grid(self.sizes, name="sizes", owner=own, low=0.0, high=1.0, low_open=True,
                            high_open=True, fix=f"{share}: sizes=(0.03, 0.05, 0.1)")
        object.__setattr__(self, "sizes", tuple(sorted({*sizes, headline})))
        object.__setattr__(self, "headline_size", headline)
        object.__setattr__(self, "strengths", _float_grid(
            self.strengths, name="strengths", owner=own, low=0.0, high=4.0, low_open=False, high_open=False,
            fix="Give multiples of the patch's own transformation ranges (0: none), e.g. "
                "strengths=(0.0, 1.0, 2.0)"))
        for name, example in (("steps", 300), ("batch_size", 64), ("draws", 4), ("universal_passes", 5),
                              ("certify_n", 100), ("masks_per_axis", 6), ("examples", 6)):
            check_range(name, getattr(self, name), owner=own, low=1, integer=True,
                        fix=f"Use a positive integer, e.g. {name}={example}.")
        for name, example in (("n", 500), ("train_n", 2000)):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), owner=own, low=1, integer=True,
                            fix=f"Use a positive integer, e.g. {name}={example}, or None for all.")
        check_range("lr", self.lr, owner=own, low=0.0, low_open=True,
                    fix="Give Adam's step in input units, e.g. lr=0.05 for inputs in [0, 1].")
        if self.universal_eps is not None:
            check_range("universal_eps", self.universal_eps, owner=own, low=0.0,
                        fix="Give the budget in input units, e.g. universal_eps=0.1, 0 to skip the universal "
                            "perturbation, or None for the evasion plan's headline eps.")
            object.__setattr__(self, "universal_eps", float(self.universal_eps))
        check_range("fpr", self.fpr, owner=own, low=0.0, high=0.5, low_open=True,
                    fix="Give the detector's false-positive rate on clean images, e.g. fpr=0.05.")
        need = math.ceil(1.0 / self.fpr)
        check_range("detector_n", self.detector_n, owner=own, low=need, integer=True,
                    fix=f"The detector's threshold at fpr={self.fpr:g} needs at least {need} clean images; "
                        "e.g. detector_n=200.")

    def to_dict(self) -> dict[str, object]:
        return {"sizes": list(self.sizes), "headline_size": self.headline_size, "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "draws": self.draws,
                "strengths": list(self.strengths), "universal_eps": self.universal_eps,
                "universal_passes": self.universal_passes, "n": self.n, "train_n": self.train_n,
                "certify_n": self.certify_n, "masks_per_axis": self.masks_per_axis, "fpr": self.fpr,
                "detector_n": self.detector_n, "examples": self.examples}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhysicalPlan:
        """The plan ``to_dict`` wrote (lists back to tuples).

        Raises:
            ConfigError: d is not a mapping of PhysicalPlan fields, or a value is bad.
        """
        fix = "Pass what PhysicalPlan.to_dict() returned."
        if not isinstance(d, Mapping):
            raise ConfigError(f"PhysicalPlan.from_dict: 'd' must be a dict of PhysicalPlan fields; got "
                              f"{type(d).__name__}. {fix}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(f"PhysicalPlan.from_dict: the keys must be PhysicalPlan fields; got unknown "
                              f"{', '.join(unknown)}. {fix}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class DefensesPlan:
    """The defence comparison part of an assessment (section ``"defenses"``).

    The section compares a defended counterpart of the assessed model with the assessed
    (undefended) model on the same points, with the gradient-masking checks of
    ``assess.masking.check_gradient_masking`` run on both.

    Args:
        defended: the defended model: a white-box ``torch.nn.Module`` (logits, same input shape
            and classes as the assessed model) or the name of a torch zoo model; None uses the
            zoo entry ``<name>-at`` of an assessed zoo model ``<name>`` when there is one. Zoo
            models are loaded with ``zoo.load`` (trained and cached on first use).
        name: the defended model's label in the report; None uses the zoo name or, for a
            module, its class name.
        eps: the budget both models are compared at; None uses the defended zoo model's
            training eps (L-inf), else the evasion plan's headline eps (same norm).
        norm: ``"inf"`` or ``"2"``.
        steps: iterations of PGD and of each Ensemble member (APGD-CE, APGD-T).
        loss: PGD's loss: ``"ce"`` (the usual PGD claim), ``"margin"`` or ``"dlr"``.
        tol: accuracy difference between two attacks (or two models) treated as noise, for the
            masking checks and the verdict; None means ``max(0.03, 3 / n)``, the spread that
            ``check_gradient_masking`` allows between reseeded runs of one attack. Measured on
            200 digits points: Square beat PGD-CE by 1.5 points on digits-cnn-at and PGD-margin
            by 2 points on digits-cnn, so the 1-point default of the checks flags sound models.
        square_queries: queries per point of the black-box Square check.
        seeds: PGD runs with different seeds (restart-variance check; >= 2 to run it).
        curve_factors: multiples of eps at which the Ensemble curve of both models is drawn.
        n: points used (the first n of the assessment points); None uses all.

    Raises:
        ConfigError: an unknown or non-torch zoo name, a bad eps, norm, steps, queries, seeds,
            factors or n.
    """

    defended: nn.Module | str | None = None
    name: str | None = None
    eps: float | None = None
    norm: Norm = "inf"
    steps: int = 40
    loss: Loss = "ce"
    tol: float | None = None
    square_queries: int = 500
    seeds: int = 2
    curve_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)
    n: int | None = 200

    def __post_init__(self) -> None:
        own = "DefensesPlan"
        if isinstance(self.defended, str):
            from modelshield import zoo

            s = zoo.spec(self.defended)
            if s.kind != "torch":
                raise ConfigError(
                    f"{own}: 'defended' must name a torch zoo model; got {self.defended!r}, a "
                    f"{s.kind} model. Pass a white-box model (nn.Module) or e.g. 'digits-cnn-at'."
                )
        elif self.defended is not None and not isinstance(self.defended, nn.Module):
            raise ConfigError(
                f"{own}: 'defended' must be a torch.nn.Module, a zoo name or None; got "
                f"{type(self.defended).__name__}. Load the model first (modelshield.models.load_model)."
            )
        if self.eps is not None:
            check_range("eps", self.eps, owner=own, low=0.0, low_open=True,
                        fix="Give the budget in input units, e.g. eps=0.1, or None for the default.")
            object.__setattr__(self, "eps", float(self.eps))
        check_choice("norm", self.norm, NORMS, owner=own)
        check_range("steps", self.steps, owner=own, low=1, integer=True)
        check_choice("loss", self.loss, LOSSES, owner=own)
        if self.tol is not None:
            check_range("tol", self.tol, owner=own, low=0.0, high=1.0,
                        fix="Give an accuracy difference in [0, 1], e.g. tol=0.03, or None.")
        check_range("square_queries", self.square_queries, owner=own, low=1, integer=True)
        check_range("seeds", self.seeds, owner=own, low=1, integer=True)
        factors = tuple(self.curve_factors)
        if not factors:
            raise ConfigError(f"{own}: 'curve_factors' must hold at least one value; got (). "
                              "Use e.g. curve_factors=(0.5, 1.0, 1.5).")
        for f in factors:
            check_range("curve_factors", f, owner=own, low=0.0, low_open=True,
                        fix="Give positive multiples of eps, e.g. (0.25, 0.5, 1.0, 1.5).")
        object.__setattr__(self, "curve_factors", tuple(sorted({float(f) for f in (*factors, 1.0)})))
        if self.n is not None:
            check_range("n", self.n, owner=own, low=1, integer=True, fix="Use None for every point.")

    def to_dict(self) -> dict[str, object]:
        d = self.defended
        what = None if d is None else d if isinstance(d, str) else f"nn.Module ({type(d).__name__})"
        return {"defended": what, "name": self.name, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "loss": self.loss, "tol": self.tol, "square_queries": self.square_queries,
                "seeds": self.seeds, "curve_factors": list(self.curve_factors), "n": self.n}


def defended_from_ref(ref: str, *, arch: str | None = None,
                      trust_torchscript: bool = False) -> tuple[nn.Module | str, str]:
    """The defended model of a ``--defended`` reference, and its label: a zoo name is kept as it is
    (``DefensesPlan`` loads it), a model file is loaded like ``--model`` (a bare state dict uses arch).

    Raises:
        ConfigError: ref is neither a zoo name nor an existing model file.
    """
    from modelshield import zoo
    from modelshield.models.load import load_model

    if ref in zoo.names():
        return ref, ref
    path = Path(ref).expanduser()
    if not path.exists():
        raise ConfigError(
            f"modelshield assess: '--defended' must be a zoo name ({', '.join(zoo.names())}) or an "
            f"existing model file; got {ref!r}. Pass e.g. --defended digits-cnn-at."
        )
    module, _ = load_model(path, arch=arch, trust_torchscript=trust_torchscript)
    return module, path.name


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractionPlan:
    """Overrides for the model extraction section (section ``"extraction"``).

    Args:
        budgets: query budgets (curve checkpoints) of the thief; None keeps the section's own
            (100, 300, 1000).
        epochs: thief training epochs at each checkpoint; None keeps the section's own (20).

    Raises:
        ConfigError: an empty or non-positive budget grid, or non-positive epochs.
    """

    budgets: tuple[int, ...] | None = None
    epochs: int | None = None

    def __post_init__(self) -> None:
        own = "ExtractionPlan"
        if self.budgets is not None:
            object.__setattr__(self, "budgets", _int_grid(self.budgets, name="budgets", owner=own,
                                                          example="budgets=(100, 300)"))
        if self.epochs is not None:
            check_range("epochs", self.epochs, owner=own, low=1, integer=True,
                        fix="Give the thief's epochs per checkpoint, e.g. epochs=10.")

    def to_dict(self) -> dict[str, object]:
        return {"budgets": None if self.budgets is None else list(self.budgets), "epochs": self.epochs}


@dataclass(frozen=True, kw_only=True, slots=True)
class SupplyChainPlan:
    """The supply-chain part of an assessment (section ``"supply-chain"``): what to check the model
    file and the data against. Nothing here is required; each unset field is reported as missing.

    Args:
        bundle: the model's signature bundle; None uses ``<model file>.sig`` (the trust policy's
            suffix) when that file exists.
        public_keys: PEM public keys the signature may verify with; () uses the trust policy's
            (``$MODELSHIELD_TRUST_POLICY``).
        manifest: a data manifest (``modelshield manifest create``) to verify the data against.
        data_root: the folder (or file) the manifest describes; None uses the data file's folder
            (the file itself when the manifest lists only that file).
        audit_log: the audit log (a file path or a ``postgresql://`` URL) to read the model's
            provenance from; None uses ``$MODELSHIELD_AUDIT_LOG``.

    Raises:
        ConfigError: a path that does not exist (or is not a file / folder as needed), or an
            empty audit-log reference.
    """

    bundle: Path | None = None
    public_keys: tuple[Path, ...] = ()
    manifest: Path | None = None
    data_root: Path | None = None
    audit_log: str | None = None

    def __post_init__(self) -> None:
        own = "SupplyChainPlan"
        for name, fix in (("bundle", "Sign the model ('modelshield sign') or drop the option"),
                          ("manifest", "Create it with 'modelshield manifest create DATA'")):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _existing(value, name=name, owner=own, fix=fix, folder=False))
        keys = (self.public_keys,) if isinstance(self.public_keys, str | Path) else tuple(self.public_keys)
        object.__setattr__(self, "public_keys", tuple(
            _existing(k, name="public_keys", owner=own, folder=False,
                      fix="Give the PEM public key that matches the signing key") for k in keys))
        if self.data_root is not None:
            object.__setattr__(self, "data_root", _existing(self.data_root, name="data_root", owner=own,
                                                            folder=None, fix="Give the data folder"))
        if self.audit_log is not None:
            log = self.audit_log
            if not isinstance(log, str | Path) or not str(log).strip():
                raise ConfigError(f"{own}: 'audit_log' must be a log file path or a postgresql:// URL; got "
                                  f"{log!r}. Pass e.g. audit_log='audit.db', or None for "
                                  "$MODELSHIELD_AUDIT_LOG.")
            text = str(log).strip()
            if "://" not in text:
                _existing(text, name="audit_log", owner=own, folder=False,
                          fix="Create the log with 'modelshield audit init' or pass its URL")
            elif not text.startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"{own}: 'audit_log' must be a file path or a postgresql:// URL; got "
                                  f"{text!r}. Pass e.g. postgresql://user@host/db.")
            object.__setattr__(self, "audit_log", text)

    def to_dict(self) -> dict[str, object]:
        return {"bundle": None if self.bundle is None else str(self.bundle),
                "public_keys": [str(k) for k in self.public_keys],
                "manifest": None if self.manifest is None else str(self.manifest),
                "data_root": None if self.data_root is None else str(self.data_root),
                "audit_log": _redact_url(self.audit_log)}


def _existing(value: object, *, name: str, owner: str, fix: str, folder: bool | None) -> Path:
    """value as an existing Path (a file when folder is False, a folder when True, either for None)."""
    if not isinstance(value, str | Path) or not str(value):
        raise ConfigError(f"{owner}: {name!r} must be a path; got {value!r}. {fix}.")
    path = Path(value).expanduser()
    ok = path.is_dir() if folder else path.is_file() if folder is False else path.exists()
    if not ok:
        what = "an existing " + ("folder" if folder else "file" if folder is False else "path")
        raise ConfigError(f"{owner}: {name!r} must be {what}; got {str(path)!r}. {fix}.")
    return path


def _redact_url(value: str | None) -> str | None:
    """A log reference safe to print: the password of a URL is replaced by ``***``."""
    if value is None or "://" not in value or "@" not in value:
        return value
    scheme, rest = value.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


@dataclass(frozen=True, kw_only=True, slots=True)
class AssessmentPlan:
    """Which sections to run, on how many points, and each section's sub-plan.

    Args:
        sections: ids of registered section runners (``modelshield.assess.SECTIONS``), run in order.
        n: number of assessment points (the first n of x); None uses all.
        batch_size: rows per attack call (bounds memory; results are merged).
        seed: seed given to every attack (each builds its own generator).
        evasion: the sub-plan of the ``"evasion"`` section.
        blackbox: the sub-plan of the ``"blackbox"`` section (image models).
        tabular: the sub-plan of the ``"tabular"`` section (tabular models).
        defenses: the sub-plan of the ``"defenses"`` section (defended vs undefended model).
        extraction: overrides for the ``"extraction"`` section (query budgets, thief epochs).
        supply_chain: the sub-plan of the ``"supply-chain"`` section (signature, manifest, audit log).
        explain: the sub-plan of the ``"explain"`` section (what the model looked at).
        physical: the sub-plan of the ``"physical"`` section (adversarial patches, PatchCleanser).

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
    blackbox: BlackBoxPlan = field(default_factory=BlackBoxPlan)
    tabular: TabularPlan = field(default_factory=TabularPlan)
    defenses: DefensesPlan = field(default_factory=DefensesPlan)
    extraction: ExtractionPlan = field(default_factory=ExtractionPlan)
    supply_chain: SupplyChainPlan = field(default_factory=SupplyChainPlan)
    explain: ExplainPlan = field(default_factory=ExplainPlan)
    physical: PhysicalPlan = field(default_factory=PhysicalPlan)

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
            **({"blackbox": self.blackbox.to_dict()} if "blackbox" in self.sections else {}),
            **({"tabular": self.tabular.to_dict()} if "tabular" in self.sections else {}),
            **({"defenses": self.defenses.to_dict()} if "defenses" in self.sections else {}),
            **({"extraction": self.extraction.to_dict()} if "extraction" in self.sections else {}),
            **({"supply_chain": self.supply_chain.to_dict()} if "supply-chain" in self.sections else {}),
            **({"explain": self.explain.to_dict()} if "explain" in self.sections else {}),
            **({"physical": self.physical.to_dict()} if "physical" in self.sections else {}),
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
