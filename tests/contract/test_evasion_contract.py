"""The evasion-attack contract, checked for every attack in attack_table.CASES."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import modelshield.attacks.evasion as evasion
from modelshield._typing import Norm
from modelshield.attacks.evasion import (
    APGD,
    EVASION_ATTACKS,
    PGD,
    Ensemble,
    EvasionAttack,
    build_attack,
)
from modelshield.attacks.ops import lp_norms
from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.models import as_model


def _load_table() -> ModuleType:
    """attack_table.py beside this file (pytest runs with --import-mode=importlib: no sys.path)."""
    if "attack_table" in sys.modules:
        return sys.modules["attack_table"]
    spec = importlib.util.spec_from_file_location("attack_table", Path(__file__).with_name("attack_table.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["attack_table"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


_table = _load_table()
CASES = _table.CASES
EPS_INF: float = _table.EPS_INF
blobs = _table.blobs
train_mlp = _table.train_mlp
N = 24


@pytest.fixture(scope="module")
def four_class() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs, ys = blobs(400 + N, 4, 8, g)
    net = train_mlp(xs[N:], ys[N:], 4, g)
    return net, xs[:N], ys[:N]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-logit", "2-logits"])
def binary(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    xs, ys = blobs(300 + N, 2, 6, g)
    net = train_mlp(xs[N:], ys[N:], request.param, g)
    return net, xs[:N], ys[:N]


def _eps(case: Any) -> float | None:
    eps: float | None = getattr(case.attack, "eps", None)
    return eps


def _check_verified(case: Any, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    target: torch.Tensor | None = None) -> None:
    res = case.attack(net, x, y, target=target)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.device == x.device
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    norm: Norm = getattr(case.attack, "norm", None) or "inf"
    torch.testing.assert_close(res.norms, lp_norms(res.x_adv - x, norm))
    eps = _eps(case)
    if eps is not None:
        assert bool((res.norms <= eps + 1e-6).all())
    assert bool(res.valid.all()), "verification had to reject rows"
    pred = as_model(net).predict(res.x_adv)  # fresh query, through the adapter (1-logit models)
    hit = (pred == target) if target is not None else (pred != y)
    assert torch.equal(res.success, hit & res.valid)
    json.dumps(res.to_dict())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_output_verified_and_inputs_untouched(case: Any, four_class) -> None:
    net, x, y = four_class
    assert isinstance(case.attack, EvasionAttack)
    x_copy, y_copy = x.clone(), y.clone()
    net.train()
    first = next(net.parameters())
    first.grad = torch.full_like(first, 0.5)
    try:
        _check_verified(case, net, x, y)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
        assert net.training and all(mod.training for mod in net.modules())
        assert all(p.requires_grad for p in net.parameters())
        assert torch.equal(first.grad, torch.full_like(first, 0.5))
        assert all(p.grad is None for p in list(net.parameters())[1:])
    finally:
        first.grad = None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_attack_breaks_something_and_keeps_clean_errors(case: Any, four_class) -> None:
    net, x, y = four_class
    res = case.attack(net, x, y)
    assert res.clean_accuracy > 0.8  # the fixture model is fine
    assert res.attack_success_rate > 0.0
    # Points the model already gets wrong stay wrong (the attack never "repairs" them).
    assert bool((res.adv_pred != y)[~res.clean_correct].all())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_seeded_calls_repeat(case: Any, four_class) -> None:
    net, x, y = four_class
    a, b = case.attack(net, x, y), case.attack(net, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_binary_models(case: Any, binary) -> None:
    net, x, y = binary
    _check_verified(case, net, x, y)
    if case.supports_targeted:
        _check_verified(case, net, x, y, target=1 - y)


@pytest.mark.parametrize("case", [c for c in CASES if c.supports_targeted], ids=lambda c: c.id)
def test_targeted_success_means_target(case: Any, four_class) -> None:
    net, x, y = four_class
    target = (y + 1) % 4
    _check_verified(case, net, x, y, target=target)


@pytest.mark.parametrize("case", [c for c in CASES if c.rejects_target], ids=lambda c: c.id)
def test_untargeted_only_attacks_reject_target(case: Any, four_class) -> None:
    net, x, y = four_class
    with pytest.raises(ConfigError, match="target"):
        case.attack(net, x, y, target=(y + 1) % 4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_query_counts_match_the_model(case: Any, four_class) -> None:
    net, x, y = four_class
    m = as_model(net)
    rows: list[int] = []
    handle = net.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    try:
        m.queries.forward, m.queries.backward = 5, 7  # counts are deltas, not totals
        res = case.attack(m, x, y)
    finally:
        handle.remove()
    assert res.queries_forward == sum(rows) == m.queries.forward - 5
    assert res.queries_backward == m.queries.backward - 7
    assert (res.queries_backward > 0) == case.attack.needs_gradients
    assert res.time_s > 0


@pytest.mark.parametrize("case", [c for c in CASES if c.attack.needs_gradients], ids=lambda c: c.id)
def test_black_box_model_is_refused(case: Any, four_class) -> None:
    net, x, y = four_class

    def proba(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.as_tensor(a)), 1).numpy()

    with pytest.raises(ModelCapabilityError, match=f"{case.owner}: needs gradients"):
        case.attack(proba, x, y)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_config_raises(case: Any) -> None:
    attack = case.attack
    fields = {f.name for f in dataclasses.fields(attack)}
    checked = 0
    for name, bad in (("eps", -0.1), ("norm", "1"), ("steps", 0), ("restarts", 0), ("loss", "mse")):
        if name in fields:
            with pytest.raises(ConfigError, match=f"{case.owner}: '{name}' must be"):
                dataclasses.replace(attack, **{name: bad})
            checked += 1
    if isinstance(attack, Ensemble):
        with pytest.raises(ConfigError, match="Ensemble: members must share 'eps'"):
            Ensemble(members=(APGD(eps=0.1), PGD(eps=0.2)))
        with pytest.raises(ConfigError, match="Ensemble: members must share 'norm'"):
            Ensemble(members=(APGD(eps=0.1), APGD(eps=0.1, norm="2")))
        with pytest.raises(ConfigError, match="Ensemble: 'members' must be a non-empty tuple"):
            Ensemble(members=())
        with pytest.raises(ConfigError, match="'eps' must be"):
            Ensemble.standard(eps=-1.0)
        checked += 1
    assert checked > 0


def test_every_exported_attack_is_in_the_table() -> None:
    listed = {type(c.attack) for c in CASES} | _table.EXEMPT
    exported = {
        obj for name in evasion.__all__
        if isinstance(obj := getattr(evasion, name), type) and dataclasses.is_dataclass(obj)
        and hasattr(obj, "needs_gradients")
    }
    assert exported, "no attack classes found"
    assert exported <= listed, exported - listed


@pytest.mark.parametrize("name", sorted(EVASION_ATTACKS))
def test_every_registry_name_builds_a_listed_attack(name: str) -> None:
    norm: Norm = "2" if name == "cw" else "inf"
    attack = build_attack(name, eps=EPS_INF, norm=norm, steps=5, seed=3)
    assert isinstance(attack, EvasionAttack)
    assert type(attack) in {type(c.attack) for c in CASES}
    assert getattr(attack, "eps", EPS_INF) == EPS_INF
    if hasattr(attack, "steps"):
        assert attack.steps == 5


def test_build_attack_rejects_unknown_names_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"build_attack: 'name' must be one of .*Did you mean 'pgd'"):
        build_attack("pdg", eps=0.1)
    with pytest.raises(ConfigError, match="'norm' must be '2' for 'cw'"):
        build_attack("cw", eps=0.1)
    with pytest.raises(ConfigError, match="'norm' must be one of"):
        build_attack("pgd", eps=0.1, norm="1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="PGD: 'eps' must be"):
        build_attack("pgd", eps=-1.0)
