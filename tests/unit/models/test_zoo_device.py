"""``zoo.train(..., device=...)``: torch entries train with model and data on the device, weights saved
on the CPU; scikit-learn entries ignore it; ``device="cpu"`` trains exactly what the default does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield import zoo
from modelshield.errors import ConfigError
from modelshield.models import parameter_device
from modelshield.models.load import load_model, weights_sha256
from modelshield.zoo import builder

REPO_ROOT = Path(__file__).resolve().parents[3]


class _Stop(Exception):
    """Raised by the stand-in trainers once they have seen where training was asked to run."""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def meta_device(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """Stand in for a GPU on a CPU-only machine: the builder's device resolves to ``meta``."""
    dev = torch.device("meta")
    monkeypatch.setattr(builder, "resolve_device", lambda name, owner: dev)
    return dev


def test_torch_entry_trains_model_and_data_on_the_device(
        cache: Path, meta_device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_fit(module: nn.Module, x: Tensor, y: Tensor, recipe: Any, **_: Any) -> None:
        seen.update(model=parameter_device(module), x=x.device, y=y.device)
        raise _Stop

    monkeypatch.setattr(builder, "fit", fake_fit)
    with pytest.raises(_Stop):
        zoo.train("digits-cnn", device="cuda")
    assert seen == {"model": meta_device, "x": meta_device, "y": meta_device}
    assert not (cache / "zoo" / "digits-cnn.pt").exists()


def test_adversarial_entry_gets_model_and_data_on_the_device(
        cache: Path, meta_device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_trainer(module: nn.Module, *, train: tuple[Tensor, Tensor], check: tuple[Tensor, Tensor],
                     **_: Any) -> tuple[float, float]:
        seen.update(model=parameter_device(module), devices={t.device for t in (*train, *check)})
        raise _Stop

    monkeypatch.setattr(builder, "_ADVERSARIAL_TRAINERS", [fake_trainer])
    with pytest.raises(_Stop):
        zoo.train("digits-cnn-at", device="cuda")
    assert seen == {"model": meta_device, "devices": {meta_device}}


def test_sklearn_entry_ignores_the_device(cache: Path, meta_device: torch.device,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    env = os.environ.get("MODELSHIELD_DATA")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")
    monkeypatch.setenv("MODELSHIELD_DATA", str(root))
    model = zoo.train("phishing-logreg", device="cuda")
    assert model.meta["test_accuracy"] >= zoo.spec("phishing-logreg").min_accuracy


def test_a_bad_device_is_refused_before_any_work(cache: Path) -> None:
    with pytest.raises(ConfigError, match="'--device' must be one of"):
        zoo.train("digits-cnn", device="cdua")
    assert not cache.exists()


@pytest.mark.slow
def test_cpu_device_trains_the_default_weights(cache: Path) -> None:
    default = zoo.train("digits-cnn")
    on_cpu = zoo.train("digits-cnn", device="cpu", force=True)
    assert on_cpu.meta["weights_sha256"] == default.meta["weights_sha256"]
    assert on_cpu.meta["train_device"] == "cpu"


@pytest.mark.gpu
def test_digits_cnn_trains_on_cuda_and_is_saved_and_loaded_on_the_cpu(cache: Path) -> None:
    trained = zoo.train("digits-cnn", device="cuda")
    assert trained.meta["train_device"].startswith("cuda")
    assert parameter_device(trained.module) == torch.device("cpu")
    assert trained.meta["test_accuracy"] >= zoo.spec("digits-cnn").min_accuracy
    saved, _ = load_model(cache / "zoo" / "digits-cnn.pt")
    assert weights_sha256(saved) == trained.meta["weights_sha256"] == weights_sha256(trained.module)
    loaded = zoo.load("digits-cnn", train_if_missing=False)  # digests and CPU re-score pass
    assert weights_sha256(loaded.module) == trained.meta["weights_sha256"]
