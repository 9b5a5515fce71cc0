"""Every hostile format file is blocked through ``scan_path`` (the dispatcher), not only by its own
format scanner called directly: content detection must route malformed files to a scanner that
reports them (three malformed files once slipped through as format "unknown")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from modelshield.secure.scan import scan_bytes, scan_path


def _corpus() -> ModuleType:
    if "format_corpus" in sys.modules:
        return sys.modules["format_corpus"]
    path = Path(__file__).with_name("format_corpus.py")
    spec = importlib.util.spec_from_file_location("format_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["format_corpus"] = module
    spec.loader.exec_module(module)
    return module


CASES = _corpus().hostile_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_hostile_format_file_is_blocked_by_scan_path(case: object, tmp_path: Path) -> None:
    path = case.build(tmp_path)  # type: ignore[attr-defined]
    report = scan_path(path)
    assert report.blocked, (case.name, [f.code for f in report.findings])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "data", "code"), [
    ("a.safetensors", b"\xff" * 8 + b"{}", "safetensors.header.too-large"),
    ("b.safetensors", (10**6).to_bytes(8, "little") + b'{"a": 1}', "safetensors.truncated"),
    ("m.onnx", bytes.fromhex("08083b0000"), "format.unrecognised"),
    ("weights.pt", b"GIF89a not a checkpoint", "format.unrecognised"),
])
def test_malformed_model_files_are_not_passed_as_unknown(name: str, data: bytes, code: str) -> None:
    report = scan_bytes(data, name=name)
    assert report.blocked and code in {f.code for f in report.findings}


@pytest.mark.parametrize("name", ["train.csv", "notes.txt", "model.json", "README"])
def test_files_that_promise_no_model_format_are_not_blocked_for_it(name: str) -> None:
    assert not scan_bytes(b"label,text\n1,hello\n", name=name).blocked
