"""The README's "Explain what a model looked at" commands and Python, run as written (issue #19).

The shell commands are read from README.md between ``<!-- explain-examples -->`` and
``<!-- /explain-examples -->``, the Python between ``<!-- explain-python -->`` and
``<!-- /explain-python -->``. By default (fast) the blocks are checked for shape: every command is
``modelshield explain`` (or ``assess`` with the explain section) with options the command has, and
the Python compiles and imports names that exist. With ``-m slow`` each command runs in a shell from
the repository root, exactly as written but for ``explained/`` pointing into a temporary folder, and
writes its pictures and summary (or report); the Python runs in a fresh interpreter and prints what
its comments say.
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

OUT = re.compile(r"(?<![\w/])explained/")


def test_commands_use_options_explain_has() -> None:
    cmds = commands("explain-examples")
    assert len(cmds) >= 4
    for cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[0] == "modelshield" and argv[1] in ("explain", "assess"), cmd
        used = {a for a in argv if a.startswith("--")}
        known = command_options(argv[1])
        assert used <= known, f"{cmd}: unknown options {used - known}"
        assert "--out" in used and OUT.search(cmd), cmd
    assert any("explain" in shlex.split(c)[shlex.split(c).index("--sections") + 1].split(",")
               for c in cmds if "--sections" in c)


def test_python_compiles_and_imports_exist() -> None:
    assert imported_modules(block("explain-python", "python"))


@pytest.mark.slow
def test_commands_run_as_written(tmp_path: Path) -> None:
    data = os.environ.get("MODELSHIELD_DATA", str(REPO.parent / "shared/data"))
    env = {**os.environ, "MODELSHIELD_DATA": data}
    for cmd in commands("explain-examples"):
        run = OUT.sub(f"{tmp_path}/", cmd)
        proc = subprocess.run(run, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
        folder = Path(shlex.split(run)[shlex.split(run).index("--out") + 1])
        if shlex.split(cmd)[1] == "assess":
            report = json.loads((folder / "report.json").read_text())
            section = next(s for s in report["sections"] if s["id"] == "explain")
            assert section["figures"] and "data:image/png;base64," in (folder / "report.html").read_text()
            continue
        summary = json.loads((folder / "summary.json").read_text())
        pngs = sorted(folder.glob("*.png"))
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
        if "--n" in cmd:
            assert len(pngs) == int(shlex.split(cmd)[shlex.split(cmd).index("--n") + 1])
        if "--method ig" in cmd:
            assert summary["result"]["method"] == "integrated-gradients"
            assert summary["result"]["details"]["completeness_gap_relative_max"] < 0.01


@pytest.mark.slow
def test_python_runs_and_prints_what_it_says() -> None:
    proc = subprocess.run([sys.executable, "-c", block("explain-python", "python")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("torch.Size([8, 1, 8, 8])")
    assert lines[1] == "('guided-backprop',)"
    m = re.fullmatch(r"TPR ([\d.]+) at FPR ([\d.]+), AUROC ([\d.]+)", lines[2])
    assert m is not None, lines[2]
    tpr, fpr, auroc = map(float, m.groups())
    assert fpr <= 0.1 and tpr > 2 * fpr and auroc > 0.75
