"""Properties every sound evasion evaluation must show, on a small MLP trained on sklearn digits."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from modelshield.attacks.evasion import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    CarliniWagnerL2,
    DeepFool,
    Ensemble,
    EvasionAttack,
    sweep,
)

N = 120


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An 64-32-10 MLP on sklearn digits scaled to [0, 1] (full-batch Adam, well under 1 s)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400 : 1400 + N]
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1]) ** 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[tr]), y[tr]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    net.eval()
    return net, x[te], y[te]


def budgeted(eps: float) -> list[EvasionAttack]:
    return [
        FGSM(eps=eps),
        PGD(eps=eps, steps=20),
        APGD(eps=eps, steps=20),
        APGD(eps=eps, steps=20, loss="dlr"),
        APGDT(eps=eps, steps=10, n_target_classes=3),
        Ensemble.standard(eps, steps=5),
        CarliniWagnerL2(eps=eps * 4, steps=20, binary_search_steps=2),  # an L2 budget
        DeepFool(eps=eps, norm="inf"),
    ]


def test_fixture_model_is_accurate(digits) -> None:
    net, x, y = digits
    assert float((net(x).argmax(1) == y).float().mean()) > 0.85


@pytest.mark.parametrize("attack", budgeted(0.0), ids=lambda a: type(a).__name__)
def test_zero_budget_changes_nothing(attack: EvasionAttack, digits) -> None:
    net, x, y = digits
    res = attack(net, x, y)
    assert torch.equal(res.x_adv, x)
    assert res.robust_accuracy == res.clean_accuracy


@pytest.mark.parametrize(
    "attack",
    [PGD(eps=0.0, steps=20), APGD(eps=0.0, steps=20), Ensemble.standard(0.0, steps=10),
     DeepFool(eps=0.0, norm="inf")],
    ids=lambda a: type(a).__name__,
)
def test_robust_accuracy_falls_with_eps(attack: EvasionAttack, digits) -> None:
    net, x, y = digits
    budgets = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    seen: list[tuple[int, int]] = []
    curve = sweep(attack, net, x, y, eps=budgets, progress=lambda i, n: seen.append((i, n)))
    assert [r.eps for r in curve] == budgets
    assert seen == [(i + 1, len(budgets)) for i in range(len(budgets))]
    acc = [r.robust_accuracy for r in curve]
    assert all(b <= a for a, b in itertools.pairwise(acc)), acc
    assert acc[0] > acc[-1]


@pytest.mark.parametrize(
    "attack",
    [PGD(eps=1.0, steps=20), APGD(eps=1.0, steps=20), APGDT(eps=1.0, steps=10, n_target_classes=2),
     Ensemble.standard(1.0, steps=10), DeepFool(norm="inf")],
    ids=lambda a: type(a).__name__,
)
def test_huge_budget_breaks_almost_everything(attack: EvasionAttack, digits) -> None:
    net, x, y = digits
    res = attack(net, x, y)
    assert res.robust_accuracy <= 0.02


def test_pgd40_beats_fgsm(digits) -> None:
    net, x, y = digits
    for eps in (0.05, 0.1):
        assert PGD(eps=eps, steps=40)(net, x, y).robust_accuracy <= FGSM(eps=eps)(net, x, y).robust_accuracy


@pytest.mark.parametrize(("eps", "norm"), [(0.05, "inf"), (0.1, "inf"), (1.0, "2")])
def test_apgd_ce_at_least_as_strong_as_pgd(eps: float, norm: str, digits) -> None:
    net, x, y = digits
    pgd = PGD(eps=eps, norm=norm, steps=40)(net, x, y)  # type: ignore[arg-type]
    apgd = APGD(eps=eps, norm=norm, steps=40)(net, x, y)  # type: ignore[arg-type]
    # One point of slack: both are stochastic local searches with different random starts.
    assert apgd.robust_accuracy <= pgd.robust_accuracy + 1.0 / N


def test_ensemble_no_weaker_than_any_member(digits) -> None:
    net, x, y = digits
    members = (FGSM(eps=0.08), APGD(eps=0.08, steps=20), APGDT(eps=0.08, steps=10, n_target_classes=3))
    ens = Ensemble(members=members)(net, x, y)
    singles = [m(net, x, y) for m in members]
    for res in singles:
        assert ens.robust_accuracy <= res.robust_accuracy + 1.0 / N
    # Exact for the first member: it sees the same points with the same seed.
    assert bool((ens.success | ~singles[0].success).all())
    records = ens.extra["members"]
    assert [r["attack"] for r in records] == ["FGSM", "APGD", "APGDT"]
    assert sum(r["broken"] for r in records) == int((ens.success & ens.clean_correct).sum())
    assert records[1]["attacked"] == records[0]["attacked"] - records[0]["broken"]
    assert ens.queries_forward > sum(r["queries_forward"] for r in records)  # + clean + verification


@pytest.mark.parametrize(
    "attack",
    [APGD(eps=0.3, steps=30), APGD(eps=0.3, steps=30, loss="dlr"), APGDT(eps=0.3, steps=30),
     PGD(eps=0.3, steps=30),
     CarliniWagnerL2(steps=200, binary_search_steps=3, initial_const=1.0, learning_rate=0.05)],
    ids=lambda a: f"{type(a).__name__}-{getattr(a, 'loss', '')}",
)
def test_targeted_success_means_the_target(attack: EvasionAttack, digits) -> None:
    net, x, y = digits
    target = (y + 3) % 10
    res = attack(net, x, y, target=target)
    assert bool((res.adv_pred[res.success] == target[res.success]).all())
    assert torch.equal(res.success, (net(res.x_adv).argmax(1) == target) & res.valid)
    assert res.attack_success_rate >= 0.8


def test_min_norm_attacks_succeed_iff_within_budget(digits) -> None:
    net, x, y = digits
    free = DeepFool()(net, x, y)
    eps = float(free.norms[free.success].median())
    capped = DeepFool(eps=eps)(net, x, y)
    assert torch.equal(capped.success, free.success & (free.norms <= eps))
