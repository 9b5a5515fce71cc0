"""`modelshield scan --convert` (a clean checkpoint to safetensors) and scans written to the audit log."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.models.archs import build
from modelshield.models.load import load_model, save_model, weights_sha256
from modelshield.secure.audit import LOG_ENV, AuditLog

runner = CliRunner()


def test_convert_writes_safetensors_after_a_clean_scan(tmp_path: Path) -> None:
    net = build("cnn-8x8", seed=3)
    src = tmp_path / "net.pt"
    save_model(net, src, arch="cnn-8x8")
    out = tmp_path / "net.safetensors"
    result = runner.invoke(app, ["scan", str(src), "--convert", str(out)])
    assert result.exit_code == 0, result.output
    module, meta = load_model(out)
    assert meta["format"] == "safetensors" and weights_sha256(module) == weights_sha256(net)
    again = runner.invoke(app, ["scan", str(src), "--convert", str(out)])
    assert again.exit_code == 2 and "must not exist" in again.output  # never overwritten without --force
    assert runner.invoke(app, ["scan", str(src), "--convert", str(out), "--force"]).exit_code == 0


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_convert_of_a_blocked_file_writes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, evil)
    out = tmp_path / "evil.safetensors"
    result = runner.invoke(app, ["scan", str(evil), "--convert", str(out)])
    assert result.exit_code == 1 and "BLOCKED" in result.output
    assert not out.exists() and not marker.exists()


def test_convert_takes_one_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(pickle.dumps(1))
    b.write_bytes(pickle.dumps(2))
    result = runner.invoke(app, ["scan", str(a), str(b), "--convert", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2 and "exactly one model file" in result.output


def test_scans_are_recorded_in_the_configured_audit_log(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    log_path = tmp_path / "audit.db"
    AuditLog.init(log_path).close()
    monkeypatch.setenv(LOG_ENV, str(log_path))
    clean = tmp_path / "clean.bin"
    clean.write_bytes(pickle.dumps({"a": 1}))
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    assert runner.invoke(app, ["scan", str(clean)]).exit_code == 0
    assert runner.invoke(app, ["scan", str(evil)]).exit_code == 1
    with AuditLog.open(log_path) as log:
        records = list(log.records())
        assert log.verify().ok
    assert [r.action for r in records] == ["scan", "scan"]
    assert [r.details["blocked"] for r in records] == [False, True]
    assert records[0].artifact.sha256 is not None and records[1].details["codes"]
