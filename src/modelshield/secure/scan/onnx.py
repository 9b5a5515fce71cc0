"""Static checks of ONNX models with a hand-written, bounded protobuf reader.

ONNX models are protobuf ``ModelProto`` messages (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto).
They hold no Python code, but three things in them reach outside the file:

- **Custom operator domains.** A node whose domain is not an ONNX or onnxruntime domain runs a
  kernel from a custom-op library the user registers (native code the file asks for); a
  model-local ``FunctionProto`` in a *standard* domain silently redefines (shadows) a standard
  operator for runtimes that prefer local functions.
- **External data.** A tensor may keep its bytes in a file named by ``external_data["location"]``.
  Absolute locations and ``..`` read files outside the model's folder: CVE-2022-25882 (direct
  ``../``), CVE-2024-27318 (nested ``sub/../../``, a bypass of the first fix), CVE-2025-51480 (the
  same path when saving overwrites files), CVE-2026-27489 (a symlink inside the folder pointing
  out). Keys other than those ``onnx.external_data_helper.ExternalDataInfo`` knows were set with
  ``setattr`` before ONNX 1.21 (CVE-2026-34445).
- **Size and depth.** Subgraphs nest inside attributes without limit; a reader that recurses
  without a bound is a denial of service.

The reader here walks only the fields it needs (field numbers from ``onnx.proto``), checks every
length against the bytes left, never allocates by a declared length, and bounds nesting, node
count and time. Malformed protobuf, which the framework would reject or misread, is a finding.
ONNX itself is not imported: the scan needs no optional dependency and runs no C++ parser on
untrusted bytes.
"""

from __future__ import annotations

import ntpath
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from modelshield.secure.scan._collect import Collector
from modelshield.secure.scan.findings import Finding, Location, ScanLimits

__all__ = ["STANDARD_DOMAINS", "scan_onnx", "sniff_onnx"]

STANDARD_DOMAINS: frozenset[str] = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training", "com.microsoft"})
"""Operator domains served by ONNX itself (``onnx.defs``) and by onnxruntime's contrib operators."""

EXTERNAL_DATA_KEYS: frozenset[str] = frozenset({"location", "offset", "length", "checksum", "basepath"})
"""The keys ``onnx.external_data_helper.ExternalDataInfo`` reads."""

MAX_GRAPH_DEPTH = 32     # subgraphs inside attributes inside subgraphs ...
MAX_NODES = 5_000_000     # nodes in all graphs and functions together
_MAX_MODEL_BYTES = (1 << 31) - 1  # protobuf's own limit on one message

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class _Malformed(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Stop(Exception):
    """A bound was crossed; the finding is already recorded."""


def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos < end and buf[pos] < 0x80:  # the common one-byte case
        return buf[pos], pos + 1
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _Malformed(start, "varint runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed(start, "varint longer than 10 bytes")


# field number, wire type, varint value or span start, span end, key offset
Field = tuple[int, int, int, int, int]


def _fields(buf: bytes | memoryview, start: int, end: int) -> Iterator[Field]:
    """(field, wire type, varint value or span start, span end, key offset) of each field in [start, end)."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _Malformed(at, "field number 0")
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos, end)
            yield num, wire, value, pos, at
        elif wire == _WIRE_LEN:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise _Malformed(at, f"field {num} declares {size} bytes, {end - pos} are left")
            yield num, wire, pos, pos + size, at
            pos += size
        elif wire in (_WIRE_I64, _WIRE_I32):
            width = 8 if wire == _WIRE_I64 else 4
            if pos + width > end:
                raise _Malformed(at, f"fixed-width field {num} runs past the end of its message")
            pos += width
        else:
            raise _Malformed(at, f"field {num} has wire type {wire} (groups and reserved types are invalid)")


def sniff_onnx(head: bytes) -> bool:
    """True when ``head`` starts like a serialized ``ModelProto`` (ONNX files have no magic number).

    Needs ``ir_version`` (field 1, a varint in 1..64) first, then only fields of ModelProto with
    their wire types, until the head ends.
    """
    wires = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
    seen = 0
    pos, end = 0, len(head)
    try:
        while pos < end:
            key, after = _varint(head, pos, end)
            num, wire = key >> 3, key & 7
            if wires.get(num) != wire or (seen == 0 and num != 1):
                return False
            if wire == 0:
                value, pos = _varint(head, after, end)
                if num == 1 and not 1 <= value <= 64:
                    return False
            else:
                size, pos = _varint(head, after, end)
                pos += size
            seen += 1
    except _Malformed:
        pass  # the head ends inside a field
    return seen >= 2


@dataclass(slots=True)
class _Op:
    domain: str
    op_type: str
    offset: int
    function: tuple[str, str] | None  # the local function whose body holds the node, if any


@dataclass(slots=True)
class _Walk:
    buf: bytes | memoryview
    out: Collector
    deadline: float
    folder: str | None
    nodes: int = 0
    ops: list[_Op] = field(default_factory=list)
    model_opsets: dict[str, int] = field(default_factory=dict)
    function_opsets: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    functions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    deep_reported: bool = False

    def text(self, s: int, e: int, what: str, at: int) -> str:
        raw = bytes(self.buf[s:e])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.out.add("medium", "onnx.string.invalid", f"{what} is not valid UTF-8: {raw[:60]!r}", at)
            return raw.decode("utf-8", "replace")

    def expect(self, wire: int, want: int, num: int, what: str, at: int) -> None:
        if wire != want:
            raise _Malformed(at, f"{what} field {num} has wire type {wire}, expected {want}")

    # ModelProto
    def model(self) -> tuple[bool, int, list[str], set[str]]:
        has_graph, ir_version = False, 0
        outputs: list[str] = []
        produced: set[str] = set()
        for num, wire, a, b, at in _fields(self.buf, 0, len(self.buf)):
            if num == 1:
                self.expect(wire, _WIRE_VARINT, num, "ModelProto", at)
                ir_version = a
            elif num == 7:
                self.expect(wire, _WIRE_LEN, num, "ModelProto", at)
                has_graph = True
                outputs, produced = self.graph(a, b, 1, None, main=True)
            elif num == 8:
                self.expect(wire, _WIRE_LEN, num, "ModelProto", at)
                domain, version = self.opset(a, b, at)
                self.model_opsets[domain] = version
            elif num == 20:
                self.expect(wire, _WIRE_LEN, num, "ModelProto", at)
                for n2, w2, a2, b2, at2 in _fields(self.buf, a, b):
                    if n2 in (1, 2):
                        self.expect(w2, _WIRE_LEN, n2, "TrainingInfoProto", at2)
                        self.graph(a2, b2, 1, None)
            elif num == 25:
                self.expect(wire, _WIRE_LEN, num, "ModelProto", at)
                self.function(a, b, at)
        return has_graph, ir_version, outputs, produced

    def opset(self, s: int, e: int, at: int) -> tuple[str, int]:
        domain, version = "", 0
        for num, wire, a, b, at2 in _fields(self.buf, s, e):
            if num == 1:
                self.expect(wire, _WIRE_LEN, num, "OperatorSetIdProto", at2)
                domain = self.text(a, b, "an opset domain", at2)
            elif num == 2:
                self.expect(wire, _WIRE_VARINT, num, "OperatorSetIdProto", at2)
                version = a
        del at
        return domain, version

    # GraphProto
    def graph(self, s: int, e: int, depth: int, function: tuple[str, str] | None, *,
              main: bool = False) -> tuple[list[str], set[str]]:
        if depth > MAX_GRAPH_DEPTH:
            if not self.deep_reported:
                self.deep_reported = True
                self.out.add("medium", "onnx.too-deep",
                             f"subgraphs nest deeper than {MAX_GRAPH_DEPTH} levels; the rest is not checked",
                             s)
            return [], set()
        outputs: list[str] = []
        produced: set[str] = set()
        for num, wire, a, b, at in _fields(self.buf, s, e):
            if num == 1:
                self.expect(wire, _WIRE_LEN, num, "GraphProto", at)
                produced.update(self.node(a, b, at, depth, function))
            elif num == 5:
                self.expect(wire, _WIRE_LEN, num, "GraphProto", at)
                produced.add(self.tensor(a, b, at))
            elif num == 15:
                self.expect(wire, _WIRE_LEN, num, "GraphProto", at)
                produced.update(self.sparse_tensor(a, b))
            elif num in (11, 12) and main:
                self.expect(wire, _WIRE_LEN, num, "GraphProto", at)
                name = self.value_name(a, b)
                if num == 11:
                    produced.add(name)
                else:
                    outputs.append(name)
        return outputs, produced

    def value_name(self, s: int, e: int) -> str:
        for num, wire, a, b, at in _fields(self.buf, s, e):
            if num == 1:
                self.expect(wire, _WIRE_LEN, num, "ValueInfoProto", at)
                return self.text(a, b, "a value name", at)
        return ""

    # NodeProto
    def node(self, s: int, e: int, at: int, depth: int, function: tuple[str, str] | None) -> list[str]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.out.add("medium", "onnx.too-many-nodes",
                         f"more than {MAX_NODES} nodes; the rest is not checked", at)
            raise _Stop
        if self.nodes % 4096 == 0 and time.monotonic() > self.deadline:
            self.out.add("medium", "onnx.timeout", "the scan ran out of time; the rest is not checked", at)
            raise _Stop
        domain, op_type = "", ""
        outputs: list[str] = []
        for num, wire, a, b, at2 in _fields(self.buf, s, e):
            if num == 2:
                self.expect(wire, _WIRE_LEN, num, "NodeProto", at2)
                outputs.append(self.text(a, b, "a node output", at2))
            elif num == 4:
                self.expect(wire, _WIRE_LEN, num, "NodeProto", at2)
                op_type = self.text(a, b, "an op_type", at2)
            elif num == 7:
                self.expect(wire, _WIRE_LEN, num, "NodeProto", at2)
                domain = self.text(a, b, "a node domain", at2)
            elif num == 5:
                self.expect(wire, _WIRE_LEN, num, "NodeProto", at2)
                self.attribute(a, b, depth, function)
        self.ops.append(_Op(domain=domain, op_type=op_type, offset=at, function=function))
        return outputs

    # AttributeProto
    def attribute(self, s: int, e: int, depth: int, function: tuple[str, str] | None) -> None:
        for num, wire, a, b, at in _fields(self.buf, s, e):
            if num in (5, 10):
                self.expect(wire, _WIRE_LEN, num, "AttributeProto", at)
                self.tensor(a, b, at)
            elif num in (6, 11):
                self.expect(wire, _WIRE_LEN, num, "AttributeProto", at)
                self.graph(a, b, depth + 1, function)
            elif num in (22, 23):
                self.expect(wire, _WIRE_LEN, num, "AttributeProto", at)
                self.sparse_tensor(a, b)

    def sparse_tensor(self, s: int, e: int) -> list[str]:
        names = []
        for num, wire, a, b, at in _fields(self.buf, s, e):
            if num in (1, 2):
                self.expect(wire, _WIRE_LEN, num, "SparseTensorProto", at)
                names.append(self.tensor(a, b, at))
        return names

    # TensorProto
    def tensor(self, s: int, e: int, at: int) -> str:
        name, external, location = "", False, None
        entries: list[tuple[str, str, int]] = []
        for num, wire, a, b, at2 in _fields(self.buf, s, e):
            if num == 8:
                self.expect(wire, _WIRE_LEN, num, "TensorProto", at2)
                name = self.text(a, b, "a tensor name", at2)
            elif num == 14:
                self.expect(wire, _WIRE_VARINT, num, "TensorProto", at2)
                external = a == 1
            elif num == 13:
                self.expect(wire, _WIRE_LEN, num, "TensorProto", at2)
                key, value = self.entry(a, b)
                entries.append((key, value, at2))
        for key, value, at2 in entries:
            if key == "location":
                location = value
                self.check_location(name, value, at2)
            elif key not in EXTERNAL_DATA_KEYS:
                self.out.add("medium", "onnx.external-data.unknown-key",
                             f"tensor {name!r}: external_data key {key[:60]!r} is not one ONNX defines "
                             "(set with setattr by ONNX < 1.21, CVE-2026-34445)", at2)
            elif key in ("offset", "length") and not value.isdigit():
                self.out.add("medium", "onnx.external-data.invalid",
                             f"tensor {name!r}: external_data {key} {value[:40]!r} is not a "
                             "non-negative integer", at2)
        if (external or entries) and not location:
            self.out.add("medium", "onnx.external-data.invalid",
                         f"tensor {name!r} keeps its data externally but names no location", at)
        return name

    def entry(self, s: int, e: int) -> tuple[str, str]:
        key = value = ""
        for num, wire, a, b, at in _fields(self.buf, s, e):
            if num == 1:
                self.expect(wire, _WIRE_LEN, num, "StringStringEntryProto", at)
                key = self.text(a, b, "an external_data key", at)
            elif num == 2:
                self.expect(wire, _WIRE_LEN, num, "StringStringEntryProto", at)
                value = self.text(a, b, "an external_data value", at)
        return key, value

    def check_location(self, name: str, loc: str, at: int) -> None:
        shown = loc[:120]
        if any(ord(c) < 32 for c in loc):
            self.out.add("high", "onnx.external-data.invalid",
                         f"tensor {name!r}: external data location {shown!r} holds control characters", at)
            return
        if (loc.startswith(("/", "\\")) or ntpath.splitdrive(loc)[0] or "://" in loc
                or loc.startswith("~")):
            self.out.add("high", "onnx.external-data.absolute",
                         f"tensor {name!r}: external data location {shown!r} is absolute; loading reads "
                         "that file wherever it is (CVE-2022-25882)", at)
            return
        parts = re.split(r"[\\/]", loc)
        if ".." in parts:
            nested = parts.index("..") > 0
            cve = "CVE-2024-27318, a nested traversal" if nested else "CVE-2022-25882"
            self.out.add("high", "onnx.external-data.traversal",
                         f"tensor {name!r}: external data location {shown!r} climbs out of the model's "
                         f"folder with '..' ({cve}; CVE-2025-51480 when saving)", at)
            return
        if self.folder is not None:
            base = os.path.realpath(self.folder)
            target = os.path.realpath(os.path.join(base, *[p for p in parts if p]))
            if os.path.commonpath([base, target]) != base:
                self.out.add("high", "onnx.external-data.symlink",
                             f"tensor {name!r}: external data location {shown!r} resolves through a link "
                             f"to {target!r}, outside the model's folder (CVE-2026-27489)", at)

    # FunctionProto
    def function(self, s: int, e: int, at: int) -> None:
        name = domain = overload = ""
        bodies: list[tuple[int, int, int]] = []
        attrs: list[tuple[int, int]] = []
        opsets: set[str] = set()
        for num, wire, a, b, at2 in _fields(self.buf, s, e):
            if num == 1:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                name = self.text(a, b, "a function name", at2)
            elif num == 10:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                domain = self.text(a, b, "a function domain", at2)
            elif num == 13:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                overload = self.text(a, b, "a function overload", at2)
            elif num == 7:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                bodies.append((a, b, at2))
            elif num == 9:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                opsets.add(self.opset(a, b, at2)[0])
            elif num == 11:
                self.expect(wire, _WIRE_LEN, num, "FunctionProto", at2)
                attrs.append((a, b))
        key = (domain, name, overload)
        if key in self.functions:
            self.out.add("medium", "onnx.function.duplicate",
                         f"model-local function {domain or 'ai.onnx'}::{name} is defined twice; "
                         "which one runs depends on the runtime", at)
        self.functions[key] = at
        if domain in STANDARD_DOMAINS:
            self.out.add("high", "onnx.function.shadows-standard",
                         f"model-local function {name!r} is declared in the standard domain "
                         f"{domain or 'ai.onnx'!r}, shadowing (or posing as) a built-in operator", at)
        self.function_opsets[(domain, name)] = opsets
        for a, b, at2 in bodies:
            self.node(a, b, at2, 1, (domain, name))
        for a, b in attrs:
            self.attribute(a, b, 1, (domain, name))


def _canon(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def scan_onnx(data: bytes | bytearray | memoryview, *, where: Location, limits: ScanLimits) -> list[Finding]:
    """Check an ONNX model's bytes: custom domains, external-data paths, local functions, bounds.

    When ``where`` names a file on disk (no archive members), external-data locations are also
    resolved against its folder to catch links that leave it; nothing is opened or read there.
    Returns findings; never raises on any input.
    """
    out = Collector(where=where)
    buf = data if isinstance(data, bytes) else memoryview(data).cast("B")
    if len(buf) > _MAX_MODEL_BYTES:
        out.add("medium", "onnx.too-large",
                f"{len(buf)} bytes exceed protobuf's 2 GiB message limit; no ONNX runtime reads this file")
        return out.items
    folder = None
    if not where.members and where.path:
        parent = os.path.dirname(os.path.abspath(where.path))
        folder = parent if os.path.isdir(parent) else None
    walk = _Walk(buf=buf, out=out, deadline=time.monotonic() + limits.max_seconds, folder=folder)
    try:
        has_graph, ir_version, outputs, produced = walk.model()
    except _Malformed as exc:
        out.add("medium", "onnx.malformed",
                f"not a well-formed ONNX protobuf at byte {exc.offset}: {exc.reason}; "
                "the model cannot be verified", exc.offset)
        return out.items
    except _Stop:
        return out.items
    except RecursionError:
        out.add("medium", "onnx.too-deep", "messages nest too deeply to read")
        return out.items
    if not has_graph:
        out.add("medium", "onnx.no-graph", "the model has no graph (truncated, or not an ONNX model)")
    if has_graph and not walk.model_opsets:
        out.add("medium", "onnx.no-opset",
                "the model imports no operator set (truncated, or not an ONNX model)")
    if ir_version == 0:
        out.add("low", "onnx.no-ir-version", "the model declares no IR version")
    for name in outputs:
        if name and name not in produced:
            out.add("medium", "onnx.graph.dangling-output",
                    f"graph output {name[:80]!r} is produced by no node, input or initializer "
                    "(a truncated or edited graph)")
    _check_domains(walk, out)
    return out.items


def _check_domains(walk: _Walk, out: Collector) -> None:
    local = {(d, n) for d, n, _ in walk.functions}
    imported = {_canon(d) for d in walk.model_opsets}
    custom: dict[str, list[_Op]] = {}
    used_domains: set[str] = set()
    for op in walk.ops:
        domain = _canon(op.domain)
        used_domains.add(domain)
        visible = imported | ({_canon(d) for d in walk.function_opsets.get(op.function, set())}
                              if op.function else set())
        if domain not in visible:
            out.add("medium", "onnx.domain.not-imported",
                    f"node {op.op_type!r} uses domain {op.domain!r}, which the model does not import",
                    op.offset)
        if domain in STANDARD_DOMAINS or (op.domain, op.op_type) in local:
            continue
        custom.setdefault(op.domain, []).append(op)
    for domain, ops in custom.items():
        names = sorted({op.op_type for op in ops})
        out.add("medium", "onnx.domain.custom",
                f"{len(ops)} node(s) use the custom operator domain {domain!r} "
                f"(ops: {', '.join(names[:8])}); "
                "running them needs a custom-op library, i.e. native code from outside the file",
                ops[0].offset)
    local_domains = {_canon(d) for d, _ in local}
    for domain in sorted(imported - STANDARD_DOMAINS - used_domains - local_domains):
        out.add("low", "onnx.domain.unused",
                f"the model imports the custom domain {domain!r} but no node uses it")
