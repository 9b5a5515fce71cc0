"""Gradient-masking checks for a robustness claim (Carlini et al., 2019; Athalye et al., 2018).

``check_gradient_masking`` runs the attack behind a claim together with the standard Ensemble,
an eps sweep up to an unbounded budget, FGSM, a black-box Square attack and reseeded runs, and
turns every sign of masking into a ``MaskingFlag`` with its evidence. A flagged model is never
reported as robust (``MaskingReport.robust_claim_allowed``), nor is a model whose clean accuracy
is at chance (``MaskingReport.usability``: a constant prediction is "robust" to everything), and
the robust accuracy reported is the per-point worst case over every attack run at the claimed eps.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.assess.sanity import SLACK, check_monotone, check_single_step, tolerance
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.evasion.square import Square
from modelshield.attacks.evasion.sweep import sweep, with_eps
from modelshield.attacks.ops import ce_loss
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import check_batch
from modelshield.defenses.mode import require_eval_mode
from modelshield.defenses.usable import Usability, chance_accuracy, check_usable
from modelshield.errors import ConfigError, EvaluationWarning
from modelshield.models import ModelLike, as_gradient_model, eval_mode

__all__ = [
    "FLAG_NAMES",
    "SWEEP_FACTORS",
    "MaskingFlag",
    "MaskingReport",
    "Usability",
    "check_gradient_masking",
    "check_usable",
    "zero_gradient_fraction",
]

SWEEP_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Multiples of the claimed eps in the sweep (an unbounded budget is always added)."""

REFERENCE = ("Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry and "
             "Kurakin, \"On Evaluating Adversarial Robustness\", 2019 (arXiv:1902.06705)")
ATHALYE = ("Athalye, Carlini and Wagner, \"Obfuscated Gradients Give a False Sense of Security\", "
           "ICML 2018 (arXiv:1802.00420)")

FLAG_NAMES: tuple[str, ...] = (
    "non_monotone_eps", "unbounded_not_broken", "black_box_beats_white_box",
    "single_step_beats_iterative", "restart_variance", "zero_gradients", "stronger_attack_gap",
)
"""Every flag check_gradient_masking can raise, in report order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskingFlag:
    """One sign of gradient masking.

    Attributes:
        name: one of ``FLAG_NAMES``.
        evidence: the numbers behind it (accuracies in [0, 1], eps values, fractions).
        explanation: what was seen and why it undermines the robustness claim.
        reference: where the check comes from.
    """

    name: str
    evidence: dict[str, float]
    explanation: str
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "evidence": {k: _r(v) for k, v in self.evidence.items()},
                "explanation": self.explanation, "reference": self.reference}


def _r(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskingReport:
    """The outcome of ``check_gradient_masking``.

    Attributes:
        eps, norm: the claimed budget. n: points evaluated.
        clean_accuracy: accuracy on the clean points.
        attack_robust_accuracy: robust accuracy under the claim's own attack at eps.
        ensemble_robust_accuracy: under the Ensemble at eps.
        robust_accuracy: per-point worst case over every attack run at eps (the number to report).
        curve: ``(eps, robust accuracy)`` of the claim's attack over the sweep, unbounded last.
        unbounded_eps: the budget treated as unbounded (the whole input range).
        accuracies: robust accuracy at eps per attack run (name -> value).
        zero_gradient_fraction: share of points whose cross-entropy input gradient is exactly 0.
        flags: the signs of masking found.
        time_s: wall time.
        usability: whether the model still classifies clean inputs (``check_usable`` against
            chance); None only for reports built by hand.
    """

    eps: float
    norm: Norm
    n: int
    clean_accuracy: float
    attack_robust_accuracy: float
    ensemble_robust_accuracy: float
    robust_accuracy: float
    curve: tuple[tuple[float, float], ...]
    unbounded_eps: float
    accuracies: dict[str, float]
    zero_gradient_fraction: float
    flags: tuple[MaskingFlag, ...]
    time_s: float
    results: dict[str, EvasionResult] = field(default_factory=dict, repr=False)
    usability: Usability | None = None

    @property
    def usable(self) -> bool:
        """False when the clean accuracy is at chance (see ``usability``)."""
        return self.usability is None or self.usability.usable

    @property
    def robust_claim_allowed(self) -> bool:
        """False as soon as any sign of masking was found, or when the model is not usable."""
        return not self.flags and self.usable

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.flags)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {
            "eps": self.eps, "norm": self.norm, "n": self.n,
            "clean_accuracy": _r(self.clean_accuracy),
            "attack_robust_accuracy": _r(self.attack_robust_accuracy),
            "ensemble_robust_accuracy": _r(self.ensemble_robust_accuracy),
            "robust_accuracy": _r(self.robust_accuracy),
            "robust_claim_allowed": self.robust_claim_allowed,
            "usable": self.usable,
            "usability": None if self.usability is None else self.usability.to_dict(),
            "curve": [[e, _r(a)] for e, a in self.curve],
            "unbounded_eps": self.unbounded_eps,
            "accuracies": {k: _r(v) for k, v in self.accuracies.items()},
            "zero_gradient_fraction": _r(self.zero_gradient_fraction),
            "flags": [f.to_dict() for f in self.flags],
            "time_s": round(self.time_s, 4),
        }


def zero_gradient_fraction(model: ModelLike, x: Tensor, y: Tensor) -> float:
    """Share of points whose input gradient of the cross-entropy is exactly zero.

    A zero gradient gives gradient attacks no direction at all: a saturated softmax (defensive
    distillation), a quantising or otherwise non-differentiable input layer, or a detached
    pre-processing step (AutoAttack's ``check_zero_gradients``).
    """
    m = as_gradient_model(model, caller="zero_gradient_fraction")
    x_t, y_t, _ = check_batch(m, x, y, owner="zero_gradient_fraction")
    with eval_mode(m):
        _, grad = m.value_and_grad(x_t, lambda z: ce_loss(z, y_t))
    return float((grad.flatten(1).abs().amax(1) == 0).double().mean())


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def check_gradient_masking(
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "inf",
    attack: EvasionAttack | None = None,
    ensemble: EvasionAttack | None = None,
    sweep_factors: Sequence[float] = SWEEP_FACTORS,
    square_queries: int = 1000,
    seeds: int = 3,
    tol: float | None = None,
    restart_tol: float | None = None,
    unbounded_tol: float = 0.05,
    zero_grad_tol: float = 0.05,
    gap_tol: float = 0.1,
    seed: int = 0,
) -> MaskingReport:
    """Check a robustness claim at eps for the signs of gradient masking.

    Runs, on the same points: the claim's ``attack`` at eps; the ``ensemble`` at eps; the
    attack over ``eps * sweep_factors`` plus an unbounded budget (the whole input range);
    FGSM at eps; Square (black-box, ``square_queries`` queries) at eps; the attack reseeded
    ``seeds - 1`` more times; and the zero-gradient fraction. Flags (see ``FLAG_NAMES``):

    - ``non_monotone_eps``: robust accuracy rises with eps (``sanity.check_monotone``).
    - ``unbounded_not_broken``: the unbounded budget leaves more than ``unbounded_tol`` accuracy.
    - ``black_box_beats_white_box``: Square's robust accuracy is below that of the best
      white-box attack run (the claim's attack, its reseeded runs and the Ensemble) by > tol.
      A claim's attack that merely loses to Square while the Ensemble does not is a weak
      attack, not misleading gradients: that shows as ``stronger_attack_gap`` or
      ``restart_variance``, and the reported robust accuracy is the per-point worst case anyway.
    - ``single_step_beats_iterative``: FGSM beats the attack by > tol (``sanity.check_single_step``).
    - ``restart_variance``: reseeded runs differ by more than ``restart_tol``.
    - ``zero_gradients``: more than ``zero_grad_tol`` of the points have an all-zero gradient.
    - ``stronger_attack_gap``: the Ensemble beats the claim's attack by more than ``gap_tol``
      (the attack's loss is masked, e.g. cross-entropy on a saturated softmax).

    Each flag is also emitted as an EvaluationWarning, and so is a clean accuracy at chance
    (``check_usable``): such a model is never allowed a robustness claim, flags or not.

    Args:
        model: a white-box model (``nn.Module`` in eval mode, or a TorchModel).
        x, y: (N, ...) inputs within the model's bounds and (N,) labels.
        eps, norm: the claimed budget.
        attack: the attack behind the claim (an attack with an ``eps`` field); default
            ``PGD(eps, steps=40, loss="ce")``.
        ensemble: the strong reference attack; default ``Ensemble.standard(eps, norm)``.
        sweep_factors: multiples of eps for the curve (capped below the unbounded budget).
        square_queries: Square's queries per point.
        seeds: runs of the attack with different seeds (>= 2 to test restart variance).
        tol: accuracy difference treated as noise (default ``sanity.tolerance(n)``).
        restart_tol: spread allowed between seeds (default max(0.03, 3 / n)).
        unbounded_tol, zero_grad_tol, gap_tol: thresholds of the other flags.
        seed: base seed of every attack.

    Returns:
        The MaskingReport.

    Raises:
        ConfigError: eps outside (0, unbounded], or another setting out of range.
        InputError: model in training mode, bad inputs or labels, data on the wrong device.

    Reference: Carlini et al., "On Evaluating Adversarial Robustness", 2019 (arXiv:1902.06705);
    Athalye, Carlini and Wagner, ICML 2018 (arXiv:1802.00420).

    Example:
        report = check_gradient_masking(model, x, y, eps=0.3)
        report.robust_claim_allowed, report.robust_accuracy, report.flag_names
    """
    started = time.perf_counter()
    owner = "check_gradient_masking"
    check_choice("norm", norm, NORMS, owner=owner)
    require_eval_mode(model, owner=owner)
    m = as_gradient_model(model, caller=owner)
    if isinstance(x, Tensor):
        m.check_device(x)  # first: a tensor on another (e.g. meta) device cannot be inspected
    x_t, y_t, _ = check_batch(m, x, y, owner=owner)
    lo, hi = m.bounds
    unbounded = (hi - lo) * (1.0 if norm == "inf" else math.sqrt(x_t[0].numel()))
    check_range("eps", eps, owner=owner, low=0.0, high=unbounded, low_open=True,
                fix=f"The claimed budget must be positive and at most the unbounded {unbounded:g}.")
    check_range("square_queries", square_queries, owner=owner, low=1, integer=True)
    check_range("seeds", seeds, owner=owner, low=1, integer=True)
    for name, v in (("unbounded_tol", unbounded_tol), ("zero_grad_tol", zero_grad_tol),
                    ("gap_tol", gap_tol)):
        check_range(name, v, owner=owner, low=0.0, high=1.0)
    if not sweep_factors or any(not isinstance(f, int | float) or f <= 0 for f in sweep_factors):
        raise ConfigError(f"{owner}: 'sweep_factors' must be positive numbers; got "
                          f"{sweep_factors!r}. Use e.g. (0.25, 0.5, 1, 2, 4).")
    base = attack if attack is not None else PGD(eps=eps, norm=norm, steps=40, loss="ce", seed=seed)
    base_norm = getattr(base, "norm", norm)
    if base_norm != norm:
        raise ConfigError(f"{owner}: 'attack' must use norm {norm!r}; got {base_norm!r}. "
                          "Build the attack with the claimed norm.")
    claim = with_eps(base, eps)
    ens = ensemble if ensemble is not None else Ensemble.standard(eps, norm, seed=seed)
    n = int(x_t.shape[0])
    t = tolerance(n) if tol is None else tol
    r_tol = max(0.03, 3.0 / n) if restart_tol is None else restart_tol

    results: dict[str, EvasionResult] = {}
    results["attack"] = claim(m, x_t, y_t)
    results["ensemble"] = with_eps(ens, eps)(m, x_t, y_t)
    results["fgsm"] = FGSM(eps=eps, norm=norm)(m, x_t, y_t)
    results["square"] = Square(eps=eps, norm=norm, max_queries=square_queries, seed=seed)(m, x_t, y_t)
    reseeded = [results["attack"]]
    if "seed" in {f.name for f in dataclasses.fields(claim)}:  # type: ignore[arg-type]  # dataclass attacks
        for k in range(1, seeds):
            res = dataclasses.replace(claim, seed=seed + 1000 * k)(m, x_t, y_t)  # type: ignore[type-var]
            results[f"attack_seed{k}"] = res
            reseeded.append(res)
    grid = sorted(({min(eps * f, unbounded) for f in sweep_factors} | {eps}) - {unbounded})
    curve_res = sweep(base, m, x_t, y_t, eps=[*grid, unbounded])
    by_eps = {r.eps: r for r in curve_res}
    results["attack_unbounded"] = by_eps[unbounded]
    zero_frac = zero_gradient_fraction(m, x_t, y_t)

    acc = {k: v.robust_accuracy for k, v in results.items() if k != "attack_unbounded"}
    robust_all = torch.stack([results[k].robust_correct for k in acc]).all(0)
    flags: list[MaskingFlag] = []
    a_acc = results["attack"].robust_accuracy
    attack_name = type(claim).__name__

    if check_monotone({attack_name: curve_res}, tol=t):
        pairs = [(r.eps, r.robust_accuracy) for r in curve_res]
        rise = max((hi_r - lo_r for i, (_, lo_r) in enumerate(pairs) for _, hi_r in pairs[i + 1:]),
                   default=0.0)
        flags.append(MaskingFlag(
            name="non_monotone_eps",
            evidence={"max_rise": rise, **{f"acc@{e:g}": a for e, a in pairs}},
            explanation=(f"{attack_name}'s robust accuracy rises by up to {_pct(rise)} as eps grows, "
                         "although a larger budget contains every smaller perturbation: the attack "
                         "is failing to optimise (gradient masking or too few steps)."),
            reference=REFERENCE))
    unb = by_eps[unbounded].robust_accuracy
    if unb > unbounded_tol + SLACK:
        flags.append(MaskingFlag(
            name="unbounded_not_broken",
            evidence={"unbounded_eps": unbounded, "robust_accuracy": unb, "threshold": unbounded_tol},
            explanation=(f"With an unbounded budget (eps={unbounded:g}, any input in range) "
                         f"{attack_name} still leaves {_pct(unb)} robust accuracy; an attack that "
                         "works must reach ~0%, so its gradients are not informative."),
            reference=REFERENCE))
    sq = results["square"].robust_accuracy
    white = {k: v for k, v in acc.items() if k not in ("square", "fgsm")}
    best_white = min(white, key=lambda k: white[k])
    wb_name = "the Ensemble" if best_white == "ensemble" else f"the white-box {attack_name}"
    if sq < white[best_white] - t - SLACK:
        flags.append(MaskingFlag(
            name="black_box_beats_white_box",
            evidence={"square": sq, "white_box": white[best_white], "tolerance": t},
            explanation=(f"The black-box Square attack ({square_queries} queries) leaves {_pct(sq)} "
                         f"robust accuracy but the strongest white-box attack, {wb_name}, leaves "
                         f"{_pct(white[best_white])}: gradients mislead the white-box attacks."),
            reference=REFERENCE))
    curves = {"fgsm": [results["fgsm"]], "pgd": [results["attack"]]}
    if check_single_step(curves, tol=t):
        flags.append(MaskingFlag(
            name="single_step_beats_iterative",
            evidence={"fgsm": results["fgsm"].robust_accuracy, "iterative": a_acc, "tolerance": t},
            explanation=(f"FGSM leaves {_pct(results['fgsm'].robust_accuracy)} robust accuracy, below "
                         f"{attack_name}'s {_pct(a_acc)}; an iterative attack should be at least as "
                         "strong, so its gradient steps are being misled."),
            reference=REFERENCE))
    if len(reseeded) > 1:
        accs = [r.robust_accuracy for r in reseeded]
        spread = max(accs) - min(accs)
        if spread > r_tol + SLACK:
            flags.append(MaskingFlag(
                name="restart_variance",
                evidence={"spread": spread, "min": min(accs), "max": max(accs), "tolerance": r_tol},
                explanation=(f"Reseeded runs of {attack_name} give robust accuracies from "
                             f"{_pct(min(accs))} to {_pct(max(accs))}: results that depend on the "
                             "random start point to a noisy or shattered loss surface."),
                reference=REFERENCE))
    if zero_frac > zero_grad_tol + SLACK:
        flags.append(MaskingFlag(
            name="zero_gradients",
            evidence={"fraction": zero_frac, "threshold": zero_grad_tol},
            explanation=(f"{_pct(zero_frac)} of the points have an input gradient of exactly zero "
                         "(saturated softmax, quantisation or a detached layer): gradient attacks "
                         "get no direction there."),
            reference=ATHALYE))
    e_acc = results["ensemble"].robust_accuracy
    if e_acc < a_acc - max(gap_tol, t) - SLACK:
        flags.append(MaskingFlag(
            name="stronger_attack_gap",
            evidence={"ensemble": e_acc, "attack": a_acc, "threshold": gap_tol},
            explanation=(f"The Ensemble leaves {_pct(e_acc)} robust accuracy against "
                         f"{attack_name}'s {_pct(a_acc)}: the claim's attack loss is masked (e.g. "
                         "cross-entropy on a saturated softmax); only the worst case counts."),
            reference=REFERENCE))
    for f in flags:
        warnings.warn(f"Gradient masking ({f.name}): {f.explanation}", EvaluationWarning, stacklevel=2)
    clean = results["attack"].clean_accuracy
    n_classes = int(m.n_classes)
    usability = check_usable(clean, n=n, n_classes=n_classes, chance=chance_accuracy(y_t, n_classes))
    if not usability.usable:
        warnings.warn(f"Unusable model: {usability.reason}; no robustness claim can be made for a "
                      "model that does not classify clean inputs.", EvaluationWarning, stacklevel=2)
    return MaskingReport(
        eps=eps, norm=norm, n=n, clean_accuracy=clean,
        attack_robust_accuracy=a_acc, ensemble_robust_accuracy=e_acc,
        robust_accuracy=float(robust_all.double().mean()),
        curve=tuple((float(r.eps or 0.0), r.robust_accuracy) for r in curve_res),
        unbounded_eps=unbounded, accuracies=acc, zero_gradient_fraction=zero_frac,
        flags=tuple(flags), time_s=time.perf_counter() - started, results=results,
        usability=usability,
    )
