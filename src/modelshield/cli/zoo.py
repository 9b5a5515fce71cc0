"""``modelshield zoo ...``: list and train the reference models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.cli.attack import DATA_DIR_HELP, DeviceOption
from modelshield.errors import ConfigError
from modelshield.models import resolve_device

__all__ = ["zoo_app"]

zoo_app = typer.Typer(help="List and train the reference models of the zoo.", no_args_is_help=True)


@zoo_app.command("list")
def list_models() -> None:
    """Show each zoo model, its data set, whether it is cached and its recorded test accuracy.

    A cached model whose weights file is not the one its metadata records (zoo.check_cache) is
    shown as "changed" with no accuracy, and a line says how to retrain it. Loading a model
    re-scores it on its test data as well (see modelshield.zoo).
    """
    from modelshield import zoo

    table = Table(title=f"modelshield zoo (cache: {zoo.cache_dir()})", header_style="bold")
    for col in ("name", "dataset", "cached", "test accuracy", "min required", "description"):
        table.add_column(col, justify="right" if "acc" in col or "min" in col else "left")
    problems: list[str] = []
    for name in zoo.names():
        spec, meta, problem = zoo.spec(name), zoo.cached_meta(name), zoo.check_cache(name)
        accuracy = f"{100 * float(meta['test_accuracy']):.2f}%" if meta and "test_accuracy" in meta else "-"
        cached = "yes" if zoo.is_cached(name) else "no"
        if problem is not None:
            cached, accuracy = "changed", "stale"
            problems.append(f"{name}: {problem}; its recorded accuracy does not apply. Retrain it with "
                            f"`modelshield zoo train {name} --force`.")
        table.add_row(name, spec.dataset, cached, accuracy, f"{100 * spec.min_accuracy:.1f}%",
                      spec.description)
    render.out().print(table)
    for line in problems:
        render.say(f"[bold yellow]warning:[/] {escape(line)}")


@zoo_app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="Zoo model to train (see 'modelshield zoo list').")],
    force: Annotated[bool, typer.Option("--force", help="Retrain even if the model is cached.")] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Train a zoo model (deterministic, CPU) and cache its weights.

    --device is checked like every command's (a typo or a device this machine lacks exits 2), but
    zoo models train on the CPU only: their recorded weights digest and accuracy are the CPU run's.
    """
    from modelshield import zoo

    owner = "modelshield zoo train"
    dev = resolve_device(device, owner=owner)  # a bad --device fails before any work
    if dev.type != "cpu":
        raise ConfigError(
            f"{owner}: '--device' must be cpu; got {device!r} ({dev}), but zoo models train on the CPU "
            "only, so that their recorded weights digest and accuracy can be reproduced. Use --device "
            "cpu (attacks, assess and defend run a trained zoo model on any device)."
        )
    zoo.spec(name)
    with render.progress_bar(f"training {name}") as progress, render.show_warnings():
        zm = zoo.train(name, data_root=data_dir, force=force, progress=progress)
    meta = zm.meta
    render.say(f"Trained {name}: test accuracy {100 * float(meta['test_accuracy']):.2f}% "
               f"in {float(meta.get('train_time_s', 0.0)):.1f} s; weights SHA-256 "
               f"{meta.get('weights_sha256')}; saved to {meta.get('path')}")
