"""The runner on a real local Ray cluster (started by the tests; skipped without the ray extra).

One test lets ``RayExecutor`` start and stop its own cluster; the others share one cluster
started here with three CPUs, which ``RayExecutor(address=None)`` joins instead of starting one.
All are slow (Ray starts in seconds, its workers import torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import testkit.runner_jobs  # noqa: E402, F401  (registers the test-* job kinds)

from modelshield import zoo  # noqa: E402
from modelshield.runner import (  # noqa: E402
    InlineExecutor,
    Job,
    RayExecutor,
    evasion_shards,
    merge_shards,
    run_jobs,
)

pytestmark = pytest.mark.slow


def _values(log: Path) -> list[int]:
    return [int(ln.split()[0]) for ln in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def test_ray_executor_starts_and_stops_its_own_local_cluster(tmp_path: Path) -> None:
    if ray.is_initialized():
        pytest.skip("this process is already connected to Ray")
    log = tmp_path / "log"
    jobs = [Job("test-count", {"value": i, "log": str(log)}) for i in range(4)]
    run = run_jobs(jobs, RayExecutor(workers=2), checkpoint=tmp_path / "ckpt")
    assert run.results == [{"value": i, "square": i * i} for i in range(4)]
    assert run.executor.startswith("ray(local")
    assert not ray.is_initialized()  # shut down: it started the cluster
    again = run_jobs(jobs, RayExecutor(workers=2), checkpoint=tmp_path / "ckpt")
    assert again.counts == {"done": 0, "cached": 4, "failed": 0} and sorted(_values(log)) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if ray.is_initialized():
        pytest.skip("this process is already connected to Ray")
    zoo.load("digits-cnn")  # train once before fanning out; workers inherit MODELSHIELD_CACHE
    ray.init(address="local", num_cpus=3, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _merged(executor: Any, *, shard_size: int) -> str:
    jobs = evasion_shards("digits-cnn", attack={"name": "pgd", "eps": 0.1, "steps": 5}, n=60,
                          shard_size=shard_size, batch_size=5, seed=11)
    run = run_jobs(jobs, executor)
    assert run.ok, [r.error for r in run.failed]
    return json.dumps(merge_shards(run.results).to_dict(), sort_keys=True)


def test_ray_gives_the_inline_numbers_bit_for_bit(cluster: None) -> None:
    reference = _merged(InlineExecutor(), shard_size=60)
    for workers, shard_size in ((1, 60), (2, 25), (3, 10)):
        got = _merged(RayExecutor(workers=workers), shard_size=shard_size)
        assert got == reference, (workers, shard_size)
    assert ray.is_initialized()  # joined, not started: left running


def test_ray_retries_a_crashed_worker_and_reports_a_job_that_always_crashes(
    cluster: None, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    jobs = [Job("test-count", {"value": i, "log": str(log)}) for i in range(3)]
    jobs.insert(1, Job("test-crash-once", {"value": 50, "marker": str(tmp_path / "m"), "log": str(log)}))
    jobs.append(Job("test-crash-always", {"value": 66, "log": str(log)}))
    run = run_jobs(jobs, RayExecutor(workers=3), checkpoint=tmp_path / "ckpt", retries=1)
    assert [r.status for r in run.reports] == ["done", "done", "done", "done", "failed"]
    assert run.reports[1].attempts == 2 and run.results[1] == {"value": 50, "square": 2500}
    bad = run.reports[4]
    assert bad.attempts == 2 and bad.error_type == "WorkerCrashed" and "Ray worker died" in (bad.error or "")
    assert _values(log).count(66) == 2  # Ray isolates each task in its own worker: no innocent re-runs
    assert all(r.attempts == 1 for i, r in enumerate(run.reports) if i not in (1, 4))


@pytest.mark.filterwarnings("ignore::modelshield.errors.EvaluationWarning")  # a small plan
def test_ray_assessment_gives_the_in_process_report(cluster: None) -> None:
    from modelshield.assess import AssessmentPlan, BlackBoxPlan, EvasionPlan, run
    from modelshield.assess.report import report_numbers
    from modelshield.assess.suite import target_inputs
    from modelshield.cli._target import torch_threads
    from modelshield.runner.assess import run_assessment
    from modelshield.targets import TargetRef

    ref = TargetRef(model="digits-cnn", n=40)
    plan = AssessmentPlan(sections=("evasion", "blackbox"), n=40, batch_size=10, seed=4,
                          evasion=EvasionPlan(attacks=("pgd", "square"), eps=(0.05, 0.1), steps=4),
                          blackbox=BlackBoxPlan(n=8, budgets=(20,), hsj_budgets=(20,)))
    with torch_threads(1):
        reference = report_numbers(run(plan=plan, **target_inputs(ref.load())).to_dict())
    for workers, shard_size in ((1, 40), (2, 10), (3, 20)):
        done = run_assessment(ref, plan, RayExecutor(workers=workers), shard_size=shard_size)
        assert done.counts["failed"] == 0
        assert report_numbers(done.assessment.to_dict()) == reference, (workers, shard_size)
