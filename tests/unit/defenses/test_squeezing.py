"""Feature squeezing: calibrated clean FPR, detection of plain attacks, evasion by an adaptive one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.attacks.evasion import PGD
from modelshield.defenses.detection import (
    FeatureSqueezing,
    adaptive_attack,
    median_filter,
    reduce_bit_depth,
)
from modelshield.errors import ConfigError, InputError, NotFittedError


@pytest.fixture(scope="module")
def setup(digits_mlp):  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    model = nn.Sequential(nn.Flatten(), net).eval()
    xi = x.view(-1, 1, 8, 8)
    det = FeatureSqueezing(bit_depths=(3,), median_sizes=(), fpr=0.05).fit(model, xi[:200])
    return model, det, xi[200:], y[200:]


def test_squeezers_hand_values() -> None:
    x = torch.tensor([[0.1, 0.4, 0.6, 0.95]])
    assert reduce_bit_depth(x, 1, (0.0, 1.0)).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert torch.allclose(reduce_bit_depth(x, 2, (0.0, 1.0)), torch.tensor([[0.0, 1 / 3, 2 / 3, 1.0]]))
    # Straight-through: same values, identity gradient (BPDA).
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(reduce_bit_depth(xg, 1, (0.0, 1.0), straight_through=True).sum(), xg)
    assert torch.equal(g, torch.ones_like(x))
    from scipy import ndimage  # type: ignore[import-untyped]

    img = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    for size in (2, 3):
        ref = np.stack([ndimage.median_filter(img[i, 0].numpy(), size=size, mode="nearest")
                        for i in range(3)])
        assert np.array_equal(median_filter(img, size)[:, 0].numpy(), ref)


def test_clean_false_positive_rate_matches_target(setup) -> None:  # type: ignore[no-untyped-def]
    model, det, x, _ = setup
    assert det.fpr_ <= 0.05
    held_out = float(det.predict(model, x).double().mean())
    # 197 held-out points: binomial std of a 5% rate is ~1.6 points.
    assert abs(held_out - 0.05) < 0.05


def test_plain_attack_detected_adaptive_evades(setup) -> None:  # type: ignore[no-untyped-def]
    model, det, x, y = setup
    x, y = x[:100], y[:100]
    plain = det.evaluate(model, x, y, PGD(eps=0.2, steps=40)(model, x, y))
    adaptive = adaptive_attack(det, model, x, y, eps=0.2, steps=50)
    assert plain.attack_success_rate > 0.8 and plain.detection_rate > 0.8
    assert adaptive.evasion_rate > plain.evasion_rate + 0.1
    # Adaptive successes are re-checked on the real detector: none of them is flagged.
    won = adaptive.eligible & adaptive.misclassified
    assert not bool(adaptive.detected[won].any())
    assert (adaptive.x_adv - x).abs().amax() <= 0.2 + 1e-6
    assert plain.to_dict()["attack"] == "PGD" and adaptive.to_dict()["attack"] == "adaptive"


def test_bad_inputs(setup, digits_mlp) -> None:  # type: ignore[no-untyped-def]
    model, det, x, y = setup
    with pytest.raises(ConfigError, match="'fpr'"):
        FeatureSqueezing(fpr=0.0)
    with pytest.raises(ConfigError, match="'bit_depths'"):
        FeatureSqueezing(bit_depths=(0,))
    with pytest.raises(NotFittedError, match="not fitted"):
        FeatureSqueezing().predict(model, x)
    with pytest.raises(InputError, match="median filters need images"):
        FeatureSqueezing(median_sizes=(2,)).fit(digits_mlp[0], digits_mlp[1])
    with pytest.raises(InputError, match=r"model\.eval\(\)"):
        det.predict(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x)
    with pytest.raises(InputError, match="meta"):
        det.predict(model, x.to("meta"))
    with pytest.raises(ConfigError, match="'eps'"):
        adaptive_attack(det, model, x, y, eps=-0.1)
