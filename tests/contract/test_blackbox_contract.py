"""The evasion contract for every query-only attack, on a torch model and on black-box callables."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from modelshield.attacks.evasion import PGD, EvasionAttack, HopSkipJump, SimBA, Square, Transfer
from modelshield.attacks.verify import verification_queries
from modelshield.models import TorchModel, as_model


def _net() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


NET = _net()
SURROGATE = _net()


@dataclass(frozen=True)
class Case:
    attack: EvasionAttack
    max_queries: int | None  # per-point cap on point_queries
    label_only: bool  # works on a model that returns labels only

    def __repr__(self) -> str:
        return repr(self.attack)


CASES = [
    Case(Square(eps=0.1, max_queries=80), 80, False),
    Case(Square(eps=0.5, norm="2", max_queries=80, seed=3), 80, False),
    Case(Square(eps=0.1, max_queries=80, loss="ce"), 80, False),
    Case(SimBA(eps_step=0.1, max_queries=80), 80, False),
    Case(SimBA(eps_step=0.1, max_queries=80, basis="dct", eps=0.4), 80, False),
    Case(SimBA(eps_step=0.1, max_queries=80, eps=0.05, norm="inf"), 80, False),
    Case(HopSkipJump(max_queries=80), 80, True),
    Case(HopSkipJump(max_queries=80, norm="inf", eps=0.1), 80, True),
    Case(Transfer(attack=PGD(eps=0.1, steps=5), surrogate=SURROGATE), 1, True),
]


def _batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 12, generator=gen)
    with torch.no_grad():
        y = NET(x).argmax(1)
    y[:2] = (y[:2] + 1) % 4  # two misclassified points
    return x, y


def _proba(a: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = torch.softmax(NET(torch.as_tensor(a)), 1).numpy()
    return out


def _labels(a: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = NET(torch.as_tensor(a)).argmax(1).numpy()
    return out


def _models(case: Case) -> list[object]:
    out: list[object] = [NET, as_model(_proba, n_classes=4)]
    if case.label_only:
        out.append(as_model(_labels, output="labels", n_classes=4))
    return out


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_blackbox_contract(case: Case) -> None:
    x, y = _batch()
    attack = case.attack
    assert attack.needs_gradients is False
    for model in _models(case):
        x_copy, y_copy, mode = x.clone(), y.clone(), NET.training
        m = as_model(model)
        res = attack(m, x, y)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and NET.training == mode
        assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
        assert res.valid.all()  # nothing rejected by verification
        assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
        eps = getattr(attack, "eps", None)
        if eps is not None:
            assert (res.norms <= eps + 1e-6).all()
        with torch.no_grad():
            assert torch.equal(res.success, NET(res.x_adv).argmax(1) != y)  # re-verified
        assert not res.eligible[:2].any()
        pq = res.point_queries
        assert pq is not None and case.max_queries is not None
        assert int(pq.max()) <= case.max_queries
        probe = int(isinstance(m, TorchModel))  # the one-row shape probe of a torch model
        verification = verification_queries(x.shape[0], int(res.success.sum()))
        assert m.queries.forward == int(pq.sum()) + verification + probe
        json.dumps(res.to_dict())
        again = attack(model, x, y)
        assert torch.equal(again.x_adv, res.x_adv)  # seeded => repeatable


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_blackbox_targeted_contract(case: Case) -> None:
    x, y = _batch()
    target = (y + 1) % 4
    res = case.attack(NET, x, y, target=target)
    assert torch.equal(res.success, res.valid & (res.adv_pred == target))
    assert res.targeted and res.valid.all()


def test_every_blackbox_attack_is_listed() -> None:
    listed = {type(c.attack) for c in CASES}
    assert listed == {Square, SimBA, HopSkipJump, Transfer}
