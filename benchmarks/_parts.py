"""Resumable benchmarks in parts (shared by benchmarks/physical.py and benchmarks/scale.py).

A benchmark is a dict of parts, ``name -> function(args) -> JSON-safe dict``. ``run_parts`` runs
the selected ones in order and saves the report after each, so a long run cut short resumes from
the last finished part; a saved report is reused only when its settings are the run's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Part = Callable[[argparse.Namespace], dict[str, Any]]


def save(report: dict[str, Any], path: Path) -> None:
    """Write report as JSON to path atomically (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
    os.replace(tmp, path)


def unknown_parts(selected: str, parts: Mapping[str, Part]) -> list[str]:
    """The names in the comma-separated ``selected`` that are not parts (for ``parser.error``)."""
    return [k for k in filter(None, selected.split(",")) if k not in parts]


def run_parts(benchmark: str, parts: Mapping[str, Part], args: argparse.Namespace, *,
              settings: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    """Run the parts named in ``args.parts`` that ``args.out`` does not hold yet (all of them with
    ``args.fresh``, or when its settings differ), saving the report after each; print and return it.
    """
    report: dict[str, Any] = {}
    if args.out.exists() and not args.fresh:
        try:
            old = json.loads(args.out.read_text())
        except ValueError:
            old = {}
        if old.get("settings") == settings:
            report = old
    if not report:
        report = {"benchmark": benchmark, "settings": settings, "parts": {}}
    report.update(environment)
    done: dict[str, Any] = report["parts"]
    for key in filter(None, args.parts.split(",")):
        if key in done:
            continue
        t0 = time.perf_counter()
        result = parts[key](args)
        result["time_s"] = round(time.perf_counter() - t0, 1)
        done[key] = result
        save(report, args.out)
        print(f"{key}: {result['time_s']} s", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return report
