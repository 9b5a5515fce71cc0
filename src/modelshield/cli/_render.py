"""Rich rendering for the CLI: the one-line error, the crash report, progress bars, warnings and result
tables. The exit codes live here too (documented in the root ``--help`` and the README)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import traceback
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
    "EXIT_FINDING",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "assessment_table",
    "crash",
    "fail",
    "metrics_table",
    "out",
    "progress_bar",
    "say",
    "show_warnings",
]

EXIT_OK = 0
"""The command did its work."""
EXIT_FINDING = 1
"""A ``--fail-under`` threshold was missed (the work was done; the result is the finding)."""
EXIT_USAGE = 2
"""Bad usage or input (any ModelShieldError, or a click usage error): nothing was done."""
EXIT_INTERNAL = 3
"""An unexpected exception: a modelshield bug; the traceback is written to a file."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C), as shells report SIGINT (128 + 2)."""

_MAX_REASON = 300  # characters of an unexpected exception's message shown on the one line

_SEVERITY_STYLE = {"none": "green", "low": "blue", "medium": "yellow", "high": "dark_orange",
                   "critical": "bold red"}


def out() -> Console:
    """Console on stdout (looked up at call time, so test runners can capture it)."""
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(exc: BaseException | str, *, code: int = EXIT_USAGE) -> NoReturn:
    """Print the error (an exception's message, or a text) as one red line on stderr and exit with code."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    _err().print(f"[bold red]error:[/] [red]{escape(message)}[/]")
    raise typer.Exit(code)


def crash_dir() -> Path:
    """Folder for crash tracebacks: ``$MODELSHIELD_CACHE/crash`` when that variable is set, else the
    system temporary folder."""
    cache = os.environ.get("MODELSHIELD_CACHE")
    return Path(cache).expanduser() / "crash" if cache else Path(tempfile.gettempdir())


def _write_traceback(exc: BaseException) -> tuple[Path | None, str]:
    """Write exc's traceback to a new file; (its path, "") or (None, why it could not be written)."""
    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        # mkstemp: a new file (O_EXCL, mode 0600), so a planted link in a shared temp folder is never
        # followed and two crashes in the same second do not collide.
        fd, name = tempfile.mkstemp(prefix=f"modelshield-crash-{stamp}-{os.getpid()}-", suffix=".txt",
                                    dir=folder)
        path = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:  # the crash report must never raise a second error over the first
        return None, f"{type(err).__name__}: {err}"
    return path, ""


def crash(exc: BaseException) -> NoReturn:
    """Report an unexpected exception as one red line naming the traceback file; exit EXIT_INTERNAL."""
    reason = " ".join(str(exc).split())
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    what = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    path, why = _write_traceback(exc)
    where = (f"Traceback written to {path}" if path is not None
             else f"The traceback could not be written ({why})")
    fail(f"internal error ({what}); this is a modelshield bug. {where}; rerun with --debug to see it.",
         code=EXIT_INTERNAL)


def check_out_folder(out: Path, force: bool, *, owner: str, own: frozenset[str] = frozenset(),
                     own_what: str = "") -> None:
    """Refuse an ``--out`` that is a file, or a folder holding files (other than the names in
    ``own``, which a rerun of the same command may reuse, described by ``own_what``) unless force."""
    from modelshield.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{owner}: '--out' must be a folder; got {str(out)!r}, which is a file. "
                          "Choose a new folder name.")
    other = sorted(p.name for p in out.iterdir() if p.name not in own) if out.is_dir() else []
    if other and not force:
        also = f" (or {own_what})" if own_what else ""
        raise ConfigError(f"{owner}: '--out' must be a new or empty folder{also}; got {str(out)!r}, which "
                          f"holds {other[0]!r}. Pass --force to write into it, or choose another folder.")


def say(text: str) -> None:
    """One plain line on stdout (markup allowed)."""
    out().print(text, soft_wrap=True)


PROGRESS_ENV = "MODELSHIELD_PROGRESS"
"""``rich`` (bar), ``plain`` (timestamped lines on stderr), ``off``, or unset: a bar on a terminal,
plain lines when stderr is a file or pipe (after the first second, so a quick error stays one
line), nothing when stderr is not a file (e.g. captured by a test runner)."""


class _PlainProgress:
    """``progress(done, total, text)`` printing plain timestamped lines on stderr (no terminal).

    A line is printed when the work completes, when the share done has grown by ``step`` (10
    points), when the text changes at the start of a stage (``done == 0``) or ``gap`` seconds
    after the last line (texts such as a running loss change on every call), and otherwise every
    ``every`` seconds (a heartbeat, from a background thread, so a long first batch still shows
    it is running). Nothing is printed
    during the first ``quiet`` seconds, so a command that fails at once prints only its error.
    Never a terminal control code.
    """

    def __init__(self, description: str, *, quiet: float, step: float = 0.1, every: float = 30.0,
                 gap: float = 2.0) -> None:
        self.description, self.quiet, self.step, self.every, self.gap = description, quiet, step, every, gap
        self.stream = sys.stderr
        self.start = time.monotonic()
        self.state: tuple[int, int | None, str] = (0, None, description)
        self.printed: tuple[int, int | None, str] | None = None
        self.last_share = -1.0
        self.last_time = self.start
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="modelshield-progress", daemon=True)

    def _line(self, now: float) -> None:
        done, total, label = self.state
        share = done / total if total else 0.0
        count = f": {done}/{total} ({100 * share:.0f}%)" if total else ""
        elapsed = f" [{now - self.start:.0f} s]" if self.printed == self.state else ""
        self.stream.write(f"[{time.strftime('%H:%M:%S')}] {label}{count}{elapsed}\n")
        self.stream.flush()
        self.printed, self.last_share, self.last_time = self.state, share, now

    def __call__(self, done: int, total: int | None, text: str = "") -> None:
        with self.lock:
            self.state = (done, total, text or self.description)
            now = time.monotonic()
            if now - self.start < self.quiet or self.printed == self.state:
                return
            share = done / total if total else 0.0
            # A new text alone (a loss that changes every batch) prints at most every `gap` s.
            if (self.printed is None or (total and done >= total)
                    or share - self.last_share >= self.step - 1e-9
                    or (self.state[2] != self.printed[2]
                        and (done == 0 or now - self.last_time >= self.gap))):
                self._line(now)

    def _beat(self) -> None:
        while not self.stop.wait(0.25):
            with self.lock:
                now = time.monotonic()
                if now - self.start < self.quiet:
                    continue
                if self.printed is None or now - self.last_time >= self.every:
                    self._line(now)

    def __enter__(self) -> _PlainProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _progress_mode(console: Console) -> str:
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("rich", "plain", "off"):
        return mode
    if console.is_terminal:
        return "rich"
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return "off"
    return "auto-plain"


def _ignore(done: int, total: int | None, text: str = "") -> None:
    """A progress callback that shows nothing."""


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """Yield a ``progress(done, total, description)`` callback drawing a rich progress bar on stderr.

    When stderr is not a terminal (a log file, CI, a pipe), the callback prints plain lines
    instead, e.g. ``[12:00:01] pgd eps=0.1: 3/10 (30%)`` (see ``_PlainProgress``);
    ``$MODELSHIELD_PROGRESS`` (``rich``, ``plain``, ``off``) overrides the choice.
    """
    console = _err()
    mode = _progress_mode(console)
    if mode == "off":
        yield _ignore
        return
    if mode != "rich":
        with _PlainProgress(description, quiet=0.0 if mode == "plain" else 1.0) as plain:
            yield plain
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def callback(done: int, total: int | None, text: str) -> None:
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
