"""Adversarial training: PGD (Madry et al.), TRADES (Zhang et al.) and fast FGSM (Wong et al.)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from modelshield._checks import check_bounds, check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.fgsm import FGSM
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.ops import ce_loss
from modelshield.defenses.training._inner import maximize_loss
from modelshield.defenses.training.distributed import join_process_group
from modelshield.defenses.training.engine import (
    OPTIMIZERS,
    SCHEDULES,
    EpochEnd,
    LoopConfig,
    LoopOutcome,
    OptimizerName,
    Progress,
    Schedule,
    StepOutput,
    TrainData,
    check_batch_tensors,
    check_train_data,
    check_val_data,
    train_loop,
)
from modelshield.defenses.training.trades import trades_adversary, trades_loss
from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.models import TorchModel, eval_mode, parameter_device

__all__ = [
    "METHODS",
    "OVERFIT_COLLAPSE_GAP",
    "OVERFIT_DROP",
    "OVERFIT_GAP",
    "OVERFIT_RISE",
    "AdversarialTrainer",
    "EpochStats",
    "Method",
    "TrainingReport",
    "detect_catastrophic_overfitting",
    "epoch_overfits",
]

Method = Literal["pgd", "trades", "fast"]
METHODS: tuple[Method, ...] = ("pgd", "trades", "fast")

OVERFIT_DROP = 0.2
"""Catastrophic overfitting: PGD accuracy on the check batch falls this far below its best so far..."""
OVERFIT_GAP = 0.2
"""...while FGSM accuracy on the same batch stays at least this far above it (Wong et al., 2020)."""
OVERFIT_COLLAPSE_GAP = 0.5
"""Catastrophic overfitting from the start: FGSM accuracy this far above PGD accuracy in any
epoch, whatever the history (a fast-trained MNIST model at eps 0.3 showed FGSM 97% / PGD 2%
from its first epoch, so no later drop could be seen)..."""
OVERFIT_RISE = 0.05
"""...unless PGD accuracy is rising: more than this above its best so far (about two standard
errors on the 256-image check batch). A healthy fast run on MNIST at eps 0.3 showed FGSM 73% /
PGD 20% in its second epoch, up from PGD 6%, and went on to 72% PGD accuracy."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochStats:
    """One epoch of training.

    Attributes:
        epoch: 1-based epoch number.
        loss: mean training loss over the epoch.
        train_clean_accuracy, train_adv_accuracy: accuracy on the training batches, clean and on
            the training adversary's inputs (noisy inputs for noise training), as seen while training.
        lr: learning rate at the end of the epoch. eps: training eps at the end of the epoch.
        time_s: wall time of the epoch, evaluation included.
        check_fgsm_accuracy, check_pgd_accuracy: accuracy under FGSM and PGD on the held-out
            check batch at the epoch's training eps (the full eps after any warm-up): the
            catastrophic-overfitting monitor; None when not measured.
        val_clean_accuracy, val_robust_accuracy: on ``val_data`` (PGD at eps); None without it.
        catastrophic_overfitting: this epoch showed catastrophic overfitting.
        rolled_back: the epoch's weight update was undone (training stopped here).
    """

    epoch: int
    loss: float
    train_clean_accuracy: float
    train_adv_accuracy: float
    lr: float
    time_s: float
    eps: float | None = None
    check_fgsm_accuracy: float | None = None
    check_pgd_accuracy: float | None = None
    val_clean_accuracy: float | None = None
    val_robust_accuracy: float | None = None
    catastrophic_overfitting: bool = False
    rolled_back: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingReport:
    """What a training run did, epoch by epoch.

    Attributes:
        method: ``"pgd"``, ``"trades"``, ``"fast"``, ``"noise"`` (Gaussian noise training) or
            ``"distillation-teacher"`` / ``"distillation-student"``.
        params: the trainer's configuration (provenance).
        epochs: per-epoch statistics (resumed runs include the epochs loaded from the checkpoint).
        time_s: wall time of this call (epochs loaded from a checkpoint are not re-timed).
        resumed_from: number of finished epochs loaded from a checkpoint (0 for a fresh run).
        stopped_early: training stopped before the last epoch (catastrophic overfitting).
        overfitting_epoch: first epoch (1-based) flagged for catastrophic overfitting, or None.
        checkpoint: path of the checkpoint file, or None.
    """

    method: str
    params: dict[str, Any]
    epochs: tuple[EpochStats, ...]
    time_s: float
    resumed_from: int = 0
    stopped_early: bool = False
    overfitting_epoch: int | None = None
    checkpoint: str | None = None

    @property
    def catastrophic_overfitting(self) -> bool:
        return self.overfitting_epoch is not None

    @property
    def train_time_s(self) -> float:
        """Summed epoch times (including epochs finished before a resume)."""
        return sum(e.time_s for e in self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {
            "method": self.method,
            "params": self.params,
            "epochs": [asdict(e) for e in self.epochs],
            "time_s": round(self.time_s, 4),
            "train_time_s": round(self.train_time_s, 4),
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped_early,
            "catastrophic_overfitting": self.catastrophic_overfitting,
            "overfitting_epoch": self.overfitting_epoch,
            "checkpoint": self.checkpoint,
        }


def report_from(method: str, params: dict[str, Any], outcome: LoopOutcome) -> TrainingReport:
    """Build a TrainingReport from the loop's history (plain dicts)."""
    names = {f.name for f in fields(EpochStats)}
    stats = tuple(EpochStats(**{k: v for k, v in h.items() if k in names}) for h in outcome.history)
    flagged = [s.epoch for s in stats if s.catastrophic_overfitting]
    return TrainingReport(
        method=method, params=params, epochs=stats, time_s=outcome.time_s,
        resumed_from=outcome.resumed_from, stopped_early=outcome.stopped_early,
        overfitting_epoch=flagged[0] if flagged else None, checkpoint=outcome.checkpoint,
    )


def detect_catastrophic_overfitting(
    pgd_accuracy: Sequence[float],
    fgsm_accuracy: Sequence[float],
    *,
    drop: float = OVERFIT_DROP,
    gap: float = OVERFIT_GAP,
    collapse_gap: float = OVERFIT_COLLAPSE_GAP,
    rise: float = OVERFIT_RISE,
) -> int | None:
    """The first epoch index (0-based) showing catastrophic overfitting, or None.

    Epoch e is flagged when its PGD accuracy on the check batch fell more than ``drop`` below
    the best PGD accuracy of the earlier epochs while its FGSM accuracy is more than ``gap``
    above its PGD accuracy: the model has learnt to defeat the single-step attack it trains on
    (a distorted, locally non-linear loss surface) and lost its robustness to iterative attacks.
    Any epoch (the first included) whose FGSM accuracy exceeds its PGD accuracy by more than
    ``collapse_gap`` is flagged too (a model can overfit before PGD accuracy ever rises), unless
    its PGD accuracy is more than ``rise`` above the earlier best (still learning robustness).

    Reference: Wong, Rice and Kolter, "Fast is better than free: Revisiting adversarial
    training", ICLR 2020 (arXiv:2001.03994), Section 5.
    """
    if len(pgd_accuracy) != len(fgsm_accuracy):
        raise ConfigError(
            "detect_catastrophic_overfitting: 'pgd_accuracy' and 'fgsm_accuracy' must have the same "
            f"length; got {len(pgd_accuracy)} and {len(fgsm_accuracy)}. Pass one value per epoch."
        )
    best: float | None = None
    for e, (p, f) in enumerate(zip(pgd_accuracy, fgsm_accuracy, strict=True)):
        if epoch_overfits(best, p, f, drop=drop, gap=gap, collapse_gap=collapse_gap, rise=rise):
            return e
        best = p if best is None else max(best, p)
    return None


def epoch_overfits(
    best_pgd: float | None,
    pgd: float,
    fgsm: float,
    *,
    drop: float = OVERFIT_DROP,
    gap: float = OVERFIT_GAP,
    collapse_gap: float = OVERFIT_COLLAPSE_GAP,
    rise: float = OVERFIT_RISE,
) -> bool:
    """Whether one epoch with check-batch accuracies ``pgd`` and ``fgsm`` shows catastrophic
    overfitting, given the best PGD accuracy of the earlier epochs (None for the first epoch).

    Overfit: PGD accuracy fell more than ``drop`` below its best while FGSM stays ``gap`` above
    it, or FGSM is more than ``collapse_gap`` above PGD while PGD accuracy is not rising (not
    more than ``rise`` above its best; always "not rising" in the first epoch). The per-epoch
    rule of ``detect_catastrophic_overfitting``.
    """
    fell = best_pgd is not None and pgd < best_pgd - drop and fgsm - pgd > gap
    rising = best_pgd is not None and pgd > best_pgd + rise
    return fell or (fgsm - pgd > collapse_gap and not rising)


def as_trainable(model: object, *, owner: str) -> nn.Module:
    """The nn.Module inside model (a module or a TorchModel), or ModelCapabilityError."""
    inner = model.module if isinstance(model, TorchModel) else model
    if not isinstance(inner, nn.Module):
        raise ModelCapabilityError(
            f"{owner}: the model must be a torch.nn.Module returning logits; got "
            f"{type(model).__name__}. Training needs a PyTorch model (black-box models cannot be "
            "trained here)."
        )
    return inner


def config_fingerprint(obj: object, data: TrainData, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Plain-typed settings plus the data size: what a resumed run must share with the original."""
    out: dict[str, Any] = {}
    for f in fields(obj):  # type: ignore[arg-type]  # called with dataclass instances only
        if f.name in exclude:
            continue
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    out["data_size"] = len(data) if isinstance(data, DataLoader) else int(data[0].shape[0])
    return out


def json_params(obj: object) -> dict[str, Any]:
    """The dataclass fields of obj, JSON-safe (paths as strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in fields(obj):  # type: ignore[arg-type]  # called with dataclass instances only
        v = getattr(obj, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def check_loop_settings(owner: str, *, epochs: int, lr: float, optimizer: str, weight_decay: float,
                        schedule: str, batch_size: int, seed: int) -> None:
    """Validate the optimisation settings shared by every trainer."""
    check_range("epochs", epochs, owner=owner, low=1, integer=True)
    check_range("lr", lr, owner=owner, low=0.0, low_open=True, fix="Try lr=1e-3 with Adam.")
    check_choice("optimizer", optimizer, OPTIMIZERS, owner=owner)
    check_range("weight_decay", weight_decay, owner=owner, low=0.0)
    check_choice("schedule", schedule, SCHEDULES, owner=owner)
    check_range("batch_size", batch_size, owner=owner, low=1, integer=True)
    check_range("seed", seed, owner=owner, integer=True,
                fix="Training needs an int seed so that runs and resumes are reproducible.")


@dataclass(frozen=True, kw_only=True, slots=True)
class AdversarialTrainer:
    """Adversarial training of a PyTorch classifier: PGD, TRADES or fast FGSM with random start.

    ``"pgd"`` minimises the cross-entropy at PGD points of the eps-ball (``steps`` steps from a
    uniform random start, every step kept, Madry et al. 2018); ``mix`` > 0 adds that share of
    clean cross-entropy. ``"trades"`` minimises CE(f(x), y) + beta * KL(f(x) || f(x')) with x'
    maximising the KL (Zhang et al. 2019). ``"fast"`` uses one FGSM step of 1.25 * eps from a
    uniform random start (Wong et al. 2020) and watches for catastrophic overfitting: after each
    epoch FGSM and PGD accuracy are measured on a held-out check batch at the eps trained on
    so far and, when PGD accuracy collapses while FGSM accuracy stays high, or FGSM accuracy is
    far above PGD accuracy from the start (``epoch_overfits``), the epoch is flagged and
    (``stop_on_overfitting``) its update is undone and training stops. Every method is checked.

    Adversaries are computed with the model in eval mode (BatchNorm statistics are updated only
    by the training forward pass). Randomness (shuffling of tensor data, random starts) comes
    from one private ``torch.Generator`` seeded with ``seed``; the global RNG is never touched.
    With ``checkpoint_dir`` a checkpoint (weights, optimiser, generator state, history) is written
    atomically after every epoch and ``fit(..., resume=True)`` continues from the last finished
    epoch with bit-identical results (for tensor data on the CPU, same thread count). With a
    DataLoader the batch order comes from the loader, so determinism and resume-identity then
    depend on the loader's own ``generator``.

    Args:
        method: ``"pgd"``, ``"trades"`` or ``"fast"``.
        eps: training budget in input units (L-inf: at most the bounds' width).
        norm: ``"inf"`` or ``"2"``.
        steps: inner steps for pgd/trades (fast always uses one).
        step_size: absolute inner step; None means 2.5 * eps / steps (pgd, trades) or
            1.25 * eps (fast).
        beta: TRADES trade-off weight (6 in the paper for CIFAR-10, 1-6 for MNIST).
        mix: share of clean cross-entropy in the pgd/fast loss (0 = adversarial only).
        epochs: training epochs. lr: peak learning rate. optimizer: ``"adam"`` or ``"sgd"``
            (momentum 0.9). weight_decay: L2 weight decay.
        schedule: ``"cyclic"`` (0 -> lr at 2/5 of training -> 0), ``"cosine"`` or ``"constant"``.
        batch_size: rows per batch for tensor data (a DataLoader keeps its own).
        eps_warmup_epochs: eps grows linearly from 0 over this many epochs (0 = off).
        bounds: the input range of the model.
        seed: seed of the private generator.
        checkpoint_dir: folder for ``last.pt``; None disables checkpoints.
        check_size: rows of the catastrophic-overfitting check batch (from ``val_data`` when
            given, else the first training rows).
        eval_steps: PGD steps of the per-epoch check and validation attacks.
        stop_on_overfitting: undo the flagged epoch and stop (Wong et al.'s early stopping).

    Reference: Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018 (arXiv:1706.06083); Zhang,
    Yu, Jiao, Xing, El Ghaoui and Jordan, ICML 2019 (arXiv:1901.08573); Wong, Rice and Kolter,
    "Fast is better than free", ICLR 2020 (arXiv:2001.03994).

    Example:
        trainer = AdversarialTrainer(method="pgd", eps=0.3, steps=40, epochs=10)
        report = trainer.fit(model, (x_train, y_train), val_data=(x_val, y_val))
        report.epochs[-1].val_robust_accuracy
    """

    method: Method = "pgd"
    eps: float
    norm: Norm = "inf"
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0
    mix: float = 0.0
    epochs: int = 10
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    schedule: Schedule = "cyclic"
    batch_size: int = 128
    eps_warmup_epochs: int = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    checkpoint_dir: str | Path | None = None
    check_size: int = 256
    eval_steps: int = 20
    stop_on_overfitting: bool = True

    def __post_init__(self) -> None:
        owner = "AdversarialTrainer"
        check_choice("method", self.method, METHODS, owner=owner)
        check_choice("norm", self.norm, NORMS, owner=owner)
        lo, hi = check_bounds(self.bounds, owner=owner)
        if self.norm == "inf":
            check_range("eps", self.eps, owner=owner, low=0.0, high=hi - lo, low_open=True,
                        fix="Give eps in input units, e.g. eps=0.3 for MNIST in [0, 1].")
        else:
            check_range("eps", self.eps, owner=owner, low=0.0, low_open=True,
                        fix="Give the L2 radius in input units, e.g. eps=2.0 for MNIST.")
        check_range("steps", self.steps, owner=owner, low=1, integer=True)
        if self.step_size is not None:
            check_range("step_size", self.step_size, owner=owner, low=0.0, low_open=True,
                        fix="Use None for the default.")
        check_range("beta", self.beta, owner=owner, low=0.0)
        check_range("mix", self.mix, owner=owner, low=0.0, high=1.0)
        check_loop_settings(owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                            weight_decay=self.weight_decay, schedule=self.schedule,
                            batch_size=self.batch_size, seed=self.seed)
        check_range("eps_warmup_epochs", self.eps_warmup_epochs, owner=owner, low=0, integer=True)
        check_range("check_size", self.check_size, owner=owner, low=1, integer=True)
        check_range("eval_steps", self.eval_steps, owner=owner, low=1, integer=True)

    def _eps_at(self, t: float) -> float:
        if self.eps_warmup_epochs == 0:
            return self.eps
        return self.eps * min(1.0, t / self.eps_warmup_epochs)

    def _adversary(self, m: TorchModel, x: Tensor, y: Tensor, eps: float,
                   gen: torch.Generator) -> Tensor:
        if self.method == "trades":
            step = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
            return trades_adversary(m, x, eps=eps, norm=self.norm, steps=self.steps,
                                    step_size=step, generator=gen)
        steps = 1 if self.method == "fast" else self.steps
        default = 1.25 * eps if self.method == "fast" else 2.5 * eps / self.steps
        step = self.step_size if self.step_size is not None else default
        return maximize_loss(m, x, lambda z: ce_loss(z, y), eps=eps, norm=self.norm, steps=steps,
                             step_size=step, init="uniform", generator=gen)

    def fit(
        self,
        model: nn.Module | TorchModel,
        train_data: TrainData,
        *,
        val_data: tuple[Tensor, Tensor] | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        distributed: bool = False,
    ) -> TrainingReport:
        """Train model in place, adversarially; return the per-epoch report.

        Args:
            model: an ``nn.Module`` returning logits (or a TorchModel wrapping one), on the same
                device as the data. Its train/eval flags are restored afterwards.
            train_data: ``(x, y)`` tensors (shuffled here from ``seed``) or a DataLoader
                yielding ``(x, y)`` batches, inputs within ``bounds``.
            val_data: optional small ``(x, y)`` set: clean and PGD accuracy after every epoch,
                and the catastrophic-overfitting check batch (its first ``check_size`` rows).
            resume: continue from ``checkpoint_dir/last.pt`` when it exists (it must come from
                the same settings and data size); without it an existing checkpoint is an error.
            progress: optional ``progress(done, total, message)`` callback (batches), called
                every 20 batches and after each epoch once its checkpoint is written.
            distributed: this process is one rank of an initialised torch.distributed group
                (torchrun, or ``fit_distributed``); every rank calls fit with the same model
                and full tensor data. The model is wrapped in DistributedDataParallel for the
                training forward passes; each rank trains on its rows of every global batch of
                ``batch_size`` (per-rank batch batch_size / world size), generates their
                adversarial examples itself on the unwrapped module (eval mode, parameters
                frozen, so no DDP hook or all-reduce is involved in the attack's backward
                passes), and DDP averages the parameter gradients (weighted to the one-process
                batch mean). The check and validation attacks run on rank 0, whose decision
                (stop, roll back) every rank follows; only rank 0 writes checkpoints. The
                module's weights end equal on every rank; the report is the same on every rank.
                The random draws differ from a one-process run (per-epoch seeding), so results
                agree within noise, not bit for bit.

        Returns:
            The TrainingReport.

        Raises:
            ModelCapabilityError: model is not a torch module.
            InputError: data malformed, outside bounds, or not on the model's device.
            ConfigError: a checkpoint exists and resume is False, or it came from other settings.
        """
        owner = "AdversarialTrainer"
        module = as_trainable(model, owner=owner)
        device = parameter_device(module)
        data = check_train_data(train_data, owner=owner, device=device, bounds=self.bounds)
        val_data = check_val_data(val_data, owner=owner, device=device, bounds=self.bounds)
        check_x, check_y = self._check_batch(data, val_data)
        cfg = LoopConfig(owner=owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, schedule=self.schedule,
                         batch_size=self.batch_size, seed=self.seed)
        eps_now = [self.eps]
        dist = join_process_group(module, owner=owner) if distributed else None
        net = dist.wrapped if dist is not None else module  # the training forward passes

        def step(xb: Tensor, yb: Tensor, t: float, gen: torch.Generator) -> StepOutput:
            eps = self._eps_at(t)
            eps_now[0] = eps
            m = TorchModel(module, bounds=self.bounds)
            with eval_mode(m):
                clean_pred = m.predict(xb)
                x_adv = self._adversary(m, xb, yb, eps, gen)
            logits_adv = net(x_adv)
            if self.method == "trades":
                loss = trades_loss(net(xb), logits_adv, yb, self.beta)
            elif self.mix > 0:
                loss = ((1 - self.mix) * F.cross_entropy(logits_adv, yb)
                        + self.mix * F.cross_entropy(net(xb), yb))
            else:
                loss = F.cross_entropy(logits_adv, yb)
            return StepOutput(loss, int((clean_pred == yb).sum()),
                              int((logits_adv.detach().argmax(1) == yb).sum()))

        def epoch_end(epoch: int, history: list[dict[str, Any]]) -> EpochEnd:
            pgd = PGD(eps=self.eps, norm=self.norm, steps=self.eval_steps, seed=self.seed + epoch)
            # The overfitting check attacks at the eps trained on so far: during an eps warm-up a
            # model not yet trained at the full eps resists FGSM far better than PGD there, which
            # is not catastrophic overfitting.
            check_pgd = dataclasses.replace(pgd, eps=eps_now[0])
            fgsm_acc = FGSM(eps=eps_now[0], norm=self.norm)(
                TorchModel(module, bounds=self.bounds), check_x, check_y).robust_accuracy
            pgd_acc = check_pgd(TorchModel(module, bounds=self.bounds), check_x, check_y).robust_accuracy
            extra: dict[str, Any] = {"eps": eps_now[0], "check_fgsm_accuracy": fgsm_acc,
                                     "check_pgd_accuracy": pgd_acc}
            if val_data is not None:
                res = pgd(TorchModel(module, bounds=self.bounds), val_data[0], val_data[1])
                extra.update(val_clean_accuracy=res.clean_accuracy,
                             val_robust_accuracy=res.robust_accuracy)
            # Only epochs checked at the same eps are comparable (under a warm-up PGD accuracy
            # falls as the eps grows, by design).
            pgd_hist = [h["check_pgd_accuracy"] for h in history
                        if not h.get("rolled_back") and h.get("eps") == eps_now[0]]
            # This epoch is judged on its own numbers against the earlier epochs' best PGD
            # accuracy; the first epoch is judged too (a model can collapse from the start).
            overfit = epoch_overfits(max(pgd_hist) if pgd_hist else None, pgd_acc, fgsm_acc)
            extra["catastrophic_overfitting"] = overfit
            stop = overfit and self.stop_on_overfitting
            return EpochEnd(extra=extra, stop=stop, rollback=stop)

        fingerprint = config_fingerprint(self, data, exclude=("checkpoint_dir",))
        params = json_params(self)
        if dist is not None:  # a one-process fingerprint stays as before (its checkpoints resume)
            fingerprint["world_size"] = params["world_size"] = dist.world_size
        outcome = train_loop(
            module, data, cfg, step=step, epoch_end=epoch_end, bounds=self.bounds,
            fingerprint=fingerprint, checkpoint_dir=self.checkpoint_dir, resume=resume,
            progress=progress, dist=dist,
        )
        return report_from(self.method, params, outcome)

    def _check_batch(
        self, data: TrainData, val_data: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """The catastrophic-overfitting check batch: val_data's, else the first training rows."""
        if val_data is not None:
            return val_data[0][: self.check_size], val_data[1][: self.check_size].long()
        if isinstance(data, DataLoader):
            xb, yb = next(iter(data))[:2]
            check_batch_tensors(xb, yb, owner="AdversarialTrainer", device=None, bounds=self.bounds,
                                what="batch")
            return xb[: self.check_size], yb[: self.check_size].long()
        return data[0][: self.check_size], data[1][: self.check_size].long()
