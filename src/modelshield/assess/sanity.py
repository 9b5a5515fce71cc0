"""Sanity checks on evasion results: signs that a robustness number may be misleading.

These turn the checks of AutoAttack (Croce and Hein, 2020, arXiv:2003.01690) and the advice of
Carlini et al. ("On Evaluating Adversarial Robustness", 2019, arXiv:1902.06705) into report
findings. Each check takes curves ``{attack name: [EvasionResult per eps, ascending eps]}``
and returns plain-language findings; ``warn_findings`` also emits them as EvaluationWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from modelshield.attacks.results import EvasionResult
from modelshield.errors import EvaluationWarning

__all__ = [
    "ITERATIVE_ATTACKS",
    "SINGLE_STEP_ATTACKS",
    "SLACK",
    "check_eps_curves",
    "check_largest_eps",
    "check_model_answers",
    "check_monotone",
    "check_single_step",
    "check_zero_eps",
    "tolerance",
    "warn_findings",
]

Curves = Mapping[str, Sequence[EvasionResult]]

SINGLE_STEP_ATTACKS = frozenset({"fgsm"})
ITERATIVE_ATTACKS = frozenset({"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "ensemble"})
"""Budget-constrained iterative attacks that should never be weaker than a single step."""

MOST = 0.5
"""``check_largest_eps`` flags the largest eps when it breaks at most this share of points."""


def tolerance(n: int) -> float:
    """Accuracy difference treated as noise on n points: max(1 %, 2 points).

    Random starts make attacks on a few points differ by one point or two between runs, so a
    smaller gap is not evidence of anything.
    """
    return max(0.01, 2.0 / max(n, 1))


SLACK = 1e-9
"""Added to every tolerance before comparing: accuracies are multiples of 1/n, so a gap of
exactly the tolerance (0.93 - 0.90 is 0.030000000000000027 in floating point) must not fire."""


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def check_zero_eps(curves: Curves) -> list[str]:
    """Flag eps=0 results whose robust accuracy is below the clean accuracy.

    With eps=0 the only admissible input is x itself, so any gap means the model answered the
    same input differently twice: randomised or non-deterministic outputs, which make gradient
    attacks unreliable (AutoAttack's ``check_randomized``).
    """
    out: list[str] = []
    for name, curve in curves.items():
        for r in curve:
            if r.eps == 0 and r.robust_accuracy < r.clean_accuracy - 1e-9:
                out.append(
                    f"Randomised outputs: at eps=0 {name} reports robust accuracy "
                    f"{_pct(r.robust_accuracy)} below the clean accuracy {_pct(r.clean_accuracy)}, "
                    "so the model answered identical inputs differently. Evaluate randomised "
                    "models with Expectation over Transformation (EOT) and fix the randomness."
                )
                break
    return out


def check_monotone(curves: Curves, *, tol: float | None = None) -> list[str]:
    """Flag an attack whose robust accuracy rises by more than ``tol`` as eps grows.

    A larger budget contains every perturbation of a smaller one, so a working attack can only
    do better; a rise means the optimisation failed (too few steps, gradient masking).
    Reports the largest rise per attack.
    """
    out: list[str] = []
    for name, curve in curves.items():
        pts = sorted(curve, key=lambda r: r.eps or 0.0)
        if not pts:
            continue
        t = tolerance(pts[0].n) if tol is None else tol
        worst: tuple[float, EvasionResult, EvasionResult] | None = None
        for i, lo in enumerate(pts):
            for hi in pts[i + 1:]:
                rise = hi.robust_accuracy - lo.robust_accuracy
                if rise > t + SLACK and (worst is None or rise > worst[0]):
                    worst = (rise, lo, hi)
        if worst is not None:
            _, lo, hi = worst
            out.append(
                f"Non-monotone curve: {name} robust accuracy rises from {_pct(lo.robust_accuracy)} "
                f"at eps={lo.eps:g} to {_pct(hi.robust_accuracy)} at eps={hi.eps:g}. A larger budget "
                "cannot help the model, so the attack is failing (too few steps or gradient "
                "masking); rerun with more steps and restarts before trusting these numbers."
            )
    return out


def check_single_step(curves: Curves, *, tol: float | None = None) -> list[str]:
    """Flag a single-step attack (FGSM) that beats an iterative one at the same eps.

    An iterative attack whose first step is FGSM's can only do better; losing to FGSM is a
    classic sign of gradient masking or a too small step size (Carlini et al., 2019).
    """
    out: list[str] = []
    for single in sorted(SINGLE_STEP_ATTACKS & curves.keys()):
        by_eps = {r.eps: r for r in curves[single]}
        for name in sorted(ITERATIVE_ATTACKS & curves.keys()):
            for r in curves[name]:
                s = by_eps.get(r.eps)
                if s is None or not r.eps:
                    continue
                t = tolerance(r.n) if tol is None else tol
                if s.robust_accuracy < r.robust_accuracy - t - SLACK:
                    out.append(
                        f"Single-step beats iterative: at eps={r.eps:g} {single} leaves "
                        f"{_pct(s.robust_accuracy)} robust accuracy but {name} leaves "
                        f"{_pct(r.robust_accuracy)}. The iterative attack should be at least as "
                        "strong; suspect gradient masking or a bad step size, and check with more "
                        "steps, restarts and a black-box attack."
                    )
                    break
    return out


def check_largest_eps(curves: Curves) -> list[str]:
    """Flag a grid whose largest eps does not break most points even for the strongest attack.

    With a large enough budget every input can be turned into any other, so accuracy must
    eventually reach zero; if the largest eps still leaves most points unbroken, either the
    grid stops too early or the attacks are being masked.
    """
    last = [c[-1] for c in (sorted(c, key=lambda r: r.eps or 0.0) for c in curves.values()) if c]
    last = [r for r in last if r.eps]
    if not last:
        return []
    best = max(last, key=lambda r: _nan_to(r.attack_success_rate, -1.0))
    rate = best.attack_success_rate
    if rate != rate or rate > MOST:  # nan (nothing eligible) or most points broken
        return []
    return [
        f"Largest eps does not break most points: at eps={best.eps:g} the strongest attack breaks "
        f"only {_pct(rate)} of the correctly classified points. Grow eps until accuracy reaches "
        "zero; if it never does, the attacks are being masked rather than the model being robust."
    ]


def _nan_to(v: float, default: float) -> float:
    return default if v != v else v


def check_model_answers(curves: Curves) -> list[str]:
    """Say when the model returned NaN/inf, or answered the same inputs differently.

    Verification (``verify_evasion``) never counts a NaN or infinite answer as a success, and
    reads a non-deterministic model by majority vote (randomised answers) or one input per
    query (answers that depend on the batch); the report must say so, since either changes
    what the numbers mean.
    """
    out: list[str] = []
    errors = {name: max((r.n_model_errors for r in curve), default=0) for name, curve in curves.items()}
    hit = {name: e for name, e in errors.items() if e}
    if hit:
        n = max(r.n for curve in curves.values() for r in curve)
        listed = ", ".join(f"{name}: {e}" for name, e in hit.items())
        out.append(
            f"Model errors: the model returned NaN or inf on up to {max(hit.values())} of {n} points "
            f"({listed}); those inputs are counted as not broken, never as successes. Check the "
            "model on such inputs: an attacker may use them to crash or confuse the service."
        )
    kinds = {str(r.extra.get("nondeterminism")) for curve in curves.values() for r in curve
             if r.extra.get("stochastic")}
    if kinds:
        how = []
        if any("random" in k for k in kinds):
            how.append("randomised answers were read by a majority vote of repeated queries")
        if any("batch" in k for k in kinds):
            how.append("answers that depend on the other inputs of the batch were read one input "
                       "per query")
        out.append(
            "Non-deterministic model: the model answered the same inputs differently, so "
            f"{' and '.join(how)} (expectation over the randomness, as randomised defences are "
            "evaluated). Attack such models with EOT and make inference deterministic if you can."
        )
    return out


def check_eps_curves(curves: Curves, *, tol: float | None = None) -> list[str]:
    """Every check above, in a fixed order."""
    return [
        *check_model_answers(curves),
        *check_zero_eps(curves),
        *check_monotone(curves, tol=tol),
        *check_single_step(curves, tol=tol),
        *check_largest_eps(curves),
    ]


def warn_findings(findings: Sequence[str]) -> None:
    """Emit each finding as an EvaluationWarning."""
    for text in findings:
        warnings.warn(text, EvaluationWarning, stacklevel=3)
