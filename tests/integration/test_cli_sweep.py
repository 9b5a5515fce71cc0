"""``modelshield sweep`` (issue #20, item 1): the same numbers on every backend, resume from the
checkpoint, one-line errors with exit 2, and the README's commands."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.cli import invoke, one_error_line

ROOT = Path(__file__).resolve().parents[2]
PLAN = """
models: [digits-cnn]
attacks:
  - {name: pgd, eps: [0.1, 0.2], steps: 3}
  - {name: fgsm, eps: 0.15}
n: 40
seed: 5
shard_size: 20
batch_size: 10
"""


@pytest.fixture(scope="module")
def digits_cache() -> Iterator[None]:
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with torch_threads(1):
        zoo.load("digits-cnn")  # trains on a cold session cache (a few seconds)
    yield


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(PLAN, encoding="utf-8")
    return p


def _numbers(out: Path) -> list[dict[str, Any]]:
    d = json.loads((out / "sweep.json").read_text())
    rows: list[dict[str, Any]] = d["rows"]
    return rows


def test_inline_sweep_writes_rows_and_resumes_from_the_checkpoint(digits_cache: None, plan: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = invoke("sweep", plan, "--out", out)
    assert first.exit_code == 0, first.output
    d = json.loads((out / "sweep.json").read_text())
    assert d["format"] == "modelshield-sweep-v1"
    assert d["counts"] == {"done": 6, "cached": 0, "failed": 0}  # 3 cells x 2 shards
    rows = d["rows"]
    assert [(r["attack"], r["eps"]) for r in rows] == [("pgd", 0.1), ("pgd", 0.2), ("fgsm", 0.15)]
    for r in rows:
        assert r["status"] == "ok" and r["n"] == 40 and r["jobs"] == 2
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
        assert r["median_norm"] is None or r["median_norm"] <= r["eps"] + 1e-6
    assert rows[1]["robust_accuracy"] <= rows[0]["robust_accuracy"]  # a larger budget breaks more
    assert "6 run, 0 cached" in first.output
    again = invoke("sweep", plan, "--out", out)  # the same command again: everything cached
    assert again.exit_code == 0, again.output
    d2 = json.loads((out / "sweep.json").read_text())
    assert d2["counts"] == {"done": 0, "cached": 6, "failed": 0}
    assert d2["rows"] == rows
    assert "0 run, 6 cached" in again.output


@pytest.mark.slow
def test_processes_give_the_inline_numbers(digits_cache: None, plan: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "inline", tmp_path / "procs"
    r1 = invoke("sweep", plan, "--out", a)
    r2 = invoke("sweep", plan, "--out", b, "--backend", "processes", "--workers", "2")
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    assert json.loads((b / "sweep.json").read_text())["counts"]["done"] == 6
    assert _numbers(a) == _numbers(b)
    # another shard size: the same numbers too (points keep their batches)
    other = tmp_path / "plan10.yaml"
    other.write_text(PLAN.replace("shard_size: 20", "shard_size: 10"), encoding="utf-8")
    r3 = invoke("sweep", other, "--out", tmp_path / "s10")
    assert r3.exit_code == 0, r3.output
    assert [{k: v for k, v in r.items() if k != "jobs"} for r in _numbers(tmp_path / "s10")] == [
        {k: v for k, v in r.items() if k != "jobs"} for r in _numbers(a)]


@pytest.mark.parametrize(("text", "word"), [
    ("models: [digits-cnn]\nattacks: [{name: pgdd, eps: 0.1}]\n", "'pgd'"),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: -1}]\n", "> 0"),
    ("attacks: [{name: pgd, eps: 0.1}]\n", "'models'"),
    ("models: [digits-cnn]\nattack: [{name: pgd, eps: 0.1}]\n", "'attacks'"),
])
def test_bad_plan_exits_2_with_one_line(tmp_path: Path, text: str, word: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text, encoding="utf-8")
    line = one_error_line(invoke("sweep", p, "--out", tmp_path / "o"))
    assert word in line and "bad.yaml" in line
    assert not (tmp_path / "o").exists()


def test_bad_options_exit_2(plan: Path, tmp_path: Path) -> None:
    assert "--backend" in one_error_line(invoke("sweep", plan, "--out", tmp_path / "o", "--backend", "slurm"))
    assert "--workers" in one_error_line(invoke("sweep", plan, "--out", tmp_path / "o", "--workers", "0"))
    line = one_error_line(invoke("sweep", plan, "--out", tmp_path / "o", "--ray-address", "auto"))
    assert "--ray-address" in line


def test_uncached_zoo_model_is_refused_naming_the_train_command(plan: Path, tmp_path: Path) -> None:
    empty = tmp_path / "cache"
    result = invoke("sweep", plan, "--out", tmp_path / "o", env={"MODELSHIELD_CACHE": str(empty)})
    line = one_error_line(result)
    assert "modelshield zoo train digits-cnn" in line
    assert not list(empty.rglob("*.pt"))  # nothing trained


def test_out_folder_with_other_files_is_refused(plan: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    line = one_error_line(invoke("sweep", plan, "--out", out))
    assert "--force" in line and "notes.txt" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (tmp_path / "f").write_text("x", encoding="utf-8")
    assert "folder" in one_error_line(invoke("sweep", plan, "--out", tmp_path / "f"))


def test_an_earlier_sweep_of_another_plan_is_not_replaced(digits_cache: None, plan: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke("sweep", plan, "--out", out).exit_code == 0
    before = (out / "sweep.json").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(PLAN.replace("seed: 5", "seed: 6"), encoding="utf-8")
    line = one_error_line(invoke("sweep", other, "--out", out))
    assert "another plan" in line and "--force" in line
    assert (out / "sweep.json").read_text() == before
    assert invoke("sweep", other, "--out", out, "--force").exit_code == 0
    assert json.loads((out / "sweep.json").read_text())["plan"]["seed"] == 6


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Beyond one machine", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"^(modelshield [^\n]*sweep [^\n]*)$", section, flags=re.M)]


def test_readme_sweep_commands_use_existing_options() -> None:
    from typer.main import get_command

    from modelshield.cli.app import app

    commands = _readme_commands()
    assert len(commands) >= 2
    assert any("processes" in c for c in commands) and any("ray" in c for c in commands)
    sweep_cmd: Any = get_command(app).get_command(None, "sweep")  # type: ignore[attr-defined]
    known = {o for p in sweep_cmd.params for o in p.opts}
    for c in commands:
        args = shlex.split(c)
        assert (ROOT / args[args.index("sweep") + 1]).is_file(), c
        for a in args:
            if a.startswith("--") and a not in ("--threads",):
                assert a in known, (a, c)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_readme_command_runs(tmp_path: Path, backend: str) -> None:
    from modelshield import zoo

    if backend == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    for name in ("digits-cnn", "digits-cnn-at"):
        zoo.load(name)
    cmd = next(c for c in _readme_commands() if f"--backend {backend}" in c)
    args = shlex.split(cmd)
    args[args.index("--out") + 1] = str(tmp_path / "out")
    exe = Path(sys.executable).parent / "modelshield"
    done = subprocess.run([str(exe), *args[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _numbers(tmp_path / "out")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
