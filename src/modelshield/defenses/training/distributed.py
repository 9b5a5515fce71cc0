"""torch.distributed primitives of data-parallel adversarial training (used by ``train_loop``).

A run has ``world_size`` processes (ranks), each with a full replica of the model wrapped in
``DistributedDataParallel`` (Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", VLDB 2020, arXiv:2006.15704). Here: which rank this process is (``DistState``),
how each rank takes its rows of every global batch (``ShardedBatches``: DistributedSampler's
interleaving, seeded per epoch), and the two collectives the loop needs (sum a few numbers,
broadcast rank 0's object).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from modelshield.errors import ConfigError

__all__ = [
    "DistState",
    "ShardedBatches",
    "all_reduce_sums",
    "broadcast_from_main",
    "epoch_generator_seed",
    "join_process_group",
    "shard_loader",
]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class DistState:
    """This process's place in an initialised process group, and its DDP-wrapped module.

    Attributes:
        rank: 0 .. world_size - 1 (rank 0 evaluates, writes checkpoints and reports progress).
        world_size: number of processes.
        wrapped: the ``DistributedDataParallel`` module whose forward the training loss uses.
        device: the device of the collectives' tensors (CPU for gloo, the rank's GPU for NCCL).
    """

    rank: int
    world_size: int
    wrapped: nn.Module
    device: torch.device


def epoch_generator_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for (run seed, epoch, rank): distinct per rank, reproducible on resume."""
    digest = hashlib.sha256(f"modelshield-ddp:{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShardedBatches(Sampler[Tensor]):
    """Yields, per global batch of an epoch, the row indices this rank trains on.

    The epoch's permutation of ``n`` rows is drawn from a generator seeded with ``seed + epoch``
    (the same on every rank, as in ``DistributedSampler.set_epoch``); global batch ``i`` is the
    permutation's rows ``[i * batch_size, (i + 1) * batch_size)`` and rank ``r`` takes every
    ``world_size``-th of them from the r-th, so the ranks' shards of a global batch are disjoint
    and together exactly that batch. When a (last) global batch has fewer rows than ranks, a rank
    left without rows gets the batch's first row as a stand-in, which the loop weights 0 (every
    rank must run forward and backward for DDP's all-reduce).
    """

    def __init__(self, n: int, batch_size: int, *, rank: int, world_size: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            mine = batch[self.rank::self.world_size]
            yield mine if mine.numel() else batch[:1]


class _Rows(Dataset[tuple[Tensor, Tensor]]):
    """(x[idx], y[idx]) for a tensor of row indices (one indexing per batch, no per-row collation)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        i = idx.to(self.x.device)
        return self.x[i], self.y[i]


def shard_loader(data: tuple[Tensor, Tensor], batch_size: int, *, rank: int, world_size: int,
                 seed: int) -> tuple[DataLoader[Any], ShardedBatches]:
    """A DataLoader of this rank's shard of each global batch, and its sampler (for set_epoch)."""
    x, y = data
    sampler = ShardedBatches(int(x.shape[0]), batch_size, rank=rank, world_size=world_size, seed=seed)
    loader: DataLoader[Any] = DataLoader(_Rows(x, y), batch_size=None, sampler=sampler,
                                         collate_fn=_identity)
    return loader, sampler


def _identity(batch: Any) -> Any:
    return batch


def all_reduce_sums(values: list[float], dist: DistState) -> list[float]:
    """The element-wise sums of values over all ranks (float64, one all-reduce)."""
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def broadcast_from_main(obj: T, dist: DistState) -> T:
    """Rank 0's obj on every rank (pickled; for small decisions and checkpoint state)."""
    box: list[Any] = [obj if dist.rank == 0 else None]
    torch_dist.broadcast_object_list(box, src=0, device=dist.device)
    out: T = box[0]
    return out


def join_process_group(module: nn.Module, *, owner: str) -> DistState:
    """Wrap module in DistributedDataParallel within the initialised default process group.

    DDP broadcasts rank 0's parameters and buffers at construction, so every replica starts equal.
    On CUDA the module must sit on this rank's GPU (NCCL); on the CPU the backend must be gloo.

    Raises:
        ConfigError: no process group, or NCCL with a module not on a GPU.
    """
    from torch.nn.parallel import DistributedDataParallel

    from modelshield.models import parameter_device

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        raise ConfigError(
            f"{owner}: distributed=True needs an initialised torch.distributed process group; got "
            "none. Call torch.distributed.init_process_group first (torchrun sets its environment), "
            "or use fit_distributed(..., nproc=N) to start the processes."
        )
    device = parameter_device(module) or torch.device("cpu")
    backend = str(torch_dist.get_backend())
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"{owner}: the nccl backend needs the model on a GPU; got it on {device}. "
                          "Use the gloo backend on the CPU, or move the model to cuda:LOCAL_RANK.")
    # gradient_as_bucket_view: the grads are views of the all-reduce buckets (no copy, and no
    # stride-mismatch warning for weights with a size-1 dimension, e.g. a 1-channel conv)
    wrapped = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                      gradient_as_bucket_view=True)
    comm = device if backend == "nccl" else torch.device("cpu")
    return DistState(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(),
                     wrapped=wrapped, device=comm)
