"""Executors: where jobs run. In this process, in local worker processes, or on a Ray cluster.

An executor is a frozen configuration; ``open()`` starts its resources (a process pool, a Ray
connection) for one run and returns a ``Pool`` whose ``map_unordered(tasks)`` yields one
``Outcome`` per task as each finishes. Retries and checkpoints are the caller's (``run_jobs``), so
every backend behaves the same; a backend only has to say which attempts crashed their worker.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.runner._util import check_int, first_line
from modelshield.runner.jobs import Outcome, Task, execute_task

__all__ = ["Executor", "InlineExecutor", "Pool", "ProcessExecutor", "RayExecutor"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class Pool(Protocol):
    """A started executor: runs tasks and yields their outcomes in completion order."""

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[Outcome]: ...


class Executor(Protocol):
    """Configuration of a backend; ``open()`` starts it for one run (a context manager)."""

    @property
    def name(self) -> str: ...

    def open(self) -> contextlib.AbstractContextManager[Pool]: ...


def _crashed(task: Task, message: str, start: float, worker: str = "") -> Outcome:
    return Outcome(index=task.index, key=task.key, result_json=None, error_type="WorkerCrashed",
                   error=message, crashed=True, time_s=time.perf_counter() - start, worker=worker)


# ---------------------------------------------------------------------------------------------
# In this process


@dataclass(frozen=True, kw_only=True, slots=True)
class InlineExecutor:
    """Run every job here, one after the other (the default; no isolation from crashes).

    Args:
        threads: torch intra-op threads during the jobs (restored afterwards); None leaves them.
    """

    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_int("threads", self.threads, owner="InlineExecutor", low=1)

    @property
    def name(self) -> str:
        return "inline"

    @contextlib.contextmanager
    def open(self) -> Iterator[Pool]:
        yield _InlinePool(self.threads)


class _InlinePool:
    def __init__(self, threads: int | None) -> None:
        self._threads = threads

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for task in tasks:
            with _torch_threads(self._threads):
                outcome = execute_task(task, self._threads)
            yield outcome


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Restore torch's intra-op threads after a block that sets them to n (if torch is loaded)."""
    torch = sys.modules.get("torch")
    if n is None or torch is None:
        yield
        return
    old = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Local processes


def _init_process_worker(threads: int) -> None:
    """Process-pool initializer: one thread count for OpenMP/BLAS (read when torch loads)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessExecutor:
    """Run jobs in local worker processes (``concurrent.futures``, spawn start method).

    At most ``workers`` jobs run at once, each worker with ``threads_per_worker`` torch threads.
    A worker that dies (killed, out of memory, ``os._exit``) breaks the pool: the jobs that were
    running then are re-run on a fresh pool, one at a time, so the crash is charged to the job
    that caused it and not to the innocent jobs that shared the pool; results already received
    are never lost. Workers are spawned (not forked): a script that uses this executor must
    guard its top level with ``if __name__ == "__main__":``, as with any spawn-based pool.

    Args:
        workers: worker processes.
        threads_per_worker: torch / OpenMP threads per worker (workers x threads should not exceed
            the cores).

    Example:
        run_jobs(jobs, ProcessExecutor(workers=2), checkpoint=Path("ckpt"))
    """

    workers: int = 2
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        check_int("workers", self.workers, owner="ProcessExecutor", low=1)
        check_int("threads_per_worker", self.threads_per_worker, owner="ProcessExecutor", low=1)

    @property
    def name(self) -> str:
        return f"process(workers={self.workers}, threads={self.threads_per_worker})"

    @contextlib.contextmanager
    def open(self) -> Iterator[Pool]:
        pool = _ProcessPool(self.workers, self.threads_per_worker)
        try:
            yield pool
        finally:
            pool.close()


_DIED = "the worker process died while running the job (killed, out of memory or exited)"


class _ProcessPool:
    """A process pool of ``workers`` processes, or of one while crashed jobs are re-run alone."""

    def __init__(self, workers: int, threads: int) -> None:
        self._workers, self._threads = workers, threads
        self._pool: ProcessPoolExecutor | None = None
        self._size = 0

    def _executor(self, size: int) -> ProcessPoolExecutor:
        if self._pool is not None and self._size != size:
            self.close()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=size, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_process_worker, initargs=(self._threads,))
            self._size = size
        return self._pool

    def close(self) -> None:
        """Shut the pool down (a broken pool's processes are already gone or being reaped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        queue = deque(tasks)
        suspects: deque[Task] = deque()
        while queue or suspects:
            if suspects:  # after a crash: the jobs that were running, each alone
                yield self._run_alone(suspects.popleft())
            else:
                yield from self._run_shared(queue, suspects)

    def _run_alone(self, task: Task) -> Outcome:
        start = time.perf_counter()
        future = self._executor(1).submit(execute_task, task, self._threads)
        try:
            return future.result()
        except BrokenProcessPool:
            self.close()
            return _crashed(task, _DIED, start)

    def _run_shared(self, queue: deque[Task], suspects: deque[Task]) -> Iterator[Outcome]:
        """Run queued tasks on the full pool until the queue is empty or a worker dies."""
        running: dict[Future[Outcome], tuple[Task, float]] = {}
        pool = self._executor(self._workers)
        while queue or running:
            while queue and len(running) < self._workers:
                try:
                    future = pool.submit(execute_task, queue[0], self._threads)
                except BrokenProcessPool:  # a worker died since the last wait: its future tells which
                    if running:
                        break
                    self.close()  # died between jobs: nothing was running, start afresh
                    pool = self._executor(self._workers)
                    continue
                running[future] = (queue.popleft(), time.perf_counter())
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken: list[tuple[Task, float]] = []
            for future in done:
                task, start = running.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    broken.append((task, start))
            if broken:
                # Every running job fails with the pool, and which one killed it is unknown. With
                # one running it is the culprit; otherwise each is re-run alone to find out, so an
                # innocent job is never charged for another's crash.
                broken.extend(running.values())
                running.clear()
                self.close()
                if len(broken) == 1:
                    yield _crashed(broken[0][0], _DIED, broken[0][1])
                else:
                    suspects.extend(sorted((t for t, _ in broken), key=lambda t: t.index))
                return


# ---------------------------------------------------------------------------------------------
# Ray


def _import_ray(owner: str) -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ModelCapabilityError(
            f"{owner}: the 'ray' package must be installed to run on Ray; it is not. Install it with "
            "pip install 'modelshield[ray]', or use ProcessExecutor for local processes."
        ) from None


@dataclass(frozen=True, kw_only=True, slots=True)
class RayExecutor:
    """Run jobs as Ray tasks, on a running cluster or on a local one started for the run.

    Each job is one remote task asking for ``threads_per_worker`` CPUs, with at most ``workers``
    in flight. A task whose worker process dies is reported as crashed (``run_jobs`` retries it;
    Ray's own retries are off, so every attempt is counted the same way on every backend).
    Workers import modelshield themselves and resolve models and data by name, so each node needs
    modelshield installed and the model cache (``modelshield zoo train NAME``) or files reachable.

    Args:
        address: None starts a local Ray cluster for the run (no dashboard, small object store)
            and shuts it down afterwards, unless this process is already connected to Ray (then
            that connection is used and left open); ``"auto"`` joins the cluster started on
            this machine with ``ray start``; ``"ray://host:10001"`` joins a remote cluster.
        workers: tasks in flight at once (a local cluster gets workers x threads_per_worker CPUs).
        threads_per_worker: CPUs (and torch threads) per task.
        object_store_mb: object store size of a local cluster (results are small JSON).

    Raises:
        ModelCapabilityError: ray is not installed (the fix is ``pip install 'modelshield[ray]'``).

    Example:
        run_jobs(jobs, RayExecutor(address="auto", workers=16), checkpoint=Path("ckpt"))
    """

    address: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    object_store_mb: int = 128

    def __post_init__(self) -> None:
        address = self.address
        if address is not None and not (address in ("auto", "local") or address.startswith("ray://")
                                        or ":" in address):
            raise ConfigError(f"RayExecutor: 'address' must be None, 'auto', 'ray://host:port' or "
                              f"'host:port'; got {self.address!r}. Pass None to start a local cluster.")
        check_int("workers", self.workers, owner="RayExecutor", low=1)
        check_int("threads_per_worker", self.threads_per_worker, owner="RayExecutor", low=1)
        check_int("object_store_mb", self.object_store_mb, owner="RayExecutor", low=80,
                    fix="Ray needs at least about 78 MB of object store.")

    @property
    def name(self) -> str:
        where = self.address or "local"
        return f"ray({where}, workers={self.workers}, threads={self.threads_per_worker})"

    @contextlib.contextmanager
    def open(self) -> Iterator[Pool]:
        ray = _import_ray("RayExecutor")
        started = False
        if not ray.is_initialized():
            if self.address is None:
                ray.init(address="local", num_cpus=self.workers * self.threads_per_worker,
                         include_dashboard=False, object_store_memory=self.object_store_mb * 2**20,
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            started = True
        try:
            yield _RayPool(ray, self.workers, self.threads_per_worker)
        finally:
            if started:
                ray.shutdown()


def _ray_execute(task: Task, threads: int) -> Outcome:
    """The Ray task body (a module-level function, so workers import it by name)."""
    return execute_task(task, threads)


class _RayPool:
    def __init__(self, ray: Any, workers: int, threads: int) -> None:
        self._ray, self._workers, self._threads = ray, workers, threads
        self._remote = ray.remote(_ray_execute).options(num_cpus=threads, max_retries=0)

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        ray = self._ray
        queue = deque(tasks)
        running: dict[Any, tuple[Task, float]] = {}
        while queue or running:
            while queue and len(running) < self._workers:
                task = queue.popleft()
                running[self._remote.remote(task, self._threads)] = (task, time.perf_counter())
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task, start = running.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task body itself raised (not a job error)
                    yield Outcome(index=task.index, key=task.key, result_json=None,
                                  error_type=type(exc.cause).__name__ if exc.cause else "RayTaskError",
                                  error=first_line(exc.cause or exc), time_s=time.perf_counter() - start)
                except ray.exceptions.RayError as exc:  # worker died, out of memory, node lost
                    yield _crashed(task, f"the Ray worker died while running the job ({type(exc).__name__}: "
                                   f"{first_line(exc, 120)})", start)
