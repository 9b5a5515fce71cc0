"""resolve_device: device names to torch.device, with one clear error for a missing or misspelt one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelshield.errors import ConfigError
from modelshield.models import module_device, resolve_device
from modelshield.models.device import synchronize

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_spellings(name: str | torch.device) -> None:
    assert resolve_device(name) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_names_the_fix(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device(name, owner="modelshield attack evasion")
    text = str(info.value)
    assert text.startswith("modelshield attack evasion: '--device' must be a device this machine has")
    assert repr(name) in text and "no CUDA GPU" in text
    assert "--device cpu" in text and "--device auto" in text


@pytest.mark.skipif(HAS_MPS, reason="checks the error on a machine without MPS")
def test_mps_without_mps_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"no Apple MPS device\. Use --device cpu, or --device auto"):
        resolve_device("mps")


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_index_out_of_range() -> None:
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(("typo", "suggestion"), [("cdua", "cuda"), ("cpuu", "cpu"), ("atuo", "auto")])
def test_typo_gets_a_suggestion(typo: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device(typo)
    text = str(info.value)
    assert "'--device' must be one of cpu, cuda, mps, auto or cuda:N" in text
    assert f"got {typo!r}. Did you mean {suggestion!r}?" in text


@pytest.mark.parametrize("bad", ["", "gpu0", "cuda:x", "cuda:-1", "tpu"])
def test_nonsense_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="'--device' must be one of"):
        resolve_device(bad)


def test_module_device_and_synchronize_on_cpu() -> None:
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.ReLU()) == torch.device("cpu")  # no parameters: CPU
    synchronize(torch.device("cpu"))  # a no-op, must not fail without CUDA
    synchronize(torch.zeros(1))
