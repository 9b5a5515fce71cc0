"""Run many jobs (attack shards, sections, sweeps) in this process, in local processes or on Ray.

A ``Job`` is a registered job kind plus JSON parameters; workers receive names and JSON only and
resolve models and data themselves (digests checked), never pickled models. ``run_jobs`` runs jobs
on an executor (``InlineExecutor``, ``ProcessExecutor``, ``RayExecutor``), skips those whose
verified result is already in the checkpoint folder, writes each result as it completes, retries a
failing or crashed job a bounded number of times and reports it as failed while the rest complete.
Seeded jobs give identical results on every backend, worker count and shard size.

Example:
    from modelshield.runner import ProcessExecutor, evasion_shards, merge_shards, run_jobs
    jobs = evasion_shards("digits-cnn", attack={"name": "pgd", "eps": 0.1, "steps": 10}, n=500,
                          shard_size=100)
    run = run_jobs(jobs, ProcessExecutor(workers=2), checkpoint=Path("ckpt"))
    merge_shards(run.results).robust_accuracy

``evasion_shards`` and ``merge_shards`` (``modelshield.runner.evasion``) load torch; the rest of the
package does not, so workers of other job kinds start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelshield.runner.checkpoint import CHECKPOINT_FORMAT, CheckpointStore
from modelshield.runner.executors import Executor, InlineExecutor, Pool, ProcessExecutor, RayExecutor
from modelshield.runner.jobs import RUNNER_SCHEMA, Job, JobFunction, Outcome, Task, job_kinds, register_job
from modelshield.runner.run import JobReport, RunResult, run_jobs

if TYPE_CHECKING:
    from modelshield.runner.evasion import MergedEvasion, evasion_shards, merge_shards

__all__ = [
    "CHECKPOINT_FORMAT",
    "RUNNER_SCHEMA",
    "CheckpointStore",
    "Executor",
    "InlineExecutor",
    "Job",
    "JobFunction",
    "JobReport",
    "MergedEvasion",
    "Outcome",
    "Pool",
    "ProcessExecutor",
    "RayExecutor",
    "RunResult",
    "Task",
    "evasion_shards",
    "job_kinds",
    "merge_shards",
    "register_job",
    "run_jobs",
]

_LAZY = frozenset({"MergedEvasion", "evasion_shards", "merge_shards"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from modelshield.runner import evasion

        return getattr(evasion, name)
    raise AttributeError(f"module 'modelshield.runner' has no attribute {name!r}")
