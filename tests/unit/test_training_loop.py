"""The one training loop (modelshield.models.train_module): determinism, hygiene, schedules, hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from modelshield.errors import ConfigError, InputError
from modelshield.models import (
    EpochDecision,
    EpochInfo,
    Optimization,
    cross_entropy_loss,
    make_optimizer,
    train_module,
)
from modelshield.models.training import lr_at


def _blobs(n: int = 120, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two well-separated Gaussian blobs in 4-D (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 2.0
    return x, y


def _net(seed: int = 0) -> nn.Module:
    torch_gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=torch_gen) - 0.5)
    return net


def _same(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


def test_seeded_runs_are_bit_identical_and_the_seed_matters() -> None:
    x, y = _blobs()
    nets = [_net(), _net(), _net()]
    for net, seed in zip(nets, (3, 3, 4), strict=True):
        train_module(net, (x, y), epochs=3, batch_size=16, seed=seed,
                     optimization=Optimization(optimizer="sgd", lr=0.1, schedule="cosine"))
    assert _same(nets[0], nets[1])
    assert not _same(nets[0], nets[2])


def test_batch_order_ignores_and_leaves_the_global_rng() -> None:
    x, _ = _blobs(40)
    rows = torch.arange(40)
    orders: list[list[int]] = []
    for global_seed in (0, 12345):
        net = _net()  # (nn.Linear draws its default init from the global RNG: before the snapshot)
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        seen: list[int] = []

        def loss(model: nn.Module, xb: Tensor, rb: Tensor, epoch: int, step: int,
                 seen: list[int] = seen) -> Tensor:
            seen.extend(rb.tolist())
            out: Tensor = model(xb)
            return out.sum() * 0.0

        train_module(net, (x, rows), epochs=2, batch_size=7, loss=loss, seed=5)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not drawn from
        orders.append(seen)
    assert orders[0] == orders[1]
    assert sorted(orders[0][:40]) == list(range(40)) and sorted(orders[0][40:]) == list(range(40))
    # each epoch is one permutation from the private generator
    gen = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randperm(40, generator=gen), torch.randperm(40, generator=gen)])
    assert orders[0] == expected.tolist()


def test_a_shared_generator_advances_by_one_permutation_per_epoch() -> None:
    x, y = _blobs(30)
    gen, ref = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    train_module(_net(), (x, y), epochs=3, batch_size=8, generator=gen, seed=None)
    for _ in range(3):
        torch.randperm(30, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_flags_are_restored_and_grads_freed_even_on_error() -> None:
    x, y = _blobs(32)
    net = _net()
    net.train()
    list(net.children())[1].eval()  # a mixed state: must come back exactly
    before = [m.training for m in net.modules()]
    modes: list[bool] = []

    def loss(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int, step: int) -> Tensor:
        modes.append(model.training)
        return cross_entropy_loss(model, xb, yb, epoch, step)

    train_module(net, (x, y), epochs=1, batch_size=8, loss=loss)
    assert modes and all(modes)  # trained in training mode
    assert [m.training for m in net.modules()] == before
    assert all(p.grad is None for p in net.parameters())

    def boom(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int, step: int) -> Tensor:
        if step == 2:
            raise RuntimeError("boom")
        return cross_entropy_loss(model, xb, yb, epoch, step)

    net.eval()
    with pytest.raises(RuntimeError, match="boom"):
        train_module(net, (x, y), epochs=1, batch_size=8, loss=boom)
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_loss_falls_on_a_separable_toy_set() -> None:
    x, y = _blobs()
    net = _net()
    res = train_module(net, (x, y), epochs=20, batch_size=16,
                       optimization=Optimization(optimizer="adam", lr=1e-2))
    assert len(res.history) == 20 and res.steps == 20 * math.ceil(120 / 16)
    assert res.history[-1].loss < 0.2 * res.history[0].loss
    assert float((net(x).argmax(1) == y).float().mean()) > 0.95
    assert res.to_dict()["steps"] == res.steps


def test_hook_can_stop_early() -> None:
    x, y = _blobs(40)
    seen: list[int] = []

    def hook(info: EpochInfo) -> EpochDecision:
        seen.append(info.epoch)
        return EpochDecision(stop=info.epoch == 1)

    res = train_module(_net(), (x, y), epochs=5, batch_size=10, on_epoch=hook)
    assert seen == [0, 1] and len(res.history) == 2 and res.stopped_early
    assert res.steps == 2 * 4


def test_hook_can_roll_back_an_epoch() -> None:
    x, y = _blobs(40)
    net = _net()
    at_start: dict[int, dict[str, Tensor]] = {}

    def loss(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int, step: int) -> Tensor:
        if step == 0:
            at_start[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return cross_entropy_loss(model, xb, yb, epoch, step)

    def hook(info: EpochInfo) -> None:
        if info.epoch == 1:
            info.roll_back()

    res = train_module(net, (x, y), epochs=3, batch_size=10, loss=loss, on_epoch=hook,
                       optimization=Optimization(lr=0.05))
    assert [h.rolled_back for h in res.history] == [False, True, False]
    # epoch 2 started from the weights epoch 1 started from
    assert all(torch.equal(at_start[1][k], at_start[2][k]) for k in at_start[1])
    assert not all(torch.equal(at_start[0][k], at_start[1][k]) for k in at_start[0])


def _old_zoo_fit(module: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int) -> None:
    """The zoo's hand-written loop before the one loop existed (AdamW + OneCycleLR)."""
    n = int(x.shape[0])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    total = math.ceil(n / batch_size) * epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(module(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
            opt.step()
            sched.step()
    module.eval()


def _old_engine_loop(module: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float,
                     schedule: str, seed: int) -> None:
    """The adversarial trainers' loop before the one loop existed (Adam, lr set before each step)."""
    n = int(x.shape[0])
    per_epoch = math.ceil(n / batch_size)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i, start in enumerate(range(0, n, batch_size)):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch + (i + 1) / per_epoch, epochs, lr, schedule)  # type: ignore[arg-type]
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(module(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
            opt.step()


def test_one_cycle_adamw_matches_the_old_zoo_loop_bit_for_bit() -> None:
    x, y = _blobs(100)
    ref, new = _net(), _net()
    _old_zoo_fit(ref, x, y, epochs=4, batch_size=16, lr=3e-3, weight_decay=1e-4, seed=1)
    train_module(new, (x, y), epochs=4, batch_size=16, seed=1,
                 optimization=Optimization(optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                                           schedule="one_cycle"))
    assert _same(ref, new)


@pytest.mark.parametrize("schedule", ["cyclic", "cosine", "constant"])
def test_stepwise_schedules_match_the_old_trainer_loop_bit_for_bit(schedule: str) -> None:
    x, y = _blobs(100)
    ref, new = _net(), _net()
    _old_engine_loop(ref, x, y, epochs=3, batch_size=16, lr=1e-2, schedule=schedule, seed=2)
    train_module(new, (x, y), epochs=3, batch_size=16, seed=2,
                 optimization=Optimization(optimizer="adam", lr=1e-2, schedule=schedule))  # type: ignore[arg-type]
    assert _same(ref, new)


def test_schedule_values() -> None:
    assert lr_at(0.0, 10, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(10.0, 10, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(4.0, 10, 0.1, "cyclic") == pytest.approx(0.1)  # peak at 2/5
    assert lr_at(2.0, 10, 0.1, "cyclic") == pytest.approx(0.05)
    assert lr_at(10.0, 10, 0.1, "cyclic") == 0.0
    assert [lr_at(t, 6, 1.0, "step", step_epochs=2, gamma=0.5) for t in (0.5, 2.0, 2.5, 4.0, 5.0)] == [
        1.0, 1.0, 0.5, 0.5, 0.25]
    x, y = _blobs(20)
    res = train_module(_net(), (x, y), epochs=3, batch_size=10,
                       optimization=Optimization(optimizer="sgd", lr=0.1, schedule="step", gamma=0.5))
    assert [h.lr for h in res.history] == pytest.approx([0.1, 0.05, 0.025])
    with pytest.raises(ConfigError, match="one_cycle"):
        lr_at(1.0, 2, 0.1, "one_cycle")


def test_continuing_with_the_returned_optimizer_keeps_its_state() -> None:
    x, y = _blobs(40)
    a, b = _net(), _net()
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    train_module(a, (x, y), epochs=2, batch_size=10, generator=gen_a)
    first = train_module(b, (x, y), epochs=1, batch_size=10, generator=gen_b)
    train_module(b, (x, y), epochs=1, batch_size=10, generator=gen_b, optimizer=first.optimizer)
    assert _same(a, b)


def test_dataloader_batches_and_progress() -> None:
    x, y = _blobs(60)
    calls: list[tuple[int, int, str]] = []
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    res = train_module(_net(), loader, epochs=2, progress=lambda d, t, m: calls.append((d, t, m)),
                       label="warm-up ")
    assert res.steps == 60
    # every 20 batches (except an epoch's last), and at each epoch's end
    assert [c[0] for c in calls] == [20, 30, 40, 60]
    assert all(c[1] == 60 for c in calls)
    assert calls[-1][2].startswith("warm-up epoch 2/2 done: loss ")
    bad = DataLoader(TensorDataset(x), batch_size=4)
    with pytest.raises(InputError, match=r"\(x, y\) pairs"):
        train_module(_net(), bad, epochs=1)


def test_bad_settings_and_data_are_refused() -> None:
    x, y = _blobs(20)
    with pytest.raises(ConfigError, match="epochs"):
        train_module(_net(), (x, y), epochs=0)
    with pytest.raises(ConfigError, match="lr"):
        Optimization(lr=0.0)
    with pytest.raises(ConfigError, match="optimizer"):
        Optimization(optimizer="rmsprop")  # type: ignore[arg-type]
    frozen = _net().requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable parameters"):
        make_optimizer(frozen, Optimization(), owner="test")
    with pytest.raises(InputError, match="one row per example"):
        train_module(_net(), (x, y[:5]), epochs=1)
    with pytest.raises(InputError, match="device"):
        train_module(_net(), (x.to("meta"), y.to("meta")), epochs=1)
    with pytest.raises(ConfigError, match="start_epoch"):
        train_module(_net(), (x, y), epochs=2, start_epoch=1,
                     optimization=Optimization(schedule="one_cycle"))
