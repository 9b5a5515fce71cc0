"""``modelshield serve`` and ``serve keys`` from outside, with every input a user can get wrong (issue #18).

The HTTP surface has its own trial (test_gateway_hostile.py); here: gateway.yaml (YAML bombs, binary
and huge files, unreachable settings), the state folder, keys.db, the Redis URL, --host/--port and
the keys commands. Each case must give one ``error:`` line, exit 2 (130 for Ctrl-C), no traceback,
and write nothing. Every test here failed before its fix: a hang or an exhausted memory (YAML bomb,
/dev/zero), exit 3 as a "modelshield bug" (binary config, wrong keys.db schema, port in use, Ctrl-C
while a C extension imports), a silently ignored setting (act_after > act_window, a Redis URL's
non-numeric database, --budget with --unlimited), or a state folder created as a side effect.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from testkit.cli import invoke, one_error_line
from typer.testing import CliRunner

runner = CliRunner()


def serve(config: Path, *extra: str, model: str = "no-such-model") -> Any:
    """``modelshield serve``; the model is never reached when the config (or what precedes it) is bad."""
    return invoke("serve", "--model", model, "--config", str(config), "--port", "0", *extra)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- gateway.yaml ------------------------------------------------------------------------------------


def test_billion_laughs_is_refused_fast(tmp_path: Path) -> None:
    lines = ["state_dir: " + str(tmp_path / "state"), "a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    lines.append("monitors: {fpr: *i}")
    start = time.monotonic()
    line = one_error_line(serve(write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")))
    assert time.monotonic() - start < 10.0  # before: ran for minutes and filled gigabytes
    assert "at most 100000 values" in line and "billion laughs" in line
    assert not (tmp_path / "state").exists()


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    text = (f"state_dir: {tmp_path / 'state'}\nmax_bach: 3\nmonitors:\n  stateful: &b {{action: block}}\n"
            "  blacklight: *b\n")
    line = one_error_line(serve(write(tmp_path / "g.yaml", text)))
    assert "'max_bach' is not a setting" in line  # parsed and validated, not refused as a bomb


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, "state_dir: x\n".encode("utf-16")],
                         ids=["binary", "utf-16"])
def test_binary_config_is_one_line_not_a_crash(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes(content)
    line = one_error_line(serve(path))  # before: exit 3, UnicodeDecodeError "a modelshield bug"
    assert "must be UTF-8 text" in line and "g.yaml" in line


def test_huge_config_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as fh:
        fh.write(b"state_dir: x\n# ")
        fh.truncate(64 << 20)  # sparse: 64 MiB of NULs after the comment mark
    line = one_error_line(serve(path))
    assert "at most 1048576 bytes" in line


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_config_device_is_refused() -> None:
    line = one_error_line(serve(Path("/dev/zero")))  # before: read until the memory ran out
    assert "at most 1048576 bytes" in line


def test_act_after_beyond_act_window_is_refused(tmp_path: Path) -> None:
    text = f"state_dir: {tmp_path}\nmonitors:\n  stateful: {{action: block, act_after: 5, act_window: 2}}\n"
    line = one_error_line(serve(write(tmp_path / "g.yaml", text)))  # before: served, the block never fired
    assert "'monitors.stateful'" in line and "act_after (5) must be at most act_window (2)" in line
    assert "act_window: 100" in line  # the fix


def test_act_after_with_no_window_is_fine(tmp_path: Path) -> None:
    from modelshield.serve import load_config

    cfg = load_config(write(tmp_path / "g.yaml", f"state_dir: {tmp_path}\nmonitors:\n  stateful: "
                                                 "{act_after: 5, act_window: 0}\n  prada: {act_after: 3, "
                                                 "act_window: 3}\n"))
    assert [(e.act_after, e.act_window) for e in cfg.monitors.entries] == [(5, 0), (3, 3)]


@pytest.mark.parametrize(("url", "needle"), [
    ("redis://:sekret@127.0.0.1:6379/abc", "database number"),
    ("redis://:sekret@127.0.0.1:port/0", "valid redis:// URL"),
    ("redis://:sekret@127.0.0.1:6379/0/", "database number"),
])
def test_bad_redis_url_is_refused_without_its_password(tmp_path: Path, url: str, needle: str) -> None:
    text = f"state_dir: {tmp_path / 'state'}\nstate_store: '{url}'\n"
    line = one_error_line(serve(write(tmp_path / "g.yaml", text)))  # before: db 'abc' silently became 0
    assert "'state_store'" in line and needle in line
    assert "sekret" not in line and "***" in line
    assert not (tmp_path / "state").exists()


def test_long_values_are_cut_in_the_error_line(tmp_path: Path) -> None:
    text = f"state_dir: {tmp_path}\nmax_batch: '{'9' * 5000}x'\n"
    line = one_error_line(serve(write(tmp_path / "g.yaml", text)))
    assert "'max_batch'" in line and "..." in line and len(line) < 600


def test_unreachable_redis_writes_no_state(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = f"state_dir: {tmp_path / 'state'}\nstate_store: redis://127.0.0.1:{port}/0\n"
    line = one_error_line(serve(write(tmp_path / "g.yaml", text), model="digits-cnn"))
    assert "must be a reachable Redis server" in line
    # before: keys.db, audit.db and a new signing key were created before Redis was tried
    assert not (tmp_path / "state").exists()


def test_missing_model_message_shows_the_config_path_plainly(tmp_path: Path) -> None:
    line = one_error_line(invoke("serve", "--config", str(tmp_path / "g.yaml")))
    assert "PosixPath" not in line and "'--model' and '--config' are required" in line


# --- --host / --port ---------------------------------------------------------------------------------


def test_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    config = write(tmp_path / "g.yaml", f"state_dir: {tmp_path / 'state'}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("serve", "--model", "no-such-model", "--config", str(config), "--port", str(port))
    line = one_error_line(result)  # before: uvicorn's log lines, then exit 3 ("a modelshield bug")
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("host", ["999.1.1.1", "not a host!", ""])
def test_invalid_host_is_one_line_exit_2(tmp_path: Path, host: str) -> None:
    config = write(tmp_path / "g.yaml", f"state_dir: {tmp_path / 'state'}\n")
    line = one_error_line(serve(config, "--host", host))
    assert "'--host'" in line and "--host 127.0.0.1" in line
    assert not (tmp_path / "state").exists()


# --- keys.db and the keys commands --------------------------------------------------------------------


@pytest.mark.parametrize("table", ["keys", "orders"])
def test_keys_db_of_something_else_is_refused_and_left_alone(tmp_path: Path, table: str) -> None:
    db = tmp_path / "keys.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"CREATE TABLE {table} (a TEXT)")
        conn.execute(f"INSERT INTO {table} VALUES ('precious')")
    conn.close()
    db.chmod(0o644)
    before = db.read_bytes()
    for args in (["list"], ["create", "--name", "x"]):
        # before: exit 3 (a 'keys' table of other columns), or a keys table added to the file (WAL mode,
        # mode 0600) and the command carried on
        line = one_error_line(invoke("serve", "keys", *args, "--state", str(tmp_path)))
        assert "must be a modelshield key store" in line
        assert ("key_id" if table == "keys" else "other tables (orders)") in line
    assert db.read_bytes() == before and db.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("args", [["list"], ["revoke", "0123456789abcdef"]], ids=["list", "revoke"])
def test_keys_commands_do_not_create_a_missing_state(tmp_path: Path, args: list[str]) -> None:
    state = tmp_path / "typo-state"
    line = one_error_line(invoke("serve", "keys", *args, "--state", str(state)))  # before: created it
    assert "has none" in line and "keys create" in line
    assert not state.exists()


def test_unblock_does_not_create_a_missing_state(tmp_path: Path) -> None:
    state = tmp_path / "typo-state"
    config = write(tmp_path / "g.yaml", f"state_dir: {state}\n")
    line = one_error_line(invoke("serve", "keys", "unblock", "0123456789abcdef", "--config", str(config)))
    assert "alerts.db" in line and "has none" in line
    assert not state.exists()  # before: alerts.db and keys.db were created, then "not blocked"


def test_budget_and_unlimited_together_are_refused(tmp_path: Path) -> None:
    line = one_error_line(invoke("serve", "keys", "create", "--state", str(tmp_path), "--name", "app",
                                 "--budget", "5", "--unlimited"))  # before: silently unlimited
    assert "'--budget' and '--unlimited'" in line
    assert not (tmp_path / "keys.db").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--rate", "0"], "'rate_per_s'"), (["--rate", "nan"], "'rate_per_s'"), (["--budget", "-5"], "'budget'"),
    (["--burst", "1000000000000"], "'burst'"), (["--name", "a\nb"], "'name'"), (["--role", "root"], "'role'"),
])
def test_absurd_key_policies_are_refused(tmp_path: Path, args: list[str], needle: str) -> None:
    given = ["--name", "app", *args] if "--name" not in args else args
    line = one_error_line(invoke("serve", "keys", "create", "--state", str(tmp_path), *given))
    assert needle in line
    if (tmp_path / "keys.db").exists():
        with sqlite3.connect(tmp_path / "keys.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM keys").fetchone() == (0,)


# --- Ctrl-C ---------------------------------------------------------------------------------------------


def test_ctrl_c_inside_a_c_extension_import_is_exit_130(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT while scipy's pybind11 module initialises surfaces as ``ImportError: initialization
    failed`` caused by KeyboardInterrupt: an interruption (130), not a modelshield bug (3)."""
    import modelshield.serve as serve_pkg

    def interrupted(path: object) -> object:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(serve_pkg, "load_config", interrupted)
    line = one_error_line(serve(tmp_path / "g.yaml"), code=130)
    assert line == "error: interrupted"


# --- state_dir ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "loop", "dangling"])
def test_state_dir_that_is_not_a_folder_is_named(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    if kind == "file":
        state.write_text("not a folder")
    elif kind == "loop":
        (tmp_path / "other").symlink_to(state)
        state.symlink_to(tmp_path / "other")
    else:
        state.symlink_to(tmp_path / "nowhere")
    config = write(tmp_path / "g.yaml", f"state_dir: {state}\n")
    line = one_error_line(serve(config))  # before: "KeyStore: ... (FileExistsError: File exists ...)"
    assert "'state_dir' must be a folder the gateway may write" in line and str(state) in line
    assert ("a file, not a folder" if kind == "file" else "a broken link or a link loop") in line
    if kind == "file":
        assert state.read_text() == "not a folder"
    assert not (tmp_path / "nowhere").exists()


def test_monitor_parameter_typo_writes_no_state(tmp_path: Path) -> None:
    text = f"state_dir: {tmp_path / 'state'}\nmonitors:\n  stateful: {{kk: 10}}\n"
    line = one_error_line(serve(write(tmp_path / "g.yaml", text), model="digits-cnn"))
    assert "'monitors.stateful.kk' is not a parameter" in line
    # before: keys.db, audit.db and its signing key were created before the monitors were built
    state = tmp_path / "state"
    assert not any(state.glob("*.db")) if state.exists() else True
