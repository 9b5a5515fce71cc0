"""Rich rendering for the CLI: the one-line error, progress bars, warnings and result tables."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

__all__ = [
    "assessment_table",
    "fail",
    "metrics_table",
    "out",
    "progress_bar",
    "say",
    "show_warnings",
]

_SEVERITY_STYLE = {"none": "green", "low": "blue", "medium": "yellow", "high": "dark_orange",
                   "critical": "bold red"}


def out() -> Console:
    """Console on stdout (looked up at call time, so test runners can capture it)."""
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(exc: Exception, *, code: int = 2) -> NoReturn:
    """Print the error as one red line on stderr and exit with code."""
    message = " ".join(str(exc).split())
    _err().print(f"[bold red]error:[/] [red]{escape(message)}[/]")
    raise typer.Exit(code)


def say(text: str) -> None:
    """One plain line on stdout (markup allowed)."""
    out().print(text, soft_wrap=True)


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """Yield a ``progress(done, total, description)`` callback drawing a rich progress bar on stderr."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=_err(), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def callback(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text or description)

        yield callback


@contextmanager
def show_warnings() -> Iterator[None]:
    """Collect warnings raised in the block; print each UserWarning (EvaluationWarning included)
    once as a yellow line afterwards."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            console = _err()
            seen: set[str] = set()
            for w in caught:
                if not issubclass(w.category, UserWarning):  # library deprecations are not for users
                    continue
                text = " ".join(str(w.message).split())
                if text not in seen:
                    seen.add(text)
                    console.print(f"[yellow]warning ({w.category.__name__}):[/] {escape(text)}")


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if ("accuracy" in key or "rate" in key or "recall" in key) else f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def metrics_table(result: Mapping[str, Any], title: str) -> None:
    """Print an attack's headline metrics as a two-column table."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("attack", "access", "eps", "norm", "n", "clean_accuracy", "robust_accuracy",
                "attack_success_rate", "max_perturbation", "median_perturbation", "invalid_points",
                "queries_forward", "queries_backward", "median_queries_per_success",
                "mean_queries_per_success", "max_changes", "malicious_rows", "attacked_rows",
                "successes", "success_rate", "malicious_recall_before", "malicious_recall_after",
                "median_changes", "changes_histogram", "invalid_rows", "method", "max_word_fraction",
                "eligible", "recall_before", "recall_after", "median_words_changed",
                "median_chars_changed", "median_queries", "time_s"):
        if key in result:
            table.add_row(key, _fmt(result[key], key))
    out().print(table)


def assessment_table(report: Mapping[str, Any], paths: tuple[Path, Path]) -> None:
    """Print the risk summary of a report and where it was written."""
    summary = report["summary"]
    table = Table(title=f"Assessment of {report['model'].get('name')}", header_style="bold")
    for col in ("threat", "severity", "ATLAS", "summary"):
        table.add_column(col)
    for risk in summary["risks"]:
        style = _SEVERITY_STYLE.get(risk["severity"], "")
        table.add_row(risk["title"], f"[{style}]{risk['severity']}[/]",
                      ", ".join(a["id"] for a in risk["atlas"]), escape(risk["summary"]))
    out().print(table)
    metrics = ", ".join(f"{k}={_fmt(v, k)}" for k, v in summary["metrics"].items() if "." not in k)
    style = _SEVERITY_STYLE.get(summary["severity"], "")
    say(f"Overall severity: [{style}]{summary['severity']}[/]; {metrics}")
    say(f"Report written to {escape(str(paths[0]))} and {escape(str(paths[1]))}")
