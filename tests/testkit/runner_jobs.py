"""Job kinds for the runner tests (registered on import; workers import this module by name).

They never import torch, so process-pool and Ray workers running them start quickly. Each call
appends a line ``<value> <pid>`` to ``params["log"]`` (when given), so tests count computations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelshield.runner import register_job


def _log(params: Mapping[str, Any]) -> None:
    log = params.get("log")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{params['value']} {os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())


def count(params: Mapping[str, Any]) -> dict[str, Any]:
    """Log the call, sleep ``sleep`` seconds, return ``value`` squared."""
    _log(params)
    time.sleep(float(params.get("sleep", 0.0)))
    v = int(params["value"])
    return {"value": v, "square": v * v}


def crash_once(params: Mapping[str, Any]) -> dict[str, Any]:
    """Kill the worker process on the first call (a marker file remembers it), then succeed."""
    marker = Path(params["marker"])
    if not marker.exists():
        marker.write_text("crashed\n", encoding="utf-8")
        os._exit(13)
    return count(params)


def crash_always(params: Mapping[str, Any]) -> dict[str, Any]:
    """Log the call, then kill the worker process, every time."""
    _log(params)
    os._exit(14)


def fail_always(params: Mapping[str, Any]) -> dict[str, Any]:
    """Log the call, then raise, every time."""
    _log(params)
    raise RuntimeError(f"job {params['value']} always fails\nsecond line")


def not_json(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return something that is not JSON-safe."""
    return {"value": object()}


register_job("test-count", count)
register_job("test-crash-once", crash_once)
register_job("test-crash-always", crash_always)
register_job("test-fail-always", fail_always)
register_job("test-not-json", not_json)


def threads(params: Mapping[str, Any]) -> dict[str, Any]:
    """torch's intra-op thread count in the worker (imports torch) and the OpenMP variable."""
    import torch

    return {"torch": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


register_job("test-threads", threads)
