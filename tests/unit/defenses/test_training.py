"""Adversarial training, TRADES, fast FGSM, checkpoints/resume and distillation on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelshield.attacks.evasion import PGD
from modelshield.defenses.training import (
    AdversarialTrainer,
    DefensiveDistillation,
    detect_catastrophic_overfitting,
    epoch_overfits,
    lr_at,
    trades_loss,
)
from modelshield.defenses.training.adversarial import Method
from modelshield.defenses.training.engine import CHECKPOINT_NAME
from modelshield.errors import ConfigError, InputError, ModelCapabilityError


def _mlp(seed: int = 0, hidden: int = 32) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.0))
    return net


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


@pytest.mark.parametrize("method", ["pgd", "trades", "fast"])
def test_each_method_buys_robustness(method: Method, digits) -> None:  # type: ignore[no-untyped-def]
    x, y, xt, yt = digits
    plain, robust = _mlp(1), _mlp(1)
    AdversarialTrainer(method="pgd", eps=1e-3, steps=1, epochs=8, lr=5e-3, batch_size=64).fit(
        plain, (x, y))  # (almost) standard training, same budget
    report = AdversarialTrainer(method=method, eps=0.1, steps=5, epochs=8, lr=5e-3,
                                batch_size=64).fit(robust, (x, y), val_data=(xt[:100], yt[:100]))
    assert len(report.epochs) == 8 and report.method == method
    assert robust.training  # the original mode (a fresh module trains) is restored
    plain.eval()
    robust.eval()
    attack = PGD(eps=0.1, steps=20)
    r_plain, r_rob = attack(plain, xt, yt), attack(robust, xt, yt)
    assert r_rob.clean_accuracy > 0.85
    assert r_rob.robust_accuracy > r_plain.robust_accuracy + 0.07
    last = report.epochs[-1]
    assert last.val_robust_accuracy is not None and last.check_pgd_accuracy is not None
    assert report.to_dict()["epochs"][-1]["epoch"] == 8


def test_resume_after_interruption_is_bit_identical(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits[0][:300], digits[1][:300]
    trainer = AdversarialTrainer(method="pgd", eps=0.1, steps=3, epochs=4, lr=5e-3, batch_size=50,
                                 check_size=50, eval_steps=3, checkpoint_dir=tmp_path / "ck")
    per_epoch = 6

    def interrupt(done: int, total: int, message: str) -> None:
        if done == 2 * per_epoch:
            raise KeyboardInterrupt("simulated interruption after epoch 2")

    broken = _mlp(5)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(broken, (x, y), progress=interrupt)
    state = torch.load(tmp_path / "ck" / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    with pytest.raises(ConfigError, match="resume=True"):
        trainer.fit(_mlp(5), (x, y))
    resumed = _mlp(5)  # a fresh process would rebuild the model; the checkpoint restores it
    report = trainer.fit(resumed, (x, y), resume=True)
    assert report.resumed_from == 2 and [e.epoch for e in report.epochs] == [1, 2, 3, 4]

    reference = _mlp(5)
    import dataclasses

    dataclasses.replace(trainer, checkpoint_dir=None).fit(reference, (x, y))
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="same settings"):
        dataclasses.replace(trainer, lr=1e-2).fit(_mlp(5), (x, y), resume=True)


def test_catastrophic_overfitting_detector_on_crafted_history() -> None:
    # Wong et al.'s signature: PGD accuracy collapses in one epoch while FGSM accuracy climbs.
    pgd = [0.30, 0.55, 0.62, 0.05, 0.02]
    fgsm = [0.40, 0.65, 0.70, 0.90, 0.95]
    assert detect_catastrophic_overfitting(pgd, fgsm) == 3
    # Healthy: both rise together; and a PGD dip without the FGSM gap is not overfitting.
    assert detect_catastrophic_overfitting([0.3, 0.5, 0.6, 0.65], [0.4, 0.6, 0.7, 0.72]) is None
    assert detect_catastrophic_overfitting([0.3, 0.6, 0.3], [0.35, 0.65, 0.35]) is None
    # Overfit from the first epoch (no drop to see): FGSM far above PGD is enough.
    assert detect_catastrophic_overfitting([0.02, 0.02], [0.97, 0.97]) == 0
    assert detect_catastrophic_overfitting([0.3, 0.32], [0.75, 0.95]) == 1
    assert detect_catastrophic_overfitting([0.3, 0.32], [0.75, 0.95], collapse_gap=0.7) is None
    # The same gap while PGD accuracy still climbs is early training, unless rise says otherwise.
    assert detect_catastrophic_overfitting([0.3, 0.4], [0.75, 0.95]) is None
    assert detect_catastrophic_overfitting([0.3, 0.4], [0.75, 0.95], rise=0.2) == 1
    with pytest.raises(ConfigError, match="same length"):
        detect_catastrophic_overfitting([0.1], [0.1, 0.2])


def test_fast_training_stops_and_rolls_back_on_overfitting(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import modelshield.defenses.training.adversarial as adv

    x, y = digits[0][:256], digits[1][:256]
    trainer = AdversarialTrainer(method="fast", eps=0.1, epochs=4, batch_size=64, check_size=64,
                                 eval_steps=3)
    net = _mlp(3)
    after_epoch1: dict[str, torch.Tensor] = {}

    def snap(done: int, total: int, message: str) -> None:
        if done == 4:  # 4 batches per epoch: end of epoch 1
            after_epoch1.update({k: v.clone() for k, v in net.state_dict().items()})

    # Every epoch after the first "collapses": the second must be flagged, undone, and stop training.
    monkeypatch.setattr(adv, "epoch_overfits", lambda best, pgd, fgsm, **kw: best is not None)
    report = trainer.fit(net, (x, y), progress=snap)
    assert report.stopped_early and report.catastrophic_overfitting
    assert report.overfitting_epoch == 2 and len(report.epochs) == 2
    assert report.epochs[1].rolled_back and not report.epochs[0].rolled_back
    for k, v in net.state_dict().items():
        assert torch.equal(v, after_epoch1[k])
    assert all(e.check_pgd_accuracy is not None for e in report.epochs)


def test_epoch_overfits_rule() -> None:
    assert epoch_overfits(None, 0.02, 0.97)  # collapsed from the first epoch
    assert not epoch_overfits(None, 0.30, 0.45)
    assert epoch_overfits(0.62, 0.05, 0.90)  # the drop-with-gap rule
    assert not epoch_overfits(0.62, 0.30, 0.35)  # a PGD dip without the FGSM gap
    assert not epoch_overfits(0.62, 0.60, 0.70)
    # Measured on MNIST eps 0.3 (lenet-28, fast): a large FGSM gap while PGD accuracy climbs is
    # early training, not overfitting (that run reached 72% PGD) ...
    assert not epoch_overfits(0.0625, 0.199, 0.734)
    # ... while the same gap with PGD accuracy flat is (that run ended at 0% under the Ensemble).
    assert epoch_overfits(0.035, 0.023, 0.867)
    assert epoch_overfits(0.035, 0.0586, 0.918)


def test_first_epoch_collapse_is_flagged_and_undone(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import modelshield.defenses.training.adversarial as adv

    x, y = digits[0][:256], digits[1][:256]
    trainer = AdversarialTrainer(method="fast", eps=0.1, epochs=3, batch_size=64, check_size=64,
                                 eval_steps=3)
    net = _mlp(4)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    seen: list[float | None] = []

    def collapsed(best: float | None, pgd: float, fgsm: float, **kw: float) -> bool:
        seen.append(best)
        return True

    # A model that collapses in its first epoch (FGSM 97% / PGD 2% on MNIST at eps 0.3) used to
    # go unflagged: the first epoch was never judged.
    monkeypatch.setattr(adv, "epoch_overfits", collapsed)
    report = trainer.fit(net, (x, y))
    assert seen == [None]
    assert report.stopped_early and report.overfitting_epoch == 1 and len(report.epochs) == 1
    assert report.epochs[0].rolled_back
    for k, v in net.state_dict().items():
        assert torch.equal(v, initial[k])


def test_overfitting_check_uses_the_warmed_up_eps(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import modelshield.defenses.training.adversarial as adv

    x, y = digits[0][:256], digits[1][:256]
    trainer = AdversarialTrainer(method="pgd", eps=0.1, steps=2, epochs=3, eps_warmup_epochs=2,
                                 batch_size=64, check_size=64, eval_steps=3)
    used: list[float] = []
    real = adv.FGSM

    def recording(*, eps: float, norm: str) -> object:
        used.append(eps)
        return real(eps=eps, norm=norm)  # type: ignore[arg-type]  # norm is a Norm here

    monkeypatch.setattr(adv, "FGSM", recording)
    report = trainer.fit(_mlp(5), (x, y))
    # Under a warm-up the check attacks at the eps trained on so far, not the final eps (a model
    # not yet trained at 0.1 resists FGSM at 0.1 far better than PGD: that is not overfitting).
    assert used == [e.eps for e in report.epochs]
    assert used[0] < used[1] < 0.1 and used[2] == pytest.approx(0.1)
    assert not report.catastrophic_overfitting


def test_trades_loss_hand_values() -> None:
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(trades_loss(z, z, y, beta=6.0), ce)  # KL(p || p) = 0
    z_adv = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    p = torch.softmax(z[0], 0)
    kl0 = float((p * (p.log() - torch.log(torch.tensor([0.5, 0.5])))).sum())
    assert abs(float(trades_loss(z, z_adv, y, beta=2.0)) - (float(ce) + 2.0 * kl0 / 2)) < 1e-6


def test_lr_schedules() -> None:
    assert lr_at(0.0, 10, 0.1, "cyclic") == 0.0
    assert lr_at(4.0, 10, 0.1, "cyclic") == pytest.approx(0.1)
    assert lr_at(7.0, 10, 0.1, "cyclic") == pytest.approx(0.05)
    assert lr_at(5.0, 10, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(3.0, 10, 0.1, "constant") == 0.1


def test_dataloader_input_and_mode_restored(digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits[0][:128], digits[1][:128]
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    net = _mlp(2).eval()
    report = AdversarialTrainer(method="pgd", eps=0.1, steps=2, epochs=2, check_size=32,
                                eval_steps=2).fit(net, loader)
    assert len(report.epochs) == 2
    assert not any(m.training for m in net.modules())  # eval mode restored
    assert all(p.grad is None for p in net.parameters())


def test_bad_inputs(digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits[0][:64], digits[1][:64]
    with pytest.raises(ConfigError, match="'eps' must be"):
        AdversarialTrainer(eps=0.0)
    with pytest.raises(ConfigError, match="'eps' must be"):
        AdversarialTrainer(eps=1.5)
    with pytest.raises(ConfigError, match="'method' must be"):
        AdversarialTrainer(eps=0.1, method="free")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'beta'"):
        AdversarialTrainer(eps=0.1, beta=-1.0)
    trainer = AdversarialTrainer(eps=0.1, epochs=1)
    with pytest.raises(InputError, match=r"model's device cpu.*meta.*\.to\('cpu'\)"):
        trainer.fit(_mlp(), (x.to("meta"), y))
    loader = DataLoader(TensorDataset(x.to("meta"), y.to("meta")), batch_size=32)
    with pytest.raises(InputError, match="meta"):
        trainer.fit(_mlp(), loader, val_data=(x, y))
    with pytest.raises(InputError, match="outside bounds"):
        trainer.fit(_mlp(), (x * 3, y))
    with pytest.raises(InputError, match="y must be"):
        trainer.fit(_mlp(), (x, y.float()))
    with pytest.raises(ModelCapabilityError, match=r"torch\.nn\.Module"):
        trainer.fit(lambda t: t, (x, y))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="temperature"):
        DefensiveDistillation(temperature=0.0)
    with pytest.raises(ConfigError, match="different module"):
        net = _mlp()
        DefensiveDistillation(epochs=1).fit(net, net, (x, y))


def test_distillation_deploys_at_temperature_one(digits) -> None:  # type: ignore[no-untyped-def]
    x, y, xt, _ = digits
    res = DefensiveDistillation(temperature=50, epochs=30, lr=1e-2, batch_size=64).fit(
        _mlp(2), _mlp(3), (x, y))
    assert res.temperature == 50 and len(res.student_report.epochs) == 30
    with torch.no_grad():
        student, teacher = res.model(xt), res.teacher(xt)
    # Trained through softmax(z / T): deployed raw logits are on the scale of T, not of 1.
    assert float(student.std()) > 5.0 and float(teacher.std()) > 5.0
    # The student learnt the teacher's decisions.
    assert float((student.argmax(1) == teacher.argmax(1)).double().mean()) > 0.8
