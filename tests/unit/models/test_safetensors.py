"""safetensors: loading weights from them, and ``convert_to_safetensors`` (``scan --convert``)."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modelshield.errors import ConfigError, DataError
from modelshield.models import load_model_ref
from modelshield.models.archs import build
from modelshield.models.load import UnsafeModelFileError, load_model, save_model, weights_sha256
from modelshield.models.safetensors import convert_to_safetensors, is_safetensors, read_safetensors


@pytest.fixture
def net() -> nn.Module:
    return build("cnn-8x8", seed=7)


def _x() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_convert_keeps_every_tensor_and_the_architecture(tmp_path: Path, net: nn.Module) -> None:
    src = tmp_path / "net.pt"
    save_model(net, src, arch="cnn-8x8")
    result = convert_to_safetensors(src, tmp_path / "net.safetensors")
    out = Path(result.out)
    assert is_safetensors(out) and not is_safetensors(src)
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert result.to_dict()["bytes"] == out.stat().st_size
    tensors, meta = read_safetensors(out, owner="test")
    assert meta == {"format": "modelshield-v1", "arch": "cnn-8x8"}
    assert set(tensors) == set(net.state_dict()) and result.tensors == len(tensors)
    module, info = load_model(out)  # the architecture comes from the metadata: no arch=
    assert info["format"] == "safetensors" and info["arch"] == "cnn-8x8"
    assert weights_sha256(module) == weights_sha256(net)
    assert torch.equal(module(_x()), net.eval()(_x()))


def test_bare_state_dict_converts_and_needs_arch_to_load(tmp_path: Path, net: nn.Module) -> None:
    src = tmp_path / "weights.bin"  # the extension says nothing: content decides
    torch.save(net.state_dict(), src)
    out = tmp_path / "w.safetensors"
    convert_to_safetensors(src, out)
    with pytest.raises(ConfigError, match="'arch' must be given"):
        load_model(out)
    module, info = load_model(out, arch="cnn-8x8")
    assert info["format"] == "safetensors" and weights_sha256(module) == weights_sha256(net)
    ref = load_model_ref(out, arch="cnn-8x8")
    assert ref.provenance.format == "safetensors"


def test_a_safetensors_file_written_by_the_library_loads(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "model"  # no extension at all
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    module, _ = load_model(path, arch="cnn-8x8")
    assert weights_sha256(module) == weights_sha256(net)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_convert_refuses_code_and_writes_nothing(tmp_path: Path, net: nn.Module) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    out = tmp_path / "evil.safetensors"
    with pytest.raises(UnsafeModelFileError):
        convert_to_safetensors(evil, out)
    assert not marker.exists() and not out.exists()
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)  # a pickled nn.Module: refused, not unpickled
    with pytest.raises(UnsafeModelFileError):
        convert_to_safetensors(whole, out)
    assert not out.exists()


def test_convert_never_overwrites_without_force(tmp_path: Path, net: nn.Module) -> None:
    src = tmp_path / "net.pt"
    save_model(net, src, arch="cnn-8x8")
    out = tmp_path / "net.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="must not exist"):
        convert_to_safetensors(src, out)
    assert out.read_bytes() == b"keep me"
    convert_to_safetensors(src, out, force=True)
    assert is_safetensors(out)


def test_corrupt_safetensors_is_one_data_error(tmp_path: Path, net: nn.Module) -> None:
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])  # the header promises bytes that are not there
    with pytest.raises(DataError, match=r"static scan.*out-of-range"):
        load_model(bad, arch="cnn-8x8")
    with pytest.raises(DataError, match="valid safetensors"):  # the reader behind the scan
        load_model(bad, arch="cnn-8x8", scan=False)


def test_sparse_and_quantized_tensors_are_one_data_error(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    sparse = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, sparse)
    quant = tmp_path / "quant.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch >= 2.12 deprecates quantized tensors
        torch.save({"w": torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint8)}, quant)
    for src in (sparse, quant):
        with pytest.raises(DataError, match=r"must be dense and not quantized.*\['w'\]"):
            convert_to_safetensors(src, out)
        assert not out.exists()
