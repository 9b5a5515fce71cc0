"""Results do not depend on the batch size (issue #16, item 3).

Every randomised attack draws its random numbers per point (``point_keys`` and the ``point_*``
draws of ``modelshield.attacks.ops``), so attacking N points in batches of 1, 7 or N gives the
same adversarial inputs, the same successes and the same robust accuracy, and so does attacking
them in another order.

The model runs in float64 and the adversarial inputs are compared with ``torch.allclose(atol=
1e-9)`` besides exact success masks: a matrix product over a batch of 1 and over a batch of 500
may sum in a different order (BLAS picks other kernels), so a logit can differ in its last bit
between batch sizes. That is the model's arithmetic, not the attack's randomness; it moves an
L2 step by ~1e-16, far below the tolerance, and in float64 it never flips a decision here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield.assess._batched import run_in_batches
from modelshield.attacks.evasion import APGD, PGD, EvasionAttack, HopSkipJump, SimBA, Square
from modelshield.attacks.ops import (
    mix64,
    point_keys,
    point_normal,
    point_randint,
    point_random_start,
    point_signs,
    point_uniform,
)
from modelshield.attacks.results import EvasionResult


def _load_table() -> ModuleType:
    """tests/contract/attack_table.py (pytest runs with --import-mode=importlib: no sys.path)."""
    if "attack_table" in sys.modules:
        return sys.modules["attack_table"]
    path = Path(__file__).parents[1] / "contract" / "attack_table.py"
    spec = importlib.util.spec_from_file_location("attack_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["attack_table"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


CASES = _load_table().CASES
N = 30
BATCH_SIZES = (1, 7, 500)


def _small(attack: EvasionAttack) -> EvasionAttack:
    """The same attack with a query budget small enough for batches of one to stay fast."""
    if isinstance(attack, Square | SimBA | HopSkipJump):
        return dataclasses.replace(attack, max_queries=30)
    return attack


RANDOMISED: list[tuple[str, EvasionAttack]] = [
    (c.id, _small(c.attack)) for c in CASES if c.stochastic
] + [
    ("PGD-inf-3restarts-final-iterate", PGD(eps=0.15, steps=8, restarts=3, early_stop=False)),
    ("Square-inf-ce", Square(eps=0.15, max_queries=30, loss="ce")),
    ("SimBA-dct", SimBA(eps_step=0.2, max_queries=30, basis="dct")),
    ("HopSkipJump-inf-eps", HopSkipJump(norm="inf", eps=0.2, max_queries=30)),
    ("APGD-inf-seed12345", APGD(eps=0.15, steps=5, seed=12345)),
]


@pytest.fixture(scope="module")
def digits64(digits_mlp: Any) -> tuple[nn.Module, Tensor, Tensor]:
    """The digits MLP and N test points in float64 (see the module docstring)."""
    net, x, y = digits_mlp
    return _Double(net), x[:N].double(), y[:N]


class _Double(nn.Module):
    """A float64 copy of the net (the session fixture itself stays untouched)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        import copy

        self.net = copy.deepcopy(net).double().eval()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def _assert_same(a: EvasionResult, b: EvasionResult, what: str) -> None:
    assert torch.equal(a.success, b.success), f"{what}: success differs"
    assert a.robust_accuracy == b.robust_accuracy, what
    assert torch.allclose(a.x_adv, b.x_adv, rtol=0.0, atol=1e-9), (
        f"{what}: x_adv differs by {float((a.x_adv - b.x_adv).abs().max())}")
    if a.point_queries is not None and b.point_queries is not None:
        assert torch.equal(a.point_queries, b.point_queries), f"{what}: queries per point differ"


@pytest.mark.parametrize(("name", "attack"), RANDOMISED, ids=[n for n, _ in RANDOMISED])
def test_same_result_for_batch_sizes_1_7_and_all(name: str, attack: EvasionAttack,
                                                 digits64: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = digits64
    results = {bs: run_in_batches(attack, net, x, y, batch_size=bs) for bs in BATCH_SIZES}
    ref = results[BATCH_SIZES[-1]]
    assert bool(ref.success.any()), "the case should break some points"
    for bs in BATCH_SIZES[:-1]:
        _assert_same(results[bs], ref, f"{name}, batch size {bs} vs {BATCH_SIZES[-1]}")


@pytest.mark.parametrize("attack", [PGD(eps=0.15, steps=8, norm="2", restarts=2),
                                    Square(eps=0.15, max_queries=30)], ids=["PGD-2", "Square-inf"])
def test_same_result_in_another_order(attack: EvasionAttack,
                                      digits64: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Sharding over workers may reorder points: a point's result must not depend on its position."""
    net, x, y = digits64
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    ref = attack(net, x, y)
    shuffled = attack(net, x[perm], y[perm])
    assert torch.equal(shuffled.success, ref.success[perm])
    assert torch.allclose(shuffled.x_adv, ref.x_adv[perm], rtol=0.0, atol=1e-9)


def test_seed_changes_the_draws_and_none_is_fresh(digits64: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = digits64
    a = PGD(eps=0.15, steps=4, seed=0)(net, x, y)
    b = PGD(eps=0.15, steps=4, seed=1)(net, x, y)
    assert not torch.equal(a.x_adv, b.x_adv)
    c = PGD(eps=0.15, steps=4, seed=None)(net, x, y)
    d = PGD(eps=0.15, steps=4, seed=None)(net, x, y)
    assert not torch.equal(c.x_adv, d.x_adv)


# -- the per-point generator ---------------------------------------------------------------


def test_keys_depend_on_the_row_label_and_seed_only() -> None:
    x = torch.rand(50, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50) % 10
    k = point_keys(x, y, 7)
    assert k.dtype == torch.int64 and k.shape == (50,) and k.unique().numel() == 50
    assert torch.equal(point_keys(x[10:17], y[10:17], 7), k[10:17])  # any sub-batch
    assert torch.equal(point_keys(x.flip(0), y.flip(0), 7), k.flip(0))  # any order
    assert not torch.equal(point_keys(x, y, 8), k)  # the seed matters
    assert not torch.equal(point_keys(x, (y + 1) % 10, 7), k)  # the label matters
    x2 = x.clone()
    x2[5, 2, 3, 3] = torch.nextafter(x2[5, 2, 3, 3], torch.tensor(2.0))  # one bit of one value
    k2 = point_keys(x2, y, 7)
    assert k2[5] != k[5] and torch.equal(k2[:5], k[:5])
    # Identical rows get identical keys; every float dtype works.
    assert point_keys(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), 0).unique().numel() == 1
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        assert point_keys(x.to(dt), y, 7).unique().numel() == 50
    assert point_keys(x, y, None).ne(point_keys(x, y, None)).all()  # fresh entropy


def test_draws_are_per_row_functions_of_key_and_stream() -> None:
    keys = point_keys(torch.rand(64, 10, generator=torch.Generator().manual_seed(1)), None, 0)
    u = point_uniform(keys, (3, 1), (200,))
    assert torch.equal(point_uniform(keys[5:9], (3, 1), (200,)), u[5:9])  # batch composition
    assert torch.equal(point_uniform(keys, (3, 1), (300,))[:, :200], u)  # a longer draw extends it
    assert not torch.equal(point_uniform(keys, (3, 2), (200,)), u)  # another stream
    assert torch.equal(point_uniform(keys, 3, (200,)), point_uniform(keys, (3,), (200,)))  # int = 1-tuple
    assert torch.equal(point_uniform(keys, 3, (20, 10)).flatten(1), point_uniform(keys, 3, (200,)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_uniform_range_and_moments(dtype: torch.dtype) -> None:
    keys = torch.arange(400)
    u = point_uniform(keys, 1, (1000,), dtype=dtype)
    assert u.dtype == dtype and u.shape == (400, 1000)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    uf = u.double()
    assert abs(float(uf.mean()) - 0.5) < 3e-3 and abs(float(uf.var()) - 1 / 12) < 3e-3
    # Neighbouring keys, neighbouring counters and two streams are uncorrelated.
    v = point_uniform(keys, 2, (1000,), dtype=torch.float64)
    w = point_uniform(keys, 1, (1000,), dtype=torch.float64)
    for a, b in ((w[:-1], w[1:]), (w[:, :-1], w[:, 1:]), (w, v)):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(r)) < 0.01
    # Each of 10 equal bins holds its share (a loose chi-square: 9 dof, mean 9).
    counts = torch.bincount((w.flatten() * 10).long(), minlength=10).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 40


def test_normal_signs_and_ints() -> None:
    keys = torch.arange(500)
    g = point_normal(keys, 0, (2000,), dtype=torch.float64)
    assert abs(float(g.mean())) < 5e-3 and abs(float(g.var()) - 1) < 1e-2
    assert abs(float((g.abs() < 1).double().mean()) - 0.6827) < 5e-3  # the 1-sigma mass
    assert torch.isfinite(point_normal(keys, 1, (2000,))).all()
    s = point_signs(keys, 0, (2000,))
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.mean())) < 5e-3
    r = point_randint(keys, 0, 7, (700,))
    assert int(r.min()) == 0 and int(r.max()) == 6
    share = torch.bincount(r.flatten(), minlength=7).double() / r.numel()
    assert (share - 1 / 7).abs().max() < 5e-3
    high = torch.arange(1, 501)  # per-row bounds
    rr = point_randint(keys, 0, high, (20,))
    assert (rr >= 0).all() and (rr < high[:, None]).all()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_point_random_start_in_ball(norm: str) -> None:
    x = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    keys = point_keys(x, None, 0)
    d = point_random_start(x, 0.3, norm, keys, (1, 0))  # type: ignore[arg-type]  # literal
    size = d.flatten(1).abs().amax(1) if norm == "inf" else d.flatten(1).norm(dim=1)
    assert (size <= 0.3 + 1e-6).all() and (size > 0.05).all()
    assert torch.equal(point_random_start(x[3:5], 0.3, norm, keys[3:5], (1, 0)), d[3:5])  # type: ignore[arg-type]


@pytest.mark.parametrize("block", [1, 64, 1000])
def test_cpu_blocking_does_not_change_the_numbers(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU draws run in blocks (rows, or pieces of long rows); any blocking gives the same bits."""
    from modelshield.attacks import ops

    x = torch.rand(9, 3, 50, generator=torch.Generator().manual_seed(0))
    keys = point_keys(x, None, 0)

    def draws() -> tuple[Tensor, ...]:
        return (point_keys(x, None, 0), point_uniform(keys, 1, (300,)), point_normal(keys, 2, (7, 40)),
                point_signs(keys, 3, (130,)), point_randint(keys, 4, torch.arange(1, 10), (260,)))

    ref = draws()  # one block: 9 x 300 words < _BLOCK
    monkeypatch.setattr(ops, "_BLOCK", block)
    for r, g in zip(ref, draws(), strict=True):
        assert torch.equal(r, g)


def test_mix64_is_order_sensitive_and_64_bit() -> None:
    assert mix64(1, 2) != mix64(2, 1) and mix64(1) != mix64(1, 0)
    assert all(0 <= mix64(i) < 2**64 for i in range(-3, 100))
    assert len({mix64(i) for i in range(1000)}) == 1000


# -- the tabular and text attacks ----------------------------------------------------------


def test_tabular_search_subset_draws_do_not_depend_on_the_other_rows() -> None:
    from modelshield.attacks.evasion.tabular import ConstraintSpec, TabularSearch

    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(6, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 6, generator=gen))
        lin.bias.zero_()
    x = torch.rand(60, 6, generator=gen) * 2 - 1
    with torch.no_grad():
        y = lin(x).argmax(1)  # every row "detected"; class 1 rows are attacked
    spec = ConstraintSpec.from_dict({"features": {f"f{i}": {"min": -1.0, "max": 1.0} for i in range(6)}})
    attack = TabularSearch(max_changes=3, max_queries=8, grid=5)  # the cap forces random subsets
    whole = attack(lin, x, y, constraints=spec)
    parts = [attack(lin, x[s:s + 7], y[s:s + 7], constraints=spec) for s in range(0, 60, 7)]
    assert torch.equal(torch.cat([p.x_adv for p in parts]), whole.x_adv)
    assert torch.equal(torch.cat([p.success for p in parts]), whole.success)


def test_text_typos_do_not_depend_on_the_other_texts() -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    from modelshield.attacks.evasion.text import TextEvasion
    from modelshield.data.sms_spam import load_sms_spam
    from modelshield.zoo.spam import train_spam_model

    spam = load_sms_spam(root)
    nb = train_spam_model("nb", spam)
    idx = [i for i, v in enumerate(spam.y_test.tolist()) if v == 1][:12]
    texts, y = [spam.texts_test[i] for i in idx], spam.y_test[idx]
    attack = TextEvasion(method="char", char_ops=("typo",), max_word_fraction=0.3)
    whole = attack(nb, texts, y)
    one_by_one = [attack(nb, [t], y[i:i + 1]).texts_adv[0] for i, t in enumerate(texts)]
    assert list(whole.texts_adv) == one_by_one
    assert any(a != b for a, b in zip(whole.texts_adv, texts, strict=True))
