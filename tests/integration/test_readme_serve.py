"""The README's gateway section ("Serve a model behind the gateway"), checked and run as written (issue #18).

The shell block lies between ``<!-- serve-examples -->`` and ``<!-- /serve-examples -->``. By default
(fast) its shape is checked: it creates keys, starts ``modelshield serve`` on
``examples/gateway.yaml`` in the background, waits for /readyz, predicts, reads the alerts and the
audit verification, stops the server and verifies the log; every option it passes is one the
command has, every URL one the app routes; ``examples/gateway.yaml`` loads with ``load_config``;
the README's settings table names every setting of ``GatewayConfig`` (and of ``monitors:``) with
the code's default, and its endpoint table every route of the app. With ``-m slow`` the block runs
in one ``bash`` (``set -euo pipefail``) in a temporary folder holding copies of the files it
needs, on a free port, with a bounded timeout; it must exit 0, the predict answer must hold a
label, and the process group (the background server included) is killed whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

from modelshield.serve.config import MONITOR_NAMES, GatewayConfig, MonitorsConfig, MonitorSpec, load_config

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- serve-examples -->", "<!-- /serve-examples -->"
SECTION = "## Serve a model behind the gateway"
PORT = "8765"
FILES = ("examples/gateway.yaml", "examples/digit.json")  # what the block reads from the repository
URL = re.compile(r"http://127\.0\.0\.1:8765(/[^\s'\"]*)")
ROUTE = re.compile(r'@app\.(get|post|delete)\("([^"]+)"')


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def section() -> str:
    """The README's gateway section, up to the next ``## `` heading."""
    text = readme()
    assert text.count(SECTION) == 1, "README lost its gateway section"
    body = text.split(SECTION, 1)[1]
    return body.split("\n## ", 1)[0]


def script() -> str:
    """The block's shell text, as written."""
    text = readme()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README lost its serve-examples markers"
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    fenced = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    assert len(fenced) == 1, "the serve block must hold one ```bash fence"
    return str(fenced[0])


def commands() -> list[str]:
    """The block's commands: comments dropped, continuations joined."""
    found, pending = [], ""
    for line in script().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            found.append(pending.strip())
            pending = ""
    assert not pending, f"a command ends with a continuation: {pending!r}"
    return found


def table(heading: str) -> dict[str, list[str]]:
    """The section's markdown table whose header row starts with ``| heading |``: first cell -> cells."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in section().splitlines():
        if line.startswith(f"| {heading} |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    assert rows, f"the gateway section lost its '{heading}' table"
    return rows


def app_routes() -> set[str]:
    """``METHOD /path`` of every route the gateway's app declares (read from its source)."""
    source = (REPO / "src" / "modelshield" / "serve" / "app.py").read_text(encoding="utf-8")
    return {f"{method.upper()} {path}" for method, path in ROUTE.findall(source)}


# -- fast: the block's shape, the config file and the tables ------------------------------------


def test_the_block_keys_serves_predicts_audits_and_stops() -> None:
    cmds = commands()
    joined = "\n".join(cmds)
    keys = [c for c in cmds if "modelshield serve keys create" in c]
    assert len(keys) == 2 and any("--role admin" in c for c in keys)
    assert all(re.fullmatch(r"[A-Z]+=\$\(modelshield serve keys create .*\| tail -n 1\)", c) for c in keys)
    [serve] = [c for c in cmds if c.startswith("modelshield serve --")]
    assert serve == f"modelshield serve --model digits-cnn --config examples/gateway.yaml --port {PORT} &"
    assert cmds[cmds.index(serve) + 1] == "SERVER=$!"
    ready = next(i for i, c in enumerate(cmds) if "/readyz" in c)
    assert "--retry " in cmds[ready] and "--fail" in cmds[ready]  # bounded, and fails if never ready
    order = ["/readyz", "/v1/predict", "/v1/admin/alerts", "/v1/admin/audit/verify", "kill $SERVER",
             "modelshield audit verify --log gateway-state/audit.db"]
    assert all(step in joined for step in order), [step for step in order if step not in joined]
    at = [joined.index(step) for step in order]
    assert at == sorted(at), order
    assert cmds.index("kill $SERVER && wait $SERVER") > ready
    assert "@examples/digit.json" in joined


def test_every_option_is_the_commands_and_every_url_a_route() -> None:
    from modelshield.cli.app import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    ctx = group.context_class(group)
    seen = set()
    for command in commands():
        found = re.search(r"modelshield [^|)&]*", command)
        if found is None:
            continue
        words = shlex.split(found.group())[1:]
        path = [w for w in words[:3] if not w.startswith("-")]
        cmd: Any = group
        for name in path:  # serve, serve keys create, audit verify: subcommands load lazily
            if not isinstance(cmd, typer.core.TyperGroup) or name not in cmd.list_commands(ctx):
                break
            cmd = cmd.get_command(ctx, name)
        assert cmd is not group, command
        options = {opt for p in cmd.params for opt in p.opts}
        flags = {w for w in words if w.startswith("--")}
        assert flags <= options, (command, flags - options)
        seen.add(cmd.name)
    assert {"serve", "create", "verify"} <= seen, seen
    routes = app_routes()
    paths = {p for c in commands() for p in URL.findall(c)}
    assert paths and paths <= {r.split(" ", 1)[1] for r in routes}, paths


def test_the_example_config_loads_with_every_monitor_and_an_image_the_model_takes() -> None:
    cfg = load_config(REPO / "examples" / "gateway.yaml")
    assert cfg.state_dir == Path("gateway-state")  # relative: under the folder the server starts in
    joined = " ".join(commands())  # the block's keys and audit log are the config's
    assert set(re.findall(r"--state (\S+)", joined)) == {str(cfg.state_dir)}
    assert re.findall(r"audit verify --log (\S+)", joined) == [cfg.audit_target]
    text = (REPO / "examples" / "gateway.yaml").read_text(encoding="utf-8")
    assert cfg.state_store is None and "# state_store: redis://" in text  # shown, commented out
    assert cfg.monitors.names == MONITOR_NAMES
    blocking = [e for e in cfg.monitors.entries if e.action == "block"]
    assert blocking and all(e.alerts_to_act >= 2 and e.act_window > 0 for e in blocking)
    x = json.loads((REPO / "examples" / "digit.json").read_text(encoding="utf-8"))["inputs"]
    assert len(x) == 1 and len(x[0]) == 1 and len(x[0][0]) == 8 and all(len(r) == 8 for r in x[0][0])
    assert all(0.0 <= v <= 1.0 for r in x[0][0] for v in r)


def _default(cls: Any, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return dataclasses.MISSING if f.default_factory is dataclasses.MISSING else f.default_factory()


def _check_default(name: str, written: str, code: Any) -> None:
    """A default in backticks must equal the code's (as YAML reads it); words stand for no value."""
    if written.startswith("`") and not written.startswith("`<") and not written.startswith("`monitors."):
        assert yaml.safe_load(written.strip("`")) == code, (name, written, code)
    else:
        assert code is None or code is dataclasses.MISSING, (name, written, code)


def test_the_settings_table_is_the_configs_settings_with_their_defaults() -> None:
    rows = table("setting")
    top = {n.strip("`"): cells for n, cells in rows.items() if "." not in n}
    fields = {f.name for f in dataclasses.fields(GatewayConfig)} - {"monitors"}
    assert set(top) == fields, set(top) ^ fields
    for name, (default, meaning) in top.items():
        assert meaning, name
        _check_default(name, default, _default(GatewayConfig, name))
    section_rows = {n.strip("`").removeprefix("monitors."): cells for n, cells in rows.items()
                    if n.startswith("`monitors.") and "<name>" not in n}
    section_fields = {f.name for f in dataclasses.fields(MonitorsConfig)} - {"entries"}
    assert set(section_rows) == section_fields, set(section_rows) ^ section_fields
    for name, (default, _) in section_rows.items():
        _check_default(f"monitors.{name}", default, _default(MonitorsConfig, name))
    entry_rows = {n.strip("`").removeprefix("monitors.<name>").lstrip("."): cells
                  for n, cells in rows.items() if "<name>" in n}
    entry_fields = {f.name for f in dataclasses.fields(MonitorSpec)} - {"name", "params"}
    assert set(entry_rows) == entry_fields | {""}, set(entry_rows) ^ (entry_fields | {""})
    for name in ("action", "act_after", "act_window"):
        _check_default(f"monitors.<name>.{name}", entry_rows[name][0], _default(MonitorSpec, name))
    assert entry_rows["fpr"][0] == "`monitors.fpr`"  # an entry's fpr falls back to the section's
    assert all(f"`{m}`" in entry_rows[""][1] for m in MONITOR_NAMES)


def test_the_endpoint_table_is_the_apps_routes() -> None:
    listed = {name.strip("`") for name in table("endpoint")}
    assert listed == app_routes() | {"GET /openapi.json"}, listed ^ (app_routes() | {"GET /openapi.json"})


def test_the_default_policies_are_the_roles_defaults() -> None:
    from modelshield.serve.keys import ROLES, default_policy

    text = " ".join(section().split())
    for role in ROLES:
        policy = default_policy(role)
        found = re.search(rf"{role} `([a-z-]+)`(?: output)?, (\d+)(?: requests)?/s(?: \(burst (\d+)\))?, "
                          r"([\d,]+|unlimited)", text)
        assert found is not None, role
        output, rate, burst, budget = found.groups()
        assert output == policy.output and float(rate) == policy.rate_per_s, (role, found.group())
        assert burst is None or int(burst) == policy.burst, (role, found.group())
        assert (None if budget == "unlimited" else int(budget.replace(",", ""))) == policy.budget, role


# -- slow: the block in bash, as written --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_block_runs_as_written(tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    port = str(_free_port())  # the only change: a free port, as other tests may run beside this one
    body = script().replace(PORT, port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for name in ("PYTHONPATH", "MODELSHIELD_AUDIT_LOG", "MODELSHIELD_TRUST_POLICY"):
        env.pop(name, None)
    start = time.perf_counter()
    # output to files, not pipes: a server left running by a failed block would hold a pipe open
    with (tmp_path / "out.txt").open("w") as stdout, (tmp_path / "err.txt").open("w") as stderr:
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + body], cwd=tmp_path, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)  # own process group
        try:
            proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the background server too, whatever happened
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, err = ((tmp_path / name).read_text(encoding="utf-8") for name in ("out.txt", "err.txt"))
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"exit {proc.returncode} after {seconds:.1f} s\n{out[-3000:]}\n{err[-3000:]}"
    answer = next(json.loads(line) for line in out.splitlines() if line.startswith('{"labels"'))
    assert answer["labels"] == [1], answer  # examples/digit.json is a 1 of the digits test split
    assert "probabilities" not in answer  # a client key's default policy: labels only
    alerts = next(json.loads(line) for line in out.splitlines() if line.startswith('{"alerts"'))
    assert alerts["monitors"] == list(MONITOR_NAMES) and isinstance(alerts["alerts"], list)
    verified = next(json.loads(line) for line in out.splitlines() if line.startswith('{"ok"'))
    assert verified["ok"] is True and verified["records"] >= 2  # the predict and the alerts calls
    assert re.search(r'^modelshield_decisions_total\{decision="answered"\} [1-9]', out, flags=re.M), out
    assert re.search(r"^verified: \d+ records, [1-9]\d* checkpoint", out, flags=re.M), out
    assert (tmp_path / "gateway-state" / "keys.db").is_file()
    print(f"README gateway block: {seconds:.1f} s")
