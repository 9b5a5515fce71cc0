"""Hostile sizes, files and interrupts: memory estimates before allocating, bounded decompression,
output paths checked before the work, atomic writes without silent overwrites, a trained model
kept when the evaluation is interrupted, and plain progress lines when stderr is no terminal."""

from __future__ import annotations

import gzip
import os
import re
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import modelshield
from modelshield.cli.app import app
from modelshield.errors import ConfigError, DataError

runner = CliRunner()
SRC = str(Path(modelshield.__file__).resolve().parents[1])  # the code under test (also for subprocesses)
GiB = 1 << 30


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")  # pragma: no cover


@contextmanager
def address_space_cap(extra: int = 4 * GiB) -> Iterator[None]:
    """Cap this process's address space at its current size + extra, so a missing guard fails fast
    (MemoryError / RuntimeError) instead of swapping the machine to death."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _cli_subprocess(args: list[str], *, env: dict[str, str], cap: int, timeout: float = 240) -> Any:
    """Run the CLI in a child whose address space is capped at cap bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = "import sys; from modelshield.cli.app import app; app(sys.argv[1:], prog_name='modelshield')"
    return subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": SRC, **env},
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


# --- 6. bounded resources -------------------------------------------------------------------------

def test_extract_a_billion_noise_queries_exits_2_with_the_estimate_before_allocating() -> None:
    start = time.monotonic()
    result = _cli_subprocess(["--threads", "1", "extract", "--victim", "digits-cnn", "--pool", "noise",
                              "--queries", "1000000000"], env={"MODELSHIELD_MAX_MEMORY": "8G"}, cap=16 * GiB)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert re.search(r"needs about [\d.]+ GiB", lines[0]) and "--queries" in lines[0], lines[0]
    assert "8.0 GiB" in lines[0]  # the limit it was compared with
    assert elapsed < 60  # refused before loading (and before any training of) the victim


def test_load_pool_refuses_a_noise_pool_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield.experiments.extraction import load_pool

    monkeypatch.setenv("MODELSHIELD_MAX_MEMORY", "1G")
    with address_space_cap(), pytest.raises(ConfigError, match=r"'size'.*GiB.*--queries"):
        load_pool("noise", input_shape=(1, 8, 8), size=1_000_000_000)


def test_run_in_batches_refuses_a_batch_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from modelshield.assess import run_in_batches

    calls: list[int] = []

    def attack(model: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        calls.append(int(x.shape[0]))
        raise AssertionError("the attack ran")

    monkeypatch.setenv("MODELSHIELD_MAX_MEMORY", "64K")
    x = torch.rand(500, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"'batch_size'.*KiB.*--batch-size"):
        run_in_batches(attack, torch.nn.Flatten(), x, torch.zeros(500, dtype=torch.long),  # type: ignore[arg-type]
                       batch_size=250)
    assert calls == []


def _gzip_idx(path: Path, dims: tuple[int, ...], body_bytes: int) -> None:
    """A gzip IDX file (uint8) whose header declares dims, followed by body_bytes zero bytes."""
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
        chunk = bytes(1 << 20)
        for _ in range(body_bytes >> 20):
            fh.write(chunk)


def _peak_while(fn: Any) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        fn()
    except BaseException as exc:  # returned for the caller to check
        err: BaseException | None = exc
    else:
        err = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, err


def test_gzip_idx_bomb_is_refused_from_its_header_without_inflating(tmp_path: Path) -> None:
    from modelshield.data.idx import load_idx

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_idx(bomb, (1_000_000_000, 28, 28), 64 << 20)  # declares 784 GB; 64 MiB of zeros inside
    assert bomb.stat().st_size < 1 << 20
    peak, err = _peak_while(lambda: load_idx(bomb))
    assert isinstance(err, DataError), err
    assert "1000000000, 28, 28" in str(err) and "not inflated" in str(err)
    assert peak < 8 << 20, f"inflated {peak / 2**20:.0f} MiB before refusing"


def test_gzip_idx_longer_than_its_header_is_read_only_up_to_the_declared_size(tmp_path: Path) -> None:
    from modelshield.data.idx import load_idx

    long = tmp_path / "t10k-images-idx3-ubyte.gz"
    _gzip_idx(long, (10, 28, 28), 64 << 20)  # declares 7,840 bytes; holds 64 MiB
    peak, err = _peak_while(lambda: load_idx(long))
    assert isinstance(err, DataError) and "trailing bytes" in str(err), err
    assert peak < 8 << 20, f"inflated {peak / 2**20:.0f} MiB for a 7,840-byte array"


# --- 7. interrupts and files ----------------------------------------------------------------------

def test_interrupt_during_evaluation_keeps_the_trained_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelshield.cli.defend as defend
    from modelshield.models.load import load_model

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(defend, "_masking", interrupted)
    out = tmp_path / "adv.pt"
    result = runner.invoke(app, ["--threads", "1", "defend", "adversarial-training", "--model", "digits-cnn",
                                 "--method", "fast", "--eps", "0.1", "--epochs", "1", "--batch-size", "256",
                                 "--n", "20", "--out", str(out)])
    assert result.exit_code != 0  # interrupted
    assert out.is_file(), result.output
    module, meta = load_model(out)
    assert meta["arch"] == "cnn-8x8" and meta["defence"] == "adversarial-training"
    assert meta["training"]["method"] == "fast" and meta["evaluation"] is None  # not evaluated yet
    assert sum(p.numel() for p in module.parameters()) > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_backdoor_scan_does_not_overwrite_existing_trigger_pngs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelshield.cli.backdoor as backdoor

    called: list[str] = []
    monkeypatch.setattr(backdoor, "load_target", lambda *a, **k: called.append("load") or 1 / 0)
    old = tmp_path / "scan-nc-class3.png"
    old.write_bytes(b"an earlier scan's trigger")
    result = runner.invoke(app, ["--threads", "1", "backdoor", "scan", "--model", "digits-cnn",
                                 "--json", str(tmp_path / "scan.json")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "scan-nc-class3.png" in lines[0] and "--force" in lines[0], result.stderr
    assert old.read_bytes() == b"an earlier scan's trigger"
    assert called == [] and not (tmp_path / "scan.json").exists()


def test_json_to_an_unwritable_path_fails_before_the_attack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelshield.cli.attack as attack

    called: list[str] = []

    def record(name: str) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            called.append(name)
            raise RuntimeError(f"{name} must not run")
        return fake

    monkeypatch.setattr(attack, "load_target", record("load_target"))
    monkeypatch.setattr(attack, "run_in_batches", record("run_in_batches"))
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder is expected")
    result = runner.invoke(app, ["--threads", "1", "attack", "evasion", "--model", "digits-cnn",
                                 "--attack", "fgsm", "--n", "10", "--json", str(blocker / "out.json")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "results" in lines[0] and "not a folder" in lines[0], result.stderr
    assert called == []


def test_output_paths_are_checked_and_written_atomically(tmp_path: Path) -> None:
    from modelshield._io import check_output_paths, write_atomic

    with pytest.raises(ConfigError, match="must not be a folder"):
        check_output_paths([tmp_path], force=True, owner="t")
    target = tmp_path / "new" / "deeper" / "out.json"
    write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    with pytest.raises(ConfigError, match="must not exist yet"):
        write_atomic(target, "changed")
    assert target.read_text() == "{}\n"
    write_atomic(target, b"changed", force=True)
    assert target.read_bytes() == b"changed"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary left


# --- 8. progress that helps -----------------------------------------------------------------------

_PLAIN_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def test_progress_without_a_terminal_prints_plain_lines_to_stderr() -> None:
    code = (
        "import time\n"
        "from modelshield.cli._render import progress_bar\n"
        "with progress_bar('loading model') as progress:\n"
        "    time.sleep(1.3)\n"
        "    progress(0, 4, 'pgd eps=0.1')\n"
        "    for i in range(1, 5):\n"
        "        progress(i, 4, 'pgd eps=0.1')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC,
                            "MODELSHIELD_PROGRESS": ""}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(_PLAIN_LINE.match(ln) for ln in lines), result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert any("pgd eps=0.1: 4/4 (100%)" in ln for ln in lines), result.stderr
    assert any("loading model" in ln for ln in lines), result.stderr  # said before the first step


def test_a_long_first_batch_shows_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIELD_PROGRESS", "plain")
    result = runner.invoke(app, ["--threads", "1", "attack", "evasion", "--model", "digits-cnn",
                                 "--attack", "fgsm", "--n", "20", "--batch-size", "20"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if _PLAIN_LINE.match(ln)]
    # the attack is named with 0/1 before its (only) batch runs, not left at "loading model 0/?"
    assert any(ln.endswith("fgsm eps=0.1: 0/1 (0%)") for ln in lines), result.stderr
    assert any(ln.endswith("fgsm eps=0.1: 1/1 (100%)") for ln in lines), result.stderr
