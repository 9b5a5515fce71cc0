"""``modelshield manifest create|verify``, ``sign`` and ``verify``: exit 0 ok, 1 mismatch, 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testkit.cli import one_error_line
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (root / "img.bin").write_bytes(b"\x00\x01")
    return root


def test_manifest_create_and_verify(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    created = invoke("manifest", "create", data, "--out", out)
    assert created.exit_code == 0, created.output
    assert "2 files" in created.stdout and out.is_file()
    assert invoke("manifest", "verify", data, out).exit_code == 0

    (data / "train.csv").write_text("a,b\n1,2\n3,X\n5,6\n7,8\n")
    report = tmp_path / "diff.json"
    checked = invoke("manifest", "verify", data, out, "--json", report)
    assert checked.exit_code == 1
    assert "train.csv: row 3 changed, row 5 added" in checked.stdout
    diff = json.loads(report.read_text())
    assert diff["ok"] is False and diff["changed"][0]["path"] == "train.csv"

    again = invoke("manifest", "create", data, "--out", out)
    assert "must not exist yet" in one_error_line(again)
    assert invoke("manifest", "create", data, "--out", out, "--force").exit_code == 0


def test_manifest_inside_root_leaves_itself_out(data: Path) -> None:
    out = data / "MANIFEST.json"
    assert invoke("manifest", "create", data, "--out", out).exit_code == 0
    assert invoke("manifest", "verify", data, out).exit_code == 0


def test_manifest_bad_input_exits_2(data: Path, tmp_path: Path) -> None:
    assert "does not exist" in one_error_line(invoke("manifest", "create", tmp_path / "nope", "--out",
                                                     tmp_path / "m.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "not valid JSON" in one_error_line(invoke("manifest", "verify", data, bad))


def test_sign_and_verify(tmp_path: Path) -> None:
    pytest.importorskip("model_signing")
    from modelshield.secure.signing import generate_keypair

    keys, other = generate_keypair(tmp_path / "k"), generate_keypair(tmp_path / "o")
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    bundle = tmp_path / "model.sig"
    signed = invoke("sign", model, "--key", keys.private_key, "--bundle", bundle)
    assert signed.exit_code == 0, signed.output
    assert "must not exist yet" in one_error_line(invoke("sign", model, "--key", keys.private_key,
                                                         "--bundle", bundle))
    assert invoke("verify", model, "--bundle", bundle, "--public-key", keys.public_key).exit_code == 0
    wrong = invoke("verify", model, "--bundle", bundle, "--public-key", other.public_key)
    assert wrong.exit_code == 1 and "signature verification failed" in wrong.stdout
    (model / "extra.pkl").write_bytes(b"x")
    extra = invoke("verify", model, "--bundle", bundle, "--public-key", keys.public_key)
    assert extra.exit_code == 1 and "unsigned files: extra.pkl" in extra.stdout
    missing = invoke("verify", model, "--bundle", tmp_path / "none.sig", "--public-key", keys.public_key)
    assert "bundle must exist" in one_error_line(missing)
    no_mode = invoke("verify", model, "--bundle", bundle)
    assert "exactly one verification mode" in one_error_line(no_mode)
