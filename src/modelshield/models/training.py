"""The one supervised training loop: the zoo, adversarial training, extraction and backdoor repair use it.

``train_module`` runs epochs over mini-batches shuffled by a private ``torch.Generator`` (never the
global RNG), minimises a per-batch loss callable (so an adversary can be plugged in), steps an
optimiser built from an ``Optimization`` (SGD, Adam or AdamW, with an optional constant, step,
cosine, cyclic or one-cycle learning-rate schedule), calls an end-of-epoch hook (checkpoints,
roll-back, early stop) and a ``progress`` callback, and restores every submodule's train/eval
flag afterwards. Same seed, same thread count, CPU: bit-identical weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from modelshield._checks import check_choice, check_range
from modelshield._typing import Progress
from modelshield.errors import ConfigError, InputError
from modelshield.models.device import parameter_device

__all__ = [
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "EpochDecision",
    "EpochHook",
    "EpochInfo",
    "EpochRecord",
    "LossFn",
    "Optimization",
    "OptimizerName",
    "ScheduleName",
    "TrainData",
    "TrainResult",
    "cross_entropy_loss",
    "lr_at",
    "make_optimizer",
    "one_cycle_fits",
    "short_cycle_lr",
    "steps_per_epoch",
    "train_module",
]

OptimizerName = Literal["sgd", "adam", "adamw"]
OPTIMIZER_NAMES: tuple[OptimizerName, ...] = ("sgd", "adam", "adamw")
ScheduleName = Literal["constant", "step", "cosine", "cyclic", "one_cycle"]
SCHEDULE_NAMES: tuple[ScheduleName, ...] = ("constant", "step", "cosine", "cyclic", "one_cycle")

TrainData: TypeAlias = tuple[Tensor, Tensor] | DataLoader[Any]
"""``(x, y)`` tensors (shuffled here) or a DataLoader yielding ``(x, y)`` batches (in its order)."""

LossFn: TypeAlias = Callable[[nn.Module, Tensor, Tensor, int, int], Tensor]
"""``loss(model, xb, yb, epoch, step) -> scalar``; ``epoch`` and ``step`` (within the epoch) are 0-based."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Optimization:
    """Optimiser and learning-rate schedule of a training run.

    Args:
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"`` (decoupled weight decay).
        lr: learning rate (the peak rate for ``cyclic`` and ``one_cycle``).
        weight_decay: L2 penalty (``sgd``, ``adam``) or decoupled decay (``adamw``).
        momentum: SGD momentum.
        schedule: ``"constant"``; ``"step"`` (times ``gamma`` every ``step_epochs`` epochs);
            ``"cosine"`` (lr (1 + cos(pi t / epochs)) / 2); ``"cyclic"`` (linear 0 -> lr over the
            first 2/5 of training, then lr -> 0; Wong et al., 2020); ``"one_cycle"`` (torch's
            ``OneCycleLR``, warm-up over ``pct_start`` of the steps, momentum cycled too; a run
            too short for it, see ``one_cycle_fits``, uses ``short_cycle_lr`` instead).
            ``t`` is the time in epochs at the end of each step.
        step_epochs, gamma: the ``step`` schedule's period (epochs) and factor.
        pct_start: the ``one_cycle`` schedule's share of warm-up steps.

    Reference:
        L. N. Smith and N. Topin, "Super-Convergence", arXiv:1708.07120, 2017 (one-cycle);
        I. Loshchilov and F. Hutter, "SGDR", ICLR 2017 (cosine); E. Wong, L. Rice and
        J. Z. Kolter, "Fast is better than free", ICLR 2020 (cyclic).
    """

    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: ScheduleName = "constant"
    step_epochs: int = 1
    gamma: float = 0.1
    pct_start: float = 0.25

    def __post_init__(self) -> None:
        o = "Optimization"
        check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES, owner=o)
        check_range("lr", self.lr, owner=o, low=0.0, low_open=True, fix="Use e.g. lr=1e-3 (Adam).")
        check_range("weight_decay", self.weight_decay, owner=o, low=0.0)
        check_range("momentum", self.momentum, owner=o, low=0.0, high=1.0)
        check_choice("schedule", self.schedule, SCHEDULE_NAMES, owner=o)
        check_range("step_epochs", self.step_epochs, owner=o, low=1, integer=True)
        check_range("gamma", self.gamma, owner=o, low=0.0, high=1.0, low_open=True)
        check_range("pct_start", self.pct_start, owner=o, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochInfo:
    """What the end-of-epoch hook sees.

    Attributes:
        epoch: 0-based index of the epoch just finished. epochs: total epochs of the run.
        loss: mean training loss over the epoch's rows. lr: learning rate of its last step.
        rows: rows trained on in the epoch. steps: optimiser steps so far (all epochs).
        time_s: seconds since the epoch started.
        roll_back: call it to restore the weights and optimiser state of the epoch's start.
    """

    epoch: int
    epochs: int
    loss: float
    lr: float
    rows: int
    steps: int
    time_s: float
    roll_back: Callable[[], None] = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochDecision:
    """What the end-of-epoch hook returns: stop after this epoch, and text for the progress line."""

    stop: bool = False
    note: str = ""


EpochHook: TypeAlias = Callable[[EpochInfo], EpochDecision | None]


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochRecord:
    """One finished epoch: 0-based index, mean loss, last learning rate, rows, time, rolled back."""

    epoch: int
    loss: float
    lr: float
    rows: int
    time_s: float
    rolled_back: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss": self.loss, "lr": self.lr, "rows": self.rows,
                "time_s": round(self.time_s, 4), "rolled_back": self.rolled_back}


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainResult:
    """What ``train_module`` did.

    Attributes:
        history: the epochs run by this call. steps: optimiser steps of this call.
        stopped_early: the hook stopped training before the last epoch.
        time_s: wall time. optimizer: the optimiser (pass it back to continue training).
    """

    history: tuple[EpochRecord, ...]
    steps: int
    stopped_early: bool
    time_s: float
    optimizer: torch.optim.Optimizer = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"history": [h.to_dict() for h in self.history], "steps": self.steps,
                "stopped_early": self.stopped_early, "time_s": round(self.time_s, 4)}


def cross_entropy_loss(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int, step: int) -> Tensor:
    """Mean cross-entropy of model(xb) against (B,) class indices yb (the default loss)."""
    return F.cross_entropy(model(xb), yb)


def lr_at(t: float, epochs: int, lr: float, schedule: ScheduleName, *, step_epochs: int = 1,
          gamma: float = 0.1) -> float:
    """Learning rate at time t (in epochs, 0 <= t <= epochs) of a step-function schedule.

    ``cyclic``: linear 0 -> lr over the first 2/5 of training, then lr -> 0 (Wong et al., 2020);
    ``cosine``: lr * (1 + cos(pi t / epochs)) / 2; ``step``: lr * gamma ** k for the k-th
    ``step_epochs``-long period; ``constant``: lr.

    Raises:
        ConfigError: schedule is ``one_cycle`` (torch's OneCycleLR drives it, step by step).
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * t / epochs))
    if schedule == "step":
        return lr * gamma ** max(math.ceil(t / step_epochs) - 1, 0)
    if schedule == "one_cycle":
        raise ConfigError("lr_at: 'schedule' must be a step function of time; got 'one_cycle'. "
                          "Use torch.optim.lr_scheduler.OneCycleLR for its rates.")
    peak = epochs * 2 / 5
    if t <= peak:
        return lr * t / peak
    return lr * max(epochs - t, 0.0) / (epochs - peak)


def one_cycle_fits(total_steps: int, pct_start: float) -> bool:
    """Whether torch's ``OneCycleLR`` is defined for a run of total_steps optimiser steps.

    ``OneCycleLR`` ends its warm-up at step ``pct_start * total_steps - 1`` and interpolates each
    phase over its length in steps; it divides by zero when the warm-up ends at step 0 (e.g. 4
    steps with ``pct_start=0.25``) or the decay has no length (``pct_start=1``), and skips the
    warm-up when it would end before step 0 (fewer than ``1 / pct_start`` steps). It fits when
    the warm-up ends after step 0 and before the last step; the formula is torch's own.
    """
    warm_end = float(pct_start * total_steps) - 1  # OneCycleLR's first phase end_step
    return warm_end > 0 and (total_steps - 1) - warm_end > 0


def short_cycle_lr(step: int, total_steps: int, lr: float, pct_start: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of a one-cycle run too short for torch's.

    The triangular one-cycle (Smith and Topin, 2017): linear warm-up 0 -> lr over the first
    ``pct_start`` of training, then linear decay lr -> 0, sampled at the step's midpoint
    ``s = (step + 1/2) / total_steps``: ``lr s / pct_start`` while ``s <= pct_start``, else
    ``lr (1 - s) / (1 - pct_start)``. Defined, positive and at most lr for every
    ``total_steps >= 1`` (a single step trains at ``lr / (2 max(pct_start, 1 - pct_start))``);
    momentum is not cycled. ``train_module`` uses it when ``one_cycle_fits`` is False.
    """
    s = (step + 0.5) / total_steps
    if s <= pct_start:
        return lr * s / pct_start
    return lr * (1.0 - s) / (1.0 - pct_start)


def make_optimizer(module: nn.Module, optimization: Optimization, *, owner: str) -> torch.optim.Optimizer:
    """The optimiser of ``optimization`` over module's trainable parameters.

    Raises:
        ConfigError: the module has no parameter with ``requires_grad``.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"{owner}: the model must have trainable parameters; got none with requires_grad. "
            "Unfreeze the parameters to train (p.requires_grad_(True))."
        )
    o = optimization
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def steps_per_epoch(data: TrainData, batch_size: int, *, owner: str) -> int:
    """Batches per epoch: ``ceil(N / batch_size)`` for tensors, ``len(loader)`` for a DataLoader.

    Raises:
        InputError: the DataLoader has no length (an iterable dataset).
    """
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError as exc:
            raise InputError(
                f"{owner}: the DataLoader must have a length (a map-style dataset); got an iterable "
                "dataset without __len__. Wrap the data in a TensorDataset or pass (x, y) tensors."
            ) from exc
    return math.ceil(int(data[0].shape[0]) / batch_size)


def _check_data(data: object, module: nn.Module, owner: str) -> TrainData:
    if isinstance(data, DataLoader):
        return data
    if not (isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise InputError(
            f"{owner}: the training data must be a pair of tensors (x, y) or a DataLoader yielding "
            f"(x, y) batches; got {type(data).__name__}. Pass e.g. (x_train, y_train)."
        )
    x, y = data
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{owner}: x and y must have one row per example; got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}. Pass as many targets as inputs."
        )
    device = parameter_device(module)
    if device is not None and (x.device != device or y.device != device):
        raise InputError(
            f"{owner}: the training data must be on the model's device {device}; got x on {x.device} "
            f"and y on {y.device}. Move them with x.to({str(device)!r}), y.to({str(device)!r})."
        )
    return (x, y)


def _batches(data: TrainData, batch_size: int, gen: torch.Generator, owner: str
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of (xb, yb): a fresh permutation from gen, or the DataLoader's own order."""
    if isinstance(data, DataLoader):
        for batch in data:
            if not (isinstance(batch, tuple | list) and len(batch) >= 2):
                raise InputError(
                    f"{owner}: the DataLoader must yield (x, y) pairs; got "
                    f"{type(batch).__name__}. Use a TensorDataset(x, y) or return (x, y) from it."
                )
            yield batch[0], batch[1]
        return
    x, y = data
    n = int(x.shape[0])
    order = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train_module(
    module: nn.Module,
    data: TrainData,
    *,
    epochs: int,
    batch_size: int = 128,
    loss: LossFn = cross_entropy_loss,
    optimization: Optimization = Optimization(),  # frozen, so a safe default
    optimizer: torch.optim.Optimizer | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    start_epoch: int = 0,
    on_epoch: EpochHook | None = None,
    progress: Progress | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    label: str = "",
    owner: str = "train_module",
) -> TrainResult:
    """Train module in place on data, minimising ``loss`` batch by batch; return what was done.

    Each epoch draws a permutation of the rows from the generator (``(x, y)`` tensors; a
    DataLoader keeps its own order), and for each batch computes ``loss(module, xb, yb, epoch,
    step)`` with the module in training mode (the loss may switch to eval mode inside, e.g. for an
    adversary), then takes one optimiser step; ``yb`` is any per-row target (class indices,
    probabilities, row indices...). After each epoch ``on_epoch(EpochInfo)`` may write a
    checkpoint, roll the weights back to the epoch's start (``info.roll_back()``) or stop
    training (``EpochDecision(stop=True)``). Every submodule's train/eval flag is restored and
    the parameters' ``.grad`` are freed at the end, even on error. The module is never moved:
    the data must be on its device.

    Args:
        module: the model, trained in place.
        data: ``(x, y)`` tensors on the module's device, or a DataLoader of ``(x, y)`` batches.
        epochs: total epochs of the run (>= 1).
        batch_size: rows per batch for tensor data.
        loss: ``(model, xb, yb, epoch, step) -> scalar tensor`` (default: cross-entropy).
        optimization: optimiser and schedule; builds the optimiser unless ``optimizer`` is given.
        optimizer: an optimiser to continue with (e.g. restored from a checkpoint, or from an
            earlier call's result); its learning rate is still set by ``optimization.schedule``.
        seed: shuffling seed (None: fresh entropy, not reproducible); ignored when
            ``generator`` is given.
        generator: the shuffling generator, shared with the caller (e.g. with an adversary's
            random starts); it advances by one permutation per epoch.
        start_epoch: epochs already done (resume); the schedule continues from there.
        on_epoch: end-of-epoch hook; a copy of the weights and optimiser state is kept at each
            epoch's start so that it can roll back.
        progress: ``progress(done, total, message)``, ``done`` counting batches: every 20
            batches and after each epoch (after the hook).
        progress_offset, progress_total: where ``done`` starts and the ``total`` to report
            (default: the batches of all ``epochs``).
        label: prefix of the progress messages (e.g. ``"teacher "``).
        owner: the name errors are reported under.

    Returns:
        The TrainResult (history, steps, stopped_early, time_s, optimizer).

    Raises:
        ConfigError: epochs, batch_size or start_epoch out of range; no trainable parameters;
            a one-cycle schedule resumed.
        InputError: malformed data, or data not on the module's device.

    Example:
        result = train_module(net, (x, y), epochs=5, optimization=Optimization(lr=1e-3))
        result.history[-1].loss
    """
    started = time.perf_counter()
    check_range("epochs", epochs, owner=owner, low=1, integer=True)
    check_range("batch_size", batch_size, owner=owner, low=1, integer=True)
    check_range("start_epoch", start_epoch, owner=owner, low=0, high=epochs, integer=True)
    data = _check_data(data, module, owner)
    per_epoch = steps_per_epoch(data, batch_size, owner=owner)
    if generator is None:
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    opt = optimizer if optimizer is not None else make_optimizer(module, optimization, owner=owner)
    o = optimization
    scheduler: torch.optim.lr_scheduler.OneCycleLR | None = None
    short_cycle = False
    if o.schedule == "one_cycle" and start_epoch < epochs:
        if start_epoch:
            raise ConfigError(f"{owner}: 'start_epoch' must be 0 with a one_cycle schedule; got "
                              f"{start_epoch}. Use a cosine or cyclic schedule to resume training.")
        if one_cycle_fits(per_epoch * epochs, o.pct_start):
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=o.lr, total_steps=per_epoch * epochs, pct_start=o.pct_start)
        else:  # too few steps for torch's OneCycleLR (it would divide by zero): the triangle
            short_cycle = True
    stepwise = o.schedule not in ("constant", "one_cycle")
    total = progress_total if progress_total is not None else per_epoch * epochs
    done = progress_offset + start_epoch * per_epoch
    history: list[EpochRecord] = []
    steps, stopped = 0, False
    modes = [(m, m.training) for m in module.modules()]
    try:
        for epoch in range(start_epoch, epochs):
            epoch_start = time.perf_counter()
            saved = ((copy.deepcopy(module.state_dict()), copy.deepcopy(opt.state_dict()))
                     if on_epoch is not None else None)
            loss_sum, seen, lr = 0.0, 0, o.lr
            tag = f"{label}epoch {epoch + 1}/{epochs}"
            module.train()
            for i, (xb, yb) in enumerate(_batches(data, batch_size, generator, owner)):
                if stepwise:
                    lr = lr_at(epoch + (i + 1) / per_epoch, epochs, o.lr, o.schedule,
                               step_epochs=o.step_epochs, gamma=o.gamma)
                if short_cycle:
                    lr = short_cycle_lr(epoch * per_epoch + i, per_epoch * epochs, o.lr, o.pct_start)
                if stepwise or short_cycle:
                    for group in opt.param_groups:
                        group["lr"] = lr
                value = loss(module, xb, yb, epoch, i)
                opt.zero_grad(set_to_none=True)
                value.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped in torch
                lr = float(opt.param_groups[0]["lr"])
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                n_b = int(xb.shape[0])
                loss_sum += float(value.detach()) * n_b
                seen += n_b
                done += 1
                steps += 1
                if progress is not None and done % 20 == 0 and i + 1 < per_epoch:
                    progress(done, total, f"{tag}: loss {loss_sum / seen:.4f}")
            rolled = [False]

            def roll_back(saved: Any = saved, rolled: list[bool] = rolled) -> None:
                module.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
                rolled[0] = True

            mean = loss_sum / max(seen, 1)
            decision: EpochDecision | None = None
            if on_epoch is not None:
                decision = on_epoch(EpochInfo(
                    epoch=epoch, epochs=epochs, loss=mean, lr=lr, rows=seen,
                    steps=start_epoch * per_epoch + steps, time_s=time.perf_counter() - epoch_start,
                    roll_back=roll_back))
            decision = decision if decision is not None else EpochDecision()
            history.append(EpochRecord(epoch=epoch, loss=mean, lr=lr, rows=seen,
                                       time_s=time.perf_counter() - epoch_start, rolled_back=rolled[0]))
            if progress is not None:
                progress(done, total, f"{tag} done: loss {mean:.4f}{decision.note}")
            if decision.stop:
                stopped = epoch + 1 < epochs
                break
    finally:
        for m, flag in modes:
            m.training = flag
        for p in module.parameters():
            p.grad = None
    return TrainResult(history=tuple(history), steps=steps, stopped_early=stopped,
                       time_s=time.perf_counter() - started, optimizer=opt)
