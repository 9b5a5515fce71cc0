"""Model-extraction attacks: query accounting, equation solving, Knockoff Nets, Jacobian augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from modelshield.attacks.evasion import PGD
from modelshield.attacks.extraction import (
    EquationSolving,
    ExtractionResult,
    JacobianAugmentation,
    KnockoffNets,
    LinearCopy,
    accuracy,
    fidelity,
    transferability,
)
from modelshield.errors import ConfigError, InputError, ModelCapabilityError, QueryBudgetExceeded
from modelshield.models import as_model

Digits = tuple[nn.Module, torch.Tensor, torch.Tensor]
Pool = tuple[torch.Tensor, torch.Tensor]
Binary = tuple[LogisticRegression, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits rows the digits_mlp fixture trained on (same permutation), as the thief's pool."""
    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]]


@pytest.fixture(scope="module")
def binary_logreg() -> tuple[LogisticRegression, torch.Tensor, torch.Tensor]:
    """A binary logistic regression on 10 synthetic features in [0, 1]; pool and held-out split."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(1500, 10))
    w = rng.normal(size=10) * 3.0
    y = (x @ w - w.sum() / 2 + rng.normal(size=1500) * 0.5 > 0).astype(int)
    clf = LogisticRegression().fit(x[:500], y[:500])
    return clf, torch.tensor(x[:500], dtype=torch.float32), torch.tensor(x[500:], dtype=torch.float32)


class Counting:
    """A predict_proba callable that counts the rows it is asked about (the victim's own count)."""

    def __init__(self, fn: object) -> None:
        self.fn = fn
        self.rows = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows += x.shape[0]
        return self.fn(x)  # type: ignore[operator, no-any-return]  # test helper


def net_proba(net: nn.Module) -> object:
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = net(torch.as_tensor(x)).softmax(1).numpy()
        return out
    return fn


def net_labels(net: nn.Module) -> object:
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = net(torch.as_tensor(x)).argmax(1).numpy()
        return out
    return fn


def lin(result: ExtractionResult) -> LinearCopy:
    assert isinstance(result.copy, LinearCopy)
    return result.copy


# --- equation solving -------------------------------------------------------------------------


def test_equation_solving_binary_recovers_decision_with_d_plus_1_queries(binary_logreg: Binary) -> None:
    clf, pool, held_out = binary_logreg
    victim = Counting(clf.predict_proba)
    m = as_model(victim, n_classes=2)
    result = EquationSolving()(m, pool)
    assert result.queries == 11 == m.queries.forward == victim.rows  # d + 1, all three agree
    copy_pred = lin(result).predict(held_out.numpy())
    agreement = float((copy_pred == clf.predict(held_out.numpy())).mean())
    assert agreement >= 0.999
    # the solved weights are the victim's (class 0's logit fixed to 0)
    np.testing.assert_allclose(lin(result).coef_[1], clf.coef_[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(lin(result).intercept_[1], clf.intercept_[0], rtol=1e-3, atol=1e-3)


def test_equation_solving_multinomial_recovers_decision(digits_pool: Pool) -> None:
    x, y = digits_pool
    clf = LogisticRegression(C=0.5, max_iter=1000).fit(x[:900].numpy(), y[:900].numpy())
    held_out = x[900:]
    m = as_model(clf)
    result = EquationSolving()(m, x[:900], eval_data=(held_out, y[900:]))
    assert result.queries == 65 == m.queries.forward  # d + 1 = 65, each answer gives 9 equations
    agreement = float((lin(result).predict(held_out.numpy()) == clf.predict(held_out.numpy())).mean())
    assert agreement >= 0.999
    assert result.fidelity == pytest.approx(agreement)
    assert result.eval_queries == 500  # victim labels on the eval set: not charged to the attack
    np.testing.assert_allclose(lin(result).predict_proba(held_out.numpy()),
                               clf.predict_proba(held_out.numpy()), atol=1e-3)


def test_equation_solving_least_squares_with_more_queries(binary_logreg: Binary) -> None:
    clf, pool, held_out = binary_logreg
    result = EquationSolving(budget=40)(clf, pool)
    assert result.queries == 40
    assert (lin(result).predict(held_out.numpy()) == clf.predict(held_out.numpy())).mean() >= 0.999


def test_equation_solving_torch_linear_victim_uses_logits(tiny_linear: nn.Linear) -> None:
    gen = torch.Generator().manual_seed(1)
    pool, held_out = torch.rand(20, 4, generator=gen), torch.rand(200, 4, generator=gen)
    result = EquationSolving()(tiny_linear, pool)
    assert isinstance(result.copy, LinearCopy) and result.queries == 5
    with torch.no_grad():
        assert torch.equal(lin(result)(held_out).argmax(1), tiny_linear(held_out).argmax(1))


def test_equation_solving_errors(binary_logreg: Binary, digits_mlp: Digits) -> None:
    clf, pool, _ = binary_logreg
    with pytest.raises(ConfigError, match=r"at least d \+ 1 = 11 .* got 5"):
        EquationSolving(budget=5)(clf, pool)
    with pytest.raises(ModelCapabilityError, match="KnockoffNets\\(output='labels'\\)"):
        EquationSolving()(as_model(clf, output="labels"), pool)
    with pytest.raises(ModelCapabilityError, match="labels only"):
        EquationSolving()(net_labels(digits_mlp[0]), digits_mlp[1])
    with pytest.raises(InputError, match=r"shape \(5,\)"):
        EquationSolving()(clf, pool[:, :5])
    with pytest.raises(QueryBudgetExceeded, match="at least 11"):
        EquationSolving()(as_model(clf, budget=8), pool)


# --- Knockoff Nets ----------------------------------------------------------------------------


def test_knockoff_counts_and_fidelity_on_digits(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = digits_pool
    pool_before = pool.clone()
    m = as_model(net)
    result = KnockoffNets(budget=300, checkpoints=(100,), epochs=20)(m, pool, eval_data=(x_test, y_test))
    assert result.queries == 300 == m.queries.forward  # eval queries are not charged
    assert result.eval_queries == x_test.shape[0]
    assert [p.queries for p in result.curve] == [100, 300]
    assert result.fidelity > 0.8 and result.accuracy > 0.7  # chance is about 0.1
    assert result.fidelity == pytest.approx(fidelity(result.copy, net, x_test))
    assert result.accuracy == pytest.approx(accuracy(result.copy, x_test, y_test))
    assert torch.equal(pool, pool_before)
    json.dumps(result.to_dict())


def test_knockoff_checkpoint_equals_smaller_budget_run(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = digits_pool
    long = KnockoffNets(budget=200, checkpoints=(80,), epochs=10)(net, pool, eval_data=(x_test, y_test))
    short = KnockoffNets(budget=80, epochs=10)(net, pool, eval_data=(x_test, y_test))
    assert long.at(80) == short.curve[-1]


def test_knockoff_is_deterministic(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, _, _ = digits_mlp
    pool, _ = digits_pool
    a = KnockoffNets(budget=100, epochs=5)(net, pool)
    b = KnockoffNets(budget=100, epochs=5)(net, pool)
    for pa, pb in zip(a.copy.parameters(), b.copy.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_knockoff_label_only_victim_and_counting_callable(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = digits_pool
    victim = Counting(net_labels(net))
    m = as_model(victim, output="labels", n_classes=10)
    result = KnockoffNets(budget=300, output="labels", epochs=20)(
        m, pool, eval_data=(x_test, y_test)
    )
    # the wrapped callable saw the attack's queries plus the (uncharged) eval labelling
    assert victim.rows == result.queries + result.eval_queries == 300 + x_test.shape[0]
    assert m.queries.forward == result.queries == 300
    assert result.fidelity > 0.7
    with pytest.raises(ModelCapabilityError, match="output='labels'"):
        KnockoffNets(budget=50, output="proba")(m, pool)


def test_knockoff_adaptive(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, groups = digits_pool
    m = as_model(net)
    result = KnockoffNets(budget=300, strategy="adaptive", epochs=20)(
        m, pool, groups, eval_data=(x_test, y_test)
    )
    assert result.queries == 300 == m.queries.forward
    assert sum(result.extra["group_counts"]) == 300
    assert result.fidelity > 0.3  # well above chance (0.1); the bandit favours a few groups
    cert = KnockoffNets(budget=300, strategy="adaptive", reward="cert", epochs=20)(
        net, pool, groups, eval_data=(x_test, y_test)
    )
    assert cert.fidelity > 0.7
    with pytest.raises(InputError, match="needs y"):
        KnockoffNets(budget=50, strategy="adaptive")(net, pool)


def test_knockoff_transferability_in_curve(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = digits_pool
    m = as_model(net)
    result = KnockoffNets(budget=300, epochs=20)(
        m, pool, eval_data=(x_test[:100], y_test[:100]), transfer_attack=PGD(eps=0.3, steps=10)
    )
    assert m.queries.forward == 300
    rate = result.curve[-1].transfer_rate
    assert rate is not None and 0.3 < rate <= 1.0
    direct = transferability(result.copy, net, x_test[:100], y_test[:100], PGD(eps=0.3, steps=10))
    assert direct == pytest.approx(rate)


def test_knockoff_bad_input(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, _, _ = digits_mlp
    pool, _ = digits_pool
    with pytest.raises(ConfigError, match="checkpoints"):
        KnockoffNets(budget=100, checkpoints=(500,))
    with pytest.raises(InputError, match=r"at least 300 rows.*got 50"):
        KnockoffNets(budget=300)(net, pool[:50])
    with pytest.raises(InputError, match=r"\(1, 8, 8\)"):
        KnockoffNets(budget=20)(net, pool.view(-1, 1, 8, 8))
    with pytest.raises(QueryBudgetExceeded, match=r"at least 300.*got 100"):
        KnockoffNets(budget=300)(as_model(net, budget=100), pool)
    with pytest.raises(ConfigError, match="thief must return logits of shape"):
        KnockoffNets(budget=20, thief_factory=lambda: nn.Linear(64, 3))(net, pool)


# --- Jacobian-based dataset augmentation ------------------------------------------------------


def test_jacobian_augmentation_counts_and_fidelity(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = digits_pool
    victim = Counting(net_proba(net))
    m = as_model(victim, n_classes=10)
    result = JacobianAugmentation(budget=500, seed_size=50, rounds=5, epochs=10)(
        m, pool, eval_data=(x_test, y_test)
    )
    assert result.queries == m.queries.forward == 500
    assert victim.rows == 500 + result.eval_queries
    assert result.extra["round_sizes"] == [50, 50, 100, 200, 100]  # doubling, last round cut
    assert [p.queries for p in result.curve] == [50, 100, 200, 400, 500]
    assert result.fidelity > 0.6


def test_jacobian_step_moves_along_the_sign_of_the_gradient(tiny_linear: nn.Linear) -> None:
    from modelshield.attacks.extraction.jacobian import jacobian_step

    x = torch.full((1, 4), 0.5)
    out = jacobian_step(tiny_linear, x, torch.tensor([2]), 0.1, (0.0, 1.0))
    # d logit_2 / dx = (0, 0, 1, 1): only features 2 and 3 move, by +0.1; sign(0) = 0
    assert torch.allclose(out, torch.tensor([[0.5, 0.5, 0.6, 0.6]]))


def test_jacobian_bad_input(digits_mlp: Digits, digits_pool: Pool) -> None:
    net, _, _ = digits_mlp
    pool, _ = digits_pool
    with pytest.raises(ConfigError, match=r"'seed_size' must be at most budget=50 .*; got 100"):
        JacobianAugmentation(budget=50, seed_size=100)
    with pytest.raises(InputError, match="at least 100 rows"):
        JacobianAugmentation(budget=200, seed_size=100)(net, pool[:10])
