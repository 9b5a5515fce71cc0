"""benchmarks/scan.py (issue #17): its quick run with modelshield alone (every peer reported as
not installed, never a crash), and the rules that turn each peer's exit code and output into
blocked / warn-only / error / missed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """benchmarks/scan.py by path (benchmarks/ is not a package)."""
    if "bench_scan" in sys.modules:
        return sys.modules["bench_scan"]
    spec = importlib.util.spec_from_file_location("bench_scan", ROOT / "benchmarks" / "scan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scan"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.mark.slow
def test_quick_run_modelshield_only_peers_not_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    empty_bin = tmp_path / "no-peers"
    empty_bin.mkdir()
    out = tmp_path / "scan.json"
    result = bench.main(["--quick", "--peer-bin", str(empty_bin), "--cli-sample", "1", "--big-mb", "4",
                         "--out", str(out), "--cache", str(tmp_path / "cache.jsonl")])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(result))

    for peer in bench.PEERS:
        assert printed["scanners"][peer]["installed"] is False
        assert "not installed" in printed["scanners"][peer]["note"]
    ours = printed["scanners"]["modelshield"]
    n_mal, n_ben = printed["corpus"]["malicious"], printed["corpus"]["benign"]
    assert n_mal >= 5 and n_ben >= 3
    assert ours["malicious"] == {"blocked": n_mal, "warn_only": 0, "error": 0, "missed": 0, "total": n_mal}
    assert ours["false_positives"] == [] and ours["benign"]["total"] == n_ben
    assert ours["in_process_seconds_per_file"]["n"] == n_mal + n_ben
    cli = ours["cli_cold_start"]
    assert cli["files"] == 1 and cli["verdicts_disagreeing_with_library"] == []
    assert printed["peer_blocked_not_us"] == {}
    malicious = sorted(c for c, v in printed["cases"].items() if v["malicious"])
    assert sorted(printed["us_only_blocked"]) == malicious
    big = printed["throughput"]
    assert big["file_bytes"] > 4_000_000 and big["modelshield"]["verdict"] == "clean"
    assert big["modelshield"]["mb_per_s"] > 0
    assert all(set(v["verdicts"]) == {"modelshield"} for v in printed["cases"].values())


def test_unknown_scanner_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--scanners", "modelshield,clamav", "--out", str(tmp_path / "x.json")])


# ---------------------------------------------------------------------------- classification rules

def test_picklescan_rules() -> None:
    summary = "Infected files: {i}\nSuspicious globals: {s}\nDangerous globals: {d}\n"
    assert bench.classify_picklescan(1, "x: dangerous import 'os system' FOUND\n"
                                     + summary.format(i=1, s=0, d=1), 0.1).verdict == "blocked"
    # a scan error after a dangerous global still fails the exit code and names the global
    assert bench.classify_picklescan(2, summary.format(i=1, s=0, d=1), 0.1).verdict == "blocked"
    assert bench.classify_picklescan(2, "Traceback ...\nBadZipFile", 0.1).verdict == "error"
    assert bench.classify_picklescan(0, summary.format(i=0, s=2, d=0), 0.1).verdict == "warn_only"
    assert bench.classify_picklescan(0, "WARNING: could not parse f as pickle\n"
                                     + summary.format(i=0, s=0, d=0), 0.1).verdict == "error"
    assert bench.classify_picklescan(0, summary.format(i=0, s=0, d=0), 0.1).verdict == "missed"
    assert bench.classify_picklescan(None, "", 9.0).verdict == "error"


def test_modelscan_rules() -> None:
    issue = {"issues": [{"severity": "CRITICAL", "description": "unsafe operator"}]}
    assert bench.classify_modelscan(1, issue, "", 0.1).verdict == "blocked"
    assert bench.classify_modelscan(2, issue, "", 0.1).verdict == "blocked"
    skipped = {"summary": {"skipped": {"skipped_files": [{"description": "Model Scan did not scan file"}]}}}
    got = bench.classify_modelscan(3, skipped, "", 0.1)
    assert got.verdict == "error" and "did not scan" in got.note
    assert bench.classify_modelscan(2, {}, "boom", 0.1).verdict == "error"
    assert bench.classify_modelscan(0, {}, "", 0.1).verdict == "missed"


def test_fickling_rules() -> None:
    def run(**kw: object) -> str:
        data = {"results": 1, "max_severity": 0, "severity": "LIKELY_SAFE", "errors": [], "skipped": ""}
        data.update(kw)
        return str(bench.classify_fickling(0, json.dumps(data), "", 0.1).verdict)

    assert run(max_severity=3, severity="LIKELY_UNSAFE") == "blocked"
    assert run(errors=["Parse error"], results=0) == "error"
    assert run(results=0, skipped="unknown extension '.joblib': skipped with a warning") == "error"
    assert run(results=0, skipped="known-safe extension, skipped silently") == "missed"
    assert run() == "missed"
    assert bench.classify_fickling(1, "", "Traceback", 0.1).verdict == "error"


def test_modelaudit_rules() -> None:
    def doc(*issues: tuple[str, str]) -> str:
        return json.dumps({"issues": [{"severity": s, "message": m} for s, m in issues]})

    assert bench.classify_modelaudit(1, doc(("critical", "os.system")), "", 0.1).verdict == "blocked"
    assert bench.classify_modelaudit(2, doc(("warning", "CRC")), "", 0.1).verdict == "blocked"
    assert bench.classify_modelaudit(2, doc(("info", "x")), "", 0.1).verdict == "error"
    assert bench.classify_modelaudit(2, "not json", "Traceback", 0.1).verdict == "error"
    assert bench.classify_modelaudit(0, doc(("info", "Unknown opcode seen")), "", 0.1).verdict == "warn_only"
    assert bench.classify_modelaudit(0, doc(("info", "Suspiciously small binary file: 90 bytes")), "",
                                     0.1).verdict == "missed"
    assert bench.classify_modelaudit(None, "", "", 60.0).verdict == "error"
