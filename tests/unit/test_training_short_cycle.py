"""One-cycle runs too short for torch's OneCycleLR (it divided by zero at <= 4 steps) still train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from modelshield.models import Optimization, train_module
from modelshield.models.training import one_cycle_fits, short_cycle_lr


def _data(n: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    return torch.randn(n, 4, generator=g) + y.float().unsqueeze(1), y


def _net() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    return net


@pytest.mark.parametrize(("rows", "epochs", "pct_start"),
                         [(100, 1, 0.25), (32, 1, 0.25), (64, 2, 0.25), (10, 1, 0.1), (96, 1, 1.0)])
def test_short_one_cycle_runs_train(rows: int, epochs: int, pct_start: float) -> None:
    """4 steps at pct_start 0.25 (the `backdoor plant --train-size 100 --epochs 1` crash), 1 step,
    pct_start 1.0 (its decay has no length): every step runs at a positive rate <= lr, the weights move."""
    x, y = _data(rows)
    net, before = _net(), _net()
    res = train_module(net, (x, y), epochs=epochs, batch_size=32,
                       optimization=Optimization(optimizer="adamw", lr=3e-3, schedule="one_cycle",
                                                 pct_start=pct_start))
    assert res.steps == epochs * -(-rows // 32)
    assert all(0.0 < h.lr <= 3e-3 for h in res.history)
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before.parameters(), strict=True))


def test_one_cycle_fits_is_exactly_where_torch_is_defined() -> None:
    """Where one_cycle_fits is True torch's scheduler runs every step; where False it fails or
    skips its warm-up (the rate of step 0 is not the initial max_lr / 25)."""
    for total in range(1, 41):
        for pct in (0.1, 0.25, 0.3, 0.5, 0.9, 1.0):
            opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
            try:
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=pct)
                first = opt.param_groups[0]["lr"]
                for _ in range(total):
                    opt.step()
                    sched.step()
                ok = first == pytest.approx(1.0 / 25)
            except ZeroDivisionError:
                ok = False
            assert one_cycle_fits(total, pct) == ok, (total, pct)


def test_short_cycle_lr_is_a_triangle() -> None:
    rates = [short_cycle_lr(k, 4, 1.0, 0.25) for k in range(4)]
    assert rates == pytest.approx([0.5, 5 / 6, 0.5, 1 / 6])
    assert short_cycle_lr(0, 1, 1.0, 0.25) == pytest.approx(2 / 3)
    assert short_cycle_lr(0, 1, 1.0, 1.0) == pytest.approx(0.5)
    assert all(0 < short_cycle_lr(k, 7, 2.0, 0.4) <= 2.0 for k in range(7))


def test_backdoor_plant_with_four_training_steps_succeeds(tmp_path: Path) -> None:
    """The reported crash: 100 rows, 1 epoch, batch 32 = 4 one-cycle steps (ZeroDivisionError, exit 3)."""
    from typer.testing import CliRunner

    from modelshield.cli.app import app

    out = tmp_path / "plant"
    result = CliRunner().invoke(app, ["--threads", "1", "backdoor", "plant", "--data", "digits",
                                      "--train-size", "100", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file()
