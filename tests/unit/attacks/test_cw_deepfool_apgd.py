"""Golden checks for DeepFool, Carlini-Wagner L2 and APGD on analytic linear models."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from modelshield.attacks.evasion import APGD, APGDT, CarliniWagnerL2, DeepFool
from modelshield.attacks.evasion.apgd import apgd_checkpoints
from modelshield.attacks.verify import verification_queries
from modelshield.models import as_model

W2 = torch.tensor([[0.5, -1.0, 2.0, 0.0], [-0.5, 1.0, 0.0, 1.5]])
B2 = torch.tensor([0.3, -0.2])
X = torch.tensor([[0.1, 0.2, 0.3, 0.1], [-0.4, 0.1, 0.5, 0.2], [0.3, -0.3, 0.2, -0.1]])


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def boundary_gap(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the 2-class model: f(x) = z_1 - z_0 = w.x + b, and w."""
    w = W2[1] - W2[0]
    return x @ w + (B2[1] - B2[0]), w


def test_apgd_checkpoints_match_the_paper_for_100_steps() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (next 1.05 > 1); w_j = ceil(100 p_j).
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_checkpoints_are_increasing_and_within_steps() -> None:
    for steps in (1, 5, 10, 37, 1000):
        w = apgd_checkpoints(steps)
        assert w[0] == 0 and all(a < b for a, b in itertools.pairwise(w)) and w[-1] <= steps
    assert apgd_checkpoints(1000)[:3] == [0, 220, 410]


@pytest.mark.parametrize("overshoot", [0.02, 0.1])
def test_deepfool_l2_lands_on_the_overshot_closest_boundary_point(overshoot: float) -> None:
    model = as_model(linear(W2, B2), bounds=(-100.0, 100.0))
    f, w = boundary_gap(X)
    y = (f > 0).long()  # the model's own labels: every point is clean-correct
    res = DeepFool(overshoot=overshoot)(model, X, y)
    expected = X - (1 + overshoot) * (f / w.dot(w))[:, None] * w
    torch.testing.assert_close(res.x_adv, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.norms, (1 + overshoot) * f.abs() / w.norm(), rtol=1e-5, atol=1e-6)
    assert bool(res.success.all())
    # One linear step: one gap gradient per point; forwards: clean, two steps, verification
    # (clean and x_adv, then every success and the first clean rows again), plus the shape probe.
    assert res.queries_backward == X.shape[0]
    n = X.shape[0]
    assert res.queries_forward == 3 * n + verification_queries(n, int(res.success.sum())) + 1


def test_deepfool_linf_distance_is_gap_over_l1_norm() -> None:
    model = as_model(linear(W2, B2), bounds=(-100.0, 100.0))
    f, w = boundary_gap(X)
    res = DeepFool(norm="inf")(model, X, (f > 0).long())
    torch.testing.assert_close(res.norms, 1.02 * f.abs() / w.abs().sum(), rtol=1e-5, atol=1e-6)
    expected = X - 1.02 * (f / w.abs().sum())[:, None] * w.sign()
    torch.testing.assert_close(res.x_adv, expected, rtol=1e-5, atol=1e-6)


def test_deepfool_on_single_logit_model() -> None:
    w, b = torch.tensor([[1.0, -2.0, 0.5, 1.0]]), torch.tensor([0.25])
    model = as_model(linear(w, b), bounds=(-100.0, 100.0))
    f = X @ w[0] + b
    res = DeepFool()(model, X, (f > 0).long())
    torch.testing.assert_close(res.norms, 1.02 * f.abs() / w.norm(), rtol=1e-5, atol=1e-6)


def test_deepfool_eps_returns_over_budget_points_clean() -> None:
    model = as_model(linear(W2, B2), bounds=(-100.0, 100.0))
    f, w = boundary_gap(X)
    dist = 1.02 * f.abs() / w.norm()
    srt = dist.sort().values
    eps = float(srt[1] + srt[2]) / 2  # between the 2nd and 3rd distances: two points fit
    res = DeepFool(eps=eps)(model, X, (f > 0).long())
    inside = dist <= eps
    assert torch.equal(res.success, inside)
    assert torch.equal(res.x_adv[~inside], X[~inside])


def test_cw_reaches_near_the_minimal_l2_distance_on_a_linear_model() -> None:
    model = as_model(linear(W2, B2), bounds=(-2.0, 2.0))
    f, w = boundary_gap(X)
    minimal = f.abs() / w.norm()
    res = CarliniWagnerL2(steps=300, learning_rate=1e-2, binary_search_steps=9)(model, X, (f > 0).long())
    assert bool(res.success.all())
    # No point can beat the exact distance; the search should come within 5 % of it.
    assert bool((res.norms >= minimal * (1 - 1e-4)).all())
    assert bool((res.norms <= minimal * 1.05).all()), (res.norms, minimal)


def test_cw_targeted_on_linear_model_hits_target() -> None:
    w4 = torch.eye(4) * 2.0
    model = as_model(linear(w4, torch.zeros(4)), bounds=(0.0, 1.0))
    x = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.2, 0.8, 0.1, 0.1]])
    y = torch.tensor([0, 1])
    t = torch.tensor([2, 3])
    res = CarliniWagnerL2(steps=200)(model, x, y, target=t)
    assert bool(res.success.all()) and torch.equal(res.adv_pred, t)
    # Minimal L2 move to make z_t > z_y: close the gap (x_y - x_t) from both sides -> gap / sqrt(2).
    minimal = (x[[0, 1], [0, 1]] - x[[0, 1], [2, 3]]) / 2**0.5
    assert bool((res.norms <= minimal * 1.05).all()) and bool((res.norms >= minimal * (1 - 1e-4)).all())


def test_apgd_targeted_hits_the_targets() -> None:
    w4 = torch.eye(4) * 3.0
    model = as_model(linear(w4, torch.zeros(4)), bounds=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 4, generator=g)
    y = model.predict(x)
    t = (y + 1 + torch.arange(12) % 3) % 4
    for res in (APGD(eps=0.6, steps=20, loss="ce")(model, x, y, target=t),
                APGD(eps=0.6, steps=20, loss="dlr")(model, x, y, target=t)):
        assert bool(res.success.all()) and torch.equal(res.adv_pred, t)
    res_t = APGDT(eps=0.6, steps=20)(model, x, y, target=t)
    assert torch.equal(res_t.adv_pred, t)


def test_apgdt_sweep_first_target_is_most_likely_wrong_class() -> None:
    # z = 3x: at eps large enough to cross the runner-up but not the others, the sweep's first
    # target (the runner-up) is the only reachable class.
    model = as_model(linear(torch.eye(4) * 3.0, torch.zeros(4)), bounds=(0.0, 1.0))
    x = torch.tensor([[0.6, 0.5, 0.0, 0.0], [0.0, 0.1, 0.7, 0.55]])
    y = torch.tensor([0, 2])
    res = APGDT(eps=0.1, steps=20, n_target_classes=1)(model, x, y)
    assert torch.equal(res.adv_pred, torch.tensor([1, 3]))
    assert bool(res.success.all())


def test_apgd_linf_on_linear_model_reaches_the_corner() -> None:
    # For z = Wx + b the best L-inf move for the margin is eps * sign(w) per coordinate; with eps
    # large enough to cross, APGD must break the point and respect the budget exactly.
    model = as_model(linear(W2, B2), bounds=(-100.0, 100.0))
    f, w = boundary_gap(X)
    need = f.abs() / w.abs().sum()  # L-inf distance to the boundary
    eps = float(need.max()) * 1.1
    res = APGD(eps=eps, steps=10)(model, X, (f > 0).long())
    assert bool(res.success.all())
    assert bool((res.norms <= eps + 1e-6).all())
