"""The runner on real worker processes: identical numbers to in-process runs, crashed workers,
jobs that always crash, and a driver killed mid-run (issue #20, items 1-3).

Test job kinds live in tests/testkit/runner_jobs.py (they never import torch, so pools start
fast); spawned workers import that module by name (the runner puts tests/ on their sys.path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import testkit.runner_jobs  # noqa: F401  (registers the test-* job kinds)
from testkit.driver import kill_after_checkpoints

from modelshield import zoo
from modelshield.runner import (
    CheckpointStore,
    InlineExecutor,
    Job,
    ProcessExecutor,
    evasion_shards,
    merge_shards,
    run_jobs,
)


def _values(log: Path) -> list[int]:
    """The value of each computation logged so far, in order."""
    if not log.exists():
        return []
    return [int(line.split()[0]) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def _count_jobs(log: Path, n: int, sleep: float = 0.0) -> list[Job]:
    return [Job("test-count", {"value": i, "log": str(log), "sleep": sleep}) for i in range(n)]


@pytest.fixture(scope="module")
def digits_cnn() -> str:
    zoo.load("digits-cnn")  # trained once, before fanning out (jobs never train)
    return "digits-cnn"


def _merged(model: str, executor: object, *, n: int, shard_size: int, batch_size: int, steps: int) -> str:
    jobs = evasion_shards(model, attack={"name": "pgd", "eps": 0.1, "steps": steps}, n=n,
                          shard_size=shard_size, batch_size=batch_size, seed=11)
    run = run_jobs(jobs, executor)  # type: ignore[arg-type]  # every executor of the test is one
    assert run.ok, [r.error for r in run.failed]
    return json.dumps(merge_shards(run.results).to_dict(), sort_keys=True)


def test_process_pool_gives_the_inline_numbers_bit_for_bit(digits_cnn: str) -> None:
    inline = _merged(digits_cnn, InlineExecutor(), n=20, shard_size=20, batch_size=10, steps=3)
    pooled = _merged(digits_cnn, ProcessExecutor(workers=2), n=20, shard_size=10, batch_size=10, steps=3)
    assert pooled == inline
    points = json.loads(inline)["points"]
    assert len(points) == 20 and len({p["x_adv_sha256"] for p in points}) == 20


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_pool_numbers_do_not_depend_on_workers_or_shard_size(digits_cnn: str, workers: int) -> None:
    reference = _merged(digits_cnn, InlineExecutor(), n=60, shard_size=60, batch_size=5, steps=5)
    for shard_size in (10, 25, 60):
        got = _merged(digits_cnn, ProcessExecutor(workers=workers), n=60, shard_size=shard_size,
                      batch_size=5, steps=5)
        assert got == reference, (workers, shard_size)


def test_a_worker_killed_mid_job_is_retried_and_the_run_completes(tmp_path: Path) -> None:
    log, ckpt = tmp_path / "log", tmp_path / "ckpt"
    marker = tmp_path / "crashed"
    crash = Job("test-crash-once", {"value": 50, "marker": str(marker), "log": str(log)})
    jobs = [*_count_jobs(log, 2), crash, *_count_jobs(log, 5)[2:]]
    run = run_jobs(jobs, ProcessExecutor(workers=2), checkpoint=ckpt, retries=2)
    assert marker.exists()  # the first attempt did kill its worker
    assert run.ok and run.counts == {"done": 6, "cached": 0, "failed": 0}
    assert run.results == [{"value": v, "square": v * v} for v in (0, 1, 50, 2, 3, 4)]
    # The crash is charged (2 attempts) when the job ran alone; when another job shared the pool,
    # both are re-run alone, uncharged, so that an innocent job never pays for another's crash.
    assert run.reports[2].attempts in (1, 2)
    assert all(r.attempts == 1 for i, r in enumerate(run.reports) if i != 2)
    assert _values(log).count(50) == 1  # the crashed attempt logs nothing; the successful one once
    assert all(CheckpointStore(ckpt).read(j) is not None for j in jobs)


def test_a_crash_of_a_job_running_alone_is_charged_to_it(tmp_path: Path) -> None:
    log, marker = tmp_path / "log", tmp_path / "crashed"
    crash = Job("test-crash-once", {"value": 50, "marker": str(marker), "log": str(log)})
    jobs = [crash, *_count_jobs(log, 2)]
    run = run_jobs(jobs, ProcessExecutor(workers=1), retries=1)
    assert run.ok and [r.attempts for r in run.reports] == [2, 1, 1]
    assert run.results[0] == {"value": 50, "square": 2500}
    assert _values(log) == [0, 1, 50]  # retried after the first round
    crashed_twice = run_jobs([Job("test-crash-always", {"value": 1})], ProcessExecutor(workers=1), retries=1)
    assert crashed_twice.reports[0].attempts == 2 and crashed_twice.reports[0].status == "failed"


def test_a_job_that_always_crashes_is_reported_failed_while_the_rest_complete(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bad = Job("test-crash-always", {"value": 66, "log": str(log)})
    jobs = [*_count_jobs(log, 2), bad, *_count_jobs(log, 4)[2:]]
    run = run_jobs(jobs, ProcessExecutor(workers=2), checkpoint=tmp_path / "ckpt", retries=1)
    assert [r.status for r in run.reports] == ["done", "done", "failed", "done", "done"]
    failed = run.reports[2]
    assert failed.error_type == "WorkerCrashed" and "worker process died" in (failed.error or "")
    # Two charged attempts; a crash in a shared pool is re-run alone first (not charged).
    assert failed.attempts == 2 and 2 <= _values(log).count(66) <= 4
    assert run.results[:2] + run.results[3:] == [{"value": v, "square": v * v} for v in (0, 1, 2, 3)]
    assert json.loads(json.dumps(run.to_dict()))["counts"] == {"done": 4, "cached": 0, "failed": 1}


def test_killing_the_driver_then_rerunning_recomputes_no_finished_job(tmp_path: Path) -> None:
    log, ckpt = tmp_path / "log", tmp_path / "ckpt"
    n, sleep = 12, 0.25
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nimport testkit.runner_jobs\n"
        "from modelshield.runner import Job, run_jobs\n"
        f"jobs = [Job('test-count', {{'value': i, 'log': sys.argv[1], 'sleep': {sleep}}})\n"
        f"        for i in range({n})]\n"
        "run_jobs(jobs, checkpoint=Path(sys.argv[2]))\n", encoding="utf-8")
    kill_after_checkpoints([sys.executable, str(script), str(log), str(ckpt)], ckpt, 4, timeout=120)
    jobs = _count_jobs(log, n, sleep)
    store = CheckpointStore(ckpt)
    finished = {j.params["value"] for j in jobs if store.read(j) is not None}
    assert 4 <= len(finished) < n  # killed mid-run
    before = len(_values(log))
    run = run_jobs(jobs, InlineExecutor(), checkpoint=ckpt)
    recomputed = _values(log)[before:]
    assert not finished & set(recomputed)
    assert sorted(recomputed) == sorted(set(range(n)) - finished)
    assert run.counts == {"done": n - len(finished), "cached": len(finished), "failed": 0}
    assert run.results == [{"value": i, "square": i * i} for i in range(n)]


@pytest.mark.slow
def test_workers_run_with_the_configured_thread_count() -> None:
    run = run_jobs([Job("test-threads", {"value": 0})], ProcessExecutor(workers=1, threads_per_worker=2))
    assert run.results == [{"torch": 2, "omp": "2"}]
