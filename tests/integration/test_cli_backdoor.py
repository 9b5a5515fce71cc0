"""``modelshield backdoor plant`` / ``scan`` end to end with typer's CliRunner on digits (fast)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.data import load_dataset
from modelshield.models.load import load_model

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", "backdoor", *args])


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plant")
    result = invoke("plant", "--data", "digits", "--attack", "badnets", "--rate", "0.05", "--target", "0",
                    "--epochs", "10", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_the_options() -> None:
    for cmd, options in (("plant", ("--data", "--attack", "--rate", "--target", "--out", "--epochs",
                                    "--train-size", "--data-dir", "--force")),
                         ("scan", ("--model", "--data", "--clean-n", "--json", "--train-set", "--nc-steps"))):
        result = runner.invoke(app, ["backdoor", cmd, "--help"])
        assert result.exit_code == 0
        for option in options:
            assert option in result.stdout


def test_plant_writes_files_and_the_backdoor_works(planted: Path) -> None:
    for name in ("model.pt", "poison.json", "trigger.png", "poison_rows.npz"):
        assert (planted / name).is_file()
    info = json.loads((planted / "poison.json").read_text())
    ds = load_dataset("digits")
    n = int(ds.x_train.shape[0])
    idx = torch.tensor(info["indices"])
    assert idx.numel() == round(0.05 * n)  # rate * N rows
    assert len(set(info["indices"])) == idx.numel()
    # Dirty label: the poisoned rows came from other classes.
    assert all(int(ds.y_train[i]) == lab != 0 for i, lab in zip(info["indices"], info["original_labels"],
                                                                  strict=True))
    assert info["attack_success_rate"] > 0.9
    assert info["clean_accuracy"] > 0.85
    assert info["settings"]["arch"] == "cnn-8x8" and "provenance" in info
    module, meta = load_model(planted / "model.pt")
    assert meta["arch"] == "cnn-8x8" and meta["dataset"] == "digits"
    # The saved model reproduces the recorded clean accuracy.
    with torch.no_grad():
        acc = float((module.eval()(ds.x_test.float()).argmax(1) == ds.y_test).float().mean())
    assert acc == pytest.approx(info["clean_accuracy"], abs=1e-6)


def test_scan_json_keys_and_verdicts(planted: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan.json"
    result = invoke("scan", "--model", str(planted / "model.pt"), "--clean-n", "200", "--nc-steps", "20",
                    "--train-set", str(planted), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "verdict" in result.stdout and "STRIP" in result.stdout
    d = json.loads(out.read_text())
    for key in ("model", "data", "verdict", "flagged_classes", "classes", "neural_cleanse", "strip",
                "training_set", "planted", "provenance"):
        assert key in d
    assert [c["class"] for c in d["classes"]] == list(range(10))
    for c in d["classes"]:
        assert c["verdict"] == ("backdoor" if c["flagged_by"] else "clean")
        assert (tmp_path / c["trigger_png"]).is_file()
        assert c["neural_cleanse_flagged"] == (c["class"] in d["neural_cleanse"]["flagged"])
    assert d["flagged_classes"] == sorted(c["class"] for c in d["classes"] if c["flagged_by"])
    assert d["verdict"] == ("backdoored" if d["flagged_classes"] else "no backdoor found")
    # STRIP threshold at the 5% quantile of 200 clean entropies: 10 of 200 rejected.
    assert d["strip"]["false_rejection_clean"] == pytest.approx(0.05, abs=0.006)
    assert d["data"]["n_clean"] == 200
    ts = d["training_set"]
    assert ts["n"] == 1257 and ts["n_poisoned"] == 63
    for det in ("activation_clustering", "spectral_signatures"):
        assert 0.0 <= ts[det]["precision"] <= 1.0 and 0.0 <= ts[det]["recall"] <= 1.0
    assert d["planted"]["target"] == 0 and d["planted"]["attack_success_rate"] > 0.9


@pytest.mark.parametrize(("args", "needle"), [
    (("--target", "10"), "--target"),
    (("--rate", "1.5"), "'rate' must be a number in (0, 1)"),
    (("--rate", "0"), "'rate' must be a number in (0, 1)"),
    (("--patch-size", "9"), "trigger larger than the image"),
    (("--attack", "trojan"), "--attack"),
])
def test_plant_bad_input_exits_2(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    result = invoke("plant", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2
    assert needle in one_error_line(result)
    assert not (tmp_path / "o" / "model.pt").exists()


def test_scan_clean_set_too_small_exits_2(planted: Path) -> None:
    result = invoke("scan", "--model", str(planted / "model.pt"), "--clean-n", "5")
    assert result.exit_code == 2
    assert "clean set is too small" in one_error_line(result)


def test_scan_train_set_must_be_a_plant_folder(planted: Path, tmp_path: Path) -> None:
    result = invoke("scan", "--model", str(planted / "model.pt"), "--clean-n", "50", "--nc-steps", "2",
                    "--train-set", str(tmp_path))
    assert result.exit_code == 2
    assert "'--train-set' must be a folder" in one_error_line(result)
