"""``modelshield serve``: the inference gateway; ``serve keys create|revoke|list|unblock`` for its keys."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelshield.cli import _render as render
from modelshield.errors import ConfigError

__all__ = ["serve_app"]

serve_app = typer.Typer(
    help="Serve a model behind API keys, quotas, live attack monitors and a tamper-evident audit log "
         "(needs the 'serve' extra).",
    invoke_without_command=True,
    no_args_is_help=False,
)
keys_app = typer.Typer(help="Manage the gateway's API keys (stored as hashes in <state>/keys.db).",
                       no_args_is_help=True)
serve_app.add_typer(keys_app, name="keys")

StateOpt = Annotated[Path, typer.Option("--state", help="The gateway's state folder (config: state_dir).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@serve_app.callback()
def serve(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Zoo name, model file or mod:fn.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="The model's data (shape, bounds).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture of a bare state dict.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="gateway.yaml (checked at start).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve --model over HTTP: POST /v1/predict, /healthz, /readyz, /metrics, admin /v1/admin/*."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None or config is None:
        raise ConfigError("modelshield serve: '--model' and '--config' are required; got "
                          f"--model {model!r} --config {None if config is None else str(config)!r}. Run e.g. "
                          "'modelshield serve --model digits-cnn --config gateway.yaml'.")
    from modelshield.serve import create_app, load_config
    from modelshield.serve.app import require_serve_extra

    require_serve_extra()
    try:
        cfg = load_config(config)
    except ConfigError as exc:  # one line per problem of the config, then exit 2
        *lines, last = str(exc).splitlines() or [""]
        for line in lines:
            typer.secho(f"error: {line}", err=True, fg="red")
        render.fail(last, code=render.EXIT_USAGE)
    _check_state_dir(cfg.state_dir)
    _check_listen(host, port)  # before the model loads and the state folder is written
    if cfg.state_store:  # likewise: an unreachable Redis must not leave a new state folder behind
        from modelshield.serve.store import RedisState

        RedisState(cfg.state_store).close()
    import uvicorn

    from modelshield.targets import load_target

    target = load_target(model, data=data, data_dir=None, arch=arch, n=16)
    app = create_app(target, cfg)
    render.say(f"Serving {escape(model)} on http://{escape(host)}:{port} "
               f"(state {escape(str(cfg.state_dir))}).")
    from modelshield.serve.logs import uvicorn_log_config

    def drained(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # uvicorn drains on SIGTERM, then restores this handler and raises SIGTERM again: a drained stop
    # exits 0 (without it, the default action ends the process with -SIGTERM after the drain)
    signal.signal(signal.SIGTERM, drained)
    uvicorn.run(app, host=host, port=port, log_level=cfg.log_level, timeout_graceful_shutdown=30,
                log_config=uvicorn_log_config(cfg.log_format, cfg.log_level),
                access_log=cfg.log_format != "json")  # JSON: the gateway logs each request itself


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go: a bad --host or a port in use fails now, in one line, exit 2.

    (uvicorn would report it after start-up and exit 3, the code of a modelshield bug.)
    """
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds a host
        infos = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"modelshield serve: '--host' must be an address or name of this machine; got "
                          f"{host!r} ({exc}). Use e.g. --host 127.0.0.1 (this machine only) or --host "
                          "0.0.0.0 (every interface).") from None
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"modelshield serve: '--host'/'--port' must be free to listen on; got "
                          f"{host}:{port} ({exc.strerror or exc}). Stop what uses the port or pick another "
                          "(--port), and give an address of this machine (--host).") from None


def _check_state_dir(path: Path) -> None:
    """state_dir must be a folder (or not exist yet): not a file, a broken link or a link loop."""
    problem = ("a file, not a folder" if path.exists() and not path.is_dir() else
               "a broken link or a link loop" if path.is_symlink() and not path.exists() else
               "a folder this user may not write" if path.is_dir() and not os.access(path, os.W_OK | os.X_OK)
               else "")
    if problem:
        raise ConfigError(f"gateway config: 'state_dir' must be a folder the gateway may write; got "
                          f"{str(path)!r}, {problem}. Point state_dir at a new or the gateway's own folder, "
                          "e.g. state_dir: ./gateway-state.")


def _existing_store(state: Path) -> Path:
    """``<state>/keys.db``, which must exist (listing or revoking keys must not create a state folder)."""
    path = state.expanduser() / "keys.db"
    if not path.is_file():
        raise ConfigError(f"modelshield serve keys: '--state' must be the gateway's state folder (holding "
                          f"keys.db); got {str(state)!r}, which has none. Pass the state_dir of "
                          "gateway.yaml, or create a key first with 'modelshield serve keys create --state "
                          "DIR --name NAME'.")
    return path


@keys_app.command("create")
def create(
    state: StateOpt,
    name: Annotated[str, typer.Option("--name", help="Who the key is for, e.g. 'billing-app'.")],
    role: Annotated[str, typer.Option("--role", help="client, analyst or admin.")] = "client",
    output: Annotated[str | None, typer.Option("--output", help="label, top-k or probabilities.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="k for --output top-k.")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Requests per second (token bucket).")] = None,
    burst: Annotated[int | None, typer.Option("--burst", help="Token bucket size.")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Total queries (input rows).")] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="No query budget.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from modelshield.serve import KeyStore, Policy, default_policy

    fields = default_policy(role).to_dict()
    given = {"output": output, "top_k": top_k, "rate_per_s": rate, "burst": burst, "budget": budget}
    fields.update({k: v for k, v in given.items() if v is not None})
    if unlimited and budget is not None:
        raise ConfigError(f"modelshield serve keys create: '--budget' and '--unlimited' exclude each other; "
                          f"got --budget {budget} --unlimited. Pass one of them.")
    if unlimited:
        fields["budget"] = None
    with KeyStore.open(state / "keys.db") as store:
        key_id, secret = store.create(name=name, role=role, policy=Policy.from_dict(fields))
        made = store.get(key_id)
    if json_out:
        render.out().print_json(json.dumps({"key": secret, **(made.to_dict() if made else {})}))
        return
    render.say(f"Created {role} key {key_id} for {escape(name)}. Its secret (shown once):")
    render.out().print(secret, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id ('keys list').")], state: StateOpt) -> None:
    """Revoke a key: its next request gets 401."""
    from modelshield.serve import KeyStore

    with KeyStore.open(_existing_store(state)) as store:
        store.revoke(key_id)
    render.say(f"Revoked key {escape(key_id)}.")


@keys_app.command("list")
def list_keys(state: StateOpt, json_out: JsonOpt = False) -> None:
    """List keys (ids, roles, policies, queries used; never secrets)."""
    from modelshield.serve import KeyStore

    with KeyStore.open(_existing_store(state)) as store:
        keys = store.list()
    if json_out:
        render.out().print_json(json.dumps({"keys": [k.to_dict() for k in keys]}))
        return
    for k in keys:
        budget = "unlimited" if k.policy.budget is None else str(k.policy.budget)
        status = "active" if k.active else "revoked"
        render.say(f"{k.key_id}  {k.role:<7}  {status:<7}  used {k.used}/{budget}  {k.policy.output}  "
                   f"{escape(k.name)}")


@keys_app.command("unblock")
def unblock(
    key_id: Annotated[str, typer.Argument(help="The blocked key's id ('keys list').")],
    config: Annotated[Path, typer.Option("--config", help="The gateway's gateway.yaml (its state store).")],
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help="Redis state only: the gateway's namespace (the first 16 hex digits of the "
                            "model's sha256 shown by GET /v1/model, else the model's name).")] = None,
) -> None:
    """Lift a live monitor's block on a key: its next request is answered again.

    Works on the gateway's local state (<state_dir>/alerts.db), or on its Redis state_store.
    """
    from modelshield.serve import load_config
    from modelshield.serve.store import open_state

    cfg = load_config(config)
    if cfg.state_store and namespace is None:
        raise ConfigError("modelshield serve keys unblock: '--namespace' is required with a Redis "
                          "state_store; got none. Pass the first 16 hex digits of the model's sha256 (GET "
                          "/v1/model; else the model's name), or call DELETE /v1/admin/blocks/KEY_ID on the "
                          "gateway.")
    if not cfg.state_store and not (cfg.state_dir / "alerts.db").is_file():
        raise ConfigError(f"modelshield serve keys unblock: the gateway's state_dir must hold its alerts.db; "
                          f"got {str(cfg.state_dir)!r}, which has none (no gateway ran there, so no key is "
                          "blocked). Pass the --config the gateway runs with.")
    state = open_state(cfg.state_store, state_dir=cfg.state_dir, namespace=namespace or "default")
    try:
        was = state.unblock(key_id)
    finally:
        state.close()
    if not was:
        render.fail(f"modelshield serve keys unblock: KEY_ID must be a blocked key; got {key_id!r}, which is "
                    "not blocked. List blocks with GET /v1/admin/blocks.", code=render.EXIT_USAGE)
    render.say(f"Unblocked key {escape(key_id)}: its next request is answered again.")
