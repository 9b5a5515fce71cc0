"""Safe model files: modelshield-v1 round trip, bare state dicts, TorchScript, refusals."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from modelshield.errors import ConfigError, DataError, MissingDataError, ModelCapabilityError
from modelshield.models.archs import Cnn8x8
from modelshield.models.load import (
    UnsafeModelFileError,
    file_sha256,
    load_model,
    save_model,
    weights_sha256,
)
from modelshield.zoo import build


def last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def x_batch() -> torch.Tensor:
    return torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def net() -> nn.Module:
    return build("cnn-8x8", seed=7)


def test_round_trip_modelshield_v1(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "net.pt"
    digest = save_model(net, path, arch="cnn-8x8", meta={"note": "hi", "acc": 0.5, "tags": ["a", 1]})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert sorted(os.listdir(tmp_path)) == ["net.pt"]  # no temporary file left behind
    module, meta = load_model(path)
    assert isinstance(module, Cnn8x8) and not module.training
    assert weights_sha256(module) == weights_sha256(net)
    assert torch.equal(module(x_batch()), net(x_batch()))
    assert meta["note"] == "hi" and meta["acc"] == 0.5 and meta["tags"] == ["a", 1]
    assert meta["sha256"] == digest and meta["format"] == "modelshield-v1" and meta["arch"] == "cnn-8x8"


def test_saved_file_loads_with_weights_only(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "net.pt"
    save_model(net, path, arch="cnn-8x8", meta={"torch": torch.__version__})  # a str subclass
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "arch", "state_dict", "meta"}
    assert type(raw["meta"]["torch"]) is str


def test_save_refuses_to_overwrite(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "net.pt"
    first = save_model(net, path, arch="cnn-8x8")
    with pytest.raises(ConfigError, match=r"net\.pt.*exists.*overwrite=True"):
        save_model(build("cnn-8x8", seed=8), path, arch="cnn-8x8")
    assert file_sha256(path) == first  # untouched
    second = save_model(build("cnn-8x8", seed=8), path, arch="cnn-8x8", overwrite=True)
    assert second != first


def test_save_rejects_unknown_arch_and_bad_meta(tmp_path: Path, net: nn.Module) -> None:
    archs = r"'cnn-8x8', 'lenet-28', 'lenet-28-wide'"
    with pytest.raises(ConfigError, match=rf"'arch' must be one of {archs}; got 'cnn8x8'"):
        save_model(net, tmp_path / "a.pt", arch="cnn8x8")
    with pytest.raises(ConfigError, match=r"'meta' must hold only.*got Tensor at meta\['w'\]"):
        save_model(net, tmp_path / "b.pt", arch="cnn-8x8", meta={"w": torch.zeros(1)})
    assert not any(tmp_path.iterdir())


def test_bare_state_dict_needs_arch(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ConfigError, match=r"'arch' must be given for a bare state dict.*'cnn-8x8'"):
        load_model(path)
    module, meta = load_model(path, arch="cnn-8x8")
    assert weights_sha256(module) == weights_sha256(net) and meta["format"] == "state_dict"
    with pytest.raises(DataError, match=r"must match architecture 'lenet-28'"):
        load_model(path, arch="lenet-28")


def test_checkpoint_dict_with_state_dict_entry(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    module, _ = load_model(path, arch="cnn-8x8")
    assert weights_sha256(module) == weights_sha256(net)


def test_arch_contradicting_the_file(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "net.pt"
    save_model(net, path, arch="cnn-8x8")
    with pytest.raises(ConfigError, match=r"'arch' must match.*\('cnn-8x8'\); got 'lenet-28'"):
        load_model(path, arch="lenet-28")


def test_torchscript_round_trip(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "net.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
        torch.jit.script(net).save(str(path))  # type: ignore[no-untyped-call]  # untyped in torch
    with pytest.raises(UnsafeModelFileError, match=r"TorchScript.*trust_torchscript=True"):
        load_model(path)  # TorchScript runs code while loading: refused unless trusted
    module, meta = load_model(path, trust_torchscript=True)
    assert not module.training and meta["format"] == "torchscript" and meta["arch"] is None
    assert torch.equal(module(x_batch()), net(x_batch()))
    assert meta["sha256"] == file_sha256(path)


def test_refuses_pickled_module(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "full.pt"
    torch.save(net, path)
    expected = r"static scan.*'modelshield\.models\.archs\.Cnn8x8', which is not on the allow-list"
    with pytest.raises(DataError, match=expected):
        load_model(path)
    with pytest.raises(ModelCapabilityError):
        load_model(path, arch="cnn-8x8")


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_malicious_pickle_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))  # torch.save uses 2
    with pytest.raises(UnsafeModelFileError, match=r"static scan.*mkdir'.*code-execution primitive"):
        load_model(path, arch="cnn-8x8")
    assert not marker.exists()
    with pytest.raises(UnsafeModelFileError, match="refuses to unpickle"):  # weights_only, behind it
        load_model(path, arch="cnn-8x8", scan=False)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path: Path, net: nn.Module) -> None:
    with pytest.raises(MissingDataError, match=r"model file must exist.*nope\.pt"):
        load_model(tmp_path / "nope.pt")
    path = tmp_path / "net.pt"
    save_model(net, path, arch="cnn-8x8")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.pt.*static scan.*truncated"):
        load_model(cut)
    with pytest.raises(DataError, match=r"cut\.pt.*cannot be read"):
        load_model(cut, scan=False)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(DataError, match=r"state dict of tensors; got Tensor"):
        load_model(tensor_file, arch="cnn-8x8")


def test_weights_sha256_tracks_values_only() -> None:
    a, b = build("cnn-8x8", seed=1), build("cnn-8x8", seed=1)
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        last_linear(b).bias[0] += 1e-6
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256(a) != weights_sha256(build("cnn-8x8", seed=2))
