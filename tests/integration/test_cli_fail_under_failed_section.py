"""``modelshield assess --fail-under`` on a metric whose section failed: exit 1 naming the reason (#16).

The text-evasion section cannot run on the digits image model (it raises a ConfigError, which the
suite turns into a failed section); a threshold on its metric used to exit 2 with "unknown metric".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshield.cli.app import app


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """digits-cnn trained once (reuses the session cache of tests/conftest.py when there is one)."""
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("cli-zoo-cache")))
        with torch_threads(1):
            zoo.load("digits-cnn")
        yield zoo.cache_dir()


@pytest.mark.slow
def test_threshold_on_a_failed_section_exits_1_with_the_reason(zoo_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = CliRunner().invoke(app, [
        "--threads", "1", "assess", "--model", "digits-cnn", "--n", "20", "--sections", "text-evasion",
        "--out", str(out), "--fail-under", "text_evasion_success_rate<=0.1"])
    assert result.exit_code == 1, result.output
    flat = " ".join(result.stdout.split())
    assert "threshold missed: text_evasion_success_rate was not measured: the section 'text-evasion' failed" \
        in flat
    assert "ConfigError" in flat and "unknown" not in flat
    report = json.loads((out / "report.json").read_text())  # the report is still written
    (section,) = report["sections"]
    assert section["metrics"]["failed"] is True


def test_help_documents_the_failed_section_rule() -> None:
    result = CliRunner().invoke(app, ["assess", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    flat = " ".join(result.stdout.split())
    assert result.exit_code == 0
    assert "section failed or was skipped also exits 1" in flat
