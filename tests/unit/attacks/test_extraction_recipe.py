"""KnockoffNets' stronger recipe (balanced selection, min_steps) and the experiment module's re-exports."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import modelshield.assess.sections.extraction as section
from modelshield.attacks.extraction import KnockoffNets
from modelshield.attacks.extraction.knockoff import _balanced_picks
from modelshield.errors import ConfigError
from modelshield.experiments import extraction
from modelshield.models import as_model

Digits = tuple[nn.Module, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def skewed_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits rows: every 0-4, only 10 of each 5-9 (a surrogate pool that rarely shows 5-9)."""
    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[: (None if c < 5 else 10)] for c in range(10)])
    return x[keep], y[keep]


def test_balanced_picks_prefer_the_rarest_answers() -> None:
    # one-hot thief predictions: rows 0-2 class 0, rows 3-4 class 1; counts (5, 0). One pick at
    # a time: class 1 scores 1/(0+1) = 1 > 1/6, then 1/(1+1) = 0.5 > 1/6: both class-1 rows
    # first; then class 1 scores 1/3 > 1/6 but no class-1 row is left: a class-0 row.
    p = torch.eye(2, dtype=torch.float64)[torch.tensor([0, 0, 0, 1, 1])]
    picks = _balanced_picks(p, torch.tensor([5.0, 0.0], dtype=torch.float64), 3, chunk=1)
    assert sorted(picks[:2].tolist()) == [3, 4] and int(picks[2]) in (0, 1, 2)
    assert len(set(picks.tolist())) == 3
    # never more picks than rows
    assert _balanced_picks(p, torch.zeros(2, dtype=torch.float64), 9).numel() == 5


def test_min_steps_raises_the_epochs() -> None:
    # 500 answers in batches of 64: 8 steps an epoch; 1500 steps need ceil(1500 / 8) = 188 epochs.
    ko = KnockoffNets(budget=500, epochs=10, min_steps=1500, batch_size=64)
    assert ko._epochs_for(500) == 188
    assert ko._epochs_for(5000) == 19  # 79 steps an epoch
    assert KnockoffNets(budget=500, epochs=10)._epochs_for(500) == 10  # min_steps=0: unchanged
    with pytest.raises(ConfigError, match="'min_steps'"):
        KnockoffNets(min_steps=-1)


def test_balanced_strategy_counts_queries_and_balances_answers(
    digits_mlp: Digits, skewed_pool: tuple[torch.Tensor, torch.Tensor]
) -> None:
    net, x_test, y_test = digits_mlp
    pool, _ = skewed_pool
    m = as_model(net)
    bal = KnockoffNets(budget=200, strategy="balanced", epochs=150)(m, pool, eval_data=(x_test, y_test))
    assert bal.queries == 200 == m.queries.forward  # 100 random, then one round of 100
    assert bal.extra["rounds"] == 2 and sum(bal.extra["answer_counts"]) == 200
    rand = KnockoffNets(budget=200, epochs=150)(net, pool, eval_data=(x_test, y_test))
    with torch.no_grad():
        rare_in_pool = int((net(pool).argmax(1) >= 5).sum())
    rare_bal = sum(bal.extra["answer_counts"][5:])
    # random draws expect 200 * rare / N rare answers; the balanced rounds ask for more
    assert rare_bal > 1.5 * 200 * rare_in_pool / pool.shape[0]
    assert bal.fidelity > 0.5 and rand.fidelity > 0.0
    # a budget of at most 100 is a plain random draw (one round)
    small = KnockoffNets(budget=60, strategy="balanced", epochs=2)(net, pool)
    assert small.extra["rounds"] == 1 and small.queries == 60


def test_experiment_helpers_live_in_the_library() -> None:
    for name in ("run_extraction", "QueryLog", "load_pool", "prada_verdict", "Pool", "ExtractionRun",
                 "build_extraction_attack", "digits_from_mnist"):
        assert getattr(section, name) is getattr(extraction, name)
        assert getattr(extraction, name).__module__ == "modelshield.experiments.extraction"
    attack = extraction.build_extraction_attack("knockoff", budget=300, strategy="balanced")
    assert isinstance(attack, KnockoffNets) and attack.strategy == "balanced"
    assert math.isfinite(attack.lr)
