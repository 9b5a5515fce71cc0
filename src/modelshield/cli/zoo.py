"""``modelshield zoo ...``: list and train the reference models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.cli.attack import DATA_DIR_HELP

__all__ = ["zoo_app"]

zoo_app = typer.Typer(help="List and train the reference models of the zoo.", no_args_is_help=True)


@zoo_app.command("list")
def list_models() -> None:
    """Show each zoo model, its data set, whether it is cached and its recorded test accuracy."""
    from modelshield.models import zoo

    table = Table(title=f"modelshield zoo (cache: {zoo.cache_dir()})", header_style="bold")
    for col in ("name", "dataset", "cached", "test accuracy", "min required", "description"):
        table.add_column(col, justify="right" if "acc" in col or "min" in col else "left")
    for name in zoo.names():
        spec, meta = zoo.spec(name), zoo.cached_meta(name)
        accuracy = f"{100 * float(meta['test_accuracy']):.2f}%" if meta and "test_accuracy" in meta else "-"
        table.add_row(name, spec.dataset, "yes" if zoo.is_cached(name) else "no", accuracy,
                      f"{100 * spec.min_accuracy:.1f}%", spec.description)
    render.out().print(table)


@zoo_app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="Zoo model to train (see 'modelshield zoo list').")],
    force: Annotated[bool, typer.Option("--force", help="Retrain even if the model is cached.")] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Train a zoo model (deterministic, CPU) and cache its weights."""
    from modelshield.models import zoo

    zoo.spec(name)
    with render.progress_bar(f"training {name}") as progress, render.show_warnings():
        zm = zoo.train(name, data_root=data_dir, force=force, progress=progress)
    meta = zm.meta
    render.say(f"Trained {name}: test accuracy {100 * float(meta['test_accuracy']):.2f}% "
               f"in {float(meta.get('train_time_s', 0.0)):.1f} s; weights SHA-256 "
               f"{meta.get('weights_sha256')}; saved to {meta.get('path')}")
