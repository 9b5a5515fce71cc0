"""``modelshield extract`` end to end with typer's CliRunner on the digits-cnn zoo model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """digits-cnn trained at most once per session (the session cache of tests/conftest.py)."""
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("cli-extract-cache")))
        with torch_threads(1):
            zoo.load("digits-cnn")
        yield zoo.cache_dir()


def extract(*args: str) -> Any:
    return runner.invoke(app, ["--threads", "1", "extract", "--victim", "digits-cnn", *args])


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["extract", "--help"])
    assert result.exit_code == 0
    for option in ("--victim", "--attack", "--queries", "--pool", "--output", "--strategy", "--defence",
                   "--prada", "--json", "--force", "--data-dir"):
        assert option in result.stdout


def test_knockoff_json_has_curve_prada_defence_and_provenance(zoo_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "steal.json"
    result = extract("--attack", "knockoff", "--queries", "200", "--pool", "digits", "--epochs", "3",
                     "--n", "100", "--defence", "round", "--prada", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "fidelity" in result.stdout and "PRADA" in result.stdout and "defence round" in result.stdout
    data = json.loads(out.read_text())
    for key in ("result", "defence", "honest_cost", "prada", "settings", "victim", "pool", "eval_data",
                "provenance", "stream_queries"):
        assert key in data, key
    # Default checkpoints: a quarter and a half of the budget, then the budget itself.
    assert [p["queries"] for p in data["result"]["curve"]] == [50, 100, 200]
    assert data["result"]["queries"] == 200 == data["stream_queries"] == data["prada"]["queries"]
    for point in data["result"]["curve"]:
        assert 0.0 <= point["fidelity"] <= 1.0 and 0.0 <= point["accuracy"] <= 1.0
    # Honest accuracy can only move by the share of top-1 labels the defence changed.
    cost = data["honest_cost"]
    assert abs(cost["accuracy_after"] - cost["accuracy_before"]) <= 1 - cost["label_agreement"] + 1e-9
    prov = data["provenance"]
    assert len(prov["model_weights_sha256"]) == 64 and len(prov["pool_sha256"]) == 64
    assert prov["pool"]["name"] == "digits" and prov["pool"]["relation"] == "same-distribution"
    assert prov["attacks"]["knockoff"]["budget"] == 200 and prov["packages"]["torch"]
    assert data["eval_data"]["n"] == 100 and data["settings"]["defence"] == "round"


def test_existing_json_needs_force(zoo_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.json"
    out.write_text("{}")
    result = extract("--queries", "50", "--pool", "noise", "--json", str(out))
    assert result.exit_code == 2
    assert "--force" in one_error_line(result)
    assert out.read_text() == "{}"


def test_jacobian_labels_on_a_noise_pool(zoo_cache: Path) -> None:
    result = extract("--attack", "jacobian", "--output", "labels", "--queries", "120", "--pool", "noise",
                     "--epochs", "2", "--n", "50")
    assert result.exit_code == 0, result.output
    # Seed set of 100, then one round cut to the remaining 20 queries.
    assert "120" in result.stdout and "queries spent: 120" in result.stdout


def test_pool_of_wrong_shape_exits_2_with_one_line(zoo_cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pool.npy"
    np.save(bad, np.zeros((300, 28, 28), dtype=np.float32))
    result = extract("--queries", "50", "--pool", str(bad))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "(1, 8, 8)" in line and "(28, 28)" in line


def test_pt_pool_without_channel_axis_is_accepted(zoo_cache: Path, tmp_path: Path) -> None:
    good = tmp_path / "pool.pt"
    torch.save(torch.rand(80, 8, 8, generator=torch.Generator().manual_seed(0)), good)
    result = extract("--queries", "60", "--pool", str(good), "--epochs", "1", "--n", "30")
    assert result.exit_code == 0, result.output
    assert "queries spent: 60" in result.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (("--attack", "equation", "--output", "labels"), "'output'"),
    (("--attack", "steal-everything"), "'name'"),
    (("--defence", "magic"), "'--defence'"),
    (("--attack", "jacobian", "--strategy", "adaptive"), "'strategy'"),
    (("--checkpoints", "10,999"), "'--checkpoints'"),
])
def test_bad_settings_exit_2(args: tuple[str, ...], needle: str) -> None:
    result = extract("--queries", "100", *args)
    assert result.exit_code == 2
    assert needle in one_error_line(result)


def test_proba_attack_behind_top1_exits_2(zoo_cache: Path) -> None:
    result = extract("--queries", "50", "--pool", "noise", "--defence", "top1", "--output", "proba")
    assert result.exit_code == 2
    assert "output='labels'" in one_error_line(result)
