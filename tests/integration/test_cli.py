"""The ``modelshield`` command, end to end with typer's CliRunner on the digits-cnn zoo model."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.browser import check_pages
from testkit.cli import one_error_line
from typer.testing import CliRunner

import modelshield
from modelshield.cli.app import app
from modelshield.errors import ConfigError

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model cache with digits-cnn trained once for this module (about 10-20 s on 2 cores).

    Reuses the session cache that tests/conftest.py sets up (or the user's MODELSHIELD_CACHE)
    when it exists, so the model is trained at most once per session.
    """
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("cli-zoo-cache")))
        with torch_threads(1):  # as `modelshield demo` does: far faster on a busy 2-core machine
            zoo.load("digits-cnn")  # trains on a cold cache
        yield zoo.cache_dir()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def fast(*args: str) -> Any:
    """invoke with one torch thread: much faster for the small model on a busy machine."""
    return invoke("--threads", "1", *args)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"modelshield {modelshield.__version__}"


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("assess", "demo", "attack", "zoo", "--debug", "--version"):
        assert command in result.stdout
    sub = invoke("attack", "evasion", "--help")
    assert sub.exit_code == 0 and "--fail-under" not in sub.stdout and "--json" in sub.stdout


def test_unknown_model_exits_2_with_one_line(zoo_cache: Path) -> None:
    result = invoke("attack", "evasion", "--model", "no-such-model", "--n", "5")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "'no-such-model'" in line and "modelshield zoo list" in line and "digits-cnn" in line
    assert "Did you mean" not in line


def test_misspelt_model_name_gets_a_suggestion(zoo_cache: Path) -> None:
    result = invoke("attack", "evasion", "--model", "digits-cn", "--n", "5")
    assert result.exit_code == 2
    assert "Did you mean 'digits-cnn'?" in one_error_line(result)


def test_debug_shows_the_exception(zoo_cache: Path) -> None:
    result = invoke("--debug", "attack", "evasion", "--model", "no-such-model")
    assert isinstance(result.exception, ConfigError)


def test_bad_eps_exits_2(zoo_cache: Path) -> None:
    result = invoke("attack", "evasion", "--model", "digits-cnn", "--eps", "-0.1", "--n", "5")
    assert result.exit_code == 2
    assert re.search(r"'eps' must be a number in \[0\.0, inf\]; got -0\.1", one_error_line(result))


def test_unknown_attack_exits_2_with_suggestion(zoo_cache: Path) -> None:
    result = invoke("attack", "evasion", "--model", "digits-cnn", "--attack", "pgdd", "--n", "5")
    assert result.exit_code == 2
    assert "Did you mean 'pgd'?" in one_error_line(result)


def test_attack_evasion_writes_json_with_provenance(zoo_cache: Path, tmp_path: Path) -> None:
    from modelshield import zoo

    out = tmp_path / "pgd.json"
    result = fast("attack", "evasion", "--model", "digits-cnn", "--attack", "pgd", "--eps", "0.1",
                    "--steps", "10", "--n", "40", "--batch-size", "16", "--seed", "3", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "robust_accuracy" in result.stdout
    d = json.loads(out.read_text())
    for key in ("attack", "eps", "norm", "n", "clean_accuracy", "robust_accuracy", "attack_success_rate",
                "max_perturbation", "queries_forward", "queries_backward", "time_s", "provenance"):
        assert key in d, key
    assert (d["attack"], d["eps"], d["norm"], d["n"]) == ("pgd", 0.1, "inf", 40)
    assert 0.0 <= d["robust_accuracy"] <= d["clean_accuracy"] <= 1.0
    assert d["max_perturbation"] <= 0.1 + 1e-6
    assert d["queries_backward"] > 0 and d["queries_forward"] >= 40
    prov = d["provenance"]
    assert prov["seed"] == 3 and prov["attacks"]["pgd"]["steps"] == 10
    assert prov["model_weights_sha256"] == zoo.load("digits-cnn").meta["weights_sha256"]
    assert prov["data_sha256"] == zoo.load("digits-cnn").meta["data_sha256"]
    assert {"modelshield", "torch", "numpy", "scikit-learn"} <= prov["packages"].keys()


def test_json_is_not_overwritten_without_force(zoo_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "fgsm.json"
    out.write_text("keep me")
    args = ("attack", "evasion", "--model", "digits-cnn", "--attack", "fgsm", "--n", "10", "--json", str(out))
    result = fast(*args)
    assert result.exit_code == 2
    assert "--force" in one_error_line(result)
    assert out.read_text() == "keep me"
    result = fast(*args, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["attack"] == "fgsm"


def test_zoo_list_shows_the_cached_model(zoo_cache: Path) -> None:
    result = invoke("zoo", "list")
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.stdout.splitlines() if "digits-cnn" in ln)
    assert "yes" in row and "digits" in row and re.search(r"\d+\.\d+%", row)
    assert "mnist-cnn" in result.stdout and "fashion-cnn" in result.stdout


def test_zoo_train_unknown_name_exits_2() -> None:
    result = invoke("zoo", "train", "nope-cnn")
    assert result.exit_code == 2
    assert "nope-cnn" in one_error_line(result)


def test_model_file_needs_a_data_set(zoo_cache: Path, tmp_path: Path) -> None:
    from modelshield import zoo
    from modelshield.models.load import save_model, weights_sha256

    module = zoo.load("digits-cnn").module
    path = tmp_path / "mine.pt"
    save_model(module, path, arch="cnn-8x8")
    result = fast("attack", "evasion", "--model", str(path), "--n", "10")
    assert result.exit_code == 2
    assert "--data" in one_error_line(result)
    out = tmp_path / "m.json"
    result = fast("attack", "evasion", "--model", str(path), "--data", "digits", "--attack", "fgsm",
                  "--n", "20", "--json", str(out))
    assert result.exit_code == 0, result.output
    d = json.loads(out.read_text())
    assert d["model"]["name"] == "mine.pt" and d["n"] == 20 and d["data"]["name"] == "digits"
    assert d["provenance"]["model_weights_sha256"] == weights_sha256(module)


def test_bare_state_dict_needs_arch(zoo_cache: Path, tmp_path: Path) -> None:
    import torch

    from modelshield import zoo

    path = tmp_path / "state.pt"
    torch.save(zoo.load("digits-cnn").module.state_dict(), path)
    base = ("attack", "evasion", "--model", str(path), "--data", "digits", "--attack", "fgsm", "--n", "8")
    result = fast(*base)
    assert result.exit_code == 2 and "arch" in one_error_line(result)
    assert fast(*base, "--arch", "cnn-8x8").exit_code == 0


def test_zoo_train_cached_model_needs_force(zoo_cache: Path) -> None:
    result = fast("zoo", "train", "digits-cnn")
    assert result.exit_code == 2 and "--force" in one_error_line(result)


ASSESS = ("assess", "--model", "digits-cnn", "--attacks", "fgsm,pgd", "--eps", "0,0.3",
          "--headline-eps", "0.3", "--steps", "5", "--n", "40", "--sections", "evasion")


def test_assess_fail_under_missed_exits_1(zoo_cache: Path, tmp_path: Path) -> None:
    # an undefended CNN keeps far less than 99% of its accuracy at eps=0.3 (L-inf, 30% of the range)
    result = fast(*ASSESS, "--out", str(tmp_path / "r"), "--fail-under", "robust_accuracy=0.99")
    assert result.exit_code == 1, result.output
    assert "threshold missed: robust_accuracy is" in result.stdout
    assert (tmp_path / "r" / "report.json").is_file() and (tmp_path / "r" / "report.html").is_file()


def test_assess_fail_under_met_exits_0(zoo_cache: Path, tmp_path: Path) -> None:
    result = fast(*ASSESS, "--out", str(tmp_path / "r"), "--fail-under", "robust_accuracy=0",
                    "--fail-under", "clean_accuracy=0.5")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["summary"]["metrics"]["clean_accuracy"] >= 0.5
    assert report["provenance"]["plan"]["evasion"]["eps"] == [0.0, 0.3]


def test_assess_bad_inputs_exit_2_before_any_work(zoo_cache: Path, tmp_path: Path) -> None:
    cases = {
        ("--fail-under", "robust_accuracy"): "METRIC=VALUE",
        ("--eps", "0,abc"): "bad item 'abc'",
        ("--attacks", "fgsm,nope"): "got 'nope'",
        ("--norm", "1"): "'norm' must be one of",
    }
    for extra, message in cases.items():
        args = [*ASSESS, "--out", str(tmp_path / "r"), *extra]
        result = invoke(*args)
        assert result.exit_code == 2, (extra, result.output)
        assert message in one_error_line(result)
    assert not (tmp_path / "r").exists()


def test_assess_unknown_threshold_metric_lists_names(zoo_cache: Path, tmp_path: Path) -> None:
    result = fast(*ASSESS, "--out", str(tmp_path / "r"), "--fail-under", "robustness=0.5")
    assert result.exit_code == 2
    assert "robust_accuracy" in one_error_line(result)


def test_assess_refuses_existing_report_without_force(zoo_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.html").write_text("old")
    result = invoke(*ASSESS, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "--force" in one_error_line(result)
    assert (tmp_path / "r" / "report.html").read_text() == "old"


def _check_demo(out: Path, result: Any, *, quick: bool) -> None:
    from modelshield.assess.demo import DEMO_MODELS

    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    for m in DEMO_MODELS:
        report = json.loads((out / m.name / "report.json").read_text())
        html = (out / m.name / "report.html").read_text()
        assert report["model"]["name"] == m.name and report["data"]["n"] == (m.quick_n if quick else m.n)
        assert [s["id"] for s in report["sections"]] == list(m.quick_sections if quick else m.sections)
        assert not any(s["metrics"].get("failed") for s in report["sections"]), m.name
        # one story: each section names the points its numbers are on (and why, when not all of them)
        assert all(s["points"] for s in report["sections"]), [s["id"] for s in report["sections"]]
        assert "data:image/png;base64," in html and 'id="executive-summary"' in html
        assert f'href="{m.name}/report.html"' in index and report["business"]["executive_summary"][0] in index
    assert "CC BY 4.0" in index
    assert (out / "index.html").resolve().as_posix() in result.stdout.replace("\n", "")
    # What a reader sees: every page in headless Chromium (no console error, every image loaded,
    # nothing fetched, links alive, each figure with its reading guide), screenshots and one
    # report printed to PDF (a page per section) kept as test artifacts.
    pages = [out / "index.html"] + [out / m.name / "report.html" for m in DEMO_MODELS]
    shown = check_pages(pages, "demo-quick" if quick else "demo-full",
                        pdf=out / DEMO_MODELS[0].name / "report.html")
    assert sum(p.images for p in shown[1:]) == sum(
        len(s["figures"]) for m in DEMO_MODELS
        for s in json.loads((out / m.name / "report.json").read_text())["sections"])


def test_demo_quick_writes_a_report_per_model_and_an_index(zoo_cache: Path, tmp_path: Path) -> None:
    result = invoke("demo", "--quick", "--out", str(tmp_path / "demo"))
    _check_demo(tmp_path / "demo", result, quick=True)
    again = invoke("demo", "--quick", "--out", str(tmp_path / "demo"))  # never overwrites
    assert again.exit_code == 2 and "--force" in one_error_line(again)


@pytest.mark.slow
def test_the_full_demo_runs_every_section_that_applies(zoo_cache: Path, tmp_path: Path) -> None:
    result = invoke("demo", "--out", str(tmp_path / "demo"))
    _check_demo(tmp_path / "demo", result, quick=False)


def test_threads_option_applies_to_the_command_only() -> None:
    import torch

    before = torch.get_num_threads()
    assert invoke("--threads", "0", "zoo", "list").exit_code == 2
    assert invoke("--threads", "1", "zoo", "list").exit_code == 0
    assert torch.get_num_threads() == before
