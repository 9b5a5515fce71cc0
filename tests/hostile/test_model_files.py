"""Hostile model files: a TorchScript archive whose loading writes a file must never be loaded
unless the caller says it trusts it, and never from the zoo cache (issue #15, item 2)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from testkit.cli import invoke
from torch import Tensor, nn
from typer.testing import CliRunner

from modelshield import zoo
from modelshield.errors import DataError, ModelCapabilityError
from modelshield.models.load import UnsafeModelFileError, load_model

runner = CliRunner()


class _Trigger(nn.Module):
    """Scripted, its __setstate__ runs inside torch.jit.load and writes the marker file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.buf = torch.zeros(1)

    def forward(self, x: Tensor) -> Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        # Creates (or overwrites) the file; stored on self so the compiler keeps the call.
        self.buf = torch.from_file(state[0], shared=True, size=16, dtype=torch.uint8).fill_(65)


class _EvilDigits(nn.Module):
    """Looks like a digits classifier: (N, 1, 8, 8) -> 10 logits."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.trigger = _Trigger(marker)
        self.lin = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.lin(self.trigger(x).flatten(1))
        return out


def _script_save(module: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
        torch.jit.save(torch.jit.script(module), str(path))


def evil_file(path: Path, marker: Path) -> Path:
    """A TorchScript archive at path that creates marker when torch.jit.load opens it."""
    _script_save(_EvilDigits(str(marker)), path)
    assert not marker.exists()
    return path


def test_the_exploit_is_real_when_trusted(tmp_path: Path) -> None:
    """Opting in really runs the file's code: the refusals below are not vacuous."""
    marker = tmp_path / "pwned"
    path = evil_file(tmp_path / "evil.pt", marker)
    module, meta = load_model(path, trust_torchscript=True)
    assert marker.read_bytes() == b"A" * 16
    assert meta["format"] == "torchscript" and module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "weights.bin"])
def test_load_model_refuses_torchscript_before_running_it(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = evil_file(tmp_path / name, marker)
    expected = r"TorchScript.*runs code from the file while loading.*save_model.*trust_torchscript=True"
    for arch in (None, "cnn-8x8"):
        with pytest.raises(UnsafeModelFileError, match=expected) as info:
            load_model(path, arch=arch)
        assert isinstance(info.value, DataError) and isinstance(info.value, ModelCapabilityError)
        assert not marker.exists()


def test_cli_model_file_refuses_torchscript_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_file(tmp_path / "evil.pt", marker)
    result = invoke("attack", "evasion", "--model", str(path), "--data", "digits", "--attack", "fgsm",
                    "--n", "4")
    assert result.exit_code == 2, result.output
    assert "--trust-torchscript" in result.stderr and "TorchScript" in result.stderr
    assert not marker.exists()
    f = str(path)
    for args in (
        ("assess", "--model", f, "--data", "digits", "--out", str(tmp_path / "rep"), "--n", "4"),
        ("assess", "--model", "digits-cnn", "--defended", f, "--out", str(tmp_path / "rep2"), "--n", "4"),
        ("certify", "--model", f, "--data", "digits", "--points", "2", "--n", "10", "--n0", "10"),
        ("defend", "distill", "--model", f, "--data", "digits", "--out", str(tmp_path / "d.pt")),
        ("defend", "adversarial-training", "--model", f, "--data", "digits", "--out", str(tmp_path / "a.pt")),
        ("extract", "--victim", f, "--data", "digits", "--queries", "10"),
        ("backdoor", "scan", "--model", f, "--data", "digits", "--clean-n", "20"),
    ):
        other = invoke(*args)
        assert other.exit_code == 2, (args, other.output)
        assert "--trust-torchscript" in other.stderr and not marker.exists(), args


def test_cli_trust_torchscript_loads_a_trusted_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    _script_save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), path)
    out = tmp_path / "r.json"
    result = invoke("attack", "evasion", "--model", str(path), "--data", "digits", "--attack", "fgsm",
                    "--n", "4", "--trust-torchscript", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding a copy of the session's trained digits-cnn (trained there at most once)."""
    trained = zoo.load("digits-cnn")
    cache = tmp_path / "cache"
    (cache / "zoo").mkdir(parents=True)
    shutil.copy(trained.path, cache / "zoo" / "digits-cnn.pt")
    shutil.copy(trained.path.with_suffix(".json"), cache / "zoo" / "digits-cnn.json")
    monkeypatch.setenv("MODELSHIELD_CACHE", str(cache))
    return cache


def test_torchscript_dropped_in_the_zoo_cache_never_runs(private_cache: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil_file(private_cache / "zoo" / "digits-cnn.pt", marker)
    with pytest.raises(UnsafeModelFileError, match=r"cached 'digits-cnn'.*modelshield zoo train digits-cnn"):
        zoo.load("digits-cnn")
    assert not marker.exists()
    result = invoke("attack", "evasion", "--model", "digits-cnn", "--attack", "fgsm", "--n", "4",
                    "--trust-torchscript")  # the opt-in is for files named on the command line only
    assert result.exit_code == 2, result.output
    assert "modelshield zoo train digits-cnn --force" in " ".join(result.stderr.split())
    assert not marker.exists()
