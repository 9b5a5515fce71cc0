"""``modelshield audit init|log|checkpoint|verify|show|prove`` end to end (SQLite), with exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.secure.audit import merkle

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env=env)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    result = invoke("audit", "init", "--log", str(path))
    assert result.exit_code == 0, result.output
    return path


def test_log_verify_show_prove(log_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x00weights")
    env = {"MODELSHIELD_AUDIT_LOG": str(log_path)}
    r = invoke("audit", "log", "--action", "train", "--artifact", str(model), "--details",
               '{"epochs": 3, "data_root": "abc"}', "--json", env=env)
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert first["record"]["seq"] == 0 and first["checkpoint"]["tree_size"] == 1
    r = invoke("audit", "log", "--action", "scan", "--artifact", "hub/model", "--actor", "ci", env=env)
    assert r.exit_code == 0 and "Appended record 1" in r.output
    r = invoke("audit", "verify", "--json", env=env)
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True
    r = invoke("audit", "show", "--json", "--action", "scan", env=env)
    assert [rec["actor"] for rec in json.loads(r.output)] == ["ci"]
    r = invoke("audit", "prove", "--seq", "0", env=env)
    proof = json.loads(r.output)
    assert r.exit_code == 0 and proof["verified"] is True
    leaf = bytes.fromhex(proof["leaf_hash"])
    assert merkle.verify_inclusion(0, proof["tree_size"], leaf, [bytes.fromhex(p) for p in proof["path"]],
                                   bytes.fromhex(proof["root_hash"]))
    r = invoke("audit", "prove", "--old", "1", env=env)
    assert r.exit_code == 0 and json.loads(r.output)["verified"] is True


def test_verify_exits_1_and_names_the_edit(log_path: Path) -> None:
    for i in range(3):
        assert invoke("audit", "log", "--log", str(log_path), "--action", "assess", "--artifact",
                      f"m{i}").exit_code == 0
    conn = sqlite3.connect(log_path)
    conn.execute("UPDATE audit_records SET action = 'sign' WHERE seq = 1")
    conn.commit()
    conn.close()
    r = invoke("audit", "verify", "--log", str(log_path))
    assert r.exit_code == 1
    assert "hash mismatch at seq 1" in r.output


@pytest.mark.parametrize(("args", "match"), [
    (("audit", "verify"), "neither --log nor"),
    (("audit", "log", "--action", "train", "--artifact", "m", "--details", "[1"), "must be a JSON object"),
    (("audit", "prove"), "exactly one of --seq"),
])
def test_bad_input_exits_2(log_path: Path, args: tuple[str, ...], match: str) -> None:
    env = {"MODELSHIELD_AUDIT_LOG": str(log_path)} if args[1] != "verify" else {"MODELSHIELD_AUDIT_LOG": ""}
    r = invoke(*args, env=env)
    assert r.exit_code == 2
    assert match in " ".join(r.output.split())


def test_verify_with_a_saved_checkpoint_finds_a_cut_tail(log_path: Path, tmp_path: Path) -> None:
    for i in range(4):
        invoke("audit", "log", "--log", str(log_path), "--action", "sign", "--artifact", f"m{i}",
               "--no-checkpoint")
    r = invoke("audit", "checkpoint", "--log", str(log_path), "--json")
    assert r.exit_code == 0
    saved = tmp_path / "witness.json"
    saved.write_text(r.output)
    conn = sqlite3.connect(log_path)
    conn.execute("DELETE FROM audit_records WHERE seq = 3")
    conn.execute("DELETE FROM audit_checkpoints")
    conn.commit()
    conn.close()
    assert invoke("audit", "verify", "--log", str(log_path)).exit_code == 0
    r = invoke("audit", "verify", "--log", str(log_path), "--checkpoint", str(saved))
    assert r.exit_code == 1 and "truncated" in r.output
