"""``--device`` on the commands that train or scan: ``backdoor plant``, ``backdoor scan`` and ``zoo train``.

On the CPU (what CI runs): ``--device cpu`` trains exactly what the default does and records the
device; ``--device cuda`` on a machine without CUDA and a misspelt ``--device cdua`` exit 2 with
one line before any work. ``zoo train --device cuda`` trains a torch entry on the GPU (GPU-marked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()
# A small, fast plant: 500 digits rows, 6 epochs (about a second of training on one thread).
PLANT = ["backdoor", "plant", "--data", "digits", "--train-size", "500", "--epochs", "6", "--rate", "0.1"]
COMMANDS = {
    "backdoor plant": PLANT,
    "backdoor scan": ["backdoor", "scan", "--model", "digits-cnn", "--clean-n", "20", "--nc-steps", "1"],
    "zoo train": ["zoo", "train", "digits-cnn"],
}


def fast(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", *args])


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty zoo cache: nothing may be trained into the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MODELSHIELD_CACHE", str(folder))
    return folder


def test_device_is_in_the_help() -> None:
    for command in (["backdoor", "plant"], ["backdoor", "scan"], ["zoo", "train"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--device" in result.stdout, command


def test_plant_and_scan_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = fast("backdoor", "plant", "--data", "digits", "--train-size", "200", "--epochs", "1",
                  "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "poison.json").read_text())["settings"]["device"] == "cpu"
    report = tmp_path / "scan.json"
    result = fast("backdoor", "scan", "--model", str(out / "model.pt"), "--clean-n", "20", "--nc-steps", "1",
                  "--train-set", str(out), "--device", "cpu", "--json", str(report))
    assert result.exit_code == 0, result.output
    scan = json.loads(report.read_text())
    assert scan["model"]["device"] == "cpu" and scan["data"]["n_clean"] == 20
    assert scan["training_set"] is not None and scan["planted"]["target"] == 0


@pytest.mark.slow
def test_plant_on_cpu_trains_what_the_library_trains(tmp_path: Path) -> None:
    from modelshield.attacks.backdoor import make_train_fn
    from modelshield.cli._target import torch_threads
    from modelshield.cli.backdoor import load_poisoned_set
    from modelshield.models.load import load_model, weights_sha256

    result = fast(*PLANT, "--out", str(tmp_path / "cpu"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "cpu" / "poison.json").read_text())
    assert info["settings"]["device"] == "cpu" and info["clean_accuracy"] > 0.8
    # The device plumbing changes nothing on the CPU: the zoo loop on the same poisoned rows, with
    # the same seed and thread count, gives the saved weights bit for bit.
    x, y, _, _ = load_poisoned_set(tmp_path / "cpu", data_dir=None)
    with torch_threads(1):
        again = make_train_fn("cnn-8x8", epochs=6, batch_size=32, seed=0)(x, y)
    saved, _ = load_model(tmp_path / "cpu" / "model.pt")
    assert weights_sha256(saved) == weights_sha256(again)


@pytest.mark.slow
def test_zoo_train_on_cpu(cache: Path) -> None:
    result = fast("zoo", "train", "digits-cnn", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Trained digits-cnn" in result.stdout and (cache / "zoo" / "digits-cnn.pt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cuda_without_a_gpu_exits_2_with_one_line(name: str, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    command = [*COMMANDS[name], *(["--out", str(out)] if name == "backdoor plant" else [])]
    result = fast(*command, "--device", "cuda")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"modelshield {name}: '--device' must be a device this machine has; got 'cuda'" in line
    assert "--device cpu" in line
    assert not out.exists() and not cache.exists()  # refused before any work


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_device_typo_exits_2_with_a_suggestion(name: str, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    command = [*COMMANDS[name], *(["--out", str(out)] if name == "backdoor plant" else [])]
    result = fast(*command, "--device", "cdua")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"modelshield {name}: '--device' must be one of" in line and "Did you mean 'cuda'?" in line
    assert not out.exists() and not cache.exists()


@pytest.mark.gpu
def test_zoo_train_on_cuda(cache: Path) -> None:
    result = fast("zoo", "train", "digits-cnn", "--device", "cuda")
    assert result.exit_code == 0, result.output
    meta = json.loads((cache / "zoo" / "digits-cnn.json").read_text())
    assert meta["train_device"].startswith("cuda") and "Trained digits-cnn" in result.stdout


@pytest.mark.gpu
def test_plant_and_scan_on_cuda(tmp_path: Path) -> None:
    """plant trains on the GPU (the saved model is a CPU state dict) and scan runs there."""
    out = tmp_path / "gpu"
    result = fast(*PLANT, "--out", str(out), "--device", "cuda")
    assert result.exit_code == 0, result.output
    info = json.loads((out / "poison.json").read_text())
    assert info["settings"]["device"].startswith("cuda") and info["clean_accuracy"] > 0.5
    report = tmp_path / "scan.json"
    result = fast("backdoor", "scan", "--model", str(out / "model.pt"), "--clean-n", "40", "--nc-steps", "2",
                  "--train-set", str(out), "--device", "cuda", "--json", str(report))
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["model"]["device"].startswith("cuda")
