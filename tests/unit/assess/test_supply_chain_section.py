"""The "supply-chain" report section: the static scan of the model file, its signature, the data
against a manifest and the model's provenance in the audit log, on files the tests make."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelshield.assess import SECTIONS, AssessmentPlan, render_html, run
from modelshield.assess._section import ATLAS
from modelshield.assess.plan import SupplyChainPlan
from modelshield.assess.sections import SupplyChainSection
from modelshield.errors import ConfigError
from modelshield.models.load import file_sha256
from modelshield.secure.audit import LOG_ENV, Artifact, AuditLog
from modelshield.secure.manifest import create_manifest
from modelshield.secure.policy import POLICY_ENV
from modelshield.secure.signing import generate_keypair, sign_model


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No trust policy or audit log from the environment leaks into the checks."""
    monkeypatch.delenv(LOG_ENV, raising=False)
    monkeypatch.delenv(POLICY_ENV, raising=False)


def _net(seed: int = 0) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    gen = torch.Generator().manual_seed(seed)  # weights from the seed, not from the global RNG
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


def _state_dict_file(path: Path, seed: int = 0) -> Path:
    torch.save(_net(seed).state_dict(), path)
    return path


def _section(path: Path | None, plan: SupplyChainPlan | None = None, *, source: str = "file",
             data_info: dict[str, Any] | None = None) -> dict[str, Any]:
    model_info: dict[str, Any] = {"name": "net", "source": source}
    if path is not None:
        model_info["path"] = str(path)
    x, y = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    plan_ = AssessmentPlan(sections=("supply-chain",), supply_chain=plan or SupplyChainPlan())
    result = run(_net(), x, y, plan=plan_, model_info=model_info, data_info=data_info or {"name": "rows"})
    report: dict[str, Any] = result.to_dict()
    json.dumps(report, allow_nan=False)  # the report is JSON as it stands
    render_html(report)  # and renders
    (section,) = report["sections"]
    assert section["id"] == "supply-chain"
    return dict(section)


def _text(section: dict[str, Any]) -> str:
    return " ".join(section["findings"])


def test_registered_with_its_atlas_techniques() -> None:
    assert isinstance(SECTIONS["supply-chain"], SupplyChainSection)
    assert ATLAS["AML.T0010"] == "AI Supply Chain Compromise"
    assert ATLAS["AML.T0011.000"] == "User Execution: Unsafe AI Artifacts"


def test_clean_state_dict_with_nothing_configured_is_low(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    s = _section(path)
    scan = s["metrics"]["scan"]
    assert scan["scanned"] and scan["blocked"] is False and scan["blocking_findings"] == 0
    assert scan["formats"] and scan["bytes_scanned"] == path.stat().st_size
    assert s["headline"]["supply_chain_blocking_findings"] == 0.0
    assert s["metrics"]["signature"]["status"] == "unsigned"
    assert s["metrics"]["manifest"]["status"] == "none"
    assert s["metrics"]["provenance"]["status"] == "no-log"
    assert s["severity"] == "low"  # unsigned, no manifest, no log: each low, nothing worse
    assert "0 blocking" in _text(s) and "unsigned" in _text(s)
    for fix in ("modelshield sign", "modelshield manifest create", "modelshield audit init"):
        assert fix in s["recommendation"]
    assert s["provenance"]["model_path"] == str(path)


def test_everything_in_order_is_none(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    keys = generate_keypair(tmp_path / "keys")
    sign_model(path, private_key=keys.private_key)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    create_manifest(data).save(tmp_path / "data.manifest.json")
    log = AuditLog.init(tmp_path / "audit.db")
    with log:
        log.append(action="train", artifact=path, details={"epochs": 3})
        log.checkpoint()
    plan = SupplyChainPlan(public_keys=(keys.public_key,), manifest=tmp_path / "data.manifest.json",
                           data_root=data, audit_log=str(tmp_path / "audit.db"))
    s = _section(path, plan)
    assert s["metrics"]["signature"]["status"] == "verified"
    assert s["metrics"]["manifest"]["status"] == "verified"
    assert s["metrics"]["provenance"]["status"] == "verified"
    assert s["severity"] == "none", s["findings"]
    assert s["headline"]["supply_chain_signature_verified"] == 1.0


def test_model_swapped_after_signing_is_critical(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    keys = generate_keypair(tmp_path / "keys")
    sign_model(path, private_key=keys.private_key)
    _state_dict_file(path, seed=1)  # same name, other weights
    s = _section(path, SupplyChainPlan(public_keys=(keys.public_key,)))
    sig = s["metrics"]["signature"]
    assert sig["status"] == "failed" and sig["ok"] is False
    assert "net.pt" in sig["reason"] and "changed" in sig["reason"]
    assert s["severity"] == "critical"
    assert "verification FAILED" in _text(s) and sig["reason"] in _text(s)
    assert s["headline"]["supply_chain_signature_verified"] == 0.0
    assert {"id": "AML.T0010.003", "name": ATLAS["AML.T0010.003"]} in s["atlas"]


def test_signed_but_no_key_says_it_was_not_verified(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    sign_model(path, private_key=generate_keypair(tmp_path / "keys").private_key)
    s = _section(path)
    assert s["metrics"]["signature"]["status"] == "unverified"
    assert s["headline"]["supply_chain_signature_verified"] is None
    assert "--public-key" in _text(s)


def test_manifest_with_a_changed_csv_row_is_high_naming_the_row(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    csv = tmp_path / "data" / "rows.csv"
    csv.parent.mkdir()
    (csv.parent / "notes.txt").write_text("unlisted file in the same folder\n")
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    create_manifest(csv).save(tmp_path / "rows.manifest.json")  # a manifest of the one file
    csv.write_text("a,b,label\n1,2,0\n3,4,0\n5,6,0\n")  # row 3: a flipped label
    s = _section(path, SupplyChainPlan(manifest=tmp_path / "rows.manifest.json"),
                 data_info={"name": "rows", "path": str(csv)})  # the root comes from the data path
    man = s["metrics"]["manifest"]
    assert man["status"] == "failed" and man["data_root"] == str(csv)
    assert man["added"] == []  # the file itself, not its folder (notes.txt is not in the manifest)
    assert s["severity"] == "high"
    assert "rows.csv: row 3 changed" in _text(s)
    table = next(t for t in s["tables"] if t["title"].startswith("Data files"))
    assert table["rows"] == [["rows.csv", "changed", "row 3 changed"]]


def _log_with_train_record(tmp_path: Path, model: Path) -> Path:
    db = tmp_path / "audit.db"
    with AuditLog.init(db) as log:
        log.append(action="manifest", artifact=Artifact(name="other.csv", sha256="ab" * 32), actor="bob")
        log.append(action="train", artifact=model, actor="alice@ci",
                   details={"epochs": 3, "data_root": "cd" * 32})
        log.append(action="other", artifact="run-7", actor="carol",
                   details={"result": {"model_sha256": file_sha256(model)}})
        log.checkpoint()
    return db


def test_audit_log_train_record_becomes_a_provenance_row(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    db = _log_with_train_record(tmp_path, path)
    s = _section(path, SupplyChainPlan(audit_log=str(db)))
    prov = s["metrics"]["provenance"]
    assert prov["status"] == "verified" and prov["matched_records"] == 2
    table = next(t for t in s["tables"] if t["title"].startswith("Provenance"))
    assert table["columns"] == ["seq", "time", "actor", "action", "artifact", "matches", "details"]
    by_seq = {row[0]: row for row in table["rows"]}
    assert set(by_seq) == {1, 2}  # the unrelated manifest record (seq 0) is not listed
    assert by_seq[1][2:6] == ["alice@ci", "train", str(path), "model file"]
    assert '"epochs": 3' in by_seq[1][6]
    assert by_seq[2][3] == "other"  # the digest named inside the details counts too
    assert s["severity"] == "low"  # unsigned and no manifest; the log itself is fine


def test_tampered_audit_log_is_critical(tmp_path: Path) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    db = _log_with_train_record(tmp_path, path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_records SET actor = 'mallory' WHERE seq = 1")
    s = _section(path, SupplyChainPlan(audit_log=str(db)))
    prov = s["metrics"]["provenance"]
    assert prov["status"] == "tampered" and not prov["verify"]["ok"]
    assert "edited" in {p["kind"] for p in prov["verify"]["problems"]}
    assert s["severity"] == "critical"
    assert "FAILS verification" in _text(s) and "seq 1" in _text(s)


def test_audit_log_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _state_dict_file(tmp_path / "net.pt")
    monkeypatch.setenv(LOG_ENV, str(_log_with_train_record(tmp_path, path)))
    assert _section(path)["metrics"]["provenance"]["matched_records"] == 2


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_blocked_file_is_critical_with_the_callable_in_the_table(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, path)
    s = _section(path)
    assert not marker.exists()  # scanned, never loaded
    assert s["severity"] == "critical" and s["metrics"]["scan"]["blocked"] is True
    table = s["tables"][0]
    assert table["columns"][:5] == ["severity", "code", "callable", "member", "offset"]
    row = next(r for r in table["rows"] if r[2] and r[2].endswith("mkdir"))
    assert row[0] in ("critical", "high") and row[3].endswith("data.pkl") and isinstance(row[4], int)
    assert "modelshield scan --convert" in s["recommendation"]
    assert {"id": "AML.T0011.000", "name": ATLAS["AML.T0011.000"]} in s["atlas"]


def test_callable_and_missing_path_say_what_was_not_scanned() -> None:
    s = _section(None, source="callable")
    assert s["metrics"]["scan"] == {"scanned": False, "reason": "callable"}
    assert "Python callable" in _text(s) and s["metrics"]["signature"]["status"] == "not-applicable"
    s = _section(None)
    assert s["metrics"]["scan"]["reason"] == "no model file" and s["severity"] == "low"


def test_plan_validation_and_to_dict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SupplyChainPlan: 'manifest' must be an existing file; .*nope"):
        SupplyChainPlan(manifest=tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"'public_keys' must be an existing file"):
        SupplyChainPlan(public_keys=(tmp_path / "missing.pub",))
    with pytest.raises(ConfigError, match=r"'audit_log' must be a file path or a postgresql:// URL"):
        SupplyChainPlan(audit_log="mysql://db")
    with pytest.raises(ConfigError, match=r"'data_root' must be an existing path"):
        SupplyChainPlan(data_root=tmp_path / "gone")
    plan = SupplyChainPlan(audit_log="postgresql://alice:secret@db/audit")
    assert plan.to_dict()["audit_log"] == "postgresql://alice:***@db/audit"
    full: dict[str, Any] = AssessmentPlan(sections=("supply-chain",), supply_chain=plan).to_dict()
    assert full["supply_chain"]["audit_log"] == "postgresql://alice:***@db/audit"
    assert "supply_chain" not in AssessmentPlan().to_dict()


def test_cli_assess_writes_the_section(tmp_path: Path) -> None:
    from modelshield.cli.app import app
    from modelshield.models.archs import build
    from modelshield.models.load import save_model

    model = tmp_path / "net.pt"
    save_model(build("cnn-8x8", seed=0), model, arch="cnn-8x8")
    gen = np.random.default_rng(0)
    x = gen.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 10
    np.savez(tmp_path / "digits.npz", x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    db = _log_with_train_record(tmp_path, model)
    keys = generate_keypair(tmp_path / "keys")
    sign_model(model, private_key=keys.private_key)
    res = CliRunner().invoke(app, [
        "assess", "--model", str(model), "--data", str(tmp_path / "digits.npz"), "--n", "10",
        "--sections", "supply-chain", "--audit-log", str(db), "--public-key", str(keys.public_key),
        "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (s,) = report["sections"]
    assert s["id"] == "supply-chain"
    assert s["metrics"]["signature"]["status"] == "verified"
    assert s["metrics"]["provenance"]["matched_records"] == 2
    assert report["provenance"]["plan"]["supply_chain"]["public_keys"] == [str(keys.public_key)]
    # a supply-chain option without the section is refused before any work
    res = CliRunner().invoke(app, [
        "assess", "--model", str(model), "--data", str(tmp_path / "digits.npz"), "--sections", "evasion",
        "--audit-log", str(db), "--out", str(tmp_path / "out2")])
    assert res.exit_code == 2 and "evasion,supply-chain" in res.output


@pytest.mark.parametrize(("source", "added"), [("file", True), ("zoo", False), ("callable", False)])
def test_default_sections_add_supply_chain_for_a_model_file(source: str, added: bool) -> None:
    from modelshield.cli.assess import IMAGE_SECTIONS, default_sections
    from modelshield.targets import Target

    target = Target(module=nn.Linear(4, 2), x=torch.zeros(1, 4), y=torch.zeros(1, dtype=torch.long),
                    bounds=(0.0, 1.0), model_info={"source": source}, data_info={})
    assert default_sections(target) == ((*IMAGE_SECTIONS, "supply-chain") if added else IMAGE_SECTIONS)
