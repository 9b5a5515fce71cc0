"""The README's regression-gate commands, checked and run as written (#22).

The commands are read from README.md between ``<!-- regression-examples -->`` and
``<!-- /regression-examples -->``. By default (fast) the block is checked for shape: two
``modelshield assess`` commands with options assess has, the same sections and points, the second
comparing with the first's report and gating on it. With ``-m slow`` both run in a shell in a fresh
folder: the first exits 0, the second exits 1 naming what the README says got worse.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.readme import block, command_options


def commands() -> list[list[str]]:
    """The block's commands as argument lists (comments dropped, continuations joined)."""
    out, pending = [], ""
    for line in block("regression-examples").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            out.append(shlex.split(pending))
            pending = ""
    assert not pending, f"a command ends with a continuation: {pending!r}"
    return out


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_the_block_is_a_baseline_then_a_gated_comparison() -> None:
    baseline, current = commands()
    known = command_options("assess")
    for argv in (baseline, current):
        assert argv[:2] == ["modelshield", "assess"], argv
        used = {a for a in argv if a.startswith("--")}
        assert used <= known, used - known
    assert option(current, "--baseline") == f"{option(baseline, '--out')}/report.json"
    assert option(current, "--fail-on") == "regression" and "--baseline" not in baseline
    for name in ("--sections", "--n"):  # like for like: the same sections on the same points
        assert option(baseline, name) == option(current, name)
    assert (option(baseline, "--model"), option(current, "--model")) == ("digits-cnn-at", "digits-cnn")
    assert option(baseline, "--out") != option(current, "--out")


@pytest.mark.slow
def test_commands_run_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    baseline, current = commands()
    first = subprocess.run(shlex.join(baseline), shell=True, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(shlex.join(current), shell=True, cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    text = " ".join(second.stdout.split())
    assert "section evasion: severity low -> medium (worse)" in text
    assert "worse robust_accuracy (evasion):" in text
    report = json.loads((tmp_path / str(option(current, "--out")) / "report.json").read_text())
    comparison = report["comparison"]
    robust = next(c for c in comparison["changes"] if c["name"] == "robust_accuracy")
    assert comparison["regressed"] and robust["regression"]
    assert robust["baseline"] == pytest.approx(0.87, abs=0.05)  # "about 87% to 54%"
    assert robust["current"] == pytest.approx(0.54, abs=0.05)
