"""The default tabular thief standardises its inputs with its own pool's statistics (held-out defect 10).

On unscaled rows (wine: features up to 1,680) a raw MLP thief stayed at chance while a standardised
one copied the model almost perfectly from the same answers. The statistics are the attacker's
own pool's (no victim queries, no victim training statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from modelshield.attacks.extraction import KnockoffNets
from modelshield.attacks.extraction._train import (
    UNSCALED_ABOVE,
    Standardise,
    build_thief,
    is_unscaled,
    pool_statistics,
)
from modelshield.models import as_model

SCALES = torch.tensor([1000.0, 1.0, 50.0, 0.1])


def _unscaled(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, generator=gen) * SCALES


class _Victim(nn.Module):
    """Three classes from a linear score on the features divided by their scales (all matter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x / SCALES - 0.5
        s = z[:, 0] + z[:, 1] - z[:, 2] + z[:, 3]
        return torch.stack([-4 * s, torch.zeros_like(s), 4 * s], dim=1) + torch.tensor([0.0, 0.6, 0.0])


def test_pool_statistics_and_the_unscaled_test() -> None:
    x = _unscaled(500, 0)
    mean, std = pool_statistics(x)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(std, x.std(0, unbiased=False))
    assert torch.equal(pool_statistics(torch.full((10, 3), 7.0))[1], torch.ones(3))  # constant: no 0 division
    assert is_unscaled(x)
    assert not is_unscaled(torch.rand(50, 4))  # pixels, flags
    assert not is_unscaled(torch.randint(-1, 2, (50, 30)).float())  # the phishing data's -1/0/1
    assert is_unscaled(torch.tensor([[0.5, UNSCALED_ABOVE + 1.0]]))


def test_default_tabular_thief_standardises_unscaled_pools_only() -> None:
    pool = _unscaled(300, 1)
    net = build_thief(None, pool, 3, seed=0, reinit=True, owner="test")
    assert isinstance(net, nn.Sequential) and isinstance(net[0], Standardise)
    mean, std = pool_statistics(pool)
    torch.testing.assert_close(net[0].mean.reshape(-1), mean)
    torch.testing.assert_close(net[0].std.reshape(-1), std)
    # the layer computes (x - mean) / std: the pool comes out centred with unit spread
    with torch.no_grad():
        z = net[0](pool)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    scaled = build_thief(None, torch.rand(300, 4), 3, seed=0, reinit=True, owner="test")
    assert not any(isinstance(m, Standardise) for m in scaled.modules())
    images = torch.rand(4, 1, 8, 8) * 255
    assert not any(isinstance(m, Standardise)
                   for m in build_thief(None, images, 3, seed=0, reinit=True, owner="test").modules())


def test_knockoff_copies_a_model_on_unscaled_rows() -> None:
    victim = as_model(_Victim().eval(), bounds=(0.0, 1000.0))
    pool = _unscaled(400, 2)
    x_test = _unscaled(300, 3)
    y_test = victim.predict(x_test)
    assert len(torch.unique(y_test)) == 3
    res = KnockoffNets(budget=300, epochs=20, seed=0)(victim, pool, eval_data=(x_test, y_test))
    assert res.fidelity >= 0.85, res.fidelity  # a raw-input MLP thief: 0.61 on the same answers
