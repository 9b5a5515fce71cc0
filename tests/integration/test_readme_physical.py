"""The README's "Physical-world attacks" commands and Python, checked and run as written.

The shell commands are read from README.md between ``<!-- physical-examples -->`` and
``<!-- /physical-examples -->``, the Python between ``<!-- physical-python -->`` and
``<!-- /physical-python -->``. By default (fast) the blocks are checked for shape: every command is
``modelshield attack physical`` with options the command has (a sticker's mask drawn by an earlier
command of the block), the mask-drawing command runs and draws a mask ``load_mask`` accepts, and the
Python compiles and imports names that exist. With ``-m slow`` the commands run in a shell, exactly
as written, in a fresh folder, and write what the README says; the Python runs in a fresh
interpreter and prints what the paragraph after it says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.readme import REPO, block, command_options, commands, imported_modules


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_commands_use_options_physical_has() -> None:
    cmds = commands("physical-examples")
    known = command_options("attack", "physical")
    kinds, drawn = set(), set()
    for cmd in cmds:
        argv = shlex.split(cmd)
        if argv[:2] == ["python", "-c"]:
            drawn.update(re.findall(r"im\.save\('([^']+)'\)", argv[2]))
            continue
        assert argv[:3] == ["modelshield", "attack", "physical"], cmd
        used = {a for a in argv if a.startswith("--")}
        assert used <= known, f"{cmd}: unknown options {used - known}"
        assert option(argv, "--out") and option(argv, "--model") == "mnist-cnn", cmd
        kind = option(argv, "--kind") or "patch"
        kinds.add(kind)
        if kind == "sticker":
            assert option(argv, "--mask") in drawn, f"{cmd}: the mask is not drawn by an earlier command"
    assert kinds == {"patch", "sticker", "universal"}
    outs = [option(shlex.split(c), "--out") for c in cmds if c.startswith("modelshield")]
    assert len(set(outs)) == len(outs)  # each run its own folder: none refuses for existing files


def test_the_mask_command_draws_a_mask_load_mask_accepts(tmp_path: Path) -> None:
    from modelshield.attacks.physical import load_mask

    (draw,) = [c for c in commands("physical-examples") if c.startswith("python -c")]
    proc = subprocess.run([sys.executable, *shlex.split(draw)[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (name,) = re.findall(r"im\.save\('([^']+)'\)", draw)
    mask = load_mask(tmp_path / name, height=28, width=28)  # MNIST's size
    assert 0 < int(mask.sum()) < 28 * 28 // 4  # a sticker, not the whole digit


def test_python_compiles_and_imports_exist() -> None:
    modules = imported_modules(block("physical-python", "python"))
    assert modules >= {"modelshield.attacks.physical", "modelshield.defenses.certification"}


@pytest.mark.slow
def test_commands_run_as_written(tmp_path: Path) -> None:
    data = os.environ.get("MODELSHIELD_DATA", str(REPO.parent / "shared/data"))
    if not (Path(data) / "mnist").is_dir():
        pytest.skip(f"MNIST files not found under {data}; set MODELSHIELD_DATA")
    env = {**os.environ, "MODELSHIELD_DATA": data}
    for cmd in commands("physical-examples"):
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
        argv = shlex.split(cmd)
        if argv[0] != "modelshield":
            continue
        kind = option(argv, "--kind") or "patch"
        folder = tmp_path / str(option(argv, "--out"))
        assert {p.name for p in folder.iterdir()} == {f"{kind}.png", "pattern.pt", "examples.png",
                                                      "summary.json"}
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["kind"] == kind and summary["data"]["n_test"] == 500
        assert summary["png"]["print_mm"] == pytest.approx(50, abs=3) and summary["png"]["dpi"] == 300
        assert "held-out success rate" in proc.stdout
        if kind == "sticker":
            assert summary["evaluation"]["target"] == 3 and summary["success_rate"] > 0.2
        if kind == "universal":
            assert 0.3 < summary["fooling_rate"] < 0.8  # "about half the held-out digits"


@pytest.mark.slow
def test_python_runs_and_prints_what_it_says() -> None:
    proc = subprocess.run([sys.executable, "-c", block("physical-python", "python")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"patch success ([\d.]+), accuracy with it ([\d.]+)", lines[0])
    assert m is not None, lines[0]
    assert 0.15 < float(m.group(1)) < 0.5  # "about a third"
    assert re.fullmatch(r"PatchCleanser accuracy with it [\d.]+", lines[1]), lines[1]
    c = re.fullmatch(r"certified accuracy ([\d.]+)", lines[2])
    assert c is not None and float(c.group(1)) < 0.15  # "a few per cent"
    t = re.fullmatch(r"after masked training: certified ([\d.]+)", lines[3])
    assert t is not None and float(t.group(1)) > float(c.group(1))  # "rises to 0.11 here"
