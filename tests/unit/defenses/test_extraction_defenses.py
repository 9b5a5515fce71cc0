"""Extraction defences: output hardening and its honest cost, the PRADA monitor, client budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from modelshield.attacks.extraction import JacobianAugmentation, KnockoffNets
from modelshield.defenses.extraction import (
    PRADA,
    ClientBudget,
    harden,
    honest_cost,
    reverse_sigmoid,
    round_probabilities,
)
from modelshield.errors import ConfigError, InputError, ModelCapabilityError, QueryBudgetExceeded
from modelshield.models import as_model

Digits = tuple[nn.Module, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits_pool() -> torch.Tensor:
    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]]


# --- hardening --------------------------------------------------------------------------------


def test_reverse_sigmoid_hand_computed() -> None:
    # gamma = 1: sigmoid(logit(p)) = p, so r = beta * (p - 1/2); with beta = 0.5,
    # p - r = 0.5 p + 0.25: [0.9, 0.1] -> [0.7, 0.3] (already summing to 1)
    out = reverse_sigmoid(torch.tensor([[0.9, 0.1]], dtype=torch.float64), beta=0.5, gamma=1.0)
    assert torch.allclose(out, torch.tensor([[0.7, 0.3]], dtype=torch.float64))
    # a uniform row is a fixed point (r = 0)
    flat = torch.full((1, 4), 0.25, dtype=torch.float64)
    assert torch.allclose(reverse_sigmoid(flat, beta=1.0, gamma=0.1), flat)


def test_reverse_sigmoid_keeps_top1_where_the_map_is_not_monotone() -> None:
    # beta=1, gamma=0.1: f(1e-6) ~ 0.30 > f(0.2) ~ 0.23, so the raw perturbation would move
    # the argmax off class 0; the guard keeps class 0 on top.
    p = torch.tensor([[0.2, 0.19, 0.19, 0.19, 0.19, 0.04 - 1e-6, 1e-6]], dtype=torch.float64)
    q = reverse_sigmoid(p, beta=1.0, gamma=0.1)
    assert int(q.argmax(1)) == 0
    assert float(q.sum()) == pytest.approx(1.0)


def test_round_probabilities() -> None:
    p = torch.tensor([[0.123456, 0.876544]])
    assert torch.allclose(round_probabilities(p, 2), torch.tensor([[0.12, 0.88]]))


def test_hardening_preserves_top1_and_reports_cost(digits_mlp: Digits) -> None:
    net, x_test, y_test = digits_mlp
    with torch.no_grad():
        p = net(x_test).softmax(1)
    labels = p.argmax(1)
    top1 = harden(net, method="top1")
    assert torch.equal(top1.predict(x_test), labels)
    with pytest.raises(ModelCapabilityError, match="labels only"):
        top1.scores(x_test)
    rounded = harden(net, method="round", decimals=2).scores(x_test)
    assert torch.allclose(rounded * 100, (rounded * 100).round(), atol=1e-3)
    assert float((rounded.argmax(1) == labels).float().mean()) >= 0.99  # only exact ties can move
    rs = harden(net, method="reverse_sigmoid").scores(x_test)
    assert torch.equal(rs.argmax(1), labels)
    assert torch.allclose(rs.sum(1), torch.ones(len(rs)), atol=1e-5)
    for method in ("top1", "reverse_sigmoid"):
        cost = honest_cost(net, harden(net, method=method), x_test, y_test)
        assert cost["label_agreement"] == 1.0
        assert cost["accuracy_after"] == cost["accuracy_before"]
        assert cost["mean_l1_change"] > 0.01  # the probabilities did change
    expected_l1 = float((p - rs.double().float()).abs().sum(1).mean())
    cost = honest_cost(net, harden(net, method="reverse_sigmoid"), x_test, y_test)
    assert cost["mean_l1_change"] == pytest.approx(expected_l1, abs=1e-4)


def test_noise_is_seeded_and_bad_settings_raise(digits_mlp: Digits) -> None:
    net, x_test, _ = digits_mlp
    a = harden(net, method="noise", noise_std=0.1, seed=3).scores(x_test)
    b = harden(net, method="noise", noise_std=0.1, seed=3).scores(x_test)
    assert torch.equal(a, b) and bool((a >= 0).all())
    with pytest.raises(ConfigError, match="'method' must be one of"):
        harden(net, method="blur")  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(ConfigError, match="'decimals'"):
        harden(net, method="round", decimals=-1)


def test_hardened_victim_against_knockoff(digits_mlp: Digits, digits_pool: torch.Tensor) -> None:
    net, x_test, y_test = digits_mlp
    top1 = harden(net, method="top1")
    with pytest.raises(ModelCapabilityError, match="output='labels'"):
        KnockoffNets(budget=50, output="proba")(top1, digits_pool)
    res = KnockoffNets(budget=200, output="labels", epochs=20)(top1, digits_pool,
                                                               eval_data=(x_test, y_test))
    assert res.queries == 200 == top1.queries.forward
    assert res.fidelity > 0.6  # label-only answers still leak the decision


# --- PRADA ------------------------------------------------------------------------------------


def test_prada_hand_checkable_stream() -> None:
    # One class, the unit vectors e_1, e_2, ...: every pair is sqrt(2) apart, so every d_min is
    # sqrt(2) whatever the growing set holds; D is constant (W := 0, the least normal possible)
    # and the first test happens once |D| > min_queries = 10, i.e. at query 12 (the first
    # query only starts G_c).
    monitor = PRADA(min_queries=10)
    x = torch.eye(20)
    alerts = monitor.update("c", x, torch.zeros(20, dtype=torch.long))
    assert monitor.queries_to_detection_ == {"c": 12}
    assert len(alerts) == 1 and alerts[0].client_id == "c" and alerts[0].score == 0.0
    assert alerts[0].threshold == 0.95 and alerts[0].queries == 20
    assert monitor.queries("c") == 20
    # another client's state is separate; reset forgets
    assert monitor.update("d", x[:5], torch.zeros(5, dtype=torch.long)) == []
    monitor.reset("c")
    assert monitor.queries("c") == 0 and "c" not in monitor.flagged_ and monitor.queries("d") == 5


def test_prada_growing_set_threshold() -> None:
    # Points 0, 10, 20, 30 on a line (one class): D_G = [0 (the first member), 10, 10, 10], so
    # T = mean - population std = 7.5 - sqrt(18.75) = 3.17 after 30. A query at 30.5 (d_min 0.5
    # <= T) is not added to the growing set: the next query at 31 measures its distance to 30
    # (1.0), not to 30.5. Before 30, T was 20/3 - sqrt(200/9) = 1.95, and 0 after 10.
    monitor = PRADA(min_queries=100)
    rows = torch.tensor([[0.0], [10.0], [20.0], [30.0], [30.5], [31.0]])
    monitor.update("c", rows, torch.zeros(6, dtype=torch.long))
    state = monitor._clients["c"]
    assert state.distances == pytest.approx([10.0, 10.0, 10.0, 0.5, 1.0])
    assert state.growing[0].rows.flatten().tolist() == [0.0, 10.0, 20.0, 30.0]
    assert state.thresholds[0] == pytest.approx(7.5 - 18.75 ** 0.5)


def test_prada_classes_with_few_distances_stay_out_of_the_test() -> None:
    # Class 0: 11 copies of one point (10 zero distances); class 1: 3 points (2 distances).
    # With min_class_distances=10 only class 0's ten zeros are tested (W := 0), with
    # min_queries=5; with min_class_distances=3 class 1 is still left out (2 < 3).
    x = torch.cat([torch.zeros(11, 2), torch.tensor([[5.0, 0.0], [6.0, 0.0], [9.0, 0.0]])])
    labels = torch.tensor([0] * 11 + [1] * 3)
    monitor = PRADA(min_queries=5, min_class_distances=10)
    monitor.update("c", x, labels)
    assert monitor._test(monitor._clients["c"]) == 0.0
    # with a threshold of 11 distances, no class qualifies: too few values, no test (nan)
    strict = PRADA(min_queries=5, min_class_distances=11)
    strict.update("c", x, labels)
    assert "c" not in strict.flagged_ and strict.shapiro_ == {}


def test_prada_calibrate_sets_delta_from_benign_streams() -> None:
    gen = torch.Generator().manual_seed(0)
    streams = [(torch.randn(150, 8, generator=gen), torch.randint(0, 2, (150,), generator=gen))
               for _ in range(3)]
    base = PRADA(min_queries=40, min_class_distances=1)
    lows = [base.min_statistic(x, lb) for x, lb in streams]
    order = sorted(range(3), key=lambda i: lows[i])
    assert all(0.0 < w < 1.0 for w in lows)
    # The lowest W is the flagging boundary: flagged just above it, not at it.
    x0, lb0 = streams[order[0]]
    above = PRADA(min_queries=40, min_class_distances=1, delta=lows[order[0]] + 1e-9)
    at = PRADA(min_queries=40, min_class_distances=1, delta=lows[order[0]])
    above.update("s", x0, lb0)
    at.update("s", x0, lb0)
    assert "s" in above.flagged_ and "s" not in at.flagged_
    # max_fpr=0: delta = the smallest min W, no benign stream flagged
    zero = base.calibrate(streams, max_fpr=0.0)
    assert zero.delta == pytest.approx(lows[order[0]]) and zero.calibration_ is not None
    assert zero.calibration_["in_sample_fpr"] == 0.0 and base.calibration_ is None
    # max_fpr=0.4: k = floor(1.2) = 1 stream may be flagged: delta = the second smallest
    one = base.calibrate(streams, max_fpr=0.4)
    assert one.delta == pytest.approx(lows[order[1]])
    for i, (x, lb) in enumerate(streams):
        one.update(i, x, lb)
    assert one.flagged_ == {order[0]}
    assert one.min_queries == 40 and one.calibration_ is not None
    assert one.calibration_["in_sample_fpr"] == pytest.approx(1 / 3)
    assert base.calibrate(streams, max_fpr=1.0).delta == 1.0
    # a stream too short for any test is never flagged: min W = inf
    assert math.isinf(base.min_statistic(streams[0][0][:10], streams[0][1][:10]))
    with pytest.raises(ConfigError, match="'max_fpr'"):
        base.calibrate(streams, max_fpr=1.5)
    with pytest.raises(ConfigError, match="benign_streams"):
        base.calibrate([], max_fpr=0.1)


def _monitored(net: nn.Module, monitor: PRADA, client: str) -> object:
    """A prediction API that reports every query to the monitor (what the gateway will do)."""
    def api(x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(x)
        with torch.no_grad():
            p = net(xt).softmax(1)
        monitor.update(client, xt, p.argmax(1))
        out: np.ndarray = p.numpy()
        return out
    return api


def test_prada_flags_jacobian_augmentation(digits_mlp: Digits, digits_pool: torch.Tensor) -> None:
    net, _, _ = digits_mlp
    monitor = PRADA()
    victim = as_model(_monitored(net, monitor, "thief"), n_classes=10)
    JacobianAugmentation(budget=800, seed_size=100, rounds=4, epochs=5)(victim, digits_pool)
    assert "thief" in monitor.flagged_
    # detected soon after the synthetic queries start (the 100 seed queries are natural)
    assert 100 < monitor.queries_to_detection_["thief"] <= 400


def test_prada_does_not_flag_ordinary_test_queries(digits_mlp: Digits, digits_pool: torch.Tensor) -> None:
    net, x_test, _ = digits_mlp
    monitor = PRADA()
    for seed in range(3):
        order = torch.randperm(x_test.shape[0], generator=torch.Generator().manual_seed(seed))
        stream = x_test[order]
        for batch in torch.split(stream, 32):
            with torch.no_grad():
                assert monitor.update(f"user{seed}", batch, net(batch).argmax(1)) == []
    assert monitor.flagged_ == set() and monitor.queries_to_detection_ == {}
    assert all(w > 0.95 for w in monitor.shapiro_.values())


def test_prada_bad_input() -> None:
    with pytest.raises(ConfigError, match="'delta'"):
        PRADA(delta=1.5)
    with pytest.raises(InputError, match="predicted_labels must be an \\(2,\\) integer tensor"):
        PRADA().update("c", torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="x_batch must be a float tensor"):
        PRADA().update("c", torch.zeros(3), torch.zeros(3, dtype=torch.long))


# --- client budgets ---------------------------------------------------------------------------


def test_client_budget_lifetime() -> None:
    budget = ClientBudget(max_queries=10)
    assert budget.charge("alice", 6) == 4
    with pytest.raises(QueryBudgetExceeded, match=r"client 'alice' must stay within 10 queries.*6 already"):
        budget.charge("alice", 5)
    assert budget.remaining("alice") == 4  # the refused request was not counted
    assert budget.charge("bob", 10) == 0  # clients are separate
    budget.reset("alice")
    assert budget.remaining("alice") == 10
    with pytest.raises(ConfigError, match="'max_queries'"):
        ClientBudget(max_queries=0)
    with pytest.raises(ConfigError, match="'n' must be a positive int"):
        budget.charge("bob", 0)


def test_client_budget_sliding_window() -> None:
    now = [0.0]
    budget = ClientBudget(max_queries=5, window_s=60.0, clock=lambda: now[0])
    budget.charge("c", 5)
    now[0] = 30.0
    with pytest.raises(QueryBudgetExceeded, match="per 60 s"):
        budget.charge("c")
    now[0] = 60.0  # the first 5 fall out of the window
    assert budget.charge("c", 3) == 2
