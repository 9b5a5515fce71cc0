"""A poisoned zoo cache is noticed: replaced weights are refused on load with the command that
retrains them, and ``zoo list`` does not present their recorded accuracy as valid (issue #15,
item 3)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelshield import zoo
from modelshield.cli.app import app
from modelshield.errors import DataError
from modelshield.models.load import load_model, save_model, weights_sha256

RETRAIN = "modelshield zoo train digits-cnn --force"


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache holding a copy of the session's digits-cnn (trained there at most once)."""
    trained = zoo.load("digits-cnn")
    folder = tmp_path / "cache"
    (folder / "zoo").mkdir(parents=True)
    shutil.copy(trained.path, folder / "zoo" / "digits-cnn.pt")
    shutil.copy(trained.path.with_suffix(".json"), folder / "zoo" / "digits-cnn.json")
    monkeypatch.setenv("MODELSHIELD_CACHE", str(folder))
    return folder


def _poisoned(cache: Path) -> nn.Module:
    """The cached digits-cnn with the outputs of classes 3 and 8 swapped: same architecture, wrong."""
    module, _ = load_model(cache / "zoo" / "digits-cnn.pt")
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight[[3, 8]] = last.weight[[8, 3]].clone()
        last.bias[[3, 8]] = last.bias[[8, 3]].clone()
    return module


def _rewrite(cache: Path, module: nn.Module, *, side_too: bool, drop: tuple[str, ...] = (),
             update: dict[str, float] | None = None) -> None:
    """Replace the cached weights as an attacker who can write the cache would.

    The metadata inside the file is kept but made self-consistent (new weights digest). With
    side_too the JSON copy beside it is rewritten consistently as well; the recorded accuracy
    is left as it was in both unless update gives new values. Keys in drop are removed from both
    (an older cache layout).
    """
    pt, side_path = cache / "zoo" / "digits-cnn.pt", cache / "zoo" / "digits-cnn.json"
    side = json.loads(side_path.read_text())
    _, inner = load_model(pt)
    meta = {k: v for k, v in inner.items() if k not in ("sha256", "path", "format", "arch", *drop)}
    meta["weights_sha256"] = weights_sha256(module)
    meta.update(update or {})
    digest = save_model(module, pt, arch="cnn-8x8", meta=meta, overwrite=True)
    if side_too:
        side = {k: v for k, v in side.items() if k not in drop}
        side.update(sha256=digest, weights_sha256=meta["weights_sha256"], **(update or {}))
        side_path.write_text(json.dumps(side))


def _zoo_list() -> tuple[str, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.stdout.splitlines() if re.search(r"\bdigits-cnn\b(?!-)", ln))
    return row, " ".join(result.stdout.split())


def test_replaced_weights_file_is_refused_and_listed_as_changed(cache: Path) -> None:
    recorded = zoo.cached_meta("digits-cnn")
    assert recorded is not None
    _rewrite(cache, _poisoned(cache), side_too=False)
    with pytest.raises(DataError, match=rf"recorded beside it.*replaced or modified.*{RETRAIN}"):
        zoo.load("digits-cnn")
    row, text = _zoo_list()
    assert f"{100 * float(recorded['test_accuracy']):.2f}%" not in row
    assert "changed" in row and "stale" in row
    assert "digits-cnn: its weights file is not the one recorded" in text and RETRAIN in text


def test_both_files_rewritten_are_caught_by_rescoring(cache: Path) -> None:
    _rewrite(cache, _poisoned(cache), side_too=True)
    with pytest.raises(DataError, match=rf"must reproduce its recorded accuracy .* on the first \d+ "
                                        rf"test points; it scores .*{RETRAIN}"):
        zoo.load("digits-cnn")
    result = CliRunner().invoke(app, ["--threads", "1", "attack", "evasion", "--model", "digits-cnn",
                                      "--attack", "fgsm", "--n", "4"])
    assert result.exit_code == 2 and RETRAIN in " ".join(result.stderr.split())


def test_recorded_numbers_rewritten_to_match_are_caught_by_the_floor(cache: Path) -> None:
    """The attacker also records the poisoned model's true accuracy: it is far below the zoo's floor."""
    poisoned = _poisoned(cache)
    x, y = zoo.test_split("digits-cnn")
    with torch.no_grad():
        correct = poisoned(x).argmax(1) == y
    honest = {"test_accuracy": float(correct.float().mean()),
              "check_accuracy": float(correct[: zoo.CHECK_POINTS].float().mean())}
    _rewrite(cache, poisoned, side_too=True, update=honest)
    with pytest.raises(DataError, match=rf"must score at least 0\.920 .*accuracy floor.*{RETRAIN}"):
        zoo.load("digits-cnn")


def test_an_older_cache_is_rescored_on_its_whole_test_split(cache: Path) -> None:
    """A cache written before check_points/check_accuracy existed: intact loads, poisoned does not."""
    intact, _ = load_model(cache / "zoo" / "digits-cnn.pt")
    _rewrite(cache, intact, side_too=True, drop=("check_points", "check_accuracy"))
    model = zoo.load("digits-cnn")
    assert weights_sha256(model.module) == weights_sha256(intact)
    _rewrite(cache, _poisoned(cache), side_too=True, drop=("check_points", "check_accuracy"))
    with pytest.raises(DataError, match=rf"recorded accuracy .* on its 540 test points.*{RETRAIN}"):
        zoo.load("digits-cnn")


def test_a_missing_metadata_copy_is_refused(cache: Path) -> None:
    """Deleting the JSON copy must not switch the cross-check off."""
    _rewrite(cache, _poisoned(cache), side_too=False)
    (cache / "zoo" / "digits-cnn.json").unlink()
    with pytest.raises(DataError, match=rf"metadata file .*digits-cnn\.json.*{RETRAIN}"):
        zoo.load("digits-cnn")
