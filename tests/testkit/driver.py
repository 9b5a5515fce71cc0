"""Kill a driver process mid-run: the runner's resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def kill_after_checkpoints(cmd: list[str], ckpt: Path, count: int, *, timeout: float = 180) -> int:
    """Start cmd (tests/ on PYTHONPATH, its own session), SIGKILL its process group as soon as
    ``ckpt`` holds ``count`` checkpoint files, and return how many it holds then.

    Fails the test if the process exits first (with its stderr) or writes none within timeout.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while len(list(ckpt.glob("*.json"))) < count:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the driver wrote no checkpoints"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    return len(list(ckpt.glob("*.json")))
