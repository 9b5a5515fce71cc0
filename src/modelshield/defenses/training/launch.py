"""Start N local processes for data-parallel adversarial training, or join a torchrun launch.

``fit_distributed`` spawns ``nproc`` processes (``torch.multiprocessing``, spawn start method),
joins them into a process group (gloo on the CPU, NCCL with one GPU per rank) at
``127.0.0.1`` on a free port, runs ``AdversarialTrainer.fit(..., distributed=True)`` on each and
loads rank 0's trained weights back into the caller's model. ``torchrun_env`` reads the
environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK) and ``init_from_env`` joins that
group, for runs across machines.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import queue as queue_mod
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as torch_mp
from torch import Tensor, nn
from torch.multiprocessing.spawn import start_processes

from modelshield._checks import check_choice, check_range
from modelshield._typing import Progress
from modelshield.defenses.training.adversarial import AdversarialTrainer, TrainingReport, as_trainable
from modelshield.errors import ConfigError, IntegrityError, ModelShieldError
from modelshield.models import parameter_device
from modelshield.models.load import weights_sha256

__all__ = [
    "BACKENDS",
    "Backend",
    "TorchrunEnv",
    "available_cores",
    "check_nproc",
    "fit_distributed",
    "free_port",
    "init_from_env",
    "torchrun_env",
]

Backend = Literal["gloo", "nccl"]
BACKENDS: tuple[Backend, ...] = ("gloo", "nccl")


@dataclass(frozen=True, kw_only=True, slots=True)
class TorchrunEnv:
    """The rank variables torchrun (or any launcher following torch.distributed's env://) sets."""

    rank: int
    world_size: int
    local_rank: int


def torchrun_env(environ: Mapping[str, str] | None = None, *,
                 owner: str = "torchrun_env") -> TorchrunEnv | None:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment, or None when RANK/WORLD_SIZE are unset.

    Raises:
        ConfigError: a variable is not an integer, or RANK is not below WORLD_SIZE.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    values: dict[str, int] = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name, env.get("RANK", "0") if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(raw)  # type: ignore[arg-type]  # None -> TypeError, caught
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}: the environment variable {name} must be an integer (torchrun "
                              f"sets RANK, WORLD_SIZE and LOCAL_RANK); got {raw!r}. Launch with "
                              "torchrun, or unset RANK and WORLD_SIZE.") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(f"{owner}: RANK must be in [0, WORLD_SIZE); got RANK={values['RANK']}, "
                          f"WORLD_SIZE={values['WORLD_SIZE']}. Launch with torchrun.")
    return TorchrunEnv(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])


def init_from_env(env: TorchrunEnv, *, backend: Backend, owner: str) -> None:
    """Join the process group torchrun describes (init_method env://: MASTER_ADDR, MASTER_PORT).

    Raises:
        ConfigError: nccl without CUDA, or MASTER_ADDR / MASTER_PORT unset.
    """
    _check_backend(backend, owner=owner)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"{owner}: a torchrun launch must set {' and '.join(missing)}; got "
                          f"RANK={env.rank} without. Launch with torchrun (it sets them).")
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    torch_dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  # macOS, Windows
        return os.cpu_count() or 1


def check_nproc(nproc: int, *, backend: Backend, oversubscribe: bool, owner: str) -> None:
    """ConfigError unless nproc is a usable number of local processes for backend.

    gloo: 1 .. the available cores (more only with ``oversubscribe``); nccl: 1 .. the GPUs.
    """
    check_range("nproc", nproc, owner=owner, low=1, integer=True,
                fix="Use --nproc 2 for two processes (1: no distributed training).")
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"{owner}: 'nproc' must be at most the {gpus} visible GPU(s) with nccl "
                              f"(one GPU per process); got {nproc}. Use --nproc {max(gpus, 1)}.")
        return
    cores = available_cores()
    if nproc > cores and not oversubscribe:
        raise ConfigError(f"{owner}: 'nproc' must be at most the {cores} available CPU core(s); got "
                          f"{nproc}. Use --nproc {cores}, or --oversubscribe to run more processes "
                          "than cores (slower).")


def _check_backend(backend: str, *, owner: str) -> None:
    check_choice("backend", backend, BACKENDS, owner=owner)
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError(f"{owner}: the nccl backend needs CUDA GPUs; got none (torch "
                          f"{torch.__version__}, cuda available: False). Use gloo on the CPU.")


def free_port(port: int | None = None, *, owner: str = "free_port") -> int:
    """A TCP port on 127.0.0.1 free now: port itself (checked) or one the OS picks.

    Raises:
        ConfigError: port is in use or out of range.
    """
    if port is not None:
        check_range("port", port, owner=owner, low=1, high=65535, integer=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port or 0))
        except OSError as exc:
            raise ConfigError(f"{owner}: the rendezvous port must be free on 127.0.0.1; got {port}, "
                              f"which is in use ({exc.strerror}). Pass another port, or none to "
                              "let the OS pick one.") from None
        return int(sock.getsockname()[1])


def fit_distributed(
    trainer: AdversarialTrainer,
    model: nn.Module,
    train_data: tuple[Tensor, Tensor],
    *,
    nproc: int,
    val_data: tuple[Tensor, Tensor] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    backend: Backend | None = None,
    oversubscribe: bool = False,
    threads: int | None = None,
    port: int | None = None,
) -> TrainingReport:
    """Adversarially train model on ``nproc`` local processes (DDP); its weights become the result.

    Each process gets a copy of the model and the data, ``threads`` torch threads (default:
    available cores // nproc, at least 1) and, with nccl, the GPU ``cuda:rank``; all run
    ``trainer.fit(..., distributed=True)`` (see there for the sharding and the rank-0 checks).
    Rank 0 reports progress (through a queue) and hands its final weights back through a
    temporary file; every rank reports a digest of its final weights, which must all agree (the
    report's ``params["rank_weights_sha256"]``). ``nproc=1`` trains in this process, undistributed.

    Args:
        trainer: the adversarial-training settings (its ``checkpoint_dir`` is written by rank 0).
        model: the module to train (in place), on the CPU (gloo) or a GPU (nccl).
        train_data: full ``(x, y)`` tensors; every rank takes its rows of each global batch.
        nproc: processes to start. backend: ``"gloo"`` / ``"nccl"``; None: by the model's device.
        oversubscribe: allow more gloo processes than cores. port: rendezvous port (None: free).

    Raises:
        ConfigError: nproc out of range, nccl without CUDA, the port in use, data not tensors.
        IntegrityError: the ranks' final weights differ (replicas out of sync).
    """
    owner = "fit_distributed"
    module = as_trainable(model, owner=owner)
    device = parameter_device(module) or torch.device("cpu")
    chosen: Backend = backend if backend is not None else ("nccl" if device.type == "cuda" else "gloo")
    _check_backend(chosen, owner=owner)
    check_nproc(nproc, backend=chosen, oversubscribe=oversubscribe, owner=owner)
    if threads is not None:
        check_range("threads", threads, owner=owner, low=1, integer=True)
    if not (isinstance(train_data, tuple | list) and len(train_data) == 2
            and all(isinstance(t, Tensor) for t in train_data)):
        raise ConfigError(f"{owner}: 'train_data' must be a pair of tensors (x, y) (each process "
                          f"takes its shard); got {type(train_data).__name__}. Pass (x_train, y_train).")
    if nproc == 1:
        return trainer.fit(module, train_data, val_data=val_data, resume=resume, progress=progress)
    rendezvous = free_port(port, owner=owner)
    per_rank = threads if threads is not None else max(1, available_cores() // nproc)
    cpu = torch.device("cpu")
    job = _Job(trainer=trainer, module=copy.deepcopy(module).to(cpu),
               x=train_data[0].detach().to(cpu), y=train_data[1].detach().to(cpu),
               val=None if val_data is None else (val_data[0].detach().to(cpu), val_data[1].detach().to(cpu)),
               resume=resume, world_size=nproc, backend=chosen, port=rendezvous, threads=per_rank,
               device_type=device.type)
    ctx = torch_mp.get_context("spawn")
    messages: Any = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="modelshield-ddp-") as tmp:
        job = dataclasses.replace(job, out_dir=tmp)
        procs = start_processes(_worker, args=(job, messages), nprocs=nproc, join=False,
                                start_method="spawn")  # type: ignore[no-untyped-call]
        report, digests = _collect(procs, messages, progress, nproc)
        state = torch.load(Path(tmp) / "weights.pt", map_location=device, weights_only=True)
    if len(set(digests.values())) != 1:
        raise IntegrityError(f"{owner}: the ranks' final weights must be identical (DDP keeps replicas "
                             f"in sync); got digests {digests}. Report this as a bug.")
    module.load_state_dict(state)
    params = {**report.params, "rank_weights_sha256": [digests[r] for r in sorted(digests)],
              "threads_per_rank": per_rank, "backend": chosen}
    return dataclasses.replace(report, params=params)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Job:
    """What each spawned rank needs (pickled to it)."""

    trainer: AdversarialTrainer
    module: nn.Module
    x: Tensor
    y: Tensor
    val: tuple[Tensor, Tensor] | None
    resume: bool
    world_size: int
    backend: Backend
    port: int
    threads: int
    device_type: str
    out_dir: str = ""


def _collect(procs: Any, messages: Any, progress: Progress | None, nproc: int
             ) -> tuple[TrainingReport, dict[int, str]]:
    """Relay progress until every rank finished; the report and each rank's weight digest.

    A rank's ModelShieldError (sent as a message) is re-raised here after the other ranks are
    stopped; so is any error or interrupt of this process (e.g. Ctrl-C, or a progress callback's).
    """
    report: TrainingReport | None = None
    digests: dict[int, str] = {}
    error: BaseException | None = None
    finished = False
    try:
        while True:
            try:
                msg = messages.get(timeout=0.1)
            except queue_mod.Empty:
                if finished:  # every rank had exited before this empty read: nothing more comes
                    break
                try:
                    finished = bool(procs.join(timeout=0.05)) if error is None else True
                except Exception:  # a rank died; harmless only once every result is in
                    if report is None or len(digests) != nproc:
                        raise
                    finished = True  # e.g. an abort in a rank's exit after it had reported
                continue
            kind = msg[0]
            if kind == "progress" and progress is not None:
                progress(*msg[1:])
            elif kind == "digest":
                digests[int(msg[1])] = str(msg[2])
            elif kind == "report":
                report = msg[1]
            elif kind == "error" and error is None:
                error = msg[2]
                _stop(procs)  # a rank that failed alone would leave the others waiting
    except BaseException:
        _stop(procs)
        raise
    if error is not None:
        raise error
    if report is None or len(digests) != nproc:  # pragma: no cover  # join raises first
        raise ConfigError(f"fit_distributed: every rank must report back; got {len(digests)} of "
                          f"{nproc}. See the ranks' output above.")
    return report, digests


def _stop(procs: Any) -> None:
    """Terminate the ranks still running and wait for them (at most 10 s each)."""
    for p in procs.processes:
        if p.is_alive():
            p.terminate()
    for p in procs.processes:
        p.join(10)


def _worker(rank: int, job: _Job, messages: Any) -> None:
    """One spawned rank: join the group, train, report (rank 0: progress, report and weights)."""
    torch.set_num_threads(job.threads)
    device = torch.device(f"cuda:{rank}") if job.backend == "nccl" else torch.device(job.device_type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(job.backend, init_method=f"tcp://127.0.0.1:{job.port}", rank=rank,
                                  world_size=job.world_size, timeout=timedelta(minutes=30))
    try:
        # A private copy: the pickled module's parameters arrive in shared memory, the same pages
        # in every rank, and replicas sharing storage would race in their optimiser steps. The
        # data stays shared (read only).
        module = copy.deepcopy(job.module).to(device)
        val = None if job.val is None else (job.val[0].to(device), job.val[1].to(device))

        def progress(done: int, total: int, message: str) -> None:
            messages.put(("progress", done, total, message))

        try:
            report = job.trainer.fit(module, (job.x.to(device), job.y.to(device)), val_data=val,
                                     resume=job.resume, progress=progress if rank == 0 else None,
                                     distributed=True)
        except ModelShieldError as exc:
            messages.put(("error", rank, exc))
            return
        messages.put(("digest", rank, weights_sha256(module)))
        if rank == 0:
            weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            tmp = Path(job.out_dir) / ".weights.pt.tmp"
            torch.save(weights, tmp)
            os.replace(tmp, Path(job.out_dir) / "weights.pt")
            messages.put(("report", report))
    finally:
        torch_dist.destroy_process_group()
