"""``modelshield sweep``: many models x attacks x budgets from a YAML plan, on local processes or Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.cli._runner import (
    BACKENDS,
    AddressOption,
    RetriesOption,
    ThreadsOption,
    WorkersOption,
    executor,
)
from modelshield.errors import ConfigError

__all__ = ["BACKENDS", "sweep"]

OWNER = "modelshield sweep"


OWN_FILES = frozenset({"sweep.json", "checkpoints"})
"""What a sweep writes into --out: a folder holding only these is an earlier sweep's (a rerun resumes)."""


def _check_same_plan(path: Path, plan: dict[str, Any], force: bool) -> None:
    """Refuse to replace an earlier sweep.json written for another plan (a rerun of the same plan resumes)."""
    if force or not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")).get("plan")
    except (OSError, ValueError, AttributeError):
        earlier = None
    if earlier != json.loads(json.dumps(plan)):
        raise ConfigError(f"{OWNER}: '--out' holds {str(path)!r} from another plan (or unreadable); got a "
                          "different plan. Pass --force to replace it, or choose another folder.")


def _table(result: Any) -> None:
    counts = result.counts
    title = (f"sweep: {len(result.rows)} cells, {sum(counts.values())} jobs "
             f"({counts['done']} run, {counts['cached']} cached, {counts['failed']} failed) on "
             f"{result.executor}")
    table = Table(title=escape(title), header_style="bold")
    for col in ("model", "attack", "eps", "clean acc", "robust acc", "success", "median norm", "queries"):
        table.add_column(col, overflow="fold")

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    for r in result.rows:
        if r.status != "ok":
            table.add_row(escape(r.model), r.attack, f"{r.eps:g}", "[red]failed[/red]", "", "",
                          "", escape(str(r.error or ""))[:60])
            continue
        table.add_row(escape(r.model), r.attack, f"{r.eps:g}", num(r.clean_accuracy), num(r.robust_accuracy),
                      num(r.attack_success_rate), num(r.median_norm),
                      "" if r.queries is None else str(r.queries))
    render.out().print(table)


def sweep(
    plan: Annotated[Path, typer.Argument(help="YAML plan: models, attacks (name, eps, norm, steps, "
                                              "max_queries), n, seed, shard_size, batch_size.")],
    out: Annotated[Path, typer.Option("--out", help="New or empty folder for sweep.json (and checkpoints).")],
    backend: Annotated[str, typer.Option(help=f"Where jobs run: {', '.join(BACKENDS)}.")] = "inline",
    workers: WorkersOption = 2,
    threads_per_worker: ThreadsOption = 1,
    ray_address: AddressOption = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Folder of finished jobs; rerunning resumes from it (default OUT/checkpoints).")] = None,
    retries: RetriesOption = 2,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that holds files.")] = False,
) -> None:
    """Attack every model of PLAN with every attack at every eps, split into jobs; write sweep.json.

    Zoo models must be trained first (`modelshield zoo train NAME`); a sweep trains nothing.
    Rerunning the same command resumes: finished jobs come from the checkpoint folder.
    """
    from modelshield.assess import write_json
    from modelshield.runner.sweep import SweepPlan, check_models_cached, run_sweep

    pool = executor(backend, workers, threads_per_worker, ray_address, retries, owner=OWNER)
    sweep_plan = SweepPlan.from_yaml(plan)
    check_models_cached(sweep_plan)
    ckpt = checkpoint if checkpoint is not None else out / "checkpoints"
    render.check_out_folder(out, force, owner=OWNER, own=OWN_FILES, own_what="an earlier sweep's")
    _check_same_plan(out / "sweep.json", sweep_plan.to_dict(), force)
    out.mkdir(parents=True, exist_ok=True)
    with render.progress_bar(f"sweep on {backend}") as progress, render.show_warnings():
        result = run_sweep(sweep_plan, pool, checkpoint=ckpt, retries=retries, progress=progress)
    write_json(out / "sweep.json", result.to_dict(), overwrite=True)
    _table(result)
    failed = len(result.failed_jobs)
    note = f"; {failed} job(s) failed (see failed_jobs)" if failed else ""
    render.say(f"sweep.json written to {escape(str(out))}{note}")
