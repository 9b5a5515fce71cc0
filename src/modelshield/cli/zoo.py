"""``modelshield zoo ...``: list and train the reference models."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.cli.attack import DataDirOption, DeviceOption
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
    data_dir: DataDirOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Train a zoo model (deterministic on the CPU) and cache its weights.

    --device cuda (or mps, auto) trains a torch model on that device; the weights are saved,
    scored and checked on the CPU as always, but GPU arithmetic differs from the CPU's, so they
    (and their digest) are not those of a CPU run. scikit-learn models ignore --device.
    """
    from modelshield import zoo

    dev = resolve_device(device, owner="modelshield zoo train")  # a bad --device fails before any work
    zoo.spec(name)
    with render.progress_bar(f"training {name}") as progress, render.show_warnings():
        zm = zoo.train(name, data_root=data_dir, force=force, device=dev, progress=progress)
    meta = zm.meta
    render.say(f"Trained {name}: test accuracy {100 * float(meta['test_accuracy']):.2f}% "
               f"in {float(meta.get('train_time_s', 0.0)):.1f} s; weights SHA-256 "
               f"{meta.get('weights_sha256')}; saved to {meta.get('path')}")
