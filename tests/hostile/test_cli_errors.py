"""Every bad input gets one clear line and a documented exit code (issue #15, item 5).

0 done, 1 a --fail-under threshold missed, 2 bad usage or input (checked before the work),
3 internal error (traceback written to a file the line names), 130 interrupted. Each test here
failed on the code before the fix: a raw traceback (CliRunner: exit 1 with the exception), the
wrong exit code, or the error found only after the work had run.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testkit.cli import invoke, one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()


def _save_untrained(path: Path, arch: str, dataset: str) -> Path:
    from modelshield.models.archs import build
    from modelshield.models.load import save_model

    save_model(build(arch), path, arch=arch, meta={"dataset": dataset})
    return path


@pytest.fixture()
def digits_file(tmp_path: Path) -> Path:
    """An untrained digits model file (no zoo training needed)."""
    return _save_untrained(tmp_path / "digits.pt", "cnn-8x8", "digits")


class _Payload:
    """Unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


# --- the root handler: internal errors, interrupts, --debug ------------------------------------------


def _boom(*args: object, **kwargs: object) -> None:
    raise ZeroDivisionError("division by zero in a library call")


def test_internal_error_exits_3_with_traceback_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("modelshield.cli.attack.load_target", _boom)
    result = invoke("attack", "evasion", "--model", "digits-cnn", "--n", "5")
    line = one_error_line(result, code=3)
    assert "internal error (ZeroDivisionError: division by zero in a library call)" in line
    assert "modelshield bug" in line and "--debug" in line
    match = re.search(r"Traceback written to (\S+\.txt)", line)
    assert match, line
    crash = Path(match.group(1))
    assert crash.parent == tmp_path / "cache" / "crash"
    text = crash.read_text()
    assert text.startswith("Traceback (most recent call last)")
    assert "_boom" in text and "ZeroDivisionError: division by zero in a library call" in text
    # --debug shows the exception instead (CliRunner holds it; a terminal gets the traceback).
    debug = runner.invoke(app, ["--debug", "attack", "evasion", "--model", "digits-cnn", "--n", "5"])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_internal_error_when_the_traceback_cannot_be_written(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # $MODELSHIELD_CACHE/crash cannot be created under a file
    monkeypatch.setenv("MODELSHIELD_CACHE", str(blocker))
    monkeypatch.setattr("modelshield.cli.attack.load_target", _boom)
    line = one_error_line(invoke("attack", "evasion", "--model", "digits-cnn", "--n", "5"), code=3)
    assert "internal error (ZeroDivisionError" in line and "could not be written" in line


def test_interrupt_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("modelshield.cli.attack.load_target", interrupted)
    line = one_error_line(invoke("attack", "evasion", "--model", "digits-cnn", "--n", "5"), code=130)
    assert line == "error: interrupted"


def test_root_help_documents_the_exit_codes() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for needle in ("0 done", "1 a --fail-under threshold missed", "2 bad usage or input",
                   "3 internal error", "130 interrupted"):
        assert needle in text, needle


@pytest.mark.parametrize(("args", "needle"), [
    (("attack", "evasion", "--model", "digits-cnn", "--n", "abc"), "Invalid value for '--n'"),
    (("attack", "evasion", "--model", "digits-cnn", "--bogus"), "No such option: --bogus"),
    (("attack", "nosuch"), "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    line = one_error_line(invoke(*args))
    assert needle in line and "--help'" in line


# --- extract --pool: files that are not what they claim ----------------------------------------------


def _pool_cases(tmp_path: Path, marker: Path) -> dict[str, Path]:
    evil = pickle.dumps(_Payload(marker))
    (tmp_path / "evil.pt").write_bytes(evil)
    np.save(tmp_path / "strings.npy", np.array(["a"] * 64 * 3).reshape(3, 1, 8, 8))
    return {"pickle as .pt": tmp_path / "evil.pt", "string array .npy": tmp_path / "strings.npy"}


@pytest.mark.parametrize("case", ["pickle as .pt", "string array .npy"])
def test_extract_pool_file_of_the_wrong_kind_exits_2(case: str, digits_file: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    pool = _pool_cases(tmp_path, marker)[case]
    result = invoke("extract", "--victim", str(digits_file), "--data", "digits", "--pool", str(pool),
                    "--queries", "50", "--n", "20")
    line = one_error_line(result)
    assert f"the pool file {str(pool)!r} must hold" in line and "Re-save it with" in line
    assert not marker.exists()


def test_pool_npz_loads_without_unpickling(tmp_path: Path) -> None:
    from modelshield.errors import DataError
    from modelshield.experiments.extraction import load_pool

    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "pool.npz", x=x, other=np.zeros(3))
    pool = load_pool(str(tmp_path / "pool.npz"), input_shape=(1, 8, 8))
    assert torch.equal(pool.x, torch.from_numpy(x))
    np.savez(tmp_path / "objects.npz", x=np.array([_Payload(tmp_path / "unpickled")], dtype=object))
    with pytest.raises(DataError, match=r"objects\.npz.*must hold one numeric array.*Object arrays"):
        load_pool(str(tmp_path / "objects.npz"), input_shape=(1, 8, 8))
    assert not (tmp_path / "unpickled").exists()


# --- backdoor scan --train-set: a tampered plant folder ------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (small, one-epoch) plant folder: about 5 s."""
    out = tmp_path_factory.mktemp("plant") / "p"
    result = invoke("backdoor", "plant", "--data", "digits", "--epochs", "1", "--train-size", "200",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def _edit_json(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        info = json.loads((folder / "poison.json").read_text())
        change(info)
        (folder / "poison.json").write_text(json.dumps(info))
    return tamper


def _edit_npz(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        with np.load(folder / "poison_rows.npz") as z:
            arrays = dict(z)
        change(arrays)
        np.savez(folder / "poison_rows.npz", **arrays)
    return tamper


TAMPERING: dict[str, tuple[Callable[[Path], object], str]] = {
    "corrupt json": (lambda d: (d / "poison.json").write_text("{not json"), "cannot be read as JSON"),
    "json not an object": (lambda d: (d / "poison.json").write_text("[]"), "no 'settings' object"),
    "key removed": (_edit_json(lambda i: i["settings"].pop("train_size")),
                    "'settings.train_size' is missing"),
    "wrong type": (_edit_json(lambda i: i["settings"].update(target="zero")), "'settings.target' is 'zero'"),
    "rate not a number": (_edit_json(lambda i: i["settings"].update(rate="high")), "'settings.rate'"),
    "train_size out of range": (_edit_json(lambda i: i["settings"].update(train_size=0)), "do not fit"),
    "index out of range": (_edit_json(lambda i: i.update(indices=[10**6])), "reach outside"),
    "indices not a list": (_edit_json(lambda i: i.update(indices="abc")), "not a list of row numbers"),
    "npz not a zip": (lambda d: (d / "poison_rows.npz").write_bytes(b"PK\x03\x04junk"), "cannot be read"),
    "npz key removed": (_edit_npz(lambda z: z.pop("rows")), "cannot be read (KeyError"),
    "npz index out of range": (_edit_npz(lambda z: z.update(indices=z["indices"] + 10**6)), "reach outside"),
    "mismatched lengths": (_edit_npz(lambda z: z.update(rows=z["rows"][:-1])),
                           "not n row numbers and n rows"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_scan_tampered_train_set_exits_2(case: str, planted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tampered"
    shutil.copytree(planted, folder)
    tamper, needle = TAMPERING[case]
    tamper(folder)
    result = invoke("backdoor", "scan", "--model", str(planted / "model.pt"), "--clean-n", "50",
                    "--nc-steps", "2", "--train-set", str(folder))
    line = one_error_line(result)
    assert "'--train-set' must be an untouched 'modelshield backdoor plant' folder" in line
    assert needle in line


# --- a model with data of the wrong shape -------------------------------------------------------------


@pytest.mark.parametrize("args", [("attack", "evasion", "--attack", "pgd", "--model"),
                                  ("attack", "evasion", "--attack", "square", "--model"),
                                  ("extract", "--queries", "50", "--victim")])
def test_model_with_data_of_the_wrong_shape_exits_2(args: tuple[str, ...], tmp_path: Path) -> None:
    mnist_model = _save_untrained(tmp_path / "mnist.pt", "lenet-28", "mnist")
    result = invoke(*args, str(mnist_model), "--data", "digits", "--n", "8")
    line = one_error_line(result)
    assert "the model 'mnist.pt' must accept inputs of digits (shape (1, 8, 8))" in line
    assert "--data the model was trained on" in line


def test_defended_model_of_the_wrong_shape_exits_2_before_the_assessment(
        digits_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the assessment ran")

    monkeypatch.setattr("modelshield.cli.assess.run", no_run)
    mnist_model = _save_untrained(tmp_path / "mnist.pt", "lenet-28", "mnist")
    result = invoke("assess", "--model", str(digits_file), "--data", "digits", "--out", str(tmp_path / "r"),
                    "--n", "8", "--sections", "evasion,defenses", "--defended", str(mnist_model))
    line = one_error_line(result)
    assert "the model 'mnist.pt' must accept inputs of digits" in line and "--defended" in line
    assert not (tmp_path / "r").exists()


def test_zoo_model_with_another_data_set_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zoo model was loaded")

    monkeypatch.setattr("modelshield.zoo.load", no_load)
    line = one_error_line(invoke("attack", "evasion", "--model", "digits-cnn", "--data", "mnist", "--n", "5"))
    assert "'--data' must be omitted (or 'digits') for the zoo model 'digits-cnn'" in line


# --- tensor attacks on a text model ---------------------------------------------------------------


@pytest.mark.parametrize("attack", ["square", "hsj", "simba", "pgd"])
def test_tensor_attack_on_a_text_model_exits_2(attack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[object] = []
    monkeypatch.setattr("modelshield.cli.attack.load_target", lambda *a, **k: loaded.append(a))
    line = one_error_line(invoke("attack", "evasion", "--model", "spam-nb", "--attack", attack, "--n", "5"))
    assert "'--attack' must be 'text' for the text model 'spam-nb'" in line and f"got {attack!r}" in line
    assert "Use --attack text" in line
    assert not loaded


# --- a misspelt --fail-under metric fails before the assessment ----------------------------------


@pytest.mark.parametrize(("threshold", "suggestion"), [
    ("robust_acuracy=0.5", "Did you mean 'robust_accuracy'?"),
    ("evasoin.robust_to_clean_ratio=0.5", "Did you mean 'evasion.robust_to_clean_ratio'?"),
])
def test_misspelt_fail_under_metric_exits_2_before_the_assessment(
        threshold: str, suggestion: str, digits_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the assessment ran")

    monkeypatch.setattr("modelshield.cli.assess.run", no_run)
    result = invoke("assess", "--model", str(digits_file), "--data", "digits", "--out", str(tmp_path / "r"),
                    "--n", "8", "--fail-under", threshold)
    line = one_error_line(result)
    assert suggestion in line
    assert not (tmp_path / "r").exists()


def test_threshold_names_match_the_evasion_sections_metrics(digits_file: Path) -> None:
    from modelshield.assess import AssessmentPlan, EvasionPlan, run
    from modelshield.assess.thresholds import HEADLINE_METRICS, check_threshold_metrics, parse_threshold
    from modelshield.errors import ConfigError
    from modelshield.models.load import load_model

    module, _ = load_model(digits_file)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    plan = AssessmentPlan(sections=("evasion",), n=8, evasion=EvasionPlan(
        attacks=("fgsm",), eps=(0.0, 0.1), headline_eps=0.1))
    metrics = run(module, x, y, plan=plan, model_info={}, data_info={}).metrics()
    assert {k for k in metrics if "." not in k} == set(HEADLINE_METRICS["evasion"])
    check_threshold_metrics([parse_threshold(f"{k}=0") for k in metrics], ("evasion",))  # all accepted
    with pytest.raises(ConfigError, match="Did you mean 'blackbox_robust_accuracy'"):
        check_threshold_metrics([parse_threshold("blackbox_robust_acc=0.5")], ("evasion", "blackbox"))


# --- poison --phrase with a line break: refused before any training --------------------------------


@pytest.mark.parametrize("phrase", ["blue\nquokka", "blue\tquokka", "blue\rquokka", "blue\x00quokka",
                                    "blue\u2028quokka"])
def test_poison_phrase_with_control_characters_exits_2_before_training(
        phrase: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the poisoning experiment ran")

    monkeypatch.setattr("modelshield.experiments.poisoning.poison_text_dataset", no_training)
    out = tmp_path / "poisoned"
    result = invoke("poison", "--attack", "trigger-phrase", "--phrase", phrase, "--out", str(out))
    line = one_error_line(result)
    assert "'phrase' must be one line of printable text without tabs or control characters" in line
    assert not out.exists()


# --- extraction needs an image victim -----------------------------------------------------------------


def test_extract_from_a_text_model_exits_2_naming_the_problem() -> None:
    line = one_error_line(invoke("extract", "--victim", "spam-nb", "--queries", "50", "--n", "20"))
    assert "'--victim' must be an image model" in line and "a text model" in line


def test_crash_folder_defaults_to_the_temp_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from modelshield.cli import _render

    monkeypatch.delenv("MODELSHIELD_CACHE", raising=False)
    assert _render.crash_dir() == Path(tempfile.gettempdir())
    assert os.environ.get("MODELSHIELD_CACHE") is None
