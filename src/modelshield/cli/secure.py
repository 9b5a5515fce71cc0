"""``modelshield manifest create|verify``, ``modelshield sign`` and ``modelshield verify``.

Exit codes: 0 ok, 1 a mismatch (a file or row changed, a signature that does not verify, an unsigned
file or a symbolic link), 2 bad input (raised as ModelShieldError and rendered by the root group).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelshield._io import check_output_paths, write_atomic
from modelshield.cli import _render as render
from modelshield.errors import ConfigError
from modelshield.secure.audit import log_event
from modelshield.secure.manifest import Manifest, create_manifest, verify_manifest
from modelshield.secure.signing import sign_model, verify_model

__all__ = ["keygen", "manifest_app", "sign", "verify"]

manifest_app = typer.Typer(
    help="Dataset integrity: a manifest of every file (SHA-256, size, rows) under a Merkle root.",
    no_args_is_help=True,
)

_JSON_HELP = "Also write the result as JSON to this file."
_FORCE_HELP = "Overwrite existing output files."


def _inside(root: Path, path: Path) -> str | None:
    """path relative to the folder root (POSIX), or None when it lies outside."""
    try:
        return path.expanduser().resolve().relative_to(root.expanduser().resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _write_json(path: Path | None, payload: dict[str, object], *, force: bool) -> None:
    if path is not None:
        write_atomic(path, json.dumps(payload, indent=2) + "\n", force=force)


@manifest_app.command("create")
def manifest_create(
    root: Annotated[Path, typer.Argument(help="The data folder (or one data file).")],
    out: Annotated[Path, typer.Option("--out", help="The manifest JSON to write.")],
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="A relative path or glob pattern to leave out (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
) -> None:
    """Hash every file under ROOT (rows too, for CSV/TSV/text/JSONL/Parquet) and write the manifest.

    Symbolic links and special files are never followed; they are listed as refused. A manifest
    written inside ROOT leaves itself out.
    """
    check_output_paths([out], force=force, owner="modelshield manifest create")
    patterns = list(exclude or [])
    own = _inside(root, out) if root.is_dir() else None
    if own is not None:
        patterns.append(own)
    manifest = create_manifest(root, exclude=patterns)
    manifest.save(out, force=force)
    n_rows = sum(f.rows.count for f in manifest.files if f.rows is not None)
    render.say(f"{len(manifest.files)} files, {sum(f.size for f in manifest.files)} bytes, {n_rows} rows; "
               f"Merkle root {manifest.root}")
    for r in manifest.refused:
        render.say(f"[yellow]refused[/] {escape(r.path)}: {escape(r.reason)}")
    render.say(f"Manifest written to {escape(str(out))}")
    log_event(action="manifest", artifact=out, details={"root": manifest.root, "data": str(root),
                                                       "files": len(manifest.files), "rows": n_rows})


@manifest_app.command("verify")
def manifest_verify(
    root: Annotated[Path, typer.Argument(help="The data folder (or file) to check.")],
    manifest: Annotated[Path, typer.Argument(help="The manifest JSON written by 'manifest create'.")],
    json_out: Annotated[Path | None, typer.Option("--json", help=_JSON_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
) -> None:
    """Check ROOT against MANIFEST: name every file added, removed or changed, and which rows."""
    if json_out is not None:
        check_output_paths([json_out], force=force, owner="modelshield manifest verify")
    diff = verify_manifest(Manifest.load(manifest), root)
    _write_json(json_out, diff.to_dict(), force=force)
    if diff.ok:
        render.say(f"[green]ok[/]: {escape(str(root))} matches {escape(str(manifest))} "
                   f"(root {diff.root_actual})")
        return
    for line in diff.problems():
        render.say(f"[red]mismatch[/] {escape(line)}")
    raise typer.Exit(render.EXIT_FINDING)


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for <name>.key (mode 0600) and <name>.pub.")],
    name: Annotated[str, typer.Option("--name", help="The key files' stem.")] = "signing",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing key files.")] = False,
) -> None:
    """Make an EC P-256 signing key pair for 'modelshield sign' (and 'model_signing sign key')."""
    from modelshield.secure.signing import generate_keypair

    pair = generate_keypair(out, name=name, force=force)
    render.say(f"private key {escape(str(pair.private_key))} (keep it secret), public key "
               f"{escape(str(pair.public_key))}")


def sign(
    path: Annotated[Path, typer.Argument(help="The model file or folder to sign.")],
    key: Annotated[Path | None, typer.Option("--key", help="EC private key (PEM).")] = None,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="The signature bundle to write (default: PATH + '.sig').")] = None,
    certificate: Annotated[Path | None, typer.Option(
        "--certificate", help="Certificate mode: the signing certificate of --key (PEM).")] = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option(
        "--certificate-chain", help="Certificate mode: intermediate/root certificates (repeatable).")] = None,
    sigstore: Annotated[bool, typer.Option(
        "--sigstore", help="Keyless Sigstore signing (needs network and an OIDC login).")] = False,
    password_env: Annotated[str | None, typer.Option(
        "--password-env", help="Name of the environment variable holding the key's password.")] = None,
    ignore: Annotated[list[str] | None, typer.Option(
        "--ignore", help="A path inside the model folder to leave unsigned (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing bundle.")] = False,
) -> None:
    """Sign a model with OpenSSF model signing; the bundle verifies with 'model_signing verify' too.

    As model_signing does, git metadata (.git/, .gitattributes, .github/, .gitignore) is left unsigned,
    and 'modelshield verify' does not check it; any other file added later fails verification.
    """
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"modelshield sign: '--password-env' must name a set environment variable; got "
                              f"{password_env!r}, which is not set. Export it first.")
    result = sign_model(path, private_key=key, password=password, certificate=certificate,
                        certificate_chain=certificate_chain or (), sigstore=sigstore, bundle=bundle,
                        ignore_paths=ignore or (), force=force)
    render.say(f"Signed {len(result.files)} file(s) of {escape(result.path)} ({result.method}); "
               f"bundle written to {escape(result.bundle)}")
    log_event(action="sign", artifact=path if path.is_file() else str(path),
              details={"bundle": result.bundle, "method": result.method, "files": len(result.files)})


def verify(
    path: Annotated[Path, typer.Argument(help="The model file or folder to check.")],
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="The signature bundle (default: PATH + '.sig').")] = None,
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="Key mode: the EC public key (PEM).")] = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option(
        "--certificate-chain", help="Certificate mode: trusted root certificate(s) (repeatable).")] = None,
    identity: Annotated[str | None, typer.Option(
        "--identity", help="Sigstore mode: the signer's identity (e.g. an e-mail).")] = None,
    issuer: Annotated[str | None, typer.Option(
        "--issuer", help="Sigstore mode: the identity's OIDC issuer URL.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help=_JSON_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
) -> None:
    """Verify a model's signature, every signed file, and that no unsigned file or symlink was added.

    Paths the signer left unsigned (--ignore, and git metadata such as .git/) are not checked.
    """
    if json_out is not None:
        check_output_paths([json_out], force=force, owner="modelshield verify")
    result = verify_model(path, bundle=bundle, public_key=public_key, certificate_chain=certificate_chain,
                          identity=identity, oidc_issuer=issuer)
    _write_json(json_out, result.to_dict(), force=force)
    if result.ok:
        render.say(f"[green]ok[/]: {escape(result.path)} matches {escape(result.bundle)} "
                   f"({len(result.signed_files)} signed file(s), {result.method})")
        return
    render.say(f"[red]mismatch[/] {escape(result.path)}: {escape(result.reason)}")
    raise typer.Exit(render.EXIT_FINDING)
