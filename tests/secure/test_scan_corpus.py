"""The scanner on its corpus (tests/secure/corpus.py): every published bypass technique blocked, no
benign model file blocked, and no input, however truncated, corrupt, nested or inflated, makes it
raise or run unbounded. Nothing of the corpus is ever loaded."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.secure.scan import Location, ScanLimits, scan_bytes, scan_path
from modelshield.secure.scan.allowlist import is_allowed, severity_of
from modelshield.secure.scan.pickle import walk_pickle


def _load_corpus() -> ModuleType:
    """corpus.py beside this file (pytest runs with --import-mode=importlib: no sys.path)."""
    if "scan_corpus" in sys.modules:
        return sys.modules["scan_corpus"]
    spec = importlib.util.spec_from_file_location("scan_corpus", Path(__file__).with_name("corpus.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scan_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
MALICIOUS = corpus.MALICIOUS
BENIGN = corpus.BENIGN
runner = CliRunner()
_BUILT: dict[str, bytes] = {}


def _bytes(case: object) -> bytes:
    name = case.name  # type: ignore[attr-defined]
    if name not in _BUILT:
        _BUILT[name] = case.build()  # type: ignore[attr-defined]
    return _BUILT[name]


def _write(tmp_path: Path, case: object) -> Path:
    path: Path = tmp_path / case.filename  # type: ignore[attr-defined]
    path.write_bytes(_bytes(case))
    return path


def test_corpus_has_at_least_40_distinct_techniques() -> None:
    names = [c.name for c in MALICIOUS]
    assert len(set(names)) == len(names) >= 40
    every = [c.name for c in (*MALICIOUS, *BENIGN)]
    assert len(set(every)) == len(every)  # names key the build cache
    assert all(c.source for c in MALICIOUS)
    # distinct payload bytes, not one file under many names
    assert len({_bytes(c) for c in MALICIOUS}) == len(MALICIOUS)


@pytest.mark.parametrize("case", MALICIOUS, ids=lambda c: c.name)
def test_malicious_file_is_blocked(case: object, tmp_path: Path) -> None:
    report = scan_path(_write(tmp_path, case))
    assert report.blocked, [f.to_dict() for f in report.findings]
    assert report.files == 1


@pytest.mark.parametrize("case", BENIGN, ids=lambda c: c.name)
def test_benign_file_passes(case: object, tmp_path: Path) -> None:
    report = scan_path(_write(tmp_path, case))
    assert not report.blocked, [f.to_dict() for f in report.findings]
    assert all(f.severity in ("info", "low") for f in report.findings)


def test_call_findings_name_the_callable_and_offset() -> None:
    report = scan_bytes(corpus.OS_SYSTEM4, name="x.pkl")
    (finding,) = [f for f in report.findings if f.code == "pickle.global.denied"]
    assert finding.callable == "os.system" and finding.severity == "critical"
    assert finding.offset == corpus.OS_SYSTEM4.index(b"\x93")  # the STACK_GLOBAL opcode


def test_zip_member_is_named_in_findings() -> None:
    report = scan_bytes(corpus.torch_zip(corpus.OS_SYSTEM4, prefix="m"), name="model.pt")
    denied = [f for f in report.findings if f.code == "pickle.global.denied"]
    assert denied and denied[0].location.members == ("m/data.pkl",)
    assert denied[0].to_dict()["member"] == "m/data.pkl"


def test_folder_scan_reports_every_file(tmp_path: Path) -> None:
    bad, good = MALICIOUS[0], BENIGN[0]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / bad.filename).write_bytes(_bytes(bad))
    (tmp_path / good.filename).write_bytes(_bytes(good))
    report = scan_path(tmp_path)
    assert report.files == 2 and report.blocked
    assert {Path(f.location.path).name for f in report.findings if f.blocking} == {bad.filename}


# -- never raises, always bounded ------------------------------------------------------------------

_ALL = (*MALICIOUS, *BENIGN)


@pytest.mark.parametrize("case", _ALL, ids=lambda c: c.name)
def test_truncations_never_raise(case: object) -> None:
    data = _bytes(case)
    cuts = sorted({*range(0, min(len(data), 40)), *(len(data) * k // 17 for k in range(1, 17)),
                   len(data) - 1})
    limits = ScanLimits(max_seconds=5.0)
    for cut in cuts:
        report = scan_bytes(data[:cut], name="t", limits=limits)
        assert report.seconds < 5.0
        assert not [f for f in report.findings if f.code == "scan.internal-error"], cut
    # a truncated malicious pickle stream still names its call when the call precedes the cut
    if case in MALICIOUS and data.startswith(b"\x80") and b"\x93" in data:
        cut = data.index(b"\x93") + 1
        assert scan_bytes(data[:cut], name="t").blocked


@pytest.mark.parametrize("case", _ALL, ids=lambda c: c.name)
def test_corruptions_never_raise(case: object) -> None:
    data = bytearray(_bytes(case))
    rng = random.Random(len(data))
    for _ in range(12):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        report = scan_bytes(bytes(mutated), name="c", limits=ScanLimits(max_seconds=5.0))
        assert not [f.message for f in report.findings if f.code == "scan.internal-error"]


def test_deep_pickle_nesting_is_bounded() -> None:
    deep = b"\x80\x04" + b"(" * 200_000 + b"]" * 200_000 + b"."
    start = time.monotonic()
    report = scan_bytes(deep, name="deep.pkl", limits=ScanLimits(max_stack=100_000))
    assert time.monotonic() - start < 5.0
    assert any(f.code == "pickle.limit" for f in report.findings)


def test_nested_archives_stop_at_max_nesting() -> None:
    data = corpus.torch_zip(pickle_ok())
    for _ in range(8):
        data = corpus.zip_of({"inner.zip": data})
    report = scan_bytes(data, name="nest.zip", limits=ScanLimits(max_nesting=4))
    assert report.blocked
    assert any(f.code == "archive.nesting" for f in report.findings)


def pickle_ok() -> bytes:
    import pickle
    return pickle.dumps({"ok": [1, 2]}, protocol=4)


def test_pickle_ops_limit_is_a_finding() -> None:
    data = b"\x80\x04" + b"N0" * 50_000 + b"N."
    walk = walk_pickle(data, where=Location(path="ops.pkl"), limits=ScanLimits(max_pickle_ops=1000))
    assert any(f.code == "pickle.limit" for f in walk.findings)


def test_declared_zip_bomb_is_not_inflated() -> None:
    bomb = corpus.zip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MB
    tracemalloc.start()
    start = time.monotonic()
    report = scan_bytes(bomb, name="bomb.pt")
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.blocked and any(f.code == "zip.bomb" for f in report.findings)
    assert elapsed < 2.0 and peak < 64 << 20


def test_lying_zip_bomb_stops_at_the_declared_size() -> None:
    bomb = bytearray(corpus.zip_bomb(256 << 20))
    # declare 1000 bytes in both headers: the inflater must stop right after them
    local, central = bomb.find(b"PK\x03\x04"), bomb.find(b"PK\x01\x02")
    bomb[local + 22:local + 26] = (1000).to_bytes(4, "little")
    bomb[central + 24:central + 28] = (1000).to_bytes(4, "little")
    tracemalloc.start()
    start = time.monotonic()
    report = scan_bytes(bytes(bomb), name="bomb.pt")
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.blocked and any(f.code == "zip.bomb" for f in report.findings)
    assert elapsed < 2.0 and peak < 64 << 20


def test_compressed_stream_bomb_is_bounded() -> None:
    import gzip
    bomb = gzip.compress(b"\x00" * (200 << 20), compresslevel=1)
    start = time.monotonic()
    report = scan_bytes(bomb, name="bomb.joblib", limits=ScanLimits(max_ratio=100.0))
    assert time.monotonic() - start < 5.0
    assert report.blocked and any(f.code == "compressed.bomb" for f in report.findings)


def test_time_limit_is_a_finding_not_a_hang() -> None:
    data = b"\x80\x04" + b"N0" * 2_000_000 + b"N."
    start = time.monotonic()
    report = scan_bytes(data, name="slow.pkl", limits=ScanLimits(max_seconds=0.05))
    assert time.monotonic() - start < 2.0
    assert any(f.code in ("pickle.limit", "scan.time-limit") for f in report.findings)


# -- allow-list --------------------------------------------------------------------------------------

def test_allow_list_covers_what_skops_trusts_by_default() -> None:
    trusted = pytest.importorskip("skops.io._trusted_types")
    names = [*trusted.SKLEARN_ESTIMATOR_TYPE_NAMES, *trusted.SKLEARN_INTERNAL_TYPE_NAMES,
             *trusted.NUMPY_DTYPE_TYPE_NAMES, *trusted.NUMPY_RANDOM_BIT_GENERATOR_TYPE_NAMES,
             "builtins.int", "builtins.float", "builtins.str", "builtins.bool", "builtins.list",
             "builtins.set", "builtins.tuple", "builtins.slice", "builtins.bytes", "builtins.bytearray",
             "collections.OrderedDict", "collections.defaultdict", "numpy.ndarray"]
    missing = [n for n in names if not is_allowed(n)]
    assert not missing, missing[:10]


@pytest.mark.parametrize("name", ["builtins.eval", "builtins.getattr", "os.system", "posix.system",
                                  "subprocess.Popen", "importlib.import_module", "runpy._run_code",
                                  "torch.load", "numpy.load", "builtins.__import__",
                                  "_posixsubprocess.fork_exec"])
def test_exec_primitives_are_critical(name: str) -> None:
    assert not is_allowed(name) and severity_of(name) == "critical"


def test_unknown_callables_are_refused() -> None:
    assert not is_allowed("mypackage.helpers.make")
    assert severity_of("mypackage.helpers.make") == "high"
    assert not is_allowed("sklearn.utils.parallel.Parallel")
    assert not is_allowed("numpy._core._ufunc_reconstruct")


# -- CLI ---------------------------------------------------------------------------------------------

def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    bad = _write(tmp_path, MALICIOUS[1])
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    good = _write(good_dir, BENIGN[0])
    result = runner.invoke(app, ["scan", str(bad)])
    assert result.exit_code == 1, result.output
    assert "os.system" in result.output
    result = runner.invoke(app, ["scan", str(good)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["scan", str(good), str(bad), "--json"])
    assert result.exit_code == 1
    reports = json.loads(result.output)
    assert [r["blocked"] for r in reports] == [False, True]
    assert reports[1]["findings"][0]["callable"] == "os.system"
    result = runner.invoke(app, ["scan", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2


# -- the walker's model ------------------------------------------------------------------------------

def _random_value(rng: random.Random, depth: int = 0) -> object:
    kinds = ["int", "float", "str", "bytes", "none", "bool", "big"]
    kinds += ["list", "tuple", "dict", "set"] if depth < 4 else []
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2 ** 40), 2 ** 40)
    if kind == "big":
        return rng.getrandbits(200)
    if kind == "float":
        return rng.random()
    if kind == "str":
        return "".join(rng.choice("ab\n'\"\\é") for _ in range(rng.randint(0, 8)))
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "set":
        return {repr(x) for x in items}
    return {repr(x): x for x in items}


@pytest.mark.parametrize("proto", range(6))
def test_walker_reads_every_plain_pickle_to_its_stop(proto: int) -> None:
    rng = random.Random(proto)
    for _ in range(40):
        value = _random_value(rng)
        shared = [value, value]  # memo references (PUT/GET, MEMOIZE)
        import pickle
        data = pickle.dumps(shared, protocol=proto)
        walk = walk_pickle(data, where=Location(path="r.pkl"), limits=ScanLimits())
        assert walk.stopped and walk.end == len(data) and not walk.findings, walk.findings


def test_scanning_never_runs_the_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = corpus.reduce4("os", "system", f"touch {marker}")
    path = tmp_path / "m.pkl"
    path.write_bytes(payload)
    before = set(sys.modules)
    report = scan_path(path)
    assert report.blocked and not marker.exists()
    assert not [m for m in set(sys.modules) - before if m.startswith(("os.", "subprocess"))]


# -- archive anomalies and walker semantics, one by one ---------------------------------------------

def _codes(data: bytes) -> set[str]:
    return {f.code for f in scan_bytes(data, name="x").findings}


def test_overlapping_zip_entries_are_found() -> None:
    # a second central entry whose local header offset points into the first member's data
    import struct
    import zipfile
    data = bytearray(corpus.zip_of({"a/data.pkl": pickle_ok(), "a/b": b"x" * 64}))
    cd2 = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", data, cd2 + 42, 0)  # both entries now start at offset 0
    assert {"zip.overlap", "zip.name-mismatch"} <= _codes(bytes(data))
    assert zipfile.is_zipfile(io.BytesIO(bytes(data)))


def test_zip_trailing_data_and_truncation() -> None:
    data = corpus.torch_zip(pickle_ok())
    assert "zip.trailing-data" in _codes(data + b"junk")
    assert "zip.no-directory" in _codes(data[:-30])
    cut = data[: data.find(b"PK\x01\x02") - 10] + data[data.find(b"PK\x01\x02"):]
    assert scan_bytes(cut, name="t").blocked  # offsets no longer match: never a silent pass


def test_stack_global_operands_come_from_the_memo_not_the_last_strings() -> None:
    # 'os'/'system' memoized, then two harmless strings pushed and popped, then the memo replayed
    body = (corpus.u("os") + b"\x94" + corpus.u("system") + b"\x94" + b"00" + corpus.u("builtins")
            + corpus.u("dict") + b"00" + b"h\x00h\x01\x93)R")
    report = scan_bytes(corpus.p(4, body), name="m.pkl")
    assert [f.callable for f in report.findings if f.code == "pickle.global.denied"] == ["os.system"]


def test_pop_discards_a_mark_as_cpython_does() -> None:
    # MARK then POP: CPython pops the mark, so the TUPLE below finds no MARK -> malformed
    data = corpus.p(2, b"N(0t")
    assert "pickle.malformed" in _codes(data)
    # and a fence: TUPLE1 cannot reach below the last MARK
    assert "pickle.malformed" in _codes(corpus.p(2, b"N(\x85"))


def test_registered_extension_codes_are_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield.secure.scan import pickle as walker
    monkeypatch.setitem(walker._EXTENSIONS, 240, ("os", "system"))
    report = scan_bytes(corpus.p(2, b"\x82\xf0(" + corpus.s0("true") + b"tR"), name="m.pkl")
    assert [f.callable for f in report.findings] == ["os.system"]


def test_build_on_an_allowed_class_itself_is_a_finding() -> None:
    data = corpus.p(4, corpus.sg("collections", "OrderedDict") + b"N}" + corpus.u("x") + b"K\x01s\x86b")
    assert "pickle.build.global" in _codes(data)


def test_calling_a_computed_value_is_a_finding() -> None:
    # REDUCE on the result of another (allowed) call: a bound method or getattr result
    inner = corpus.call(corpus.sg("builtins", "set"))
    data = corpus.p(4, inner + b")R")
    assert "pickle.call.indirect" in _codes(data)


def test_protocol_0_python2_names_are_mapped() -> None:
    # fix_imports: __builtin__.set is builtins.set (allowed); copy_reg._reconstructor is copyreg's
    ok = b"c__builtin__\nset\n(]tR."
    assert not scan_bytes(ok, name="p2.pkl").blocked
    bad = b"c__builtin__\ngetattr\n."
    assert [f.callable for f in scan_bytes(bad, name="p2.pkl").findings] == ["builtins.getattr"]


def test_probe_follows_cpython_where_it_is_lenient(tmp_path: Path) -> None:
    # a protocol-0 stream (no PROTO, no magic) that opens with opcodes CPython accepts (BUILD with a
    # None state on an int, SETITEM on a list) before a STACK_GLOBAL fed from the memo
    body = b"K\x01Nb0" + b"]K\x07aK\x00K\x05s0" + b"Vos\np0\n0Vsystem\np1\n0g0\ng1\n\x93(Vtrue\ntR."
    path = tmp_path / "notes.txt"
    path.write_bytes(body)
    report = scan_path(path)
    assert [f.callable for f in report.findings if f.blocking] == ["os.system"]
