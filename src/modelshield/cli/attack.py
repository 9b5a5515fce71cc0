"""``modelshield attack ...``: run one attack and print or save its verified metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelshield.assess import check_new_files, provenance, run_in_batches, write_json
from modelshield.attacks.evasion.registry import EVASION_ATTACKS, build_attack
from modelshield.cli import _render as render
from modelshield.cli._target import load_target, parse_norm

__all__ = ["attack_app"]

attack_app = typer.Typer(help="Run a single attack against a model.", no_args_is_help=True)

MODEL_HELP = "Zoo name (see 'modelshield zoo list') or path to a saved model file."
DATA_HELP = "Data set of a model file: digits, mnist or fashion-mnist (zoo models know theirs)."
DATA_DIR_HELP = "Folder holding mnist/ and fashion-mnist/ (default: $MODELSHIELD_DATA)."
ARCH_HELP = "Zoo architecture of a bare state-dict model file, e.g. cnn-8x8."


@attack_app.command("evasion")
def evasion(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    attack: Annotated[str, typer.Option(help=f"One of: {', '.join(EVASION_ATTACKS)}.")] = "pgd",
    eps: Annotated[float, typer.Option(help="Perturbation budget in input units (inputs in [0, 1]).")] = 0.1,
    steps: Annotated[int | None, typer.Option(help="Iterations (default: the attack's own).")] = None,
    norm: Annotated[str, typer.Option(help="Threat-model norm: 'inf' or '2'.")] = "inf",
    n: Annotated[int, typer.Option(help="Number of test points (the first n of the test split).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for random starts (results are reproducible).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 250,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics + provenance here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    arch: Annotated[str | None, typer.Option(help=ARCH_HELP)] = None,
) -> None:
    """Run one evasion attack on the first n test points and print its verified metrics."""
    if json_out is not None:
        check_new_files([json_out], overwrite=force, owner="modelshield attack evasion")
    atk = build_attack(attack, eps=eps, norm=parse_norm(norm), steps=steps, seed=seed)
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = load_target(model, data=data, data_dir=data_dir, arch=arch, n=n, progress=progress)
        result = run_in_batches(atk, target.module, target.x, target.y, batch_size=batch_size,
                                progress=progress, label=f"{attack} eps={eps:g}")
    summary = {**result.to_dict(), "attack": attack, "attack_class": result.attack}
    render.metrics_table(summary, title=f"{attack} on {target.model_info['name']}")
    if json_out is not None:
        payload = {**summary,
                   "model": target.model_info, "data": {**target.data_info, "n": result.n},
                   "provenance": provenance(model_info=target.model_info, data_info=target.data_info,
                                            seed=seed, attacks={attack: result.params})}
        write_json(json_out, payload, overwrite=force)
        render.say(f"Metrics written to {json_out}")
