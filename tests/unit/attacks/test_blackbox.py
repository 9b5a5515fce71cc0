"""Query-only attacks (Square, SimBA, HopSkipJump, Transfer): budgets, label-only use, behaviour."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from modelshield import ConfigError, InputError, ModelCapabilityError, QueryBudgetExceeded
from modelshield.attacks.evasion import PGD, HopSkipJump, SimBA, Square, Transfer
from modelshield.attacks.evasion._query import QueryLedger
from modelshield.attacks.evasion.simba import dct_matrix
from modelshield.attacks.evasion.square import (
    _bump,
    _l2_candidates,
    _l2_init,
    _linf_candidates,
    _linf_init,
    p_selection,
)
from modelshield.attacks.verify import verification_queries
from modelshield.models import CallableModel, TorchModel, as_model

Digits = tuple[nn.Module, Tensor, Tensor]


def _proba_fn(net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy black box returning the net's class probabilities."""
    def predict_proba(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = torch.softmax(net(torch.as_tensor(a, dtype=torch.float32)), 1).numpy()
        return out

    return predict_proba


def _label_fn(net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy black box returning the net's labels only."""
    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = net(torch.as_tensor(a, dtype=torch.float32)).argmax(1).numpy()
        return out

    return predict


def _correct(net: nn.Module, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first n points the net classifies correctly."""
    with torch.no_grad():
        ok = net(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


# ----------------------------------------------------------------------------- pure pieces


def test_p_selection_halves_on_the_paper_schedule() -> None:
    assert p_selection(0.8, 0, 10_000) == 0.8
    assert p_selection(0.8, 10, 10_000) == 0.8  # halving happens strictly after 10
    assert p_selection(0.8, 11, 10_000) == 0.4
    assert p_selection(0.8, 51, 10_000) == 0.2
    assert p_selection(0.8, 8001, 10_000) == pytest.approx(0.8 / 512)
    # rescaled to a 1000-query budget: iteration 2 is iteration 20 of 10,000
    assert p_selection(0.8, 1, 1000) == 0.8 and p_selection(0.8, 2, 1000) == 0.4


def test_l2_bump_is_a_unit_norm_dipole() -> None:
    b = _bump(5, 5)
    assert float(b.norm()) == pytest.approx(1.0)
    assert (b[:2] > 0).all() and (b[2:] < 0).all()  # + bump on top rows, - bump below
    # the top (2 x 5) rectangle bump peaks at its centre (row 2 // 2 = 1, column 5 // 2 = 2)
    assert int(b[:2].argmax()) == 1 * 5 + 2
    flat = _bump(1, 6)
    assert (flat[0, :3] > 0).all() and (flat[0, 3:] < 0).all()


def test_square_updates_one_window_and_keep_the_l2_sphere() -> None:
    x = torch.full((4, 3, 8, 8), 0.5)  # interior points: no clipping
    keys = torch.arange(4)  # per-point random-number keys (normally point_keys(x, y, seed))
    xb = _linf_init(x, 0.1, (0.0, 1.0), keys)
    assert torch.allclose((xb - x).abs(), torch.full_like(x, 0.1))
    assert ((xb - x)[:, :, 0:1] == (xb - x)).all()  # vertical stripes: constant along rows
    # p = 0.25 of 64 pixels -> 4 x 4 windows, one value per channel
    cand = _linf_candidates(x, xb, 0.1, 0.25, (0.0, 1.0), keys, 0)
    changed = (cand != xb).any(1)  # (4, 8, 8) pixels changed in any channel
    assert (changed.flatten(1).sum(1) <= 16).all() and changed.flatten(1).any(1).all()
    assert torch.allclose((cand - x).abs(), torch.full_like(x, 0.1))
    xl2 = _l2_init(x, 0.5, (0.0, 1.0), keys)
    assert torch.allclose((xl2 - x).flatten(1).norm(dim=1), torch.full((4,), 0.5), atol=1e-5)
    for it in range(3):
        xl2 = _l2_candidates(x, xl2, 0.5, 0.1, (0.0, 1.0), keys, it)
        assert torch.allclose((xl2 - x).flatten(1).norm(dim=1), torch.full((4,), 0.5), atol=1e-5)


def test_attacks_run_on_image_shaped_inputs() -> None:
    gen = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    x = torch.rand(6, 3, 8, 8, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)
    for attack in (Square(eps=0.05, max_queries=100), Square(eps=0.5, norm="2", max_queries=100),
                   SimBA(max_queries=100, basis="dct", eps=1.0), HopSkipJump(max_queries=100)):
        res = attack(net, x, y)
        assert res.x_adv.shape == x.shape and res.valid.all()
        assert torch.equal(res.adv_pred, net(res.x_adv).argmax(1))
        assert res.attack_success_rate > 0


def test_dct_matrix_is_orthonormal_with_hand_checked_rows() -> None:
    m2 = dct_matrix(2)
    r = 1 / math.sqrt(2)
    assert torch.allclose(m2, torch.tensor([[r, r], [r, -r]]), atol=1e-6)
    m8 = dct_matrix(8)
    assert torch.allclose(m8 @ m8.T, torch.eye(8), atol=1e-5)


def test_ledger_caps_per_point_and_by_model_room(tiny_linear: nn.Linear) -> None:
    m = as_model(tiny_linear, budget=10)
    ledger = QueryLedger(m, 3, max_queries=4, reserve=3, device=torch.device("cpu"))
    idx = torch.arange(3)
    ledger.charge(idx, torch.tensor([0, 3, 4]))
    # per point: 4, 1, 0 left; the model's room is 10 - 0 used - 3 reserved = 7
    assert ledger.allow(idx, 3).tolist() == [3, 1, 0]
    m.queries.add_forward(5)  # room now 2: granted in index order
    assert ledger.allow(idx, 3).tolist() == [2, 0, 0]
    assert ledger.exhausted


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Square(eps=-0.1), r"Square: 'eps' must be a number in \[0.0, inf\]; got -0.1"),
        (lambda: Square(eps=float("nan")), "'eps' must be a number"),
        (lambda: Square(eps=0.1, max_queries=0), r"Square: 'max_queries' must be an int in \[1, inf\]"),
        (lambda: Square(eps=0.1, p_init=0.0), "'p_init' must be a number in"),
        (lambda: Square(eps=0.1, norm="1"), "'norm' must be one of"),  # type: ignore[arg-type]
        (lambda: SimBA(max_queries=0), r"SimBA: 'max_queries' must be an int"),
        (lambda: SimBA(eps_step=0.0), r"SimBA: 'eps_step' must be a number in \(0.0, inf\]"),
        (lambda: SimBA(eps=-1.0), r"SimBA: 'eps' must be a number"),
        (lambda: SimBA(basis="haar"), "'basis' must be one of"),  # type: ignore[arg-type]
        (lambda: HopSkipJump(max_queries=0), r"HopSkipJump: 'max_queries' must be an int"),
        (lambda: HopSkipJump(eps=-0.5), r"HopSkipJump: 'eps' must be a number"),
        (lambda: HopSkipJump(gamma=0.0), "'gamma' must be a number"),
        (lambda: Transfer(attack="pgd", surrogate=nn.Linear(2, 2)), "Transfer: 'attack' must be"),  # type: ignore[arg-type]
        (lambda: Transfer(attack=PGD(eps=0.1), surrogate=lambda a: a), "'surrogate' must be a torch"),  # type: ignore[arg-type]
    ],
)
def test_config_errors(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        make()


def test_model_budget_below_two_queries_per_point_is_refused(tiny_linear: nn.Linear) -> None:
    x = torch.full((3, 4), 0.5)
    y = torch.tensor([0, 1, 2])
    for attack in (Square(eps=0.1), SimBA(), HopSkipJump(), Transfer(attack=PGD(eps=0.1),
                                                                    surrogate=tiny_linear)):
        m = as_model(tiny_linear, budget=5)
        with pytest.raises(QueryBudgetExceeded, match=r"budget must be at least 6 .*got 4"):  # 5 - probe
            attack(m, x, y)
        assert m.queries.forward == 1  # refused before any query but the one-row shape probe


def test_transfer_rejects_a_mismatched_surrogate(tiny_linear: nn.Linear) -> None:
    x = torch.full((2, 4), 0.5)
    y = torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="surrogate must have the victim's 3 classes; got 5"):
        Transfer(attack=PGD(eps=0.1), surrogate=nn.Linear(4, 5))(tiny_linear, x, y)
    sur = as_model(nn.Linear(4, 3), bounds=(-1.0, 1.0))
    with pytest.raises(ConfigError, match="surrogate's bounds must match"):
        Transfer(attack=PGD(eps=0.1), surrogate=sur)(tiny_linear, x, y)  # type: ignore[arg-type]


def test_hopskipjump_rejects_a_misshaped_x_init(tiny_linear: nn.Linear) -> None:
    x = torch.full((2, 4), 0.5)
    with pytest.raises(InputError, match="x_init must have the shape of x"):
        HopSkipJump()(tiny_linear, x, torch.tensor([0, 1]), x_init=torch.zeros(3, 4))


# ----------------------------------------------------------------------------- label-only models


@pytest.mark.parametrize("attack", [Square(eps=0.1, max_queries=20), SimBA(max_queries=20)],
                         ids=["Square", "SimBA"])
@pytest.mark.parametrize("output", ["labels", "auto"])
def test_score_attacks_refuse_label_only_models(attack, output: str, digits_mlp: Digits) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    m = as_model(_label_fn(net), output=output, n_classes=10)  # type: ignore[arg-type]
    owner = type(attack).__name__
    with pytest.raises(ModelCapabilityError, match=f"{owner}: needs class scores.*HopSkipJump"):
        attack(m, x[:4], y[:4])


def _scores_forbidden(m: TorchModel | CallableModel) -> CallableModel:
    assert isinstance(m, CallableModel)
    def boom(x: Tensor) -> Tensor:
        raise AssertionError("a decision-based attack read the scores")

    m.scores = boom  # type: ignore[method-assign]  # instance attribute shadows the method
    return m


def test_hopskipjump_uses_labels_only(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 8)
    for m in (as_model(_label_fn(net), output="labels", n_classes=10),
              _scores_forbidden(as_model(_proba_fn(net), n_classes=10))):
        res = HopSkipJump(max_queries=300)(m, xs, ys)
        assert res.success.all()  # unbounded: a starting point always exists here
        assert torch.equal(res.adv_pred, net(res.x_adv).argmax(1))


def test_transfer_replays_on_a_label_only_victim(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    victim = _scores_forbidden(as_model(_proba_fn(net), n_classes=10))
    res = Transfer(attack=PGD(eps=0.1, steps=10), surrogate=net)(victim, x[:20], y[:20])
    # the clean query, then verification (clean, replay, the claimed successes and 19 clean rows again)
    assert victim.queries.forward == 20 + verification_queries(20, int(res.success.sum()))
    assert res.point_queries is not None and res.point_queries.tolist() == [1] * 20


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    "attack",
    [Square(eps=0.1, max_queries=60), Square(eps=1.0, norm="2", max_queries=60),
     SimBA(max_queries=60), SimBA(max_queries=60, basis="dct"), HopSkipJump(max_queries=60),
     HopSkipJump(max_queries=60, norm="inf")],
    ids=["square-inf", "square-l2", "simba", "simba-dct", "hsj-l2", "hsj-inf"],
)
def test_per_point_budget_and_query_accounting(attack, digits_mlp: Digits) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    m = as_model(net)
    res = attack(m, x[:30], y[:30])
    pq = res.point_queries
    assert pq is not None and pq.shape == (30,)
    assert int(pq.max()) <= 60 and int(pq.min()) >= 1
    # documented overhead: verification on top of point_queries (clean and x_adv once each, then the
    # claimed successes and up to CHECK_ROWS clean rows again), + the shape probe
    expected = int(pq.sum()) + verification_queries(30, int(res.success.sum())) + 1
    assert m.queries.forward == expected == res.queries_forward
    assert res.queries_backward == 0
    assert (pq[~res.clean_correct] == 1).all()  # misclassified points get only the clean query


@pytest.mark.parametrize(
    "attack",
    [Square(eps=0.1, max_queries=500), SimBA(max_queries=500), HopSkipJump(max_queries=500)],
    ids=["square", "simba", "hsj"],
)
@pytest.mark.parametrize("budget", [40, 41, 97, 300])
def test_model_budget_leaves_room_for_verification(attack, budget: int, digits_mlp: Digits) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    m = as_model(_proba_fn(net), n_classes=10, budget=budget)
    res = attack(m, x[:20], y[:20])  # must not raise QueryBudgetExceeded
    assert m.queries.forward <= budget
    assert res.point_queries is not None
    assert m.queries.forward == int(res.point_queries.sum()) + 20
    assert res.extra["budget_exhausted"] is True
    assert res.valid.all()


# ----------------------------------------------------------------------------- Square


def test_square_linf_beats_random_noise_of_the_same_norm(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 60)
    eps = 0.1
    res = Square(eps=eps, max_queries=300)(net, xs, ys)
    gen = torch.Generator().manual_seed(1)
    noise_success = []
    for _ in range(5):
        sign = torch.randint(0, 2, xs.shape, generator=gen).float() * 2 - 1
        with torch.no_grad():
            noise_success.append(float((net((xs + eps * sign).clamp(0, 1)).argmax(1) != ys).float().mean()))
    assert res.attack_success_rate > max(noise_success) + 0.3
    assert res.max_perturbation <= eps + 1e-6


def test_square_linf_perturbation_sits_on_the_corners(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    res = Square(eps=0.1, max_queries=50)(net, x[:20], y[:20])
    d = (res.x_adv - x[:20]).abs()
    at_bound = (res.x_adv == 0) | (res.x_adv == 1)
    attacked = res.clean_correct
    # every changed coordinate of an attacked point is +-eps unless clipped by the bounds
    corner = ((d - 0.1).abs() < 1e-6) | at_bound
    assert corner[attacked].all()
    assert torch.equal(res.x_adv[~attacked], x[:20][~attacked])


def test_square_l2_stays_on_the_sphere_and_breaks_points(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 30)
    res = Square(eps=1.0, norm="2", max_queries=200)(net, xs, ys)
    assert (res.norms <= 1.0 + 1e-5).all()
    assert res.attack_success_rate >= 0.5


def test_square_targeted_hits_the_target(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 20)
    target = (ys + 1) % 10
    res = Square(eps=0.2, max_queries=300)(net, xs, ys, target=target)
    assert res.success.any()
    assert torch.equal(res.success, res.adv_pred == target)


def test_square_on_probabilities_equals_square_on_logits(digits_mlp: Digits) -> None:
    # log-probabilities have the logits' margins, so the random search takes the same path
    net, x, y = digits_mlp
    a = Square(eps=0.1, max_queries=40)(net, x[:10], y[:10])
    b = Square(eps=0.1, max_queries=40)(as_model(_proba_fn(net), n_classes=10), x[:10], y[:10])
    assert torch.equal(a.success, b.success)
    assert torch.allclose(a.x_adv, b.x_adv)


def test_square_eps_zero_returns_x(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    res = Square(eps=0.0, max_queries=50)(net, x[:5], y[:5])
    assert torch.equal(res.x_adv, x[:5]) and res.robust_accuracy == res.clean_accuracy


# ----------------------------------------------------------------------------- SimBA


def test_simba_lowers_true_class_probability_at_every_accepted_step(digits_mlp: Digits) -> None:
    # Runs with growing max_queries replay the same walk (same seed) and stop earlier, so the
    # true-class probability of their outputs traces the accepted steps: it never rises.
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 10)
    probs = []
    for q in (1, 3, 8, 20, 50, 120):
        res = SimBA(eps_step=0.2, max_queries=q)(net, xs, ys)
        with torch.no_grad():
            probs.append(torch.softmax(net(res.x_adv), 1).gather(1, ys[:, None]).squeeze(1))
    p = torch.stack(probs)
    assert (p[1:] <= p[:-1] + 1e-7).all()
    assert (p[-1] < p[0]).all()


def test_simba_eps_budget_is_never_exceeded(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rejected row would warn
        l2 = SimBA(eps_step=0.2, eps=0.5, max_queries=300)(net, x[:20], y[:20])
        linf = SimBA(eps_step=0.2, eps=0.05, norm="inf", max_queries=300)(net, x[:20], y[:20])
    assert l2.valid.all() and (l2.norms <= 0.5 + 1e-6).all()
    assert linf.valid.all() and (linf.norms <= 0.05 + 1e-6).all()
    assert l2.norms.max() > 0.3  # it did use the budget


def test_simba_targeted_raises_target_probability(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 10)
    target = (ys + 3) % 10
    res = SimBA(eps_step=0.2, max_queries=300)(net, xs, ys, target=target)
    with torch.no_grad():
        before = torch.softmax(net(xs), 1).gather(1, target[:, None])
        after = torch.softmax(net(res.x_adv), 1).gather(1, target[:, None])
    assert (after > before).all()
    assert torch.equal(res.success, res.adv_pred == target)


# ----------------------------------------------------------------------------- HopSkipJump


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_hopskipjump_shrinks_its_starting_point(norm: str, digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 10)
    # start from test images of another predicted class: adversarial but far away
    with torch.no_grad():
        pred = net(x).argmax(1)
    start = torch.stack([x[(pred != c).nonzero()[0, 0]] for c in ys.tolist()])
    d0 = (start - xs).flatten(1).norm(dim=1) if norm == "2" else (start - xs).flatten(1).abs().amax(1)
    res = HopSkipJump(norm=norm, max_queries=400)(net, xs, ys, x_init=start)  # type: ignore[arg-type]
    assert res.success.all()
    assert (res.norms < 0.8 * d0).all()


def test_hopskipjump_approaches_the_analytic_distance_of_a_linear_model() -> None:
    # For a 2-class linear model the closest adversarial point is at |w.x| / ||w||_2 (L2) and
    # |w.x| / ||w||_1 (L-inf), with w the difference of the class weights (inputs stay interior).
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16, generator=gen))
        lin.bias.zero_()
        x = 0.5 + 0.05 * torch.randn(20, 16, generator=gen)
        y = lin(x).argmax(1)
        w = lin.weight[1] - lin.weight[0]
    for norm, dual in (("2", w.norm()), ("inf", w.abs().sum())):
        best = (x @ w).abs() / dual
        res = HopSkipJump(norm=norm, max_queries=1000)(lin, x, y)  # type: ignore[arg-type]
        ratio = res.norms / best
        assert res.success.all()
        assert (ratio >= 1 - 1e-4).all()  # nothing adversarial lies closer than the hyperplane
        assert float(ratio.median()) < 1.1


def test_hopskipjump_more_queries_give_smaller_perturbations(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 20)
    short = HopSkipJump(max_queries=150)(net, xs, ys)
    long = HopSkipJump(max_queries=800)(net, xs, ys)
    assert long.median_perturbation < short.median_perturbation


def test_hopskipjump_eps_counts_only_points_inside(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = _correct(net, x, y, 20)
    free = HopSkipJump(max_queries=400)(net, xs, ys)
    eps = float(free.norms.median())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = HopSkipJump(max_queries=400, eps=eps)(net, xs, ys)
    assert res.valid.all() and (res.norms <= eps + 1e-6).all()
    assert torch.equal(res.x_adv[~res.success], xs[~res.success])  # outside eps -> x back
    assert 0 < res.attack_success_rate < 1


# ----------------------------------------------------------------------------- Transfer


def _linear_surrogate() -> nn.Module:
    """A softmax regression trained (full batch, seeded) on the digits_mlp training split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    xa = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    ya = torch.as_tensor(data.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(ya), generator=gen)[:1400]  # the same split as train_digits_mlp
    lin = nn.Linear(64, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(xa[tr]), ya[tr])
        loss.backward()  # type: ignore[no-untyped-call]  # torch stubs leave backward untyped
        opt.step()
    return lin.eval()


def test_transfer_from_a_surrogate_trained_on_the_same_data(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    xs, ys = x[:100], y[:100]
    victim = as_model(_proba_fn(net), n_classes=10)
    res = Transfer(attack=PGD(eps=0.15, steps=20), surrogate=_linear_surrogate())(victim, xs, ys)
    assert res.extra["surrogate_success_rate"] > 0.8
    assert res.extra["transfer_rate"] > 0.3  # measurable transfer
    assert res.robust_accuracy < res.clean_accuracy - 0.25
    assert victim.queries.forward == 100 + verification_queries(100, int(res.success.sum()))
    assert res.params["attack"]["attack"] == "PGD" and res.params["surrogate"] == "Linear"
    assert (res.norms <= 0.15 + 1e-6).all()


def test_transfer_rate_ignores_the_surrogates_own_mistakes() -> None:
    """A surrogate that is wrong on clean inputs has crafted nothing there: those points do not count."""
    from torch import nn

    from modelshield.attacks.evasion import PGD, Transfer

    victim = nn.Linear(2, 2)
    with torch.no_grad():
        victim.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        victim.bias.zero_()
    surrogate = nn.Linear(2, 2)  # always says class 0, whatever the input
    with torch.no_grad():
        surrogate.weight.zero_()
        surrogate.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[0.2, 0.9], [0.8, 0.1]])
    y = torch.tensor([1, 0])  # the victim is right on both; the surrogate only on row 1
    res = Transfer(attack=PGD(eps=0.1, steps=5), surrogate=surrogate)(victim, x, y)
    # row 0 is "misclassified" by the surrogate without any attack, row 1 cannot be moved
    # (the surrogate has zero gradient): no example was crafted, so no transfer rate
    assert res.extra["transfer_rate"] is None
