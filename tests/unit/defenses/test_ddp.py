"""Data-parallel adversarial training, in one process: the sharding, the launcher's checks, and the
distributed code path of ``AdversarialTrainer.fit`` in a one-rank gloo group (resume, records).

The multi-process runs (2 ranks) are in tests/integration/test_ddp_training.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist

from modelshield import zoo
from modelshield.data import load_dataset
from modelshield.defenses.training import AdversarialTrainer
from modelshield.defenses.training.distributed import ShardedBatches, epoch_generator_seed
from modelshield.defenses.training.launch import (
    check_nproc,
    fit_distributed,
    free_port,
    torchrun_env,
)
from modelshield.errors import ConfigError
from modelshield.models.load import weights_sha256


@pytest.mark.parametrize(("n", "batch", "world"), [(1257, 128, 2), (10, 4, 3), (7, 7, 2), (5, 2, 4)])
def test_shards_are_disjoint_and_make_up_each_global_batch(n: int, batch: int, world: int) -> None:
    samplers = [ShardedBatches(n, batch, rank=r, world_size=world, seed=3) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert all(len(b) == len(samplers[0]) == -(-n // batch) for b in per_rank)
    seen: list[int] = []
    for i in range(len(per_rank[0])):
        size = min(batch, n - i * batch)
        real = [per_rank[r][i].tolist() for r in range(world) if r < size]  # ranks >= size: stand-in
        rows = [v for part in real for v in part]
        assert len(rows) == len(set(rows)) == size  # disjoint, and together the global batch
        assert all(abs(len(p) - size / world) < 1 for p in real)  # per-rank batch = batch / world
        seen += rows
    assert sorted(seen) == list(range(n))  # one epoch = one pass over every row


def test_epochs_reshuffle_the_same_way_on_every_rank() -> None:
    a = ShardedBatches(50, 10, rank=0, world_size=2, seed=0)
    b = ShardedBatches(50, 10, rank=1, world_size=2, seed=0)
    first = [t.tolist() for t in a]
    a.set_epoch(1)
    assert [t.tolist() for t in a] != first
    a.set_epoch(0)
    assert [t.tolist() for t in a] == first  # set_epoch makes the order reproducible (resume)
    assert not {v for part in first for v in part} & {v for t in b for v in t.tolist()}
    assert epoch_generator_seed(0, 1, 0) != epoch_generator_seed(0, 1, 1) != epoch_generator_seed(0, 2, 1)


def test_torchrun_environment() -> None:
    assert torchrun_env({}) is None
    env = torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert env is not None and (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="integer"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_launcher_rejects_bad_settings_in_one_line() -> None:
    for bad, match in ((0, "nproc"), (10_000, "--oversubscribe")):
        with pytest.raises(ConfigError, match=match) as info:
            check_nproc(bad, backend="gloo", oversubscribe=False, owner="t")
        assert "\n" not in str(info.value)
    check_nproc(10_000, backend="gloo", oversubscribe=True, owner="t")
    if not torch.cuda.is_available():
        trainer = AdversarialTrainer(eps=0.1, epochs=1)
        x = torch.rand(8, 1, 8, 8)
        with pytest.raises(ConfigError, match="nccl backend needs CUDA"):
            fit_distributed(trainer, zoo.build("cnn-8x8"), (x, torch.zeros(8, dtype=torch.long)), nproc=2,
                            backend="nccl")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"got {port}, which is in use") as info:
            free_port(port, owner="t")
        assert "\n" not in str(info.value)


def test_distributed_needs_a_process_group() -> None:
    with pytest.raises(ConfigError, match="process group"):
        AdversarialTrainer(eps=0.1, epochs=1).fit(zoo.build("cnn-8x8"), (torch.rand(4, 1, 8, 8),
                                                  torch.zeros(4, dtype=torch.long)), distributed=True)


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def test_distributed_path_resumes_bit_identically(one_rank_group: None, tmp_path: Path) -> None:
    """The DDP path with one rank: checkpoints by rank 0, records all-reduced, resume identical."""
    ds = load_dataset("digits")
    data = (ds.x_train[:300].float(), ds.y_train[:300].long())

    def run(epochs: int, folder: Path, resume: bool = False) -> tuple[object, str]:
        trainer = AdversarialTrainer(method="trades", eps=0.1, steps=2, epochs=3, lr=1e-2, seed=0,
                                     batch_size=64, eval_steps=3, check_size=32, checkpoint_dir=folder)
        model = zoo.build("cnn-8x8", seed=0)
        report = trainer.fit(model, data, resume=resume, distributed=True,
                             progress=_stop_after(epochs))
        return report, weights_sha256(model)

    full, full_digest = run(3, tmp_path / "a")
    with pytest.raises(ConfigError, match="resume=True"):  # rank 0's check, broadcast to every rank
        run(3, tmp_path / "a")
    with pytest.raises(_Interrupt):
        run(1, tmp_path / "b")
    resumed, resumed_digest = run(3, tmp_path / "b", resume=True)
    assert resumed.resumed_from == 1  # type: ignore[attr-defined]
    assert resumed_digest == full_digest
    assert [e.loss for e in resumed.epochs] == [e.loss for e in full.epochs]  # type: ignore[attr-defined]
    assert full.params["world_size"] == 1  # type: ignore[attr-defined]
    for e in full.epochs:  # type: ignore[attr-defined]  # counted over the 300 rows, once each
        for acc in (e.train_clean_accuracy, e.train_adv_accuracy):
            assert 0 <= acc <= 1 and abs(acc * 300 - round(acc * 300)) < 1e-6


class _Interrupt(Exception):
    pass


def _stop_after(epochs: int) -> Callable[[int, int, str], None]:
    def progress(done: int, total: int, message: str) -> None:
        if f"epoch {epochs}/" in message and "done" in message and epochs < 3:
            raise _Interrupt
    return progress
