"""Model-file scanners side by side on the scanner's own test corpus (issue #17).

Prints one JSON object (and writes it to ``--out``):

- for modelshield and each peer (modelscan, picklescan, fickling, modelaudit; the ``scanners``
  extra installs them): how many malicious files it **blocks**, only **warns** about, **errors** on
  and **misses**, the benign files it blocks (false positives), and the list of cases behind each
  count;
- ``peer_blocked_not_us``: every case some peer blocks and modelshield does not (the target is an
  empty list; it is also printed to stderr);
- the scan time per file: every peer runs as its own command, one fresh process per file (a cold
  start each time); modelshield is timed in-process (``scan_path``) on every file and as the
  ``modelshield scan FILE --json`` command (cold start) on a sample of files;
- throughput in MB/s on a benign PyTorch zip checkpoint of ``--big-mb`` MB (default 1024) written
  with ``torch.save`` into a temporary folder (deleted afterwards), for modelshield and each peer.

The corpus is the tests' own: ``tests/secure/corpus.py`` (``MALICIOUS``, ``BENIGN``) and
``tests/secure/format_corpus.py`` (``hostile_cases()``; benign safetensors, Keras, HDF5 and ONNX
files built here with its writers, plus its ``BENIGN`` / ``benign_cases()`` if it grows one). Both
are imported when the benchmark runs, so new cases are picked up. Every file is written under its
case's file name into its own folder and is only ever scanned: never loaded, unpickled or run.

How each outcome is classified (``rc`` = exit status; a run past ``--timeout`` is an error):

- modelshield: ``scan_path(file)``; **blocked** when the report has a blocking finding (critical,
  high or medium; the CLI then exits 1), **error** when the call raises or when its only blocking
  findings are the scanner's own fail-closed errors (``*.scanner-error``, ``scan.time-limit``),
  **warn-only** when it has only ``low`` findings, **missed** otherwise. The CLI sample checks that
  ``modelshield scan --json`` gives the same verdict (exit 1 blocked, 0 not).
- modelscan 0.8: ``modelscan -p FILE -r json -o REPORT --show-skipped``. Exit 0 clean, 1 issues, 2 scan errors
  (checked before issues), 3 nothing scanned. **blocked**: rc 1 or 2 with at least one issue in the
  report (every issue, LOW included, fails the exit code); **error**: rc 2 without issues, rc 3
  (the file was skipped: "Model Scan did not scan file", bad zip, ...), any other rc, a crash or
  a timeout; **missed**: rc 0. modelscan has no clean-exit warning, so no warn-only.
- picklescan 1.0: ``picklescan -p FILE``. Exit 0 clean, 1 dangerous globals, 2 scan error.
  **blocked**: rc 1 or 2 with ``Dangerous globals`` or ``Infected files`` above 0 in its summary;
  **error**: rc 2 (or any other non-zero rc) without them, a traceback, a timeout; with rc 0:
  **warn-only** when ``Suspicious globals`` is above 0 (picklescan's "suspicious" verdict exits
  clean), **error** when it logged that it could not parse the file, **missed** otherwise.
- fickling 0.1: its public API, routed file by file exactly as fickling's own ``--huggingface``
  scan routes a repository's files (``fickling.polyglot.find_file_properties``): a zip (or a
  ``.pt``/``.pth`` name) goes to ``fickling.scan_zip_archive(path, graceful=True)`` (its
  ``.pkl``/``.pickle``/``.bin`` members), a valid pickle (or a ``.bin``/``.pkl``/``.pickle`` name)
  to ``fickling.scan_file(path, graceful=True)``; both call ``check_safety`` on every stacked
  pickle. 7z, tar and NumPy files are skipped with a "not supported" warning, other names with an
  "unknown extension" warning, and ``.json``/``.safetensors``/``.onnx`` silently. (The plain
  ``fickling --check-safety FILE`` command reads raw pickles only and exits 2 on every zip, benign
  or not; the API route is the more generous one.) **blocked**: an analysis severity above
  ``LIKELY_SAFE`` (the CLI's exit-1 rule); **error**: only parse/archive errors were reported, a
  skip with a warning, a driver crash or a timeout; **missed**: every pickle found was
  ``LIKELY_SAFE``, no pickle member was found, or a silent known-safe skip. fickling has no
  clean-exit warning, so no warn-only. Its time per file is that of ``fickling --check-safety
  FILE`` run on the same file (the driver's own time, which includes the ``torch`` import that
  ``fickling.polyglot`` makes, is reported as ``driver_seconds_per_file`` and used for throughput).
- modelaudit 0.2: ``modelaudit scan --format json --no-cache FILE`` with telemetry off
  (``PROMPTFOO_DISABLE_TELEMETRY=1``). Exit 0 clean, 1 security issues, 2 operational errors or
  an inconclusive scan. **blocked**: rc 1, or rc 2 with a ``critical`` or ``warning`` issue;
  **error**: rc 2 without one, any other rc, output that is not JSON, a timeout; with rc 0:
  **warn-only** when it reports an ``info`` issue other than the generic "Suspiciously small
  binary file" size note, **missed** otherwise.

A false positive is a benign file *blocked*. Peers run in a pool of ``--jobs`` (at most 2)
processes at once; modelshield's in-process and CLI timings are taken before that pool starts,
with nothing else of the benchmark running.

Usage: python benchmarks/scan.py [--quick] [--big-mb 1024] [--scanners modelshield,modelscan,...]
[--jobs 2] [--timeout 120] [--cli-sample 12] [--peer-bin DIR] [--out benchmarks/results/scan.json]
[--resume] [--cache PATH]
Every peer outcome is appended to ``--cache`` (default: a file in the system temp folder) as it
comes; ``--resume`` reuses them (keyed by rules version, scanner, version, case and the file's
SHA-256), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS_SECURE = ROOT / "tests" / "secure"
PEERS = ("modelscan", "picklescan", "fickling", "modelaudit")
ALL_SCANNERS = ("modelshield", *PEERS)
RULES = "r3"  # bump when a classification rule changes: cached outcomes then no longer match
VERDICTS = ("blocked", "warn_only", "error", "missed")
PEER_ENV = {"PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}

QUICK = {
    "malicious": ("proto0-global-os-system", "proto4-stack-global", "stack-global-from-memo",
                  "torch-zip-data-pkl", "zip-bad-crc", "joblib-xz", "st-pickle-after-data", "keras-lambda",
                  "onnx-traversal"),
    "benign": ("torch-state-dict-zip", "numpy-save-float", "plain-pickle-proto4", "safetensors",
               "st-by-hand", "keras-sequential"),
}

# Run under the peer's own interpreter: fickling's public scan API, routed like its --huggingface scan.
FICKLING_DRIVER = r"""
import json, sys, zipfile
from pathlib import PurePosixPath
out = {"results": 0, "max_severity": 0, "severity": "LIKELY_SAFE", "errors": [], "skipped": ""}
try:
    import fickling
    path = sys.argv[1]
    ext = PurePosixPath(path).suffix.lower()
    try:
        from fickling.polyglot import find_file_properties
        props = find_file_properties(path)
    except Exception:
        props = None
    if props is None:
        is_zip, is_pickle, other = zipfile.is_zipfile(path), True, False
    else:
        is_zip, is_pickle = props["is_torch_zip"] or props["is_standard_zip"], props["is_valid_pickle"]
        other = bool(props.get("is_7z") or props.get("is_tar") or props.get("is_numpy_pickle"))
    if is_zip or ext in (".pt", ".pth"):
        results = list(fickling.scan_zip_archive(path, graceful=True).values())
    elif is_pickle or ext in (".bin", ".pkl", ".pickle"):
        results = [fickling.scan_file(path, graceful=True)]
    elif other:
        results, out["skipped"] = [], "7z/TAR/NumPy archive: scanning not supported, skipped"
    elif ext in (".json", ".safetensors", ".onnx"):
        results, out["skipped"] = [], "known-safe extension, skipped silently"
    else:
        results, out["skipped"] = [], f"unknown extension {ext!r}: skipped with a warning"
    for r in results:
        out["errors"] += list(r.errors)
        for a in r.results:
            out["results"] += 1
            sev = a.severity
            if sev.value[0] > out["max_severity"]:
                out["max_severity"], out["severity"] = sev.value[0], sev.name
except Exception as exc:  # the driver reports, the benchmark classifies
    out["errors"].append(f"driver: {type(exc).__name__}: {exc}")
print(json.dumps(out))
"""

# ------------------------------------------------------------------------------------------ corpus

@dataclass(frozen=True)
class CaseFile:
    """One corpus file written to disk: what it is and where it lies."""

    id: str
    group: str          # pickle-corpus | format-corpus | bench-benign
    malicious: bool
    source: str
    path: Path
    size: int
    sha256: str


def _load(name: str, path: Path) -> ModuleType:
    """A test-support module by path (the tests run with --import-mode=importlib: no package)."""
    if name in sys.modules:
        return sys.modules[name]
    for extra in (str(ROOT), str(ROOT / "tests"), str(TESTS_SECURE)):
        if extra not in sys.path:
            sys.path.insert(0, extra)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bench_benign(fc: ModuleType) -> list[tuple[str, str, str, Callable[[], bytes]]]:
    """Benign safetensors / Keras / HDF5 / ONNX files made with format_corpus's writers."""
    out: list[tuple[str, str, str, Callable[[], bytes]]] = []

    def add(name: str, source: str, filename: str, *needs: str, make: Callable[[], bytes]) -> None:
        if all(hasattr(fc, n) for n in needs):
            out.append((name, source, filename, make))

    add("st-by-hand", "safetensors spec, written by hand", "m.safetensors", "safetensors_bytes",
        "benign_tensors", make=lambda: fc.safetensors_bytes(fc.benign_tensors(), {"format": "pt"}))
    add("keras-sequential", "Keras 3 .keras (Sequential + Dense)", "model.keras", "keras_zip",
        "keras_sequential", make=lambda: fc.keras_zip(fc.keras_sequential()))
    add("keras-functional", "Keras 3 .keras (functional)", "func.keras", "keras_zip", "keras_functional",
        make=lambda: fc.keras_zip(fc.keras_functional()))
    add("h5-keras2", "tf.keras 2 .h5 model_config", "model.h5", "hdf5_bytes", "keras2_model_config",
        make=lambda: fc.hdf5_bytes(fc.keras2_model_config()))
    add("onnx-sklearn", "skl2onnx", "lr.onnx", "onnx_sklearn", make=lambda: fc.onnx_sklearn())
    add("onnx-torch", "torch.onnx.export", "net.onnx", "onnx_torch", make=lambda: fc.onnx_torch())
    return out


def build_corpus(folder: Path, *, quick: bool) -> tuple[list[CaseFile], dict[str, str]]:
    """Write every case under ``folder/<group>/<n>-<name>/``; return the files and any build errors."""
    pc = _load("scan_corpus", TESTS_SECURE / "corpus.py")
    fc = _load("format_corpus", TESTS_SECURE / "format_corpus.py")
    # (id, group, malicious, source, writer(folder) -> path)
    todo: list[tuple[str, str, bool, str, Callable[[Path], Path]]] = []

    def from_bytes(filename: str, make: Callable[[], bytes]) -> Callable[[Path], Path]:
        def write(where: Path) -> Path:
            path = where / filename
            path.write_bytes(make())
            return path
        return write

    for malicious, cases in ((True, pc.MALICIOUS), (False, pc.BENIGN)):
        for c in cases:
            todo.append((c.name, "pickle-corpus", malicious, c.source, from_bytes(c.filename, c.build)))
    for c in fc.hostile_cases():
        todo.append((c.name, "format-corpus", True, c.source, c.build))
    extra_benign = getattr(fc, "BENIGN", None)
    if extra_benign is None and hasattr(fc, "benign_cases"):
        extra_benign = fc.benign_cases()
    for c in extra_benign or ():
        todo.append((c.name, "format-corpus", False, c.source, c.build))
    seen = {t[0] for t in todo}
    for name, source, filename, make in _bench_benign(fc):
        if name not in seen:
            todo.append((name, "bench-benign", False, source, from_bytes(filename, make)))

    if quick:
        todo = _quick_subset(todo)
    files: list[CaseFile] = []
    errors: dict[str, str] = {}
    ids: set[str] = set()
    for n, (name, group, malicious, source, write) in enumerate(todo):
        case_id = name if name not in ids else f"{group}:{name}"
        ids.add(case_id)
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        where = folder / ("malicious" if malicious else "benign") / f"{n:03d}-{slug}"
        where.mkdir(parents=True)
        try:
            path = write(where)
        except Exception as exc:  # a builder that needs a missing library: reported, not fatal
            errors[case_id] = f"{type(exc).__name__}: {exc}"
            continue
        data = path.read_bytes() if path.is_file() else b""
        files.append(CaseFile(id=case_id, group=group, malicious=malicious, source=source, path=path,
                              size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return files, errors


def _quick_subset(todo: list[tuple[str, str, bool, str, Callable[[Path], Path]]]
                  ) -> list[tuple[str, str, bool, str, Callable[[Path], Path]]]:
    chosen = [t for t in todo if t[0] in QUICK["malicious" if t[2] else "benign"]]
    for malicious in (True, False):
        if sum(t[2] == malicious for t in chosen) < 3:  # the named cases were renamed: take the first ones
            chosen += [t for t in todo if t[2] == malicious and t not in chosen][:4]
    return chosen


# ----------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    """One scanner on one file."""

    verdict: str                 # blocked | warn_only | error | missed
    seconds: float
    rc: int | None = None
    note: str = ""
    driver_seconds: float | None = None  # fickling: the API driver's wall time (``seconds`` is its CLI's)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "seconds": round(self.seconds, 4), "rc": self.rc, "note": self.note,
                "driver_seconds": None if self.driver_seconds is None else round(self.driver_seconds, 4)}


@dataclass
class Peer:
    """How to run one peer and read its answer."""

    name: str
    exe: str | None = None       # its console script
    python: str | None = None    # the interpreter that runs it (from the script's shebang)
    version: str | None = None
    invocation: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def installed(self) -> bool:
        return self.exe is not None and self.python is not None


def _shebang_python(script: str) -> str | None:
    try:
        with open(script, "rb") as handle:
            first = handle.readline().decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
    return parts[0] if parts and os.path.exists(parts[0]) else None


def find_peer(name: str, peer_bin: str | None) -> Peer:
    """The peer's console script: under ``--peer-bin``, else beside this interpreter, else on PATH."""
    dist = {"modelscan": "modelscan", "picklescan": "picklescan", "fickling": "fickling",
            "modelaudit": "modelaudit"}[name]
    if peer_bin is not None:
        cand = os.path.join(peer_bin, name)
        exe = cand if os.access(cand, os.X_OK) else None
    else:
        cand = os.path.join(os.path.dirname(sys.executable), name)
        exe = cand if os.access(cand, os.X_OK) else shutil.which(name)
    peer = Peer(name=name, exe=exe)
    if exe is None:
        return peer
    peer.python = _shebang_python(exe) or sys.executable
    try:
        ask = f"import importlib.metadata as m; print(m.version({dist!r}))"
        got = subprocess.run([peer.python, "-c", ask], capture_output=True, text=True, timeout=60)
        peer.version = got.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        peer.version = None
    if peer.version is None:
        peer.exe = None  # a stale script whose package is gone
    peer.invocation = {
        "modelscan": "modelscan -p FILE -r json -o REPORT --show-skipped",
        "picklescan": "picklescan -p FILE",
        "fickling": "python -c DRIVER FILE (fickling.scan_zip_archive / fickling.scan_file, graceful=True)",
        "modelaudit": "modelaudit scan --format json --no-cache FILE (telemetry off)",
    }[name]
    return peer


def _run(cmd: Sequence[str], *, timeout: float, cwd: str) -> tuple[int | None, str, str, float]:
    env = {**os.environ, **PEER_ENV}
    t0 = time.perf_counter()
    try:
        got = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                             errors="replace")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out, "timeout", time.perf_counter() - t0
    return got.returncode, got.stdout, got.stderr, time.perf_counter() - t0


def _int_after(label: str, text: str) -> int:
    m = re.search(rf"{label}:\s*(\d+)", text)
    return int(m.group(1)) if m else 0


def _first_line(text: str, limit: int = 160) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def run_peer(peer: Peer, path: Path, *, timeout: float) -> Outcome:
    """One peer on one file, in a fresh process with its own scratch folder."""
    assert peer.exe is not None and peer.python is not None
    with tempfile.TemporaryDirectory(prefix=f"scanbench-{peer.name}-") as scratch:
        if peer.name == "modelscan":
            report = os.path.join(scratch, "report.json")
            rc, out, err, secs = _run([peer.exe, "-p", str(path), "-r", "json", "-o", report,
                                       "--show-skipped"], timeout=timeout, cwd=scratch)
            try:
                with open(report) as handle:
                    data = json.load(handle)
            except (OSError, ValueError):
                data = {}
            return classify_modelscan(rc, data, out + err, secs)
        if peer.name == "picklescan":
            rc, out, err, secs = _run([peer.exe, "-p", str(path)], timeout=timeout, cwd=scratch)
            return classify_picklescan(rc, out + "\n" + err, secs)
        if peer.name == "fickling":
            rc, out, err, secs = _run([peer.python, "-c", FICKLING_DRIVER, str(path)], timeout=timeout,
                                      cwd=scratch)
            got = classify_fickling(rc, out, err, secs)
            # the time is its plain command's: the driver imports fickling.polyglot, which imports torch
            cli_secs = _run([peer.exe, "--check-safety", str(path)], timeout=timeout, cwd=scratch)[3]
            return Outcome(got.verdict, cli_secs, got.rc, got.note, driver_seconds=secs)
        rc, out, err, secs = _run([peer.exe, "scan", "--format", "json", "--no-cache", str(path)],
                                  timeout=timeout, cwd=scratch)
        return classify_modelaudit(rc, out, err, secs)


def classify_modelscan(rc: int | None, report: dict[str, Any], text: str, secs: float) -> Outcome:
    if rc is None:
        return Outcome("error", secs, rc, "timeout")
    issues = report.get("issues") or []
    if rc in (1, 2) and issues:
        first = issues[0]
        return Outcome("blocked", secs, rc, f"{first.get('severity')}: {first.get('description', '')}"[:160])
    if rc == 0:
        return Outcome("missed", secs, rc)
    skipped = (report.get("summary") or {}).get("skipped", {}).get("skipped_files") or []
    errors = report.get("errors") or []
    why = "; ".join(str(s.get("description", "")) for s in skipped[-2:]) or \
        "; ".join(str(e.get("description", e)) for e in errors[:2])
    if not why:
        lines = [ln for ln in text.splitlines() if "settings file" not in ln and ln.strip()]
        why = _last_error("\n".join(lines))
    return Outcome("error", secs, rc, f"rc {rc}: {why}"[:200])


def classify_picklescan(rc: int | None, text: str, secs: float) -> Outcome:
    if rc is None:
        return Outcome("error", secs, rc, "timeout")
    dangerous = _int_after("Dangerous globals", text)
    infected = _int_after("Infected files", text)
    suspicious = _int_after("Suspicious globals", text)
    found = re.search(r"dangerous import '[^']*' FOUND", text)
    if rc != 0:
        if dangerous or infected:
            return Outcome("blocked", secs, rc, found.group(0) if found else f"{dangerous} dangerous globals")
        return Outcome("error", secs, rc, _last_error(text))
    if suspicious:
        return Outcome("warn_only", secs, rc, f"{suspicious} suspicious globals")
    if "could not parse" in text or "ERROR" in text:
        return Outcome("error", secs, rc, _last_error(text))
    return Outcome("missed", secs, rc)


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()
             if re.search(r"error|could not|exception|warning", ln, re.IGNORECASE)]
    return (lines[-1] if lines else _first_line(text))[:200]


def classify_fickling(rc: int | None, out: str, err: str, secs: float) -> Outcome:
    if rc is None:
        return Outcome("error", secs, rc, "timeout")
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Outcome("error", secs, rc, f"driver crashed: {_first_line(err)}")
    if data["max_severity"] > 0:
        return Outcome("blocked", secs, rc, data["severity"])
    if data["errors"]:
        return Outcome("error", secs, rc, str(data["errors"][0])[:200])
    skipped = str(data.get("skipped", ""))
    if skipped and not skipped.startswith("known-safe"):
        return Outcome("error", secs, rc, skipped)  # fickling says it cannot scan the file
    return Outcome("missed", secs, rc, skipped or ("" if data["results"] else "no pickle found"))


_GENERIC_INFO = re.compile(r"^Suspiciously small binary file", re.IGNORECASE)


def classify_modelaudit(rc: int | None, out: str, err: str, secs: float) -> Outcome:
    if rc is None:
        return Outcome("error", secs, rc, "timeout")
    try:
        data = json.loads(out)
    except ValueError:
        return Outcome("error", secs, rc, f"rc {rc}, no JSON: {_last_error(err or out)}")
    issues = data.get("issues") or []
    serious = [i for i in issues if str(i.get("severity")).lower() in ("critical", "warning")]
    if rc == 1 or (rc == 2 and serious):
        first = (serious or issues or [{}])[0]
        return Outcome("blocked", secs, rc, f"{first.get('severity')}: {first.get('message', '')}"[:160])
    if rc != 0:
        first = issues[0].get("message", "") if issues else _last_error(err)
        return Outcome("error", secs, rc, f"rc {rc}: {first}"[:200])
    notes = [i for i in issues if str(i.get("severity")).lower() == "info"
             and not _GENERIC_INFO.match(str(i.get("message", "")))]
    if notes:
        return Outcome("warn_only", secs, rc, f"info: {notes[0].get('message', '')}"[:160])
    return Outcome("missed", secs, rc)


# ------------------------------------------------------------------------------------- modelshield

_OWN_ERROR = re.compile(r"scanner-error|scan\.time-limit")


def run_ours(files: list[CaseFile]) -> dict[str, Outcome]:
    """modelshield's library on every file, in this process (a warm-up call first)."""
    from modelshield.secure.scan import scan_path

    if files:
        scan_path(files[0].path)  # lazy imports, first-call costs
    out: dict[str, Outcome] = {}
    for f in files:
        t0 = time.perf_counter()
        try:
            report = scan_path(f.path)
        except Exception as exc:
            out[f.id] = Outcome("error", time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}"[:200])
            continue
        secs = time.perf_counter() - t0
        blocking = [x for x in report.findings if x.blocking]
        low = [x for x in report.findings if x.severity == "low"]
        codes = ", ".join(sorted({x.code for x in blocking}))
        if blocking and all(_OWN_ERROR.search(x.code) for x in blocking):
            out[f.id] = Outcome("error", secs, None, f"only scanner errors: {codes}")  # fail-closed crash
        elif blocking:
            out[f.id] = Outcome("blocked", secs, None, codes)
        elif low:
            out[f.id] = Outcome("warn_only", secs, None, f"{low[0].code}")
        else:
            out[f.id] = Outcome("missed", secs, None)
    return out


def _cli_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "modelshield")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-c", "from modelshield.cli.app import main; main()"]


def cli_sample(files: list[CaseFile], ours: dict[str, Outcome], n: int, timeout: float) -> dict[str, Any]:
    """``modelshield scan FILE --json``, one cold process per file, on ``n`` evenly spread files."""
    if n <= 0 or not files:
        return {"files": 0}
    step = max(1, len(files) // n)
    sample = files[::step][:n]
    times: list[float] = []
    disagree: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scanbench-cli-") as scratch:
        for f in sample:
            rc, _out, err, secs = _run([*_cli_command(), "scan", str(f.path), "--json"], timeout=timeout,
                                      cwd=scratch)
            times.append(secs)
            verdict = "error" if rc not in (0, 1) else ("blocked" if rc == 1 else "not-blocked")
            lib = "blocked" if ours[f.id].verdict == "blocked" else "not-blocked"
            if verdict != lib:
                disagree.append(f"{f.id}: cli {verdict} (rc {rc}), library {lib} {_first_line(err)}"[:200])
        base = _median_run([sys.executable, "-c", "pass"], scratch)
        imp = _median_run([sys.executable, "-c", "from modelshield.secure.scan import scan_path"], scratch)
        imp_cli = _median_run([sys.executable, "-c", "import modelshield.cli.app"], scratch)
    return {"files": len(sample), "seconds": _stats(times), "verdicts_disagreeing_with_library": disagree,
            "python_startup_s": round(base, 3), "import_modelshield_secure_scan_s": round(imp, 3),
            "import_modelshield_cli_app_s": round(imp_cli, 3)}


def _median_run(cmd: list[str], cwd: str, k: int = 3) -> float:
    return statistics.median(_run(cmd, timeout=120, cwd=cwd)[3] for _ in range(k))


def _stats(xs: Sequence[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(statistics.median(xs), 4), "mean": round(statistics.fmean(xs), 4),
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


# -------------------------------------------------------------------------------------- throughput

def write_big_checkpoint(path: Path, mb: int) -> int:
    """A benign torch.save zip: a state dict of float32 tensors, ``mb`` MB of weights in all."""
    import torch

    gen = torch.Generator().manual_seed(0)
    chunk = 64 if mb >= 64 else max(1, mb)
    state = {f"layer{i}.weight": torch.randn(chunk * (1 << 18), generator=gen)  # chunk MB of float32
             for i in range(max(1, mb // chunk))}
    state["layer0.bias"] = torch.zeros(1000)
    torch.save(state, path)
    del state
    return path.stat().st_size


def throughput(peers: dict[str, Peer], scanners: Sequence[str], mb: int, timeout: float, jobs: int,
               workdir: Path) -> dict[str, Any]:
    from modelshield.secure.scan import scan_path

    big = workdir / "big" / "checkpoint.pt"
    big.parent.mkdir()
    t0 = time.perf_counter()
    size = write_big_checkpoint(big, mb)
    out: dict[str, Any] = {"file_bytes": size, "file_mb": round(size / 1e6, 1),
                           "write_seconds": round(time.perf_counter() - t0, 2),
                           "note": "file just written: read from the page cache (warm), as after a download"}
    try:
        if "modelshield" in scanners:
            t0 = time.perf_counter()
            report = scan_path(big)
            secs = time.perf_counter() - t0
            out["modelshield"] = {"seconds": round(secs, 3), "mb_per_s": round(size / 1e6 / secs, 1),
                                  "verdict": "blocked" if report.blocked else "clean",
                                  "findings": [x.code for x in report.findings][:5]}
        todo = [p for p in peers.values() if p.installed and p.name in scanners]
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futs = {p.name: pool.submit(run_peer, p, big, timeout=timeout) for p in todo}
            for name, fut in futs.items():
                o = fut.result()
                secs = o.driver_seconds if o.driver_seconds is not None else o.seconds  # the run that scanned
                entry: dict[str, Any] = {"seconds": round(secs, 3), "verdict": o.verdict, "note": o.note}
                if o.verdict != "error" or o.note != "timeout":
                    entry["mb_per_s"] = round(size / 1e6 / secs, 1)
                out[name] = entry
    finally:
        big.unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------------------------------ report

def summarise(name: str, files: list[CaseFile], got: dict[str, Outcome]) -> dict[str, Any]:
    mal = [f for f in files if f.malicious and f.id in got]
    ben = [f for f in files if not f.malicious and f.id in got]
    counts = {v: sum(got[f.id].verdict == v for f in mal) for v in VERDICTS}
    lists = {v: sorted(f.id for f in mal if got[f.id].verdict == v) for v in VERDICTS if v != "blocked"}
    fps = sorted(f.id for f in ben if got[f.id].verdict == "blocked")
    return {
        "malicious": {**counts, "total": len(mal)},
        "malicious_not_blocked": lists,
        "benign": {"blocked": len(fps), **{v: sum(got[f.id].verdict == v for f in ben) for v in VERDICTS[1:]},
                   "total": len(ben)},
        "false_positives": fps,
        "benign_errors": sorted(f.id for f in ben if got[f.id].verdict == "error"),
        "seconds_per_file": _stats([got[f.id].seconds for f in files if f.id in got]),
        **({"driver_seconds_per_file": _stats([d for f in files if f.id in got
                                               if (d := got[f.id].driver_seconds) is not None])}
           if any(got[f.id].driver_seconds is not None for f in files if f.id in got) else {}),
    }


def _git_commit() -> str | None:
    try:
        got = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return got.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _load_cache(path: Path) -> dict[str, Outcome]:
    cache: dict[str, Outcome] = {}
    if not path.exists():
        return cache
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            cache[rec["key"]] = Outcome(rec["verdict"], rec["seconds"], rec["rc"], rec["note"],
                                        rec.get("driver_seconds"))
        except (ValueError, KeyError):
            continue
    return cache


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a few cases, a 32 MB checkpoint, 2 CLI runs")
    ap.add_argument("--scanners", default=",".join(ALL_SCANNERS), help="comma-separated subset of "
                    + ", ".join(ALL_SCANNERS))
    ap.add_argument("--big-mb", type=int, default=None, help="size of the throughput checkpoint (1024)")
    ap.add_argument("--jobs", type=int, default=2, help="peer processes at once (at most 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per peer run on a corpus file")
    ap.add_argument("--big-timeout", type=float, default=300.0, help="seconds per peer run on the big file")
    ap.add_argument("--cli-sample", type=int, default=None, help="cold `modelshield scan` runs (12)")
    ap.add_argument("--peer-bin", default=None, help="folder holding the peers' console scripts "
                    "(default: beside this interpreter, else PATH)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scan.json")
    ap.add_argument("--resume", action="store_true", help="reuse the peer outcomes cached in --cache")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ms-scan-bench.jsonl",
                    help="where each peer outcome is appended as it comes (read back with --resume)")
    args = ap.parse_args(argv)
    scanners = [s.strip() for s in args.scanners.split(",") if s.strip()]
    unknown = sorted(set(scanners) - set(ALL_SCANNERS))
    if unknown:
        ap.error(f"--scanners: unknown {unknown}; choose from {', '.join(ALL_SCANNERS)}")
    jobs = max(1, min(2, args.jobs))
    big_mb = args.big_mb if args.big_mb is not None else (32 if args.quick else 1024)
    n_cli = args.cli_sample if args.cli_sample is not None else (2 if args.quick else 12)
    started = time.perf_counter()

    peers = {name: find_peer(name, args.peer_bin) for name in PEERS if name in scanners}
    result: dict[str, Any] = {
        "benchmark": "scan (issue #17)",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _git_commit(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "args": {"quick": args.quick, "big_mb": big_mb, "jobs": jobs, "timeout": args.timeout,
                 "cli_sample": n_cli, "scanners": scanners},
    }
    cache_path = args.cache
    cache = _load_cache(cache_path) if args.resume else {}

    with tempfile.TemporaryDirectory(prefix="scanbench-") as tmp:
        workdir = Path(tmp)
        files, build_errors = build_corpus(workdir / "corpus", quick=args.quick)
        result["corpus"] = {
            "malicious": sum(f.malicious for f in files), "benign": sum(not f.malicious for f in files),
            "by_group": {g: {"malicious": sum(f.malicious for f in files if f.group == g),
                             "benign": sum(not f.malicious for f in files if f.group == g)}
                         for g in sorted({f.group for f in files})},
            "build_errors": build_errors,
        }
        outcomes: dict[str, dict[str, Outcome]] = {}
        summary: dict[str, Any] = {}
        if "modelshield" in scanners:
            from modelshield import __version__ as ms_version

            outcomes["modelshield"] = run_ours(files)
            ours_summary = {"installed": True, "version": ms_version,
                            "invocation": "scan_path(FILE) in-process; CLI: modelshield scan FILE --json",
                            **summarise("modelshield", files, outcomes["modelshield"])}
            ours_summary["in_process_seconds_per_file"] = ours_summary.pop("seconds_per_file")
            summary["modelshield"] = ours_summary
            cli = cli_sample(files, outcomes["modelshield"], n_cli, args.timeout)
            summary["modelshield"]["cli_cold_start"] = cli
            summary["modelshield"]["seconds_per_file"] = cli.get("seconds", {"n": 0})

        for name, peer in peers.items():
            if not peer.installed:
                summary[name] = {"installed": False, "note": "not installed (pip install '.[scanners]')"}
                print(f"[scan] {name}: not installed", file=sys.stderr)
        todo = [(p, f) for p in peers.values() if p.installed for f in files]
        got: dict[str, dict[str, Outcome]] = {p.name: {} for p in peers.values() if p.installed}
        with open(cache_path, "a") as cache_out, \
                concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futs: dict[concurrent.futures.Future[Outcome], tuple[Peer, CaseFile]] = {}
            for p, f in todo:
                key = f"{RULES}|{p.name}|{p.version}|{f.id}|{f.sha256}"
                if key in cache:
                    got[p.name][f.id] = cache[key]
                else:
                    futs[pool.submit(run_peer, p, f.path, timeout=args.timeout)] = (p, f)
            for done, fut in enumerate(concurrent.futures.as_completed(futs), 1):
                p, f = futs[fut]
                o = fut.result()
                got[p.name][f.id] = o
                key = f"{RULES}|{p.name}|{p.version}|{f.id}|{f.sha256}"
                cache_out.write(json.dumps({"key": key, **o.to_dict()}) + "\n")
                cache_out.flush()
                if done % 25 == 0:
                    print(f"[scan] {done}/{len(futs)} peer runs, {time.perf_counter() - started:.0f} s",
                          file=sys.stderr)
        for name, peer in peers.items():
            if peer.installed:
                outcomes[name] = got[name]
                summary[name] = {"installed": True, "version": peer.version, "invocation": peer.invocation,
                                 **summarise(name, files, got[name])}
        result["scanners"] = summary

        # the comparison
        ours = outcomes.get("modelshield", {})
        mal = [f for f in files if f.malicious]
        peer_names = [n for n in outcomes if n != "modelshield"]
        gap = {f.id: sorted(n for n in peer_names if outcomes[n][f.id].verdict == "blocked")
               for f in mal if ours and ours[f.id].verdict != "blocked"}
        gap = {k: v for k, v in gap.items() if v}
        result["peer_blocked_not_us"] = gap
        result["us_only_blocked"] = sorted(
            f.id for f in mal if ours and ours[f.id].verdict == "blocked"
            and not any(outcomes[n][f.id].verdict == "blocked" for n in peer_names))
        result["blocked_by_nobody"] = sorted(
            f.id for f in mal if not any(o[f.id].verdict == "blocked" for o in outcomes.values()))
        if ours:
            fp_peers = [summary[n]["benign"]["blocked"] for n in peer_names]
            cold = summary["modelshield"]["seconds_per_file"].get("median")
            result["targets"] = {
                "blocks_everything_any_peer_blocks": not gap,
                "zero_error_only_outcomes": summary["modelshield"]["malicious"]["error"] == 0,
                "false_positives_not_above_best_peer": (summary["modelshield"]["benign"]["blocked"]
                                                        <= min(fp_peers, default=0)),
                "cli_cold_start_median_under_1s": cold is not None and cold < 1.0,
            }
        result["cases"] = {
            f.id: {"group": f.group, "malicious": f.malicious, "source": f.source, "file": f.path.name,
                   "bytes": f.size, "verdicts": {n: outcomes[n][f.id].verdict for n in outcomes},
                   "notes": {n: outcomes[n][f.id].note for n in outcomes if outcomes[n][f.id].note}}
            for f in files}
        result["throughput"] = throughput(peers, scanners, big_mb, args.big_timeout, jobs, workdir)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    if result["peer_blocked_not_us"]:
        print("\n[scan] !!! CASES A PEER BLOCKS AND MODELSHIELD DOES NOT: "
              + json.dumps(result["peer_blocked_not_us"]), file=sys.stderr)
    fps = summary.get("modelshield", {}).get("false_positives")
    if fps:
        print("[scan] !!! BENIGN FILES MODELSHIELD BLOCKS: " + ", ".join(fps), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
