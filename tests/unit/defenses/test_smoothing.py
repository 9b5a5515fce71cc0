"""Randomized smoothing: the certified radius matches Cohen et al.'s formula on a linear model."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import beta, norm  # type: ignore[import-untyped]
from torch import nn

from modelshield.defenses.certification import (
    ABSTAIN,
    RandomizedSmoothing,
    certified_accuracy,
    clopper_pearson_lower,
    noise_augmented_training,
)
from modelshield.errors import ConfigError, InputError


class Linear2(nn.Module):
    """Binary linear classifier: class 1 iff w.x + b > 0 (logits [0, w.x + b])."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


W = torch.tensor([0.6, -0.8])  # ||w|| = 1, so |w.x + b| is the distance to the boundary
B = 0.05
SIGMA = 0.25


def test_certified_radius_matches_formula_on_linear_model() -> None:
    model = Linear2(W, B).eval()
    x = torch.tensor([[0.5, 0.2], [0.3, 0.5], [0.9, 0.1], [0.6, 0.3]])
    dist = (x @ W + B).abs()  # true L2 distance to the decision boundary
    y = ((x @ W + B) > 0).long()
    n, alpha = 100_000, 0.001
    res = RandomizedSmoothing(sigma=SIGMA, n0=100, n=n, alpha=alpha, batch_size=20_000).certify(model, x, y)
    # The smoothed probability of the base class is Phi(dist / sigma) exactly for a linear model.
    p_true = torch.as_tensor(norm.cdf((dist / SIGMA).numpy()), dtype=torch.float64)
    # Clopper-Pearson: p_lower is below p_true (w.p. 1 - alpha), and within ~4 binomial std of it.
    std = (p_true * (1 - p_true) / n).sqrt()
    assert bool((res.p_lower <= p_true).all())
    assert bool((res.p_lower >= p_true - 5 * std).all())
    # Radius = sigma * Phi^-1(p_lower), recomputed independently from the vote counts.
    k = res.counts.double().numpy()
    expected = SIGMA * norm.ppf(beta.ppf(alpha, k, n - k + 1))
    assert torch.allclose(res.radius, torch.as_tensor(expected), atol=1e-9)
    # ... which tends to the true distance: never above it, and close for n = 1e5.
    assert bool((res.radius <= dist.double() + 1e-9).all())
    assert bool(((dist.double() - res.radius) < 0.02).all())
    assert torch.equal(res.labels, y) and not bool(res.abstain.any())
    # Certified accuracy against radius counts points with radius >= r.
    acc = certified_accuracy(res, [0.0, 0.15, 0.3, 1.0])
    frac = [float((res.radius >= r).double().mean()) for r in (0.15, 0.3)]
    assert acc == [1.0, *frac, 0.0]


def test_abstains_near_the_boundary_and_predict_test() -> None:
    model = Linear2(W, B).eval()
    x_edge = torch.tensor([[0.5, 0.4375]])  # w.x + b = 0: the smoothed vote is a coin flip
    rs = RandomizedSmoothing(sigma=SIGMA, n0=100, n=2000, alpha=0.001)
    res = rs.certify(model, x_edge)
    assert bool(res.abstain.all()) and int(res.labels[0]) == ABSTAIN and float(res.radius[0]) == 0.0
    labels, abstain = rs.predict(model, torch.cat([x_edge, torch.tensor([[0.9, 0.1]])]))
    assert abstain.tolist() == [True, False] and labels.tolist() == [ABSTAIN, 1]


def test_clopper_pearson_hand_values() -> None:
    # k = n: the one-sided bound is alpha ** (1 / n); k = 0: 0.
    low = clopper_pearson_lower(torch.tensor([10, 0]), 10, 0.05)
    assert low[0] == pytest.approx(0.05 ** (1 / 10))
    assert low[1] == 0.0


def test_noise_training_then_certify(digits_mlp) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    report = noise_augmented_training(net, (x[:1400], y[:1400]), sigma=0.25, epochs=5, lr=5e-3,
                                      batch_size=64)
    assert report.method == "noise" and len(report.epochs) == 5
    assert report.epochs[-1].train_adv_accuracy > 0.8  # accuracy on noisy batches
    net.eval()
    res = RandomizedSmoothing(sigma=0.25, n=500, n0=50).certify(net, x[1400:1440], y[1400:1440])
    acc = res.certified_accuracy([0.0, 0.25, 0.5])
    assert acc[0] >= acc[1] >= acc[2] and acc[0] > 0.6
    assert math.isfinite(res.to_dict()["mean_radius"])


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="'sigma' must be"):
        RandomizedSmoothing(sigma=0.0)
    with pytest.raises(ConfigError, match="'alpha'"):
        RandomizedSmoothing(alpha=1.0)
    with pytest.raises(ConfigError, match="'sigma'"):
        noise_augmented_training(nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4).long()), sigma=-1.0)
    model = Linear2(W, B)  # still in training mode
    with pytest.raises(InputError, match=r"model\.eval\(\)"):
        RandomizedSmoothing(n=10).certify(model, torch.zeros(1, 2))
    model.eval()
    with pytest.raises(InputError, match="meta"):
        RandomizedSmoothing(n=10).certify(model, torch.zeros(1, 2, device="meta"))
    with pytest.raises(InputError, match="outside bounds"):
        RandomizedSmoothing(n=10).predict(model, torch.full((1, 2), 2.0))
