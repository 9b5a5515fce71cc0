"""Sanity checks fire on crafted result curves, and stay quiet on healthy ones."""

from __future__ import annotations

import pytest
import torch

from modelshield.assess.sanity import (
    check_eps_curves,
    check_largest_eps,
    check_monotone,
    check_single_step,
    check_zero_eps,
    tolerance,
    warn_findings,
)
from modelshield.attacks.results import EvasionResult
from modelshield.errors import EvaluationWarning


def crafted(eps: float, *, n: int, broken: int, wrong: int = 0, clean_wrong_again: int = 0) -> EvasionResult:
    """n points of class 0: the first `wrong` misclassified clean; `broken` more broken by the attack.

    clean_wrong_again: clean-correct points that the verification query gets wrong at eps=0
    (what a randomised model produces).
    """
    y = torch.zeros(n, dtype=torch.long)
    clean_pred = y.clone()
    clean_pred[:wrong] = 1
    adv_pred = clean_pred.clone()
    adv_pred[wrong:wrong + broken + clean_wrong_again] = 2
    x = torch.zeros(n, 3)
    return EvasionResult(
        attack="Crafted", params={}, x_adv=x, y=y, target=None, clean_pred=clean_pred,
        adv_pred=adv_pred, success=adv_pred != y, valid=torch.ones(n, dtype=torch.bool),
        norms=torch.full((n,), eps), norm="inf", eps=eps, queries_forward=0, queries_backward=0,
        time_s=0.0,
    )


def test_crafted_helper_gives_the_intended_accuracies() -> None:
    r = crafted(0.1, n=10, broken=3, wrong=2)
    assert r.clean_accuracy == pytest.approx(0.8)
    assert r.robust_accuracy == pytest.approx(0.5)
    assert r.attack_success_rate == pytest.approx(3 / 8)


def test_tolerance_is_two_points_or_one_percent() -> None:
    assert tolerance(10) == pytest.approx(0.2)
    assert tolerance(1000) == pytest.approx(0.01)


def test_monotone_flags_a_rise_larger_than_tolerance() -> None:
    curve = [crafted(0.0, n=10, broken=0), crafted(0.1, n=10, broken=8), crafted(0.2, n=10, broken=4)]
    # robust accuracy: 1.0, 0.2, 0.6 -> rises by 0.4 > tolerance 0.2 between eps 0.1 and 0.2
    (msg,) = check_monotone({"pgd": curve})
    assert "pgd" in msg and "eps=0.1" in msg and "eps=0.2" in msg and "20.0%" in msg and "60.0%" in msg


def test_monotone_ignores_a_rise_within_tolerance() -> None:
    curve = [crafted(0.1, n=100, broken=50), crafted(0.2, n=100, broken=48)]  # +2 points = tol 0.02
    assert check_monotone({"pgd": curve}) == []
    assert check_monotone({"pgd": curve}, tol=0.01) != []


def test_monotone_reports_the_largest_rise_once_per_attack() -> None:
    curve = [crafted(0.1, n=10, broken=9), crafted(0.2, n=10, broken=6), crafted(0.3, n=10, broken=1)]
    (msg,) = check_monotone({"apgd-ce": curve})
    assert "eps=0.1" in msg and "eps=0.3" in msg  # 10% -> 90%, not the smaller 10% -> 40%


def test_single_step_beating_iterative_is_flagged() -> None:
    curves = {"fgsm": [crafted(0.1, n=10, broken=9)], "pgd": [crafted(0.1, n=10, broken=2)]}
    (msg,) = check_single_step(curves)
    assert "fgsm" in msg and "pgd" in msg and "eps=0.1" in msg


def test_single_step_weaker_than_iterative_is_fine() -> None:
    curves = {"fgsm": [crafted(0.1, n=10, broken=2)], "pgd": [crafted(0.1, n=10, broken=9)]}
    assert check_single_step(curves) == []


def test_single_step_ignores_eps_zero_and_unmatched_eps() -> None:
    curves = {"fgsm": [crafted(0.0, n=10, broken=0), crafted(0.2, n=10, broken=9)],
              "pgd": [crafted(0.0, n=10, broken=0), crafted(0.1, n=10, broken=0)]}
    assert check_single_step(curves) == []


def test_largest_eps_that_breaks_few_points_is_flagged() -> None:
    curves = {"pgd": [crafted(0.1, n=10, broken=1), crafted(0.3, n=10, broken=4, wrong=2)]}
    (msg,) = check_largest_eps(curves)  # 4 of 8 eligible = 50% <= half
    assert "eps=0.3" in msg and "50.0%" in msg


def test_largest_eps_that_breaks_most_points_is_fine() -> None:
    curves = {"pgd": [crafted(0.3, n=10, broken=2)], "apgd-ce": [crafted(0.3, n=10, broken=9)]}
    assert check_largest_eps(curves) == []  # the strongest attack decides


def test_largest_eps_ignores_a_grid_of_only_zero() -> None:
    assert check_largest_eps({"pgd": [crafted(0.0, n=10, broken=0)]}) == []


def test_zero_eps_below_clean_accuracy_means_randomised_outputs() -> None:
    (msg,) = check_zero_eps({"pgd": [crafted(0.0, n=10, broken=0, clean_wrong_again=3)]})
    assert "Randomised" in msg and "70.0%" in msg and "100.0%" in msg
    assert check_zero_eps({"pgd": [crafted(0.0, n=10, broken=0)]}) == []


def test_healthy_curves_give_no_findings() -> None:
    curves = {
        "fgsm": [crafted(0.0, n=10, broken=0), crafted(0.1, n=10, broken=5), crafted(0.3, n=10, broken=8)],
        "pgd": [crafted(0.0, n=10, broken=0), crafted(0.1, n=10, broken=7), crafted(0.3, n=10, broken=10)],
    }
    assert check_eps_curves(curves) == []


def test_warn_findings_emits_evaluation_warnings() -> None:
    with pytest.warns(EvaluationWarning, match="finding") as record:
        warn_findings(["first finding", "second finding"])
    assert [str(w.message) for w in record] == ["first finding", "second finding"]
