"""Jobs: a registered job function's name plus JSON parameters, and the worker-side call.

Workers receive only names and JSON, never pickled models or data: a job function resolves its
model and data itself (through ``modelshield.targets`` or ``modelshield.zoo``, which check digests)
and returns a JSON-safe dict. A job's ``key`` (SHA-256 of the canonical JSON of its kind, the
kind's version, the runner's schema and its parameters) is its identity in a checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelshield.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    MissingDataError,
    ModelCapabilityError,
)
from modelshield.runner._util import first_line

__all__ = [
    "RUNNER_SCHEMA",
    "Job",
    "JobFunction",
    "Outcome",
    "Task",
    "canonical_json",
    "execute_task",
    "job_kinds",
    "register_job",
    "worker_name",
]

RUNNER_SCHEMA = "modelshield-runner-v1"
"""Schema of job keys and checkpoint files; part of every key, so a change of it recomputes all."""

JobFunction = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A job: JSON parameters in, a JSON-safe dict out. It must be deterministic for seeded params."""


@dataclass(frozen=True, slots=True)
class _Registered:
    fn: JobFunction
    version: int
    module: str


_JOBS: dict[str, _Registered] = {}

# Job kinds modelshield ships, imported on first use so that the runner itself starts without torch.
_BUILTIN = {"evasion-shard": "modelshield.runner.evasion"}

# Deterministic user errors: the same job fails the same way again, so it is not retried.
_NOT_RETRIED = (ConfigError, InputError, MissingDataError, ModelCapabilityError, IntegrityError)


def register_job(kind: str, fn: JobFunction, *, version: int = 1) -> None:
    """Register ``fn`` as the job function of ``kind`` (call it at import time of fn's module).

    Workers import fn's module before calling it (it must be importable there: a package, or a
    module whose folder the driver has on ``sys.path``; the runner adds that folder).

    Args:
        kind: the job kind, e.g. ``"evasion-shard"``.
        fn: ``fn(params) -> dict``, deterministic for seeded params, JSON-safe result.
        version: bump it when fn's results change for the same params: it is part of every job's
            key, so checkpoints written by the old code are recomputed, never reused.

    Raises:
        ConfigError: kind is empty, or already registered to another function.
    """
    if not isinstance(kind, str) or not kind.strip():
        raise ConfigError(f"register_job: 'kind' must be a non-empty string; got {kind!r}. "
                          "Name the job kind, e.g. 'evasion-shard'.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"register_job: 'version' must be an int >= 1; got {version!r}. "
                          "Start at 1 and bump it when the job's results change.")
    old = _JOBS.get(kind)
    module = getattr(fn, "__module__", None) or "__main__"
    if old is not None and (old.module, getattr(old.fn, "__qualname__", None)) != (
            module, getattr(fn, "__qualname__", None)):
        raise ConfigError(f"register_job: 'kind' must be unique; got {kind!r}, already registered by "
                          f"{old.module}. Choose another name.")
    _JOBS[kind] = _Registered(fn=fn, version=version, module=module)


def job_kinds() -> list[str]:
    """The registered job kinds (built-in ones included, whether imported yet or not)."""
    return sorted({*_JOBS, *_BUILTIN})


def _lookup(kind: str, owner: str) -> _Registered:
    if kind not in _JOBS and kind in _BUILTIN:
        importlib.import_module(_BUILTIN[kind])
    reg = _JOBS.get(kind)
    if reg is None:
        raise ConfigError(
            f"{owner}: 'kind' must be a registered job kind ({', '.join(job_kinds())}); got {kind!r}. "
            "Import the module that calls register_job for it first."
        )
    return reg


def canonical_json(obj: Any, *, owner: str = "Job", what: str = "params") -> str:
    """Compact, key-sorted JSON of obj (no NaN or inf): the form keys and digests are taken over.

    Raises:
        ConfigError: obj is not JSON-safe (the message names the offending type).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {what!r} must be JSON-safe (str, int, float, bool, None, lists, "
                          f"dicts with str keys; no NaN); got an error: {first_line(exc)}. "
                          "Pass names and numbers, not objects.") from None


@dataclass(init=False, frozen=True, slots=True)
class Job:
    """One unit of work: a registered job kind and its JSON parameters.

    ``params`` is stored as its canonical JSON round trip (tuples become lists), which is exactly
    what a worker receives. ``key`` is the SHA-256 of the canonical JSON of the runner schema,
    the kind, the kind's registered version and the params: equal keys mean the same work, and
    a checkpoint file is named after it.

    Args:
        kind: a registered job kind (``job_kinds()``).
        params: JSON-safe parameters (names of models and data, numbers, seeds).
        cost: the job's expected cost in any unit shared by the jobs of one run (e.g. points x
            attack steps); ``run_jobs`` starts the costliest first, so that no long job starts
            last while the other workers idle. Not part of the key.

    Raises:
        ConfigError: unknown kind, params not a JSON-safe mapping, or a negative or non-finite cost.

    Example:
        job = Job("evasion-shard", {"model": "digits-cnn", "attack": {"name": "pgd", "eps": 0.1},
                                    "start": 0, "stop": 100, "seed": 0})
    """

    kind: str
    params: dict[str, Any] = field(compare=False)
    version: int = field(init=False, compare=False)
    key: str = field(init=False)
    cost: float = field(init=False, compare=False)

    def __init__(self, kind: str, params: Mapping[str, Any], *, cost: float = 1.0) -> None:
        reg = _lookup(kind, "Job")
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < float("inf"):
            raise ConfigError(f"Job: 'cost' must be a finite number >= 0; got {cost!r}. Give the expected "
                              "cost, e.g. points x steps, or leave the default 1.")
        object.__setattr__(self, "cost", float(cost))
        if not isinstance(params, Mapping):
            raise ConfigError(f"Job: 'params' must be a mapping; got {type(params).__name__}. "
                              "Pass a dict of JSON-safe values.")
        text = canonical_json(dict(params))
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", json.loads(text))
        object.__setattr__(self, "version", reg.version)
        spec = canonical_json({"schema": RUNNER_SCHEMA, "kind": kind, "version": reg.version,
                               "params": self.params})
        object.__setattr__(self, "key", hashlib.sha256(spec.encode("ascii")).hexdigest())

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def module(self) -> str:
        """The module that registers this job's kind (workers import it)."""
        return _lookup(self.kind, "Job").module

    def spec(self) -> dict[str, Any]:
        """The JSON description of the job that checkpoints store and check."""
        return {"schema": RUNNER_SCHEMA, "kind": self.kind, "version": self.version, "params": self.params,
                "key": self.key}

    def task(self, index: int) -> Task:
        """The job as a task for a worker: names and JSON only."""
        module = self.module
        return Task(index=index, key=self.key, kind=self.kind, module=module, root=_module_root(module),
                    params_json=canonical_json(self.params))


def _module_root(module: str) -> str | None:
    """The folder to put on a worker's sys.path so that ``import module`` works there, if known."""
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path:
        return None
    p = Path(path).resolve()
    depth = module.count(".") + (2 if p.name == "__init__.py" else 1)
    return str(p.parents[depth - 1])


@dataclass(frozen=True, slots=True)
class Task:
    """What a worker receives for one job: its position, key, kind, module and JSON params."""

    index: int
    key: str
    kind: str
    module: str
    root: str | None
    params_json: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came back from one attempt at a task.

    ``result_json`` is the job's result as canonical JSON (None on failure). ``crashed`` says the
    worker process died (killed, out of memory, ``os._exit``) rather than the job raising.
    ``retryable`` is False for deterministic user errors (ConfigError, InputError,
    MissingDataError, ModelCapabilityError) and for IntegrityError (a changed or tampered model or
    data file), which would fail the same way again.
    """

    index: int
    key: str
    result_json: str | None
    error_type: str | None = None
    error: str | None = None
    crashed: bool = False
    retryable: bool = True
    time_s: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.result_json is not None


def _ensure_module(module: str, root: str | None) -> None:
    if module in sys.modules:
        return
    if root and root not in sys.path:
        sys.path.append(root)  # appended, so it never shadows an installed package
    importlib.import_module(module)


def _set_threads(threads: int | None) -> None:
    if threads is not None and "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def worker_name() -> str:
    """``host:pid`` of the current process (recorded with each result)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_task(task: Task, threads: int | None = None) -> Outcome:
    """Run one task in this process and return its outcome; never raises for a job's failure.

    Imports the task's module (registering its kind), sets torch's intra-op threads to
    ``threads`` when given and torch is loaded, calls the job function and checks that its
    result is a JSON-safe dict. An exception becomes a failed outcome (type and first line of
    the message); KeyboardInterrupt and SystemExit propagate.
    """
    start = time.perf_counter()
    try:
        _ensure_module(task.module, task.root)
        reg = _lookup(task.kind, "execute_task")
        _set_threads(threads)
        result = reg.fn(json.loads(task.params_json))
        _set_threads(threads)  # the job may have imported torch itself
        if not isinstance(result, dict):
            raise ConfigError(f"execute_task: job {task.kind!r} must return a dict; got "
                              f"{type(result).__name__}. Return a JSON-safe dict of results.")
        text = canonical_json(result, owner=f"job {task.kind!r}", what="result")
    except Exception as exc:
        return Outcome(index=task.index, key=task.key, result_json=None, error_type=type(exc).__name__,
                       error=first_line(exc), retryable=not isinstance(exc, _NOT_RETRIED),
                       time_s=time.perf_counter() - start, worker=worker_name())
    return Outcome(index=task.index, key=task.key, result_json=text, time_s=time.perf_counter() - start,
                   worker=worker_name())
