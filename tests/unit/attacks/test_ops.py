"""Hand-checkable numbers for the pure operations."""

import math

import pytest
import torch

from modelshield.attacks.losses import resolve_loss
from modelshield.attacks.ops import (
    ce_loss,
    cw_margin_loss,
    dlr_loss,
    lp_norms,
    make_generator,
    normalize_grad,
    project,
    random_start,
)


def test_lp_norms() -> None:
    d = torch.tensor([[3.0, -4.0], [0.5, 0.1]])
    assert torch.allclose(lp_norms(d, "inf"), torch.tensor([4.0, 0.5]))
    assert torch.allclose(lp_norms(d, "2"), torch.tensor([5.0, math.hypot(0.5, 0.1)]))


def test_project_linf_and_l2() -> None:
    d = torch.tensor([[3.0, -4.0], [0.5, 0.1]])
    assert torch.equal(project(d, 1.0, "inf"), torch.tensor([[1.0, -1.0], [0.5, 0.1]]))
    p = project(d, 1.0, "2")
    # first row scaled onto the unit sphere, second row already inside: unchanged
    assert torch.allclose(p[0], torch.tensor([0.6, -0.8]))
    assert torch.equal(p[1], d[1])
    per_row = project(d, torch.tensor([2.5, 0.05]), "inf")
    assert torch.allclose(per_row, torch.tensor([[2.5, -2.5], [0.05, 0.05]]))


def test_normalize_grad() -> None:
    g = torch.tensor([[3.0, -4.0, 0.0]])
    assert torch.equal(normalize_grad(g, "inf"), torch.tensor([[1.0, -1.0, 0.0]]))
    assert torch.allclose(normalize_grad(g, "2"), torch.tensor([[0.6, -0.8, 0.0]]))


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_random_start_inside_ball_and_seeded(norm: str) -> None:
    x = torch.zeros(200, 3, 4)
    a = random_start(x, 0.3, norm, make_generator(1, x.device))  # type: ignore[arg-type]  # literal
    b = random_start(x, 0.3, norm, make_generator(1, x.device))  # type: ignore[arg-type]  # literal
    assert torch.equal(a, b)
    assert (lp_norms(a, norm) <= 0.3 + 1e-6).all()  # type: ignore[arg-type]  # literal
    # uniform in the ball: in 12 dimensions most mass lies near the surface
    assert lp_norms(a, norm).median() > 0.2  # type: ignore[arg-type]  # literal


def test_generator_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    random_start(torch.zeros(5, 2), 0.1, "inf", make_generator(0, torch.device("cpu")))
    assert torch.equal(state, torch.get_rng_state())


def test_losses_by_hand() -> None:
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    expected_ce = -math.log(math.exp(2) / sum(math.exp(v) for v in (2, 1, 0, -1)))
    assert math.isclose(float(ce_loss(z, y)), expected_ce, rel_tol=1e-6)
    # margin: max other (1) - z_y (2) = -1
    assert float(cw_margin_loss(z, y)) == -1.0
    # DLR untargeted: -(z_y - max_other) / (z_pi1 - z_pi3) = -(2 - 1) / (2 - 0)
    assert math.isclose(float(dlr_loss(z, y)), -0.5)
    # DLR targeted at class 3: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2) = -(3) / (2 - (-0.5))
    assert math.isclose(float(dlr_loss(z, y, torch.tensor([3]))), -3 / 2.5, rel_tol=1e-6)


def test_dlr_falls_back_to_margin_for_few_classes() -> None:
    assert resolve_loss("dlr", 2, targeted=False) == "margin"
    assert resolve_loss("dlr", 3, targeted=False) == "dlr"
    assert resolve_loss("dlr", 3, targeted=True) == "margin"
    assert resolve_loss("dlr", 4, targeted=True) == "dlr"
    assert resolve_loss("ce", 2, targeted=True) == "ce"


def test_is_adversarial_untargeted_and_targeted() -> None:
    from modelshield.attacks.ops import is_adversarial

    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0]])  # argmax 0, 1, 2
    y = torch.tensor([0, 0, 0])
    assert is_adversarial(z, y, None).tolist() == [False, True, True]
    assert is_adversarial(z, y, torch.tensor([1, 1, 1])).tolist() == [False, True, False]
