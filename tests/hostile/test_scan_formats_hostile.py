"""Hostile safetensors, Keras and ONNX files (issue #17): every case is blocked with the finding it
names, no scanner ever raises, and truncated or corrupted benign files are never passed as clean.

The corpus (tests/secure/format_corpus.py) cites the advisory or issue behind each case.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from modelshield.secure.scan.findings import Finding, Location, ScanLimits
from modelshield.secure.scan.keras import scan_hdf5, scan_keras, scan_keras_config
from modelshield.secure.scan.onnx import scan_onnx
from modelshield.secure.scan.safetensors import scan_safetensors


def _load_corpus() -> ModuleType:
    """tests/secure/format_corpus.py (pytest runs with --import-mode=importlib: no sys.path)."""
    if "format_corpus" in sys.modules:
        return sys.modules["format_corpus"]
    path = Path(__file__).resolve().parents[1] / "secure" / "format_corpus.py"
    spec = importlib.util.spec_from_file_location("format_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["format_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
pytest.importorskip("onnx")  # the ONNX cases are built with onnx.helper (the `test` extra)
CASES = corpus.hostile_cases()
LIMITS = ScanLimits(max_seconds=20.0)
HERE = Location(path="hostile")


def test_corpus_is_broad() -> None:
    """At least 15 distinct techniques across the three formats, each citing its source."""
    assert len({c.name for c in CASES}) == len(CASES) >= 15
    assert {c.fmt for c in CASES} == {"safetensors", "keras", "hdf5", "onnx"}
    assert all(c.source for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file_is_blocked(case: object, tmp_path: Path) -> None:
    path = case.build(tmp_path)  # type: ignore[attr-defined]
    findings = corpus.scan_file(case.fmt, path)  # type: ignore[attr-defined]
    hit = [f for f in findings if f.code == case.code]  # type: ignore[attr-defined]
    assert hit, f"{case.name}: expected {case.code}, got {[(f.code, f.severity) for f in findings]}"  # type: ignore[attr-defined]
    assert all(f.blocking for f in hit), hit
    assert all(str(path) == f.location.path for f in findings)


# -------------------------------------------------------------------------- truncation at 1/16ths

def _benign_files(tmp_path: Path) -> list[tuple[str, str, bytes]]:
    files = [
        ("safetensors", "w.safetensors", corpus.safetensors_bytes(corpus.benign_tensors(), {"format": "pt"})),
        ("keras", "m.keras", corpus.keras_zip(corpus.keras_sequential())),
        ("keras", "f.keras", corpus.keras_zip(corpus.keras_functional())),
        ("hdf5", "m.h5", corpus.hdf5_bytes(corpus.keras2_model_config(),
                                           training_config=corpus.KERAS2_TRAINING_CONFIG)),
        ("onnx", "torch.onnx", corpus.onnx_torch()),
    ]
    if importlib.util.find_spec("skl2onnx") is not None:
        files += [("onnx", "lr.onnx", corpus.onnx_sklearn("logreg")),
                  ("onnx", "rf.onnx", corpus.onnx_sklearn("forest"))]
    del tmp_path
    return files


def test_benign_files_pass_and_every_truncation_is_blocked(tmp_path: Path) -> None:
    for fmt, name, data in _benign_files(tmp_path):
        path = tmp_path / name
        path.write_bytes(data)
        clean = corpus.scan_file(fmt, path)
        assert corpus.blocking(clean) == [], (name, clean)
        for k in range(16):
            cut = tmp_path / f"cut{k}-{name}"
            cut.write_bytes(data[: len(data) * k // 16])
            found = corpus.scan_file(fmt, cut)
            assert corpus.blocking(found), f"{name} cut at {k}/16 ({len(data) * k // 16} B) passed: {found}"


# ------------------------------------------------------------------------------ never raise, bounded

_SCANNERS: dict[str, Callable[[bytes], list[Finding]]] = {
    "safetensors": lambda d: scan_safetensors(d, where=HERE, limits=LIMITS),
    "keras": lambda d: scan_keras(d, where=HERE, limits=LIMITS),
    "onnx": lambda d: scan_onnx(d, where=HERE, limits=LIMITS),
    "config": lambda d: scan_keras_config(d.decode("latin-1"), where=HERE, limits=LIMITS),
}


@pytest.mark.parametrize("fmt", sorted(_SCANNERS))
def test_random_corruption_never_raises(fmt: str, tmp_path: Path) -> None:
    """Byte flips, inserted and deleted runs (seeded): findings or none, never an exception."""
    seeds = {"safetensors": corpus.safetensors_bytes(corpus.benign_tensors()),
             "keras": corpus.keras_zip(corpus.keras_sequential()),
             "onnx": corpus.onnx_torch(),
             "config": __import__("json").dumps(corpus.keras_sequential()).encode()}
    data = seeds[fmt]
    rng = random.Random(17)
    for _ in range(150):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(buf))
            op = rng.random()
            if op < 0.6:
                buf[at] = rng.randrange(256)
            elif op < 0.8:
                del buf[at: at + rng.randint(1, 32)]
            else:
                buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        result = _SCANNERS[fmt](bytes(buf))
        assert isinstance(result, list)


def test_hdf5_corruption_never_raises(tmp_path: Path) -> None:
    data = corpus.hdf5_bytes(corpus.keras2_model_config())
    rng = random.Random(5)
    path = tmp_path / "x.h5"
    for _ in range(60):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        path.write_bytes(bytes(buf))
        assert isinstance(scan_hdf5(str(path), where=HERE, limits=LIMITS), list)


def test_pathological_sizes_are_bounded() -> None:
    """A 10,000-deep JSON config, a 20,000-entry safetensors header and a protobuf of 100k empty
    nodes all finish fast with findings or a clean answer, never a crash."""
    deep = '{"class_name": "Sequential", "config": ' + "[" * 10_000 + "]" * 10_000 + "}"
    t0 = time.perf_counter()
    assert {f.code for f in scan_keras_config(deep, where=HERE, limits=LIMITS)} & {
        "keras.config.too-deep", "keras.config.malformed"}
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]} for i in range(20_000)}
    found = scan_safetensors(corpus.safetensors_raw(header, b"\0"), where=HERE, limits=LIMITS)
    assert "safetensors.offsets.overlap" in {f.code for f in found}
    assert len(found) < 100  # capped per code
    graph = b"\x0a\x00" * 100_000  # GraphProto with 100k empty NodeProtos
    model = b"\x08\x08" + b"\x3a" + _varint(len(graph)) + graph + b"\x42\x02\x10\x11"
    assert "onnx.domain.custom" not in {f.code for f in scan_onnx(model, where=HERE, limits=LIMITS)}
    assert time.perf_counter() - t0 < 20


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
