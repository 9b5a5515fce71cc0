"""Entry points write to the audit log when one is configured: saved models (training outputs),
assessments, manifests, signatures; nothing is written (or needed) without one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshield.assess import AssessmentPlan, run
from modelshield.assess.report import write_report
from modelshield.cli.app import app
from modelshield.models.archs import build
from modelshield.models.load import file_sha256, save_model
from modelshield.secure.audit import LOG_ENV, AuditLog
from modelshield.secure.signing import generate_keypair

runner = CliRunner()


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.db"
    AuditLog.init(path).close()
    monkeypatch.setenv(LOG_ENV, str(path))
    return path


def _records(path: Path) -> list:  # type: ignore[type-arg]
    with AuditLog.open(path) as log:
        assert log.verify().ok
        return list(log.records())


def test_save_model_and_assessment_are_recorded(audit_log: Path, tmp_path: Path) -> None:
    import torch

    net = build("cnn-8x8", seed=0)
    weights = tmp_path / "net.pt"
    digest = save_model(net, weights, arch="cnn-8x8", meta={"recipe": {"epochs": 3}, "data": "digits"})
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(1))
    result = run(net, x, y, plan=AssessmentPlan(sections=("evasion",), n=12),
                 model_info={"name": "net.pt", "sha256": digest},
                 data_info={"name": "random", "sha256": "ab"})
    json_path, _ = write_report(result, tmp_path / "report")
    saved, assessed = _records(audit_log)
    assert saved.action == "save-model" and saved.artifact.sha256 == digest == file_sha256(weights)
    assert saved.details["meta"]["recipe"] == {"epochs": 3}
    assert saved.details["code"].startswith("modelshield")
    assert assessed.action == "assess" and assessed.artifact.sha256 == file_sha256(json_path)
    assert assessed.details["model"]["sha256"] == digest and assessed.details["sections"] == ["evasion"]


def test_manifest_and_sign_commands_are_recorded(audit_log: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a,b\n1,2\n3,4\n")
    created = runner.invoke(app, ["manifest", "create", str(data), "--out", str(tmp_path / "m.json")])
    assert created.exit_code == 0, created.output
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    keys = generate_keypair(tmp_path / "keys")
    result = runner.invoke(app, ["sign", str(model), "--key", str(keys.private_key)])
    assert result.exit_code == 0, result.output
    manifest, signed = _records(audit_log)[-2:]
    assert manifest.action == "manifest" and len(manifest.details["root"]) == 64
    assert signed.action == "sign" and signed.artifact.sha256 == file_sha256(model)


def test_nothing_is_written_without_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_ENV, raising=False)
    save_model(build("cnn-8x8", seed=0), tmp_path / "net.pt", arch="cnn-8x8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]
