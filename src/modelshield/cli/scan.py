"""``modelshield scan PATH...``: scan model files statically (nothing is loaded) and list the findings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.errors import ConfigError
from modelshield.secure.scan import ScanLimits, ScanReport, scan_path

__all__ = ["scan"]

_STYLE = {"critical": "bold red", "high": "dark_orange", "medium": "yellow", "low": "blue", "info": "dim"}


def scan(
    paths: Annotated[list[Path], typer.Argument(
        help="Model files or folders (formats are found by content).")],
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the reports as JSON instead of a table.")] = False,
    limit_seconds: Annotated[float, typer.Option(
        "--limit-seconds", min=0.001, help="Time limit per path; past it the rest is a finding.")] = 60.0,
    convert: Annotated[Path | None, typer.Option(
        "--convert", help="After a clean scan of one PyTorch checkpoint, write its weights to this file "
                          "as safetensors (read back and compared bit for bit).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --convert output.")] = False,
) -> None:
    """Scan model files for code that would run when they are loaded (pickles, archives, Keras, ONNX,
    safetensors). Nothing is loaded or executed.

    Exit codes: 0 no blocking finding, 1 blocking findings (critical, high or medium; --convert
    then writes nothing), 2 bad input.
    """
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ConfigError(f"modelshield scan: every PATH must exist; got {missing[0]!r}. Check the path.")
    if convert is not None and (len(paths) != 1 or not paths[0].is_file()):
        raise ConfigError(f"modelshield scan: --convert takes exactly one model file; got {len(paths)} "
                          f"path(s) ({', '.join(map(str, paths[:3]))}). Convert one checkpoint at a time.")
    if convert is not None:
        from modelshield._io import check_output_paths

        check_output_paths([convert], force=force, owner="modelshield scan --convert")
    limits = ScanLimits(max_seconds=limit_seconds)
    reports = [scan_path(p, limits=limits) for p in paths]
    if json_out:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        _table(reports)
    blocked = any(r.blocked for r in reports)
    from modelshield.secure.audit import log_event  # writes only when a log is configured

    for p, report in zip(paths, reports, strict=True):
        log_event(action="scan", artifact=p if p.is_file() and not p.is_symlink() else str(p),
                  details={"blocked": report.blocked, "findings": len(report.findings),
                           "codes": sorted({f.code for f in report.findings if f.blocking})[:20],
                           "files": report.files})
    if convert is not None and not blocked:
        from modelshield.models.safetensors import convert_to_safetensors

        result = convert_to_safetensors(paths[0], convert, force=force)  # refuses sparse/quantized
        render.say(f"wrote {escape(result.out)} ({result.tensors} tensors, sha256 {result.sha256[:16]}...)")
    if blocked:
        raise typer.Exit(render.EXIT_FINDING)


def _table(reports: list[ScanReport]) -> None:
    for report in reports:
        verdict = "[bold red]BLOCKED[/]" if report.blocked else "[green]clean[/]"
        render.say(f"{escape(report.path)}: {verdict} ({report.files} files, {report.bytes_scanned} bytes, "
                   f"{report.seconds:.3f} s)")
        shown = [f for f in report.findings if f.severity != "info"]
        if not shown:
            continue
        table = Table(header_style="bold")
        for col in ("severity", "code", "callable", "member", "offset", "message"):
            table.add_column(col)
        for f in shown:
            style = _STYLE.get(f.severity, "")
            table.add_row(f"[{style}]{f.severity}[/]", f.code, escape(f.callable or ""),
                          escape("!".join(f.location.members) or escape(f.location.path)),
                          "" if f.offset is None else str(f.offset), escape(f.message))
        render.out().print(table)
