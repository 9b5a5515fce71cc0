"""What adversarial training, distillation and noise training add to the one training loop.

The loop (seeded shuffling, optimiser, schedule, flags restored) is ``modelshield.models.train_module``;
this module owns the trainers' side: data checks (tensors or a DataLoader, device, bounds), the
per-epoch records (clean/adversarial accuracy), atomic per-epoch checkpoints and bit-identical resume.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from modelshield._checks import check_inputs
from modelshield._typing import Progress
from modelshield.defenses.mode import require_same_device
from modelshield.defenses.training.distributed import (
    DistState,
    ShardedBatches,
    all_reduce_sums,
    broadcast_from_main,
    epoch_generator_seed,
    shard_loader,
)
from modelshield.errors import ConfigError, DataError, InputError
from modelshield.models import parameter_device
from modelshield.models.training import (
    EpochDecision,
    EpochInfo,
    Optimization,
    lr_at,
    make_optimizer,
    steps_per_epoch,
    train_module,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochEnd",
    "LoopConfig",
    "LoopOutcome",
    "OptimizerName",
    "Progress",
    "Schedule",
    "StepOutput",
    "TrainData",
    "check_train_data",
    "check_val_data",
    "lr_at",
    "train_loop",
]

TrainData: TypeAlias = DataLoader[Any] | tuple[Tensor, Tensor]

"""progress(done, total, message): ``done`` counts batches; called every 20 batches and after
each epoch (once its checkpoint is written)."""
Schedule = Literal["constant", "cyclic", "cosine"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "cyclic", "cosine")
OptimizerName = Literal["adam", "sgd"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("adam", "sgd")

CHECKPOINT_FORMAT = "modelshield-training-checkpoint-v1"
CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopConfig:
    """Optimisation settings of one training run (validated by the public trainers)."""

    owner: str
    epochs: int
    lr: float
    optimizer: OptimizerName
    weight_decay: float
    schedule: Schedule
    batch_size: int
    seed: int


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one batch step returns: the loss to minimise and per-batch correct counts."""

    loss: Tensor
    clean_correct: int
    adv_correct: int


@dataclass(frozen=True, slots=True)
class EpochEnd:
    """What the end-of-epoch hook returns: extra record fields, and whether to stop/roll back."""

    extra: dict[str, Any] = field(default_factory=dict)
    stop: bool = False
    rollback: bool = False


@dataclass(frozen=True, slots=True)
class LoopOutcome:
    history: list[dict[str, Any]]
    resumed_from: int
    stopped_early: bool
    time_s: float
    checkpoint: str | None


def check_train_data(
    data: object, *, owner: str, device: torch.device | None, bounds: tuple[float, float] | None,
    name: str = "train_data",
) -> TrainData:
    """Validate (x, y) tensors (or the type of a DataLoader) and return the data unchanged."""
    if isinstance(data, DataLoader):
        return data
    if not (isinstance(data, tuple | list) and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)):
        raise InputError(
            f"{owner}: {name!r} must be a torch DataLoader yielding (x, y) batches or a pair of "
            f"tensors (x, y); got {type(data).__name__}. Pass e.g. (x_train, y_train)."
        )
    x, y = data
    check_batch_tensors(x, y, owner=owner, device=device, bounds=bounds, what=name)
    return (x, y)



def check_val_data(
    data: object, *, owner: str, device: torch.device | None, bounds: tuple[float, float] | None
) -> tuple[Tensor, Tensor] | None:
    """A held-out ``(x, y)`` pair checked like training data (None passes through).

    Raises:
        ConfigError: a DataLoader was given (validation needs a small tensor pair).
        InputError: malformed, outside bounds, or not on the model's device.
    """
    if data is None:
        return None
    vd = check_train_data(data, owner=owner, device=device, bounds=bounds, name="val_data")
    if isinstance(vd, DataLoader):
        raise ConfigError(f"{owner}: 'val_data' must be a pair of tensors (x, y); got a "
                          "DataLoader. Pass a small held-out (x, y) set.")
    return vd

def check_batch_tensors(
    x: Tensor, y: Tensor, *, owner: str, device: torch.device | None,
    bounds: tuple[float, float] | None, what: str,
) -> None:
    """Device first (a meta tensor cannot be inspected), then dtype/shape/finite/bounds and labels."""
    require_same_device(x, device, owner=owner, what=f"{what} x")
    require_same_device(y, device, owner=owner, what=f"{what} y")
    if bounds is not None:
        check_inputs(x, bounds=bounds, owner=owner)
    elif not x.is_floating_point():
        raise InputError(f"{owner}: {what} x must be a floating-point tensor; got dtype {x.dtype}. "
                         "Convert with x.float().")
    if y.is_floating_point() or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"{owner}: {what} y must be ({x.shape[0]},) integer class indices; got dtype {y.dtype}, "
            f"shape {tuple(y.shape)}. Pass one class index per row (one-hot: y.argmax(1))."
        )


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, owner: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise DataError(
            f"{owner}: the checkpoint {str(path)!r} must be a modelshield training checkpoint "
            f"loadable with weights_only=True; reading it failed ({type(exc).__name__}: {exc}). "
            "Delete it to start afresh, or point checkpoint_dir to another folder."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{owner}: the checkpoint {str(path)!r} must have format {CHECKPOINT_FORMAT!r}; got "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}. "
            "Delete it to start afresh, or point checkpoint_dir to another folder."
        )
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{owner}: resume needs the same settings and data size as the interrupted run; the "
            f"checkpoint {str(path)!r} was written with {state.get('fingerprint')!r}, this run has "
            f"{fingerprint!r}. Use the original settings, or another checkpoint_dir."
        )
    return state


def _read_start(path: Path | None, owner: str, fingerprint: dict[str, Any],
                resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start afresh), checked against this run's settings."""
    if path is None or not path.exists():
        return None
    if not resume:
        raise ConfigError(
            f"{owner}: checkpoint_dir must not hold a checkpoint unless resume=True; found "
            f"{str(path)!r}. Pass resume=True to continue that run, or use an empty folder."
        )
    return _load_checkpoint(path, owner, fingerprint)


def train_loop(
    module: nn.Module,
    data: TrainData,
    cfg: LoopConfig,
    *,
    step: Callable[[Tensor, Tensor, float, torch.Generator], StepOutput],
    epoch_end: Callable[[int, list[dict[str, Any]]], EpochEnd] | None = None,
    bounds: tuple[float, float] | None,
    fingerprint: dict[str, Any],
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    phase: str = "",
    dist: DistState | None = None,
) -> LoopOutcome:
    """Train module in place with ``step(x, y, t, generator)``; ``t`` is the time in epochs.

    The loop itself is ``modelshield.models.train_module``; this adds the trainers' records,
    checkpoints and resume. The module is in training mode during ``step`` (which may switch to
    eval mode inside, e.g. for an adversary); every submodule's flag is restored at the end, even
    on error. ``step`` draws from the generator that shuffles the batches. After each epoch
    ``epoch_end(epoch, history)`` may add fields, stop, or roll the weights back to the previous
    epoch; then the checkpoint is written (atomically) and ``progress`` is called.

    With ``dist`` (a torch.distributed run, ``data`` the full (x, y) tensors on every rank) the
    module given to ``train_module`` is ``dist.wrapped`` (DistributedDataParallel): each epoch's
    permutation is drawn from ``seed`` and the epoch (every rank draws the same one), each global
    batch of ``batch_size`` rows is split row-wise between the ranks (DistributedSampler's
    interleaving, per-rank batch ``batch_size / world_size``) and each rank's loss is weighted by
    its share of the global batch, so DDP's gradient average is the one-process batch mean. The
    step's generator is reseeded at each epoch from (seed, epoch, rank), so a resume needs no
    per-rank generator state. The epoch records are all-reduced; ``epoch_end`` runs on rank 0
    only and its decision is broadcast; only rank 0 writes the checkpoint, which rank 0 reads on
    resume and broadcasts to the others.
    """
    device = parameter_device(module)
    loader = isinstance(data, DataLoader)
    n_rows = 0
    sampler: ShardedBatches | None = None
    if dist is not None:
        if isinstance(data, DataLoader):
            raise ConfigError(f"{cfg.owner}: distributed training needs the training data as (x, y) "
                              "tensors (each rank takes its shard); got a DataLoader. Pass tensors.")
        n_rows = int(data[0].shape[0])
        data, sampler = shard_loader(data, cfg.batch_size, rank=dist.rank,
                                     world_size=dist.world_size, seed=cfg.seed)
        loader = False  # rows already checked, as tensors
    per_epoch = steps_per_epoch(data, cfg.batch_size, owner=cfg.owner)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)
    optimization = Optimization(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                schedule=cfg.schedule)
    optimizer = make_optimizer(module, optimization, owner=cfg.owner)
    history: list[dict[str, Any]] = []
    start_epoch, stopped = 0, False
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    state: dict[str, Any] | None = None
    if dist is None:
        state = _read_start(path, cfg.owner, fingerprint, resume)
    else:  # rank 0 reads (its folder need not be shared); every rank gets the state or the error
        found: tuple[dict[str, Any] | None, Exception | None] = (None, None)
        if dist.rank == 0:
            try:
                found = (_read_start(path, cfg.owner, fingerprint, resume), None)
            except (ConfigError, DataError) as exc:
                found = (None, exc)
        state, error = broadcast_from_main(found, dist)
        if error is not None:
            raise error
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        history = [dict(h) for h in state["history"]]
        start_epoch, stopped = int(state["epoch"]), bool(state["stopped"])
    resumed_from = start_epoch
    counts = [0, 0]  # this epoch's clean and adversarial correct predictions
    sums = [0.0, 0]  # distributed: this rank's summed per-row loss and real rows
    if sampler is not None:
        sampler.set_epoch(start_epoch)

    def loss(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int, i: int) -> Tensor:
        if loader:
            check_batch_tensors(xb, yb, owner=cfg.owner, device=device, bounds=bounds, what="batch")
        if dist is None:
            out = step(xb, yb.long(), epoch + i / per_epoch, gen)
            counts[0] += out.clean_correct
            counts[1] += out.adv_correct
            return out.loss
        if i == 0:
            gen.manual_seed(epoch_generator_seed(cfg.seed, epoch, dist.rank))
        n_global = min(cfg.batch_size, n_rows - i * cfg.batch_size)
        n_local = len(range(dist.rank, n_global, dist.world_size))  # 0: a stand-in row, weight 0
        out = step(xb, yb.long(), epoch + i / per_epoch, gen)
        if n_local:
            counts[0] += out.clean_correct
            counts[1] += out.adv_correct
            sums[0] += float(out.loss.detach()) * n_local
            sums[1] += n_local
        weighted: Tensor = out.loss * (n_local * dist.world_size / n_global)
        return weighted

    def on_epoch(info: EpochInfo) -> EpochDecision:
        nonlocal stopped
        hook_start = time.perf_counter()
        mean_loss, rows_f = info.loss, float(max(info.rows, 1))
        if dist is not None:
            loss_sum, n, clean, adv = all_reduce_sums([sums[0], sums[1], counts[0], counts[1]], dist)
            mean_loss, rows_f = loss_sum / max(n, 1.0), max(n, 1.0)
            counts[:] = [int(clean), int(adv)]
            sums[:] = [0.0, 0]
            if sampler is not None:
                sampler.set_epoch(info.epoch + 1)
        record: dict[str, Any] = {
            "epoch": info.epoch + 1,
            "loss": mean_loss,
            "train_clean_accuracy": counts[0] / rows_f,
            "train_adv_accuracy": counts[1] / rows_f,
            "lr": info.lr,
        }
        counts[:] = [0, 0]
        if dist is None:
            end = epoch_end(info.epoch, history) if epoch_end is not None else EpochEnd()
        else:  # evaluated once, on rank 0; every rank follows its decision
            mine = epoch_end(info.epoch, history) if epoch_end is not None and dist.rank == 0 else None
            end = broadcast_from_main(mine, dist) or EpochEnd()
        record.update(end.extra)
        if end.rollback:
            info.roll_back()
            record["rolled_back"] = True
        record["time_s"] = info.time_s + time.perf_counter() - hook_start
        history.append(record)
        stopped = end.stop
        if path is not None and (dist is None or dist.rank == 0):
            _atomic_save({
                "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": info.epoch + 1,
                "stopped": stopped, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(), "history": history,
            }, path)
        val = "".join(f", {label} {record[key]:.3f}" for key, label in (
            ("val_clean_accuracy", "val clean"), ("val_robust_accuracy", "val robust"))
            if record.get(key) is not None)
        return EpochDecision(stop=stopped,
                             note=f", adv acc {record['train_adv_accuracy']:.3f}{val}")

    with warnings.catch_warnings():
        # DDP compares a gradient's strides with its bucket's, size-1 dimensions included: a
        # 1-channel conv weight's gradient (strides 9, 1, 3, 1 against 9, 9, 3, 1) is reported,
        # though the layouts are the same. A performance note only, raised once per run.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        result = train_module(
            dist.wrapped if dist is not None else module, data, epochs=cfg.epochs,
            batch_size=cfg.batch_size, loss=loss,
            optimization=optimization, optimizer=optimizer, generator=gen,
            start_epoch=cfg.epochs if stopped else start_epoch, on_epoch=on_epoch,
            progress=progress if dist is None or dist.rank == 0 else None,
            progress_offset=progress_offset, progress_total=progress_total, label=phase, owner=cfg.owner,
        )
    return LoopOutcome(history=history, resumed_from=resumed_from, stopped_early=stopped,
                       time_s=result.time_s, checkpoint=str(path) if path is not None else None)
