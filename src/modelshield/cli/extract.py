"""``modelshield extract``: steal a model through its prediction API and measure the copy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelshield._checks import check_choice
from modelshield.assess import check_new_files, provenance, write_json
from modelshield.assess.plan import parse_floats
from modelshield.assess.suite import jsonable
from modelshield.cli import _render as render
from modelshield.cli._target import load_target
from modelshield.cli.attack import (
    MODEL_HELP,
    ArchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    TrustTorchScriptOption,
)
from modelshield.defenses.extraction import PRADA
from modelshield.errors import ConfigError
from modelshield.experiments.extraction import (
    DEFAULT_POOL,
    DEFENCES,
    EXTRACTION_ATTACKS,
    POOLS,
    ExtractionRun,
    Pool,
    build_extraction_attack,
    check_budget_memory,
    load_pool,
    run_extraction,
)
from modelshield.models import resolve_device

__all__ = ["extract"]

OWNER = "modelshield extract"
POOL_HELP = (f"Attacker's unlabelled data: {', '.join(POOLS)} (train images; mnist-8x8 = MNIST in the "
             "8x8 digits format; noise = uniform) or a .npy/.npz/.pt tensor (N, *input_shape). Default: "
             "another data set of the victim's format (mnist -> fashion-mnist, digits -> mnist-8x8).")


def _checkpoints(text: str | None, queries: int) -> tuple[int, ...]:
    """The --checkpoints list, or a quarter and a half of the budget."""
    if text is None:
        return tuple(sorted({max(1, queries // 4), max(1, queries // 2)} - {queries}))
    values = parse_floats(text, name="--checkpoints", owner=OWNER)
    if not all(v.is_integer() and 1 <= v <= queries for v in values):
        raise ConfigError(f"{OWNER}: '--checkpoints' must be query counts in [1, --queries={queries}]; got "
                          f"{text!r}. Write e.g. --checkpoints 500,1000.")
    return tuple(sorted({int(v) for v in values}))


def _check_memory_early(victim: str, queries: int) -> None:
    """For a zoo victim (input shape known without loading it): refuse a --queries that cannot fit."""
    from modelshield import zoo

    if queries >= 1 and victim in zoo.names() and zoo.spec(victim).input_shape:
        check_budget_memory(queries, zoo.spec(victim).input_shape, owner=OWNER)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{100 * v:.1f}%" if isinstance(v, float) else str(v))


def _render(run: ExtractionRun, *, victim: str, attack: str, pool: Pool) -> None:
    r = run.result
    table = Table(title=f"{attack} extraction of {victim} (pool {pool.name}, {pool.relation})",
                  header_style="bold")
    for col in ("victim queries", "fidelity", "copy accuracy"):
        table.add_column(col, justify="right")
    for p in r.curve:
        table.add_row(f"{p.queries:,}", _fmt(p.fidelity), _fmt(p.accuracy))
    render.out().print(table)
    lines = [f"queries spent: {r.queries:,} (API answered {run.stream_queries:,}); time {r.time_s:.1f} s"]
    if run.honest_cost is not None:
        c = run.honest_cost
        lines.append(f"defence {run.defence}: honest accuracy {_fmt(c['accuracy_before'])} -> "
                     f"{_fmt(c['accuracy_after'])}, top-1 labels kept {_fmt(c['label_agreement'])}")
    if run.prada is not None:
        v = run.prada
        verdict = (f"[red]flagged after {v['queries_to_detection']:,} queries[/]" if v["flagged"]
                   else f"[green]not flagged[/] in {v['queries']:,} queries")
        lines.append(f"PRADA (delta={v['delta']:g}): {verdict} (final W={v['final_w']})")
    for line in lines:
        render.say(line)


def extract(
    victim: Annotated[str, typer.Option("--victim", help=MODEL_HELP)],
    attack: Annotated[str, typer.Option(help=f"One of: {', '.join(EXTRACTION_ATTACKS)}.")] = "knockoff",
    queries: Annotated[int, typer.Option(help="Victim queries the attack may spend.")] = 2000,
    pool: Annotated[str | None, typer.Option(help=POOL_HELP)] = None,
    output: Annotated[str, typer.Option(help="What the API answers: proba or labels.")] = "proba",
    strategy: Annotated[str | None, typer.Option(
        help="Knockoff query selection: random, adaptive or balanced (default: balanced, the "
             "strongest in benchmarks/RESULTS.md).")] = None,
    min_steps: Annotated[int, typer.Option(
        help="Knockoff: least thief gradient steps per checkpoint (no extra queries).")] = 1500,
    defence: Annotated[str, typer.Option(help=f"Output hardening: {', '.join(DEFENCES)}.")] = "none",
    prada: Annotated[bool, typer.Option("--prada", help="Replay the query stream through PRADA.")] = False,
    checkpoints: Annotated[str | None, typer.Option(help="Comma-separated query counts for the curve "
                                                   "(default: a quarter and a half of --queries).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Thief training epochs (default: the attack's).")] = None,
    n: Annotated[int, typer.Option(help="Test points the copy is measured on (first n).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed (query order, thief initialisation, noise).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results + provenance here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Steal a model by queries (Knockoff Nets, Jacobian augmentation or equation solving) and
    print the copy's fidelity and accuracy at each checkpoint; exits 2 on bad input.

    With --device the victim runs there (its queries are moved to it); the thief trains on the CPU.
    """
    resolve_device(device, owner=OWNER)  # a bad --device fails before any work
    if json_out is not None:
        check_new_files([json_out], overwrite=force, owner=OWNER)
    check_choice("--defence", defence, DEFENCES, owner=OWNER)
    if strategy is None:
        strategy = "balanced" if attack == "knockoff" else "random"
    _check_memory_early(victim, queries)
    atk = build_extraction_attack(attack, budget=queries, output=output, strategy=strategy,
                                  checkpoints=_checkpoints(checkpoints, queries), epochs=epochs,
                                  min_steps=min_steps if attack == "knockoff" else 0, seed=seed)
    with render.progress_bar("loading victim") as progress, render.show_warnings():
        target = load_target(victim, data=data, data_dir=data_dir, arch=arch, n=n, progress=progress,
                             trust_torchscript=trust_torchscript, device=device)
        if target.text or target.tabular:
            kind = "text" if target.text else "tabular"
            raise ConfigError(f"{OWNER}: '--victim' must be an image model (extraction queries it with "
                              f"image tensors); got {victim!r}, a {kind} model. Use e.g. --victim "
                              "digits-cnn.")
        dataset = target.data_info.get("name")
        spec = pool or DEFAULT_POOL.get(str(dataset), "noise")
        thief_pool = load_pool(spec, input_shape=target.x.shape[1:], bounds=target.bounds,
                               victim_dataset=dataset, data_root=data_dir, size=queries, seed=seed)
        progress(0, 1, f"{attack}: stealing with {queries} queries")
        run = run_extraction(target.module, thief_pool, atk, eval_data=(target.x.cpu(), target.y.cpu()),
                             defence=defence,
                             prada=PRADA() if prada else None, seed=seed)
    _render(run, victim=target.model_info["name"], attack=attack, pool=thief_pool)
    if json_out is not None:
        eval_info = {**target.data_info, "n": int(target.x.shape[0])}
        settings = {"attack": attack, "queries": queries, "output": output, "strategy": strategy,
                    "min_steps": min_steps, "defence": defence, "seed": seed, "params": run.result.params}
        prov = provenance(model_info=target.model_info, data_info=eval_info, seed=seed,
                          attacks={attack: run.result.params})
        prov.update(pool=thief_pool.info(), pool_sha256=thief_pool.sha256)
        payload = {**run.to_dict(), "settings": settings, "victim": target.model_info,
                   "eval_data": eval_info,
                   "pool": thief_pool.info(), "provenance": prov}
        write_json(json_out, jsonable(payload), overwrite=force)
        render.say(f"Results written to {escape(str(json_out))}")
