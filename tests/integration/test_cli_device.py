"""``--device``: CPU (the default, what CI runs) and auto end to end on digits-cnn; a missing or
misspelt device exits 2 with one line; on a CUDA machine (``-m gpu``) the evasion attacks run on
the GPU and agree with the CPU."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()
FAST_ASSESS = ["--n", "40", "--attacks", "fgsm,pgd", "--eps", "0,0.1", "--steps", "5",
               "--sections", "evasion"]


@pytest.fixture(scope="module")
def digits_cnn_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """digits-cnn trained once (reusing the session cache when it is already there)."""
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("device-zoo-cache")))
        with torch_threads(1):
            zoo.load("digits-cnn")
        yield zoo.cache_dir()


def fast(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", *args])


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_attack_evasion_on_device(digits_cnn_cache: Path, tmp_path: Path, device: str) -> None:
    out = tmp_path / "m.json"
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "pgd", "--steps", "5",
                  "--n", "40", "--device", device, "--json", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # auto: this machine's best device
    assert payload["model"]["device"] == (expected if device == "auto" else "cpu")
    assert payload["n"] == 40 and 0.0 <= payload["robust_accuracy"] <= payload["clean_accuracy"]


def test_attack_evasion_cpu_and_auto_agree(digits_cnn_cache: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("auto is CUDA here; the gpu test compares devices")
    results = []
    for device in ("cpu", "auto"):
        out = tmp_path / f"{device}.json"
        assert fast("attack", "evasion", "--model", "digits-cnn", "--attack", "fgsm", "--n", "60",
                    "--device", device, "--json", str(out)).exit_code == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["robust_accuracy"] == results[1]["robust_accuracy"]


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_assess_on_device(digits_cnn_cache: Path, tmp_path: Path, device: str) -> None:
    result = fast("assess", "--model", "digits-cnn", "--out", str(tmp_path / "r"), *FAST_ASSESS,
                  "--device", device)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model"]["device"] in ("cpu", "cuda")
    assert (tmp_path / "r" / "report.html").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["attack", "evasion", "--model", "digits-cnn", "--n", "5"],
    ["assess", "--model", "digits-cnn", "--out", "unused-report"],
    ["certify", "--model", "digits-cnn", "--points", "5"],
])
def test_cuda_without_a_gpu_exits_2_with_one_line(command: list[str], tmp_path: Path) -> None:
    if "--out" in command:
        command = [*command[:-1], str(tmp_path / "r")]
    result = fast(*command, "--device", "cuda")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "'--device' must be a device this machine has; got 'cuda'" in line
    assert "--device cpu" in line
    assert not (tmp_path / "r").exists()  # refused before any work


def test_device_typo_exits_2_with_a_suggestion() -> None:
    result = fast("attack", "evasion", "--model", "digits-cnn", "--n", "5", "--device", "cdua")
    assert result.exit_code == 2
    assert "Did you mean 'cuda'?" in one_error_line(result)


def test_device_is_in_every_model_command_help() -> None:
    for command in (["attack", "evasion"], ["assess"], ["demo"], ["certify"], ["extract"],
                    ["defend", "adversarial-training"], ["defend", "distill"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--device" in result.stdout, command


@pytest.mark.gpu
def test_evasion_attacks_on_cuda_match_cpu(digits_cnn_cache: Path) -> None:
    """FGSM, PGD, APGD, Square and the Ensemble on CUDA: outputs on the GPU, verified, and robust
    accuracy within a few points of the same attack on the CPU (floating-point order differs)."""
    from modelshield.attacks.evasion.registry import build_attack
    from modelshield.targets import as_query_model, load_target

    runs = {"fgsm": {}, "pgd": {"steps": 20}, "apgd-ce": {"steps": 20}, "ensemble": {"steps": 20},
            "square": {"max_queries": 300}}
    eps = 0.1
    on: dict[str, Any] = {}
    for device in ("cpu", "cuda"):
        target = load_target("digits-cnn", data=None, data_dir=None, arch=None, n=200, device=device)
        assert target.x.device.type == device and target.model_info["device"].startswith(device)
        for name, kw in runs.items():
            atk = build_attack(name, eps=eps, norm="inf", seed=0, steps=kw.get("steps"),
                               max_queries=kw.get("max_queries"))
            victim = as_query_model(target) if name == "square" else target.module
            res = atk(victim, target.x, target.y)
            if name != "square":  # a query-only attack answers on the CPU (numpy in between)
                assert res.x_adv.device.type == device, name
            assert bool(res.valid.all()), name
            assert float((res.x_adv - target.x.to(res.x_adv.device)).abs().max()) <= eps + 1e-5, name
            with torch.no_grad():
                again = target.module(res.x_adv.to(target.x.device)).argmax(1).cpu()
            assert torch.equal(again, res.adv_pred.cpu()), name  # the reported labels are the model's
            on[f"{name}@{device}"] = res.robust_accuracy
    for name in runs:
        assert abs(on[f"{name}@cpu"] - on[f"{name}@cuda"]) <= 0.03, (name, on)


@pytest.mark.gpu
def test_cli_commands_on_cuda(digits_cnn_cache: Path, tmp_path: Path) -> None:
    """attack evasion (white-box and query-only), assess (evasion + blackbox) and certify with
    --device cuda: exit 0 and the JSON records the GPU."""
    for attack in ("pgd", "square"):
        out = tmp_path / f"{attack}.json"
        result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", attack, "--n", "40",
                      "--device", "cuda", "--json", str(out))
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["model"]["device"].startswith("cuda")
    result = fast("assess", "--model", "digits-cnn", "--out", str(tmp_path / "r"), "--n", "40", "--attacks",
                  "fgsm,pgd", "--eps", "0,0.1", "--steps", "5", "--sections", "evasion,blackbox",
                  "--blackbox-n", "20", "--query-budgets", "100", "--device", "cuda")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "report.json").read_text())["model"]["device"].startswith("cuda")
    out = tmp_path / "certify.json"
    result = fast("certify", "--model", "digits-cnn", "--points", "10", "--n", "200", "--device", "cuda",
                  "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["device"].startswith("cuda")
