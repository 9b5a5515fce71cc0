"""run_jobs: run jobs on an executor with checkpoints, bounded retries and per-job outcomes."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import modelshield
from modelshield._typing import Progress
from modelshield.errors import ConfigError
from modelshield.runner._util import check_int
from modelshield.runner.checkpoint import CheckpointStore
from modelshield.runner.executors import Executor, InlineExecutor
from modelshield.runner.jobs import Job, Outcome

__all__ = ["JobReport", "RunResult", "run_jobs"]

Status = Literal["done", "cached", "failed"]


@dataclass(frozen=True, slots=True)
class JobReport:
    """How one job ended.

    Attributes:
        job: the job.
        status: ``"done"`` (computed in this run), ``"cached"`` (read from a verified checkpoint)
            or ``"failed"`` (every attempt failed, or a non-retryable error).
        result: the job's result dict (None when failed).
        attempts: attempts made in this run (0 when cached).
        error_type, error: the last attempt's exception type (``"WorkerCrashed"`` when the worker
            process died) and the first line of its message; None unless failed.
        time_s: the successful (or last) attempt's time in its worker.
        worker: ``host:pid`` of that worker ("" when cached or unknown).
    """

    job: Job
    status: Status
    result: dict[str, Any] | None
    attempts: int
    error_type: str | None = None
    error: str | None = None
    time_s: float = 0.0
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the job as kind, params and key)."""
        return {"kind": self.job.kind, "params": self.job.params, "key": self.job.key,
                "status": self.status, "attempts": self.attempts, "error_type": self.error_type,
                "error": self.error, "time_s": round(self.time_s, 6), "worker": self.worker,
                "result": self.result}


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of ``run_jobs``: one ``JobReport`` per job, in the order the jobs were given.

    Attributes:
        reports: per-job outcomes in job order.
        executor: the executor's name.
        checkpoint: the checkpoint folder (None without one).
        time_s: wall time of the run.
    """

    reports: tuple[JobReport, ...]
    executor: str
    checkpoint: Path | None
    time_s: float

    @property
    def results(self) -> list[dict[str, Any] | None]:
        """Each job's result in job order (None for a failed job)."""
        return [r.result for r in self.reports]

    @property
    def counts(self) -> dict[str, int]:
        """Jobs per status: ``{"done": ..., "cached": ..., "failed": ...}``."""
        out = {"done": 0, "cached": 0, "failed": 0}
        for r in self.reports:
            out[r.status] += 1
        return out

    @property
    def failed(self) -> list[JobReport]:
        return [r for r in self.reports if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when no job failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: counts, timings and every job's report."""
        folder = None if self.checkpoint is None else str(self.checkpoint)
        return {"executor": self.executor, "checkpoint": folder,
                "time_s": round(self.time_s, 6), "counts": self.counts,
                "compute_s": round(sum(r.time_s for r in self.reports if r.status == "done"), 6),
                "modelshield_version": modelshield.__version__,
                "jobs": [r.to_dict() for r in self.reports]}


def run_jobs(
    jobs: Sequence[Job],
    executor: Executor | None = None,
    *,
    checkpoint: Path | None = None,
    retries: int = 2,
    progress: Progress | None = None,
) -> RunResult:
    """Run jobs on an executor, skipping those already checkpointed, retrying failures.

    Jobs whose verified result is in ``checkpoint`` are not run. The others run on the
    executor; each result is written to the checkpoint as soon as it arrives (so killing the
    driver loses only the jobs in flight), and a job that raises or whose worker dies is run again
    up to ``retries`` more times, then reported as failed while the other jobs complete.
    Deterministic user errors (ConfigError, InputError, MissingDataError, ModelCapabilityError)
    and IntegrityError (a changed model or data file) are not retried. Jobs with equal keys run
    once and share the result. Jobs start costliest first (``Job.cost``; ties in the given order),
    which shortens the run when costs differ.

    Results are the jobs' JSON round trips, so for deterministic (seeded) jobs they are identical
    whatever the executor, the number of workers or the completion order.

    Args:
        jobs: the jobs (``Job``).
        executor: ``InlineExecutor()`` (default), ``ProcessExecutor(...)`` or ``RayExecutor(...)``.
        checkpoint: folder of per-job result files (``CheckpointStore``); None keeps nothing.
        retries: extra attempts for a failing job (0 = one attempt only).
        progress: called as ``progress(finished, total, message)`` after each job finishes.

    Returns:
        RunResult with one report per job, in job order.

    Raises:
        ConfigError: jobs is not a sequence of Job, retries is not an int >= 0, or checkpoint is a file.

    Example:
        jobs = evasion_shards("digits-cnn", attack={"name": "pgd", "eps": 0.1}, n=500, shard_size=100)
        run = run_jobs(jobs, ProcessExecutor(workers=2), checkpoint=Path("ckpt"))
        merged = merge_shards(run.results)
    """
    start = time.perf_counter()
    check_int("retries", retries, owner="run_jobs", low=0,
                fix="Give the number of extra attempts for a failing job, e.g. retries=2.")
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise ConfigError(f"run_jobs: 'jobs' must hold Job objects; got {type(job).__name__} at index "
                              f"{i}. Build them with Job(kind, params).")
    executor = executor if executor is not None else InlineExecutor()
    store = CheckpointStore(Path(checkpoint)) if checkpoint is not None else None
    unique: dict[str, Job] = {}
    for job in jobs:
        unique.setdefault(job.key, job)
    reports: dict[str, JobReport] = {}
    if store is not None:
        for key, job in unique.items():
            cached = store.read(job)
            if cached is not None:
                reports[key] = JobReport(job=job, status="cached", result=cached, attempts=0)
    total, finished = len(unique), len(reports)
    if progress is not None and finished:
        progress(finished, total, f"{finished} cached")
    order = {key: i for i, key in enumerate(unique)}

    def by_cost(j: Job) -> tuple[float, int]:
        return -j.cost, order[j.key]

    pending = sorted((job for key, job in unique.items() if key not in reports), key=by_cost)
    attempts = dict.fromkeys((job.key for job in pending), 0)
    if pending:
        with executor.open() as pool:
            while pending:
                again: list[Job] = []
                tasks = [job.task(order[job.key]) for job in pending]
                by_key = {job.key: job for job in pending}
                for outcome in pool.map_unordered(tasks):
                    job = by_key[outcome.key]
                    attempts[job.key] += 1
                    report = _settle(job, outcome, attempts[job.key], retries, store)
                    if report is None:
                        again.append(job)
                        continue
                    reports[job.key] = report
                    finished += 1
                    if progress is not None:
                        progress(finished, total, f"{job.kind} {report.status}")
                pending = sorted(again, key=by_cost)
    return RunResult(reports=tuple(reports[job.key] for job in jobs), executor=executor.name,
                     checkpoint=None if checkpoint is None else Path(checkpoint),
                     time_s=time.perf_counter() - start)


def _settle(job: Job, outcome: Outcome, attempt: int, retries: int,
            store: CheckpointStore | None) -> JobReport | None:
    """The job's final report after this attempt, or None when it should be tried again."""
    if outcome.result_json is not None:
        if store is not None:
            store.write(job, outcome.result_json,
                        meta={"time_s": outcome.time_s, "worker": outcome.worker, "attempts": attempt})
        return JobReport(job=job, status="done", result=json.loads(outcome.result_json), attempts=attempt,
                         time_s=outcome.time_s, worker=outcome.worker)
    if outcome.retryable and attempt <= retries:
        return None
    return JobReport(job=job, status="failed", result=None, attempts=attempt, error_type=outcome.error_type,
                     error=outcome.error, time_s=outcome.time_s, worker=outcome.worker)
