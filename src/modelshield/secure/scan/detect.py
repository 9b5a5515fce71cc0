"""Format detection by content (never by file name) and the dispatcher that sends each byte stream,
and each archive member, to the scanner of its format.

Formats: zip (PyTorch checkpoints, ``.npz``, ``.keras``, skops), tar (legacy PyTorch), PyTorch's
legacy-magic stream, raw pickles of protocols 0-5, joblib (raw, or zlib/gzip/bz2/xz/lzma
compressed), NumPy ``.npy``, HDF5, safetensors and ONNX. A stream that matches nothing is probed as
a protocol 0/1 pickle (they have no magic number) and is otherwise ``unknown`` (not a finding).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import struct
from collections.abc import Callable
from typing import Any

from modelshield.secure.scan.allowlist import is_allowed, severity_of
from modelshield.secure.scan.archive import Budget, inflate_stream, scan_tar, scan_zip
from modelshield.secure.scan.findings import Finding, Location, ScanLimits
from modelshield.secure.scan.pickle import Global, PList, looks_like_pickle, scan_pickle, walk_pickle

__all__ = ["TORCH_LEGACY_MAGIC", "scan_content", "sniff"]

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The int ``torch.save`` pickles first in its legacy (non-zip) format."""

_HDF5 = b"\x89HDF\r\n\x1a\n"
_NPY = b"\x93NUMPY"
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"), (b"\x5d\x00\x00", "lzma"))
_ZLIB_SECOND = (0x01, 0x5E, 0x9C, 0xDA)
_STORAGE_SIZES = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
    "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QUInt8": 1, "QInt8": 1, "QInt32": 4, "QUInt4x2": 1,
    "QUInt2x4": 1, "Untyped": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8, "Float8_e4m3fn": 1, "Float8_e5m2": 1,
}


def _helper(module: str, name: str) -> Callable[..., Any] | None:
    """A format scanner of a sibling module, or None when that module is not there (yet)."""
    try:
        mod = importlib.import_module(f"modelshield.secure.scan.{module}")
    except ImportError:
        return None
    found = getattr(mod, name, None)
    return found if callable(found) else None


def sniff(data: bytes | memoryview) -> str:
    """The format of a byte stream from its first bytes (and the zip end record): one of ``zip``,
    ``tar``, ``gzip``/``xz``/``bz2``/``lzma``/``zlib``, ``npy``, ``hdf5``, ``safetensors``, ``onnx``,
    ``pickle`` (protocol 2-5), ``torch-legacy`` or ``unknown``."""
    head = bytes(data[:1024])
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(_NPY):
        return "npy"
    sniff_h5 = _helper("keras", "sniff_hdf5")
    if head.startswith(_HDF5) or (sniff_h5 is not None and sniff_h5(head)):
        return "hdf5"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            return kind
    if head.startswith(b"ZF"):
        return "joblib-zfile"
    if looks_like_pickle(head):
        if head[2:4] == b"\x8a\x0a" and int.from_bytes(head[4:14], "little") == TORCH_LEGACY_MAGIC:
            return "torch-legacy"
        return "pickle"
    sniff_st = _helper("safetensors", "sniff_safetensors")
    if (sniff_st is not None and sniff_st(head, len(data))) or (len(head) >= 9 and head[8:9] == b"{"):
        return "safetensors"  # also with an impossible header length: the scanner then says so
    if len(head) >= 2 and head[0] == 0x78 and head[1] in _ZLIB_SECOND and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    sniff_onnx = _helper("onnx", "sniff_onnx")
    if sniff_onnx is not None and sniff_onnx(bytes(data[:4096])):
        return "onnx"
    if _has_zip_end(data):
        return "zip-polyglot"
    return "unknown"


def _has_zip_end(data: bytes | memoryview) -> bool:
    tail = bytes(data[max(0, len(data) - 65557):])
    at = tail.rfind(b"PK\x05\x06")
    return at >= 0 and at + 22 <= len(tail)


def scan_content(data: bytes | memoryview, where: Location, budget: Budget, depth: int = 0,
                 formats: dict[str, str] | None = None) -> list[Finding]:
    """Detect the format of ``data`` and scan it; never raises, never loads anything.

    Args:
        data: the stream (a whole file, an archive member, a decompressed payload).
        where: its location (file and member chain).
        budget: the shared limits, inflation budget and deadline of this top-level scan.
        depth: archive nesting depth of ``data`` (0 for a file on disk).
        formats: filled with ``str(where) -> format`` for the report.

    Returns:
        The findings.
    """
    kind = sniff(data)
    if formats is not None:
        formats[str(where)] = kind
    limits = budget.limits
    if depth > limits.max_nesting:
        return [Finding(severity="high", code="archive.nesting",
                        message=f"archives nested deeper than max_nesting={limits.max_nesting}: not scanned",
                        location=where)]
    if budget.out_of_time():
        return [Finding(severity="medium", code="scan.time-limit",
                        message=f"time limit of {limits.max_seconds} s reached before this stream",
                        location=where)]

    def member(body: bytes | memoryview, inner: Location, d: int) -> list[Finding]:
        return scan_content(body, inner, budget, d + 1, formats)

    nested: list[Finding] = []
    wrapped = bool(where.members) and where.members[-1].startswith("<")  # inside a .gz/.xz/... stream
    if depth > 0 and not (wrapped and depth == 1) and kind in _ARCHIVES:
        nested.append(Finding(severity="medium", code="archive.nested",
                              message=f"a {kind} archive inside an archive (scanned, depth {depth})",
                              location=where))
    if kind in ("zip", "zip-polyglot"):
        found, names, kept = scan_zip(data, where=where, budget=budget, depth=depth, scan_member=member,
                                      raw_members=_torch_storage_members)
        extra = _scan_zip_formats(data, names, kept, where, budget)
        if kind == "zip-polyglot":
            probe, is_pickle = scan_pickle(data, where=where, limits=limits, deadline=budget.deadline,
                                           probe=True)
            found += probe if is_pickle else []
        return nested + found + extra
    if kind == "tar":
        return nested + scan_tar(data, where=where, budget=budget, depth=depth, scan_member=member,
                                 legacy_torch=lambda members, at: _scan_torch_tar(members, at, budget))
    if kind in ("gzip", "xz", "bz2", "lzma", "zlib", "joblib-zfile"):
        payload, found = _decompress(data, kind, budget, where)
        if payload is None:
            return nested + found
        if kind in ("gzip", "xz", "bz2", "lzma", "zlib") and depth == 0:
            nested = []  # joblib's compressed files: a compressed stream is the normal container
        return nested + found + scan_content(payload, where.inner(f"<{kind}>"), budget, depth + 1, formats)
    if kind == "npy":
        return _scan_npy(data, where, budget)
    if kind == "torch-legacy":
        return _scan_torch_legacy(data, where, budget)
    if kind == "pickle":
        return scan_pickle(data, where=where, limits=limits, deadline=budget.deadline)[0]
    if kind in ("safetensors", "onnx", "hdf5"):
        return _scan_helper(kind, data, where, budget)
    if kind == "empty":
        return [Finding(severity="info", code="file.empty", message="an empty stream", location=where)]
    found, is_pickle = scan_pickle(data, where=where, limits=limits, deadline=budget.deadline, probe=True)
    if is_pickle and formats is not None:
        formats[str(where)] = "pickle"
    name = where.members[-1] if where.members else where.path
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    if not is_pickle and not found and suffix in MODEL_SUFFIXES:
        found.append(Finding(
            severity="medium", code="format.unrecognised",
            message=f"the name says a .{suffix} model file, but the content matches no format modelshield "
                    "reads (corrupt, truncated, or disguised); it cannot be verified",
            location=where))
    return found


MODEL_SUFFIXES = frozenset({"pt", "pth", "pt2", "ckpt", "pkl", "pickle", "joblib", "onnx", "safetensors",
                            "keras", "h5", "hdf5", "npy", "npz", "skops"})
"""Names that promise a model format: content matching none of the formats is a (blocking) finding
there, where in any other file (a CSV, a README) it is simply not a model."""


_ARCHIVES = frozenset({"zip", "tar", "gzip", "xz", "bz2", "lzma", "zlib", "zip-polyglot"})


def _decompress(data: bytes | memoryview, kind: str, budget: Budget,
                where: Location) -> tuple[bytes | None, list[Finding]]:
    if kind == "joblib-zfile":  # joblib < 0.10: b"ZF" + a space-padded hex length + a zlib stream
        head = re.match(rb"ZF0x[0-9a-fA-F]{1,20}L? *", bytes(data[:64]))
        return inflate_stream(data[head.end() if head else 21:], "zlib", budget, where)
    return inflate_stream(data, kind, budget, where)


def _scan_helper(kind: str, data: bytes | memoryview, where: Location, budget: Budget) -> list[Finding]:
    name = {"safetensors": "scan_safetensors", "onnx": "scan_onnx", "hdf5": "scan_hdf5"}[kind]
    scanner = _helper(kind if kind != "hdf5" else "keras", name)
    if scanner is None:
        return [Finding(severity="info", code=f"{kind}.not-checked",
                        message=f"{kind} detected; its structural checks are not available here",
                        location=where)]
    try:
        found: list[Finding] = list(scanner(data, where=where, limits=budget.limits))
    except Exception as exc:
        return [Finding(severity="medium", code=f"{kind}.scanner-error",
                        message=f"the {kind} checks failed: {type(exc).__name__}: {exc}", location=where)]
    return found


def _scan_zip_formats(data: bytes | memoryview, names: list[str], kept: dict[str, bytes], where: Location,
                      budget: Budget) -> list[Finding]:
    """Whole-archive checks of formats that are zips: Keras v3 (``config.json`` + ``metadata.json``),
    skops (``schema.json``: every type it names is judged by the pickle allow-list) and TorchScript
    (``code/`` beside ``constants.pkl``: loading runs its code)."""
    found: list[Finding] = []
    sniff_keras = _helper("keras", "sniff_keras_zip")
    if sniff_keras(names) if sniff_keras is not None else "config.json" in names and "metadata.json" in names:
        found += _scan_helper_keras(data, where, budget)
    if "schema.json" in kept:
        found += _scan_skops_schema(kept["schema.json"], where.inner("schema.json"))
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        found.append(Finding(severity="high", code="torchscript.archive",
                             message="a TorchScript archive: torch.load hands it to torch.jit.load, which "
                                     "runs its code; load it only from a source you trust",
                             location=where))
    return found


_SKOPS_FUNCTION_LOADERS = frozenset({"FunctionNode", "MethodNode", "OperatorFuncNode"})


def _scan_skops_schema(raw: bytes, where: Location) -> list[Finding]:
    """Judge every type and function a skops schema names (``__module__`` + ``__class__``, or a
    function node's ``module_path`` + ``function``) against the allow-list; skops' own default
    trust list (numpy ufuncs included) passes."""
    try:
        schema = json.loads(raw)
    except (ValueError, RecursionError):
        return [Finding(severity="medium", code="skops.schema", message="schema.json is not valid JSON",
                        location=where)]
    out: list[Finding] = []
    seen: set[str] = set()
    stack: list[object] = [schema]
    steps = 0
    while stack and steps < 1_000_000:
        steps += 1
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        module, name = node.get("__module__"), node.get("__class__")
        content = node.get("content")
        if node.get("__loader__") in _SKOPS_FUNCTION_LOADERS and isinstance(content, dict):
            module, name = content.get("module_path", module), content.get("function", name)
        if not isinstance(module, str) or not isinstance(name, str):
            continue
        full = f"{module}.{name}"
        if full in seen or is_allowed(full) or _is_numpy_ufunc(module, name):
            continue
        seen.add(full)
        out.append(Finding(severity=severity_of(full), code="skops.type.denied",
                           message=f"the skops schema names {full!r}, which is not on the allow-list "
                                   "(skops.io.load(..., trusted=...) would construct or call it)",
                           location=where, callable=full))
    return out


def _is_numpy_ufunc(module: str, name: str) -> bool:
    """True for ``numpy.<ufunc>`` (skops trusts numpy's ufuncs); looks the name up, calls nothing."""
    if module != "numpy" or not name.isidentifier() or name.startswith("_"):
        return False
    import numpy as np

    return isinstance(getattr(np, name, None), np.ufunc)


def _scan_helper_keras(data: bytes | memoryview, where: Location, budget: Budget) -> list[Finding]:
    scanner = _helper("keras", "scan_keras")
    if scanner is None:
        return [Finding(severity="info", code="keras.not-checked",
                        message="a Keras archive; its config checks are not available here", location=where)]
    try:
        return list(scanner(bytes(data), where=where, limits=budget.limits))
    except Exception as exc:
        return [Finding(severity="medium", code="keras.scanner-error",
                        message=f"the Keras checks failed: {type(exc).__name__}: {exc}", location=where)]


def _torch_storage_members(names: list[str], pickles: dict[str, bytes]) -> set[str]:
    """Members of a torch zip checkpoint that hold raw storage bytes: ``<prefix>/data/<key>`` for each
    storage key named by ``<prefix>/data.pkl`` (they are read as bytes, never unpickled)."""
    raw: set[str] = set()
    for name, body in pickles.items():
        if not name.endswith("data.pkl"):
            continue
        prefix = name[: -len("data.pkl")]
        walk = walk_pickle(body, where=Location(path="<probe>"), limits=_PROBE_LIMITS)
        for pid in walk.persistent_ids:
            if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[2], str):
                raw.add(f"{prefix}data/{pid[2]}")
    return raw & set(names)


def _scan_npy(data: bytes | memoryview, where: Location, budget: Budget) -> list[Finding]:
    """A ``.npy`` file: its header dict; an object dtype means a pickle follows the header."""
    view = memoryview(data)
    if len(view) < 10:
        return [Finding(severity="medium", code="npy.truncated", message="a .npy shorter than its header",
                        location=where)]
    major = view[6]
    if major == 1:
        hlen, start = struct.unpack("<H", view[8:10])[0], 10
    else:
        hlen, start = (struct.unpack("<I", view[8:12])[0], 12) if len(view) >= 12 else (1 << 40, 12)
    if start + hlen > len(view) or hlen > 1 << 20:
        return [Finding(severity="medium", code="npy.truncated", message="the .npy header runs past the data",
                        location=where)]
    header = bytes(view[start:start + hlen]).decode("latin-1")
    if major == 1:  # Python 2 wrote longs as 1L (numpy's _filter_header drops the L)
        header = re.sub(r"\b(\d+)L\b", r"\1", header)
    try:
        meta = ast.literal_eval(header)  # numpy's own reader: safe_eval of a literal dict
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return [Finding(severity="medium", code="npy.header", message="the .npy header is not a literal dict",
                        location=where, offset=start)]
    if not isinstance(meta, dict) or not {"descr", "fortran_order", "shape"} <= set(meta):
        return [Finding(severity="medium", code="npy.header", message="the .npy header lacks descr/shape",
                        location=where, offset=start)]
    descr = meta["descr"]
    body = start + hlen
    if _descr_has_object(descr):
        found, _ = scan_pickle(view[body:], where=where.inner("<object array pickle>"), limits=budget.limits,
                               deadline=budget.deadline)
        return [Finding(severity="info", code="npy.object-array",
                        message="an object array: numpy.load(allow_pickle=True) unpickles what follows",
                        location=where, offset=body), *found]
    return []


def _descr_has_object(descr: object) -> bool:
    if isinstance(descr, str):
        return "O" in descr
    if isinstance(descr, (list, tuple)):
        return any(_descr_has_object(x) for x in descr)
    return False


_PROBE_LIMITS = ScanLimits(max_seconds=10.0)  # re-walking data.pkl to list its storages


def _scan_torch_legacy(data: bytes | memoryview, where: Location, budget: Budget) -> list[Finding]:
    """torch.save's legacy stream: magic, protocol and sys-info pickles, the object pickle, the list of
    storage keys, then each storage as an 8-byte element count and its raw bytes."""
    limits = budget.limits
    view = memoryview(data)
    findings: list[Finding] = []
    pos = 0
    walks = []
    for _ in range(5):
        walk = walk_pickle(view, where=where, limits=limits, start=pos, deadline=budget.deadline)
        findings += walk.findings
        walks.append(walk)
        if not walk.stopped:
            return findings
        pos = walk.end
    sizes: dict[str, int] = {}
    for pid in walks[3].persistent_ids:
        if isinstance(pid, tuple) and len(pid) >= 3 and isinstance(pid[1], Global) \
                and isinstance(pid[2], str):
            sizes[pid[2]] = _STORAGE_SIZES.get(pid[1].name.removesuffix("Storage"), 1)
    keys = walks[4].value
    nkeys = keys.count if isinstance(keys, PList) else None
    if nkeys is None:
        findings.append(Finding(severity="medium", code="torch.legacy.layout",
                                message="the storage-key pickle is not a list", location=where,
                                offset=walks[4].start))
        return findings
    # the list's items are not kept by the model: the storages are read in the persistent-id order
    for key in sorted(sizes)[:nkeys] if len(sizes) >= nkeys else sorted(sizes):
        if pos + 8 > len(view):
            findings.append(Finding(severity="medium", code="torch.legacy.truncated",
                                    message=f"storage {key!r} runs past the end", location=where, offset=pos))
            return findings
        numel = int.from_bytes(view[pos:pos + 8], "little")
        pos += 8 + numel * sizes[key]
    if pos > len(view):
        findings.append(Finding(severity="medium", code="torch.legacy.truncated",
                                message="the storages run past the end of the file", location=where,
                                offset=pos))
    elif pos < len(view):
        findings.append(Finding(severity="medium", code="torch.legacy.trailing-data",
                                message=f"{len(view) - pos} bytes follow the last storage", location=where,
                                offset=pos))
        found, _ = scan_pickle(view[pos:], where=where.inner("<after storages>"), limits=limits,
                               deadline=budget.deadline, probe=True)
        findings += found
    return findings


def _scan_torch_tar(members: dict[str, bytes], where: Location, budget: Budget) -> list[Finding]:
    """The legacy torch tar (``sys_info``, ``pickle``, ``storages``, ``tensors``): pickles are walked;
    raw bytes between the pickles of ``storages`` and ``tensors`` are skipped by torch's layout."""
    findings: list[Finding] = []
    for name in ("sys_info", "pickle"):
        if name in members:
            findings += scan_pickle(members[name], where=where.inner(name), limits=budget.limits,
                                    deadline=budget.deadline)[0]
    for name in ("storages", "tensors"):
        if name in members:
            findings += _walk_pickle_records(members[name], where.inner(name), name, budget.limits)
    return findings


def _walk_pickle_records(body: bytes, where: Location, kind: str, limits: ScanLimits) -> list[Finding]:
    findings: list[Finding] = []
    head = walk_pickle(body, where=where, limits=limits)
    findings += head.findings
    if not head.stopped or not isinstance(head.value, int):
        return findings
    pos = head.end
    for _ in range(min(head.value, 1 << 20)):
        rec = walk_pickle(body, where=where, limits=limits, start=pos)
        findings += rec.findings
        if not rec.stopped:
            return findings
        pos = rec.end
        try:
            if kind == "storages":
                stype = rec.value[2] if isinstance(rec.value, tuple) and len(rec.value) == 3 else None
                name = stype.name.removesuffix("Storage") if isinstance(stype, Global) else ""
                size = _STORAGE_SIZES.get(name, 1)
                numel = int.from_bytes(body[pos:pos + 8], "little")
                pos += 8 + numel * size
            else:
                (ndim,) = struct.unpack("<i", body[pos:pos + 4])
                pos += 8 + 16 * max(ndim, 0) + 8
        except struct.error:
            break
        if pos > len(body):
            findings.append(Finding(severity="medium", code="torch.legacy.truncated",
                                    message=f"the {kind} records run past the member's end", location=where))
            return findings
    if kind == "storages" and pos < len(body):
        views = walk_pickle(body, where=where, limits=limits, start=pos)
        findings += views.findings
        pos = views.end
    if pos < len(body):
        findings.append(Finding(severity="medium", code="torch.legacy.trailing-data",
                                message=f"{len(body) - pos} bytes follow the {kind} records", location=where,
                                offset=pos))
        findings += scan_pickle(body[pos:], where=where, limits=limits, probe=True)[0]
    return findings

