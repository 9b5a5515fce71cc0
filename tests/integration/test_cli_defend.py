"""``modelshield defend`` and ``modelshield certify`` end to end with typer's CliRunner (digits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testkit.cli import invoke, one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.models.load import load_model

runner = CliRunner()
FAST_EVAL = ("--n", "20", "--eval-steps", "3", "--square-queries", "20")


def train(out: Path, *extra: str) -> Any:
    return invoke("defend", "adversarial-training", "--model", "digits-cnn", "--eps", "0.1",
                  "--epochs", "1", "--steps", "2", "--batch-size", "256", *FAST_EVAL,
                  "--out", str(out), *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """One PGD-trained digits model with a checkpoint folder, shared by the tests below."""
    folder = tmp_path_factory.mktemp("defend")
    out, ckpt = folder / "adv.pt", folder / "ckpt"
    result = train(out, "--method", "pgd", "--checkpoint-dir", str(ckpt))
    return out, ckpt, result


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["defend", "--help"])
    assert result.exit_code == 0
    assert "adversarial-training" in result.stdout and "distill" in result.stdout
    result = runner.invoke(app, ["certify", "--help"])
    assert result.exit_code == 0
    for option in ("--sigma", "--n0", "--alpha", "--points", "--radii", "--json"):
        assert option in result.stdout


def test_adversarial_training_saves_a_loadable_model_with_meta(trained: tuple[Path, Path, Any]) -> None:
    out, ckpt, result = trained
    assert result.exit_code == 0, result.output
    assert "robust claim allowed: " in result.stdout
    assert (ckpt / "last.pt").is_file()
    module, meta = load_model(out)
    assert meta["arch"] == "cnn-8x8" and meta["dataset"] == "digits"
    assert meta["training"]["method"] == "pgd" and len(meta["training"]["epochs"]) == 1
    assert meta["training"]["params"]["eps"] == pytest.approx(0.1)
    ev = meta["evaluation"]
    assert ev["n"] == 20 and ev["eps"] == pytest.approx(0.1)
    # the worst case over all attacks can be no better than the Ensemble alone, nor than clean
    assert ev["robust_accuracy"] <= ev["ensemble_robust_accuracy"] <= ev["clean_accuracy"]
    verdict = "yes" if ev["robust_claim_allowed"] else "no"
    assert f"robust claim allowed: {verdict}" in result.stdout
    assert meta["provenance"]["model_weights_sha256"] == meta["weights_sha256"]
    assert sum(p.numel() for p in module.parameters()) > 0


def test_resume_continues_from_the_checkpoint(trained: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, ckpt, first = trained
    assert first.exit_code == 0, first.output
    # without --resume an existing checkpoint is refused (one line, exit 2) before any training
    again = train(tmp_path / "x.pt", "--method", "pgd", "--checkpoint-dir", str(ckpt))
    assert "resume" in one_error_line(again)
    out = tmp_path / "resumed.pt"
    result = train(out, "--method", "pgd", "--checkpoint-dir", str(ckpt), "--resume")
    assert result.exit_code == 0, result.output
    _, meta = load_model(out)
    assert meta["training"]["resumed_from"] == 1  # the finished epoch was not trained again
    assert len(meta["training"]["epochs"]) == 1
    assert "resumed at epoch 1" in result.stdout


def test_arch_override_and_eps_warmup_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "warm.pt"
    result = train(out, "--method", "trades", "--arch", "cnn-8x8", "--eps-warmup-epochs", "1")
    assert result.exit_code == 0, result.output
    _, meta = load_model(out)
    assert meta["arch"] == "cnn-8x8"
    assert meta["training"]["params"]["eps_warmup_epochs"] == 1
    assert meta["training"]["epochs"][0]["eps"] < 0.1  # still warming up at the end of epoch 1
    assert meta["provenance"]["attacks"]["training"]["eps_warmup_epochs"] == 1
    # An architecture made for other inputs, or none at all, is refused before any training.
    assert "'--arch' must take inputs of shape (1, 8, 8)" in one_error_line(
        train(tmp_path / "w.pt", "--arch", "lenet-28-wide"))
    assert "'arch' must be one of" in one_error_line(train(tmp_path / "v.pt", "--arch", "resnet"))
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "v.pt").exists()


def test_distill_reports_ce_and_margin_pgd(tmp_path: Path) -> None:
    out = tmp_path / "distilled.pt"
    result = invoke("defend", "distill", "--model", "digits-cnn", "--temperature", "20", "--epochs", "1",
                    "--eps", "0.1", "--batch-size", "256", *FAST_EVAL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "distillation holds: " in result.stdout and "robust claim allowed: " in result.stdout
    _, meta = load_model(out)
    ev = meta["evaluation"]
    assert meta["defence"] == "defensive-distillation"
    assert 0.0 <= ev["pgd_margin_robust_accuracy"] <= ev["clean_accuracy"]
    assert ev["pgd_ce_robust_accuracy"] == pytest.approx(ev["attack_robust_accuracy"], abs=1e-6)


def test_certify_json_has_the_certified_accuracy_per_radius(
    trained: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    out = tmp_path / "cert.json"
    result = invoke("certify", "--model", str(trained[0]), "--sigma", "0.25", "--n", "64", "--n0", "8",
                    "--points", "10", "--radii", "0,0.5,1.0", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "abstention rate" in result.stdout
    payload = json.loads(out.read_text())
    for key in ("certified_accuracy", "abstain_rate", "smoothed_accuracy", "settings", "provenance"):
        assert key in payload
    acc = payload["certified_accuracy"]
    assert list(acc) == ["0", "0.5", "1"]
    assert acc["0"] == pytest.approx(payload["smoothed_accuracy"])
    assert acc["0"] >= acc["0.5"] >= acc["1"]  # certified accuracy cannot grow with the radius
    assert payload["points"] == 10 and payload["settings"]["sigma"] == 0.25
    # with n = 64 at alpha 0.001 the Clopper-Pearson bound stays below 1, so radii are finite
    assert 0.0 <= payload["abstain_rate"] <= 1.0


@pytest.mark.parametrize("sigma", ["0", "-0.5", "5"])
def test_certify_rejects_a_bad_sigma(trained: tuple[Path, Path, Any], sigma: str) -> None:
    result = invoke("certify", "--model", str(trained[0]), "--sigma", sigma, "--n", "16", "--points", "2")
    assert "sigma" in one_error_line(result)


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    assert "eps" in one_error_line(train(tmp_path / "e.pt", "--eps", "1.5"))
    assert "model" in one_error_line(invoke("defend", "adversarial-training", "--model",
                                            str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt")))
    assert "method" in one_error_line(train(tmp_path / "m.pt", "--method", "free"))
    assert "resume" in one_error_line(train(tmp_path / "r.pt", "--resume"))
    assert "model" in one_error_line(invoke("certify", "--model", str(tmp_path / "none.pt")))
