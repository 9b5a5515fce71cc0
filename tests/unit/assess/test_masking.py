"""Gradient-masking checks: they fire on masked models and stay quiet on an adversarially trained one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from modelshield.assess.masking import FLAG_NAMES, check_gradient_masking, zero_gradient_fraction
from modelshield.attacks.evasion import PGD
from modelshield.defenses.training import AdversarialTrainer, DefensiveDistillation
from modelshield.errors import ConfigError, EvaluationWarning, InputError

EPS = 0.1


class RoundInput(nn.Module):
    """Quantises inputs to quarter steps before the classifier: autograd gives exactly zero gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(torch.round(x * 4) / 4)
        return out


def _mlp(seed: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.0))
    return net


@pytest.fixture(scope="module")
def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]]  # the conftest digits_mlp split: test rows are 1400:


@pytest.fixture(scope="module")
def at_mlp(digits_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """PGD adversarial training at the evaluated eps (about 1 s): a model whose robustness is real."""
    net = _mlp(1)
    AdversarialTrainer(method="pgd", eps=EPS, steps=10, epochs=15, lr=5e-3, batch_size=64).fit(
        net, digits_train)
    return net.eval()


def test_masking_fires_on_rounding_input_layer(digits_mlp) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    masked = RoundInput(net).eval()
    with pytest.warns(EvaluationWarning, match="Gradient masking"):
        rep = check_gradient_masking(masked, x[:100], y[:100], eps=EPS)
    assert rep.zero_gradient_fraction == 1.0  # round() has derivative 0 everywhere
    assert {"zero_gradients", "unbounded_not_broken", "black_box_beats_white_box"} <= set(rep.flag_names)
    assert not rep.robust_claim_allowed
    # The reported number is the per-point worst case: Square's break-ins count.
    assert rep.robust_accuracy <= min(rep.accuracies.values()) + 1e-6
    assert rep.robust_accuracy < rep.attack_robust_accuracy
    assert set(rep.flag_names) <= set(FLAG_NAMES)
    for flag in rep.flags:
        assert flag.evidence and flag.explanation and "20" in flag.reference


def test_masking_quiet_on_adversarially_trained_model(at_mlp: nn.Module, digits_mlp) -> None:  # type: ignore[no-untyped-def]
    _, x, y = digits_mlp
    rep = check_gradient_masking(at_mlp, x[:100], y[:100], eps=EPS)
    assert rep.flags == (), rep.to_dict()["flags"]
    assert rep.robust_claim_allowed
    assert rep.zero_gradient_fraction == 0.0
    # Honest curve: non-increasing (within one point) and 0% at the unbounded budget.
    accs = [a for _, a in rep.curve]
    assert all(b <= a + 0.01 for a, b in itertools.pairwise(accs))
    assert rep.curve[-1] == (1.0, 0.0)
    assert rep.robust_accuracy > 0.5  # adversarial training gave real robustness at this eps
    assert rep.to_dict()["robust_claim_allowed"] is True


def test_distillation_masks_ce_but_margin_attack_breaks_it(digits_train, digits_mlp) -> None:  # type: ignore[no-untyped-def]
    _, x, y = digits_mlp
    res = DefensiveDistillation(temperature=100, epochs=30, lr=5e-3, batch_size=64).fit(
        _mlp(2), _mlp(3), digits_train)
    model = res.model
    assert not model.training
    # Deployed at T = 1: logits are far larger than an ordinary network's (softmax saturates).
    with torch.no_grad():
        scale = float(model(x).abs().amax())
    assert scale > 100, scale
    with pytest.warns(EvaluationWarning):
        rep = check_gradient_masking(model, x[:100], y[:100], eps=EPS)
    assert "zero_gradients" in rep.flag_names and "stronger_attack_gap" in rep.flag_names
    assert not rep.robust_claim_allowed
    ce = PGD(eps=EPS, loss="ce")(model, x[:100], y[:100]).robust_accuracy
    margin = PGD(eps=EPS, loss="margin")(model, x[:100], y[:100]).robust_accuracy
    assert margin < ce - 0.2  # the logit-scale-invariant loss breaks what CE could not
    assert rep.robust_accuracy <= margin + 0.05


def test_zero_gradient_fraction_hand_cases(digits_mlp) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    assert zero_gradient_fraction(RoundInput(net).eval(), x[:20], y[:20]) == 1.0
    assert zero_gradient_fraction(net, x[:20], y[:20]) < 1.0


def test_bad_inputs(digits_mlp) -> None:  # type: ignore[no-untyped-def]
    net, x, y = digits_mlp
    with pytest.raises(ConfigError, match="eps"):
        check_gradient_masking(net, x[:10], y[:10], eps=0.0)
    with pytest.raises(ConfigError, match="eps"):
        check_gradient_masking(net, x[:10], y[:10], eps=1.5)
    with pytest.raises(ConfigError, match="norm"):
        check_gradient_masking(net, x[:10], y[:10], eps=0.1, attack=PGD(eps=0.1, norm="2"))
    training = _mlp(0)  # fresh modules are in training mode
    with pytest.raises(InputError, match=r"model\.eval\(\)"):
        check_gradient_masking(training, x[:10], y[:10], eps=0.1)
    with pytest.raises(InputError, match="meta"):
        check_gradient_masking(net, x[:10].to("meta"), y[:10], eps=0.1)
    assert math.isfinite(EPS)
