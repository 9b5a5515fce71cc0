"""Golden answers for FGSM and PGD on an analytic linear model, and verification honesty."""

import warnings

import pytest
import torch
from torch import nn

from modelshield import FGSM, PGD, ConfigError, EvaluationWarning
from modelshield.attacks.verify import start_call, verification_queries
from modelshield.models import as_model


def test_fgsm_linf_step_is_eps_times_gradient_sign(tiny_linear: nn.Linear) -> None:
    # 3-class linear model z = W x; at x the true class is 0, so CE's gradient w.r.t. x is
    # sum_j (p_j - [j = 0]) W_j, whose sign is derivable by hand: (-, +, +, +).
    x = torch.tensor([[0.5, 0.3, 0.2, 0.1]])
    y = torch.tensor([0])
    res = FGSM(eps=0.1)(tiny_linear, x, y)
    assert torch.allclose(res.x_adv, torch.tensor([[0.4, 0.4, 0.3, 0.2]]))
    assert res.norms.item() == pytest.approx(0.1)
    # probe, attack, then verification: clean, x_adv, and the success with one clean row again
    assert res.queries_forward == 2 + verification_queries(1, 1) == 6 and res.queries_backward == 1


def test_fgsm_l2_step_has_norm_eps(tiny_linear: nn.Linear) -> None:
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    res = FGSM(eps=0.2, norm="2")(tiny_linear, x, torch.tensor([2]))
    assert res.norms.item() == pytest.approx(0.2, abs=1e-6)


def test_pgd_reaches_the_linear_boundary(tiny_linear: nn.Linear) -> None:
    # class 0 at x0 = 0.6, class 1 at x1 = 0.5: moving 0.06 in L-inf crosses the boundary
    x = torch.tensor([[0.6, 0.5, 0.1, 0.1]])
    y = torch.tensor([0])
    assert not PGD(eps=0.04, steps=20)(tiny_linear, x, y).success.item()
    broken = PGD(eps=0.06, steps=20)(tiny_linear, x, y)
    assert broken.success.item() and broken.adv_pred.item() == 1


def test_pgd_clips_to_bounds_and_keeps_clean_rows_clean(tiny_linear: nn.Linear) -> None:
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    res = PGD(eps=0.5, steps=10)(tiny_linear, x, torch.tensor([1, 2]))  # row 0 is misclassified
    assert torch.equal(res.x_adv[0], x[0])  # never attacked: already wrong
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0


def test_pgd_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"PGD: 'eps' must be a number in \[0.0, inf\]; got -0.1"):
        PGD(eps=-0.1)
    with pytest.raises(ConfigError, match="'norm' must be one of"):
        PGD(eps=0.1, norm="1")  # type: ignore[arg-type]  # testing the runtime check
    with pytest.raises(ConfigError, match="'steps' must be an int"):
        PGD(eps=0.1, steps=0)
    with pytest.raises(ConfigError, match="'loss' must be one of"):
        PGD(eps=0.1, loss="hinge")  # type: ignore[arg-type]  # testing the runtime check


def test_verification_rejects_out_of_ball_rows(tiny_linear: nn.Linear) -> None:
    x = torch.tensor([[0.6, 0.5, 0.1, 0.1], [0.6, 0.5, 0.1, 0.1]])
    y = torch.tensor([0, 0])
    call = start_call(tiny_linear, x, y, None, owner="T", gradients=False)
    cheat = x.clone()
    cheat[0, 1] = 0.9  # broken, but 0.4 away: outside eps = 0.1
    cheat[1, 1] = 0.55  # inside the ball, not broken
    with pytest.warns(EvaluationWarning, match="1 returned inputs were outside"):
        res = call.finish(cheat, attack=PGD(eps=0.1), eps=0.1, norm="inf")
    assert res.valid.tolist() == [False, True]
    assert res.success.tolist() == [False, False]
    assert torch.equal(res.x_adv[0], x[0])
    assert res.robust_accuracy == 1.0


def test_success_is_read_from_a_fresh_query(tiny_linear: nn.Linear) -> None:
    m = as_model(tiny_linear)
    x = torch.tensor([[0.6, 0.5, 0.1, 0.1]])
    res = PGD(eps=0.06, steps=20)(m, x, torch.tensor([0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert res.adv_pred.item() == tiny_linear(res.x_adv).argmax(1).item()
    assert res.queries_forward == m.queries.forward and res.queries_backward == m.queries.backward


def test_pgd_without_early_stop_pushes_past_the_boundary(tiny_linear: nn.Linear) -> None:
    x = torch.tensor([[0.6, 0.5, 0.1, 0.1]])
    y = torch.tensor([0])
    first = PGD(eps=0.2, steps=20, random_init=False)(tiny_linear, x, y)
    full = PGD(eps=0.2, steps=20, random_init=False, early_stop=False)(tiny_linear, x, y)
    assert first.success.item() and full.success.item()
    def margin(xa: torch.Tensor) -> float:
        with torch.no_grad():
            z = tiny_linear(xa)
        return float(z[0, 1] - z[0, 0])

    # the early-stopped point is barely across; the full run ends at the eps-ball's corner
    assert margin(full.x_adv) > margin(first.x_adv) > 0
    assert full.norms.item() == pytest.approx(0.2)
    assert full.queries_backward == 20 and first.queries_backward < 20
