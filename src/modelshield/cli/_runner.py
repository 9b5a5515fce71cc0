"""The CLI's runner options (--backend, --workers, ...), shared by ``sweep`` and ``assess``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelshield.errors import ConfigError

__all__ = ["BACKENDS", "AddressOption", "RetriesOption", "ThreadsOption", "WorkersOption", "executor"]

BACKENDS = ("inline", "processes", "ray")
"""``--backend`` names: this process, local worker processes, a Ray cluster."""

WorkersOption = Annotated[int, typer.Option(help="Worker processes (processes) or tasks in flight (ray).")]
ThreadsOption = Annotated[int, typer.Option(help="torch threads (and Ray CPUs) per worker.")]
AddressOption = Annotated[str | None, typer.Option(
    help="Ray cluster to join ('auto', 'ray://host:10001'); default: a local one for the run.")]
RetriesOption = Annotated[int, typer.Option(help="Extra attempts for a failing job.")]


def executor(backend: str, workers: int, threads: int, address: str | None, retries: int, *,
             owner: str) -> Any:
    """The runner executor for the options, each checked (one line naming the option and the fix).

    Raises:
        ConfigError: an unknown backend, workers or threads below 1, retries below 0, or
            --ray-address without --backend ray.
    """
    from modelshield.runner import InlineExecutor, ProcessExecutor, RayExecutor

    if backend not in BACKENDS:
        raise ConfigError(f"{owner}: '--backend' must be one of {', '.join(BACKENDS)}; got {backend!r}. "
                          "Use --backend processes for local worker processes.")
    for name, value in (("--workers", workers), ("--threads-per-worker", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{owner}: {name!r} must be an int >= 1; got {value!r}. Use e.g. {name} 2.")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"{owner}: '--retries' must be an int >= 0; got {retries!r}. Use e.g. --retries 2.")
    if address is not None and backend != "ray":
        raise ConfigError(f"{owner}: '--ray-address' is used by --backend ray; got --backend {backend}. "
                          "Drop --ray-address or pass --backend ray.")
    if backend == "inline":
        return InlineExecutor(threads=threads)
    if backend == "processes":
        return ProcessExecutor(workers=workers, threads_per_worker=threads)
    return RayExecutor(address=address, workers=workers, threads_per_worker=threads)
