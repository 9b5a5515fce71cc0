"""``modelshield audit init|log|checkpoint|verify|show|prove``: the tamper-evident audit log.

The log is ``--log`` (a file path for SQLite, or a ``postgresql://`` URL), else the environment
variable ``MODELSHIELD_AUDIT_LOG``. The signing key is ``--key``, else ``MODELSHIELD_AUDIT_KEY``,
else ``<log file>.key`` (SQLite only). Exit codes: 0 ok, 1 verification failed (``verify``, or a
proof that does not verify), 2 bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli import _render as render
from modelshield.errors import ConfigError
from modelshield.secure.audit import LOG_ENV, Artifact, AuditLog, Checkpoint

__all__ = ["LOG_ENV", "audit_app"]

KEY_ENV = "MODELSHIELD_AUDIT_KEY"

audit_app = typer.Typer(
    help="Tamper-evident audit log: who did what to which artifact (hash chain, Merkle tree, signed "
         f"checkpoints). The log is --log or ${LOG_ENV}.",
    no_args_is_help=True,
)

LogOpt = Annotated[str | None, typer.Option("--log", help=f"Log file (SQLite) or postgresql:// URL "
                                            f"(default: ${LOG_ENV}).")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help=f"Private signing key (default: ${KEY_ENV}, "
                                             "else <log file>.key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _target(log: str | None) -> str:
    value = log or os.environ.get(LOG_ENV)
    if not value:
        raise ConfigError("modelshield audit: the log location must be given; got neither --log nor "
                          f"${LOG_ENV}. "
                          f"Pass --log audit.db (or a postgresql:// URL), or export {LOG_ENV}.")
    return value


def _key(key: Path | None) -> Path | None:
    if key is not None:
        return key
    env = os.environ.get(KEY_ENV)
    return Path(env) if env else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"modelshield audit verify: --checkpoint must be a readable JSON file; got "
                          f"{str(path)!r} ({type(exc).__name__}: {exc}). Save one with `modelshield audit "
                          "checkpoint --json > FILE`.") from exc


def _print_json(payload: Any) -> None:
    render.out().print_json(json.dumps(payload))


@audit_app.command("init")
def init(log: LogOpt = None, key: KeyOpt = None) -> None:
    """Create a new, empty log and its Ed25519 signing key (0600) with the public key beside it."""
    with AuditLog.init(_target(log), key=_key(key)) as audit:
        render.say(f"Created audit log {escape(audit.where)} ({escape(audit.origin)}); signing key "
                   f"{escape(str(audit.key_path))}, public key {escape(str(audit.public_key_path))}.")


@audit_app.command("log")
def log_record(
    action: Annotated[str, typer.Option("--action", help="What was done: train, scan, assess, sign, "
                                                         "verify...")],
    artifact: Annotated[str, typer.Option("--artifact", help="The artifact's path (hashed when it is a file) "
                                          "or name.")],
    details: Annotated[str, typer.Option("--details", help="A JSON object of details (data manifest root, "
                                         "settings, code version, model digest...).")] = "{}",
    actor: Annotated[str | None, typer.Option("--actor", help="Who acted (default: user@host).")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="The artifact's SHA-256, when it is not a "
                                               "local file.")] = None,
    checkpoint: Annotated[bool, typer.Option("--checkpoint/--no-checkpoint", help="Sign a checkpoint after "
                                             "the append (needs the key).")] = True,
    log: LogOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Append one record (returns once it is durably committed) and sign a checkpoint."""
    try:
        parsed = json.loads(details)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"modelshield audit log: --details must be a JSON object; got {details!r} ({exc}). "
                          "Quote it for the shell: --details '{\"epochs\": 10}'.") from exc
    path = Path(artifact)
    art: Artifact | Path = (Artifact(name=artifact, sha256=sha256) if sha256 or not path.is_file() else path)
    with AuditLog.open(_target(log), key=_key(key)) as audit:
        rec = audit.append(action=action, artifact=art, details=parsed, actor=actor)
        cp = audit.checkpoint() if checkpoint else None
    if as_json:
        _print_json({"record": rec.to_dict(), "checkpoint": None if cp is None else cp.to_dict()})
        return
    render.say(f"Appended record {rec.seq} ({escape(rec.action)} {escape(rec.artifact.name)}) hash {rec.hash}"
               + (f"; checkpoint signed at tree size {cp.tree_size}" if cp else ""))


@audit_app.command("checkpoint")
def checkpoint(log: LogOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Sign the current tree head (size, Merkle root, time) with the log's key."""
    with AuditLog.open(_target(log), key=_key(key)) as audit:
        cp = audit.checkpoint()
    if as_json:
        _print_json(cp.to_dict())
        return
    render.say(f"Checkpoint at tree size {cp.tree_size}: root {cp.root_hash}, key {cp.key_id}")


@audit_app.command("verify")
def verify(
    log: LogOpt = None,
    key: KeyOpt = None,
    public_key: Annotated[Path | None, typer.Option("--public-key", help="Public key to check checkpoint "
                                                    "signatures with (default: beside the key).")] = None,
    checkpoint_file: Annotated[list[Path] | None, typer.Option(
        "--checkpoint", help="A checkpoint saved outside the log (`audit checkpoint --json`), checked too: "
        "finds a cut tail even when the log's own checkpoints were deleted (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check every record's hash, the chain, the sequence and every signed checkpoint.

    Names each problem (edited, deleted, reordered, chain-break, truncated, rewritten, forged); exit 1
    when there is any.
    """
    trusted = [Checkpoint.from_dict(_read_json(p)) for p in checkpoint_file or ()]
    with AuditLog.open(_target(log), key=_key(key), public_key=public_key) as audit:
        report = audit.verify(trusted=trusted)
    if as_json:
        _print_json(report.to_dict())
    else:
        for p in report.problems:
            render.say(f"[bold red]{escape(p.message)}[/]")
        for w in report.warnings:
            render.say(f"[yellow]warning:[/] {escape(w)}")
        state = ("[green]verified[/]" if report.ok
                 else f"[bold red]FAILED[/] ({len(report.problems)} problem(s))")
        render.say(f"{state}: {report.records} records, {report.checkpoints} checkpoint(s), root "
                   f"{report.root_hash}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("show")
def show(
    seq: Annotated[int | None, typer.Option("--seq", help="Show only this record.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only records of this action.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only records by this actor.")] = None,
    artifact: Annotated[str | None, typer.Option("--artifact", help="Only records of this artifact "
                                                 "(name or SHA-256).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many records.")] = 100,
    log: LogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List records (oldest first), optionally filtered."""
    with AuditLog.open(_target(log)) as audit:
        recs = ([audit.record(seq)] if seq is not None
                else audit.records(action=action, actor=actor, artifact=artifact, limit=limit))
    if as_json:
        _print_json([r.to_dict() for r in recs])
        return
    table = Table(header_style="bold")
    for col in ("seq", "time", "actor", "action", "artifact", "sha256", "details"):
        table.add_column(col)
    for r in recs:
        table.add_row(str(r.seq), r.time, escape(r.actor), escape(r.action), escape(r.artifact.name),
                      (r.artifact.sha256 or "-")[:16], escape(json.dumps(r.details, sort_keys=True)[:80]))
    render.out().print(table)


@audit_app.command("prove")
def prove(
    seq: Annotated[int | None, typer.Option("--seq", help="Inclusion proof of this record.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Tree size of the proof (default: the whole "
                                             "log).")] = None,
    old: Annotated[int | None, typer.Option("--old", help="Consistency proof from this tree size (to "
                                                          "--size).")]
    = None,
    log: LogOpt = None,
) -> None:
    """Print an RFC 6962 inclusion (--seq) or consistency (--old) proof as JSON, checked before printing."""
    if (seq is None) == (old is None):
        raise ConfigError("modelshield audit prove: exactly one of --seq (inclusion) and --old "
                          "(consistency) must "
                          f"be given; got --seq {seq} and --old {old}. Pass one of them.")
    with AuditLog.open(_target(log)) as audit:
        proof = (audit.prove_inclusion(seq, size) if seq is not None
                 else audit.prove_consistency(old or 0, size))
    _print_json({**proof.to_dict(), "verified": proof.verify()})
    if not proof.verify():
        raise typer.Exit(1)
