"""A static pickle opcode walker: a faithful model of the unpickler's stack, memo and marks that
resolves every imported callable and judges it against :mod:`.allowlist`, without unpickling.

The walker reads the opcode table of protocols 0-5 itself (``pickletools.genops`` stops at the first
error and can be told apart from CPython's ``_pickle``), follows CPython's C unpickler where the two
implementations differ (the stack fence at a MARK, POP of a MARK, ``STACK_GLOBAL requires str``,
dotted names from protocol 4, ``_compat_pickle`` renames below protocol 3), and after an error
keeps walking the remaining opcodes so that a call hidden behind a malformed opcode is still seen.

Reference: PEP 307 / PEP 3154 / PEP 574 (pickle protocols 2, 4, 5); CPython ``Modules/_pickle.c``.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import copyreg
import re
import struct
import time
import warnings
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

from modelshield.secure.scan.allowlist import ALLOCATORS, ALLOWED, MAX_ALLOCATION, is_allowed, severity_of
from modelshield.secure.scan.findings import Finding, Location, ScanLimits, Severity

__all__ = ["PickleWalk", "scan_pickle", "walk_pickle"]

_MAX_KEPT = 1024          # longest str/bytes value kept (module/name strings are short)
_MAX_DICT_ITEMS = 256     # dict items kept (joblib array-wrapper state, torch persistent ids)
_MAX_FINDINGS = 200       # per pickle; one summary finding after that
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


# -- values of the model ---------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class Global:
    """An imported object ``module.name`` (a class, function or module attribute)."""

    module: str
    name: str
    offset: int

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(slots=True, eq=False)
class Call:
    """The result of calling ``func`` (REDUCE, NEWOBJ, INST, OBJ) on ``args``."""

    func: object
    args: object
    offset: int
    state: object = None


@dataclass(slots=True, eq=False)
class Persistent:
    """A persistent id (PERSID/BINPERSID): resolved by the loader (torch: a storage)."""

    pid: object


@dataclass(slots=True, eq=False)
class PList:
    count: int = 0


@dataclass(slots=True, eq=False)
class PDict:
    items: list[tuple[object, object]] = field(default_factory=list)
    count: int = 0


@dataclass(slots=True, eq=False)
class PSet:
    count: int = 0
    frozen: bool = False


@dataclass(slots=True, eq=False)
class Blob:
    """A str/bytes value too long to keep (its length only)."""

    size: int


class _Opaque:
    """A value the model cannot know (a buffer, or after an error)."""

    __slots__ = ()


OPAQUE = _Opaque()


class _Mark:
    __slots__ = ()


@dataclass(slots=True)
class PickleWalk:
    """The outcome of walking one pickle: its findings, where it ended, and what it built."""

    findings: list[Finding]
    start: int
    end: int                 # offset just past STOP (or where the walk gave up)
    stopped: bool            # reached STOP
    is_pickle: bool          # False: a probe found no pickle here
    value: object = None     # the top value at STOP (model values)
    globals_seen: list[str] = field(default_factory=list)
    persistent_ids: list[object] = field(default_factory=list)
    proto: int = 0


class _PickleError(Exception):
    """The real unpickler would raise here."""


class _Truncated(_PickleError):
    pass


class _LimitHit(Exception):
    pass


# -- opcode table ----------------------------------------------------------------------------------
# argument kinds: see pickletools.ArgumentDescriptor
_OPS: dict[int, tuple[str, str]] = {
    ord("("): ("MARK", ""), ord("."): ("STOP", ""), ord("0"): ("POP", ""), ord("1"): ("POP_MARK", ""),
    ord("2"): ("DUP", ""), ord("F"): ("FLOAT", "floatnl"), ord("I"): ("INT", "decnl"),
    ord("J"): ("BININT", "i4"), ord("K"): ("BININT1", "u1"), ord("L"): ("LONG", "decnl_long"),
    ord("M"): ("BININT2", "u2"), ord("N"): ("NONE", ""), ord("P"): ("PERSID", "strnl_noesc"),
    ord("Q"): ("BINPERSID", ""), ord("R"): ("REDUCE", ""), ord("S"): ("STRING", "strnl"),
    ord("T"): ("BINSTRING", "str4"), ord("U"): ("SHORT_BINSTRING", "str1"),
    ord("V"): ("UNICODE", "unicodenl"), ord("X"): ("BINUNICODE", "ustr4"), ord("a"): ("APPEND", ""),
    ord("b"): ("BUILD", ""), ord("c"): ("GLOBAL", "pair"), ord("d"): ("DICT", ""),
    ord("}"): ("EMPTY_DICT", ""), ord("e"): ("APPENDS", ""), ord("g"): ("GET", "decnl"),
    ord("h"): ("BINGET", "u1"), ord("i"): ("INST", "pair"), ord("j"): ("LONG_BINGET", "u4"),
    ord("l"): ("LIST", ""), ord("]"): ("EMPTY_LIST", ""), ord("o"): ("OBJ", ""),
    ord("p"): ("PUT", "decnl"), ord("q"): ("BINPUT", "u1"), ord("r"): ("LONG_BINPUT", "u4"),
    ord("s"): ("SETITEM", ""), ord("t"): ("TUPLE", ""), ord(")"): ("EMPTY_TUPLE", ""),
    ord("u"): ("SETITEMS", ""), ord("G"): ("BINFLOAT", "f8"),
    0x80: ("PROTO", "u1"), 0x81: ("NEWOBJ", ""), 0x82: ("EXT1", "u1"), 0x83: ("EXT2", "u2"),
    0x84: ("EXT4", "i4"), 0x85: ("TUPLE1", ""), 0x86: ("TUPLE2", ""), 0x87: ("TUPLE3", ""),
    0x88: ("NEWTRUE", ""), 0x89: ("NEWFALSE", ""), 0x8A: ("LONG1", "long1"), 0x8B: ("LONG4", "long4"),
    ord("B"): ("BINBYTES", "bytes4"), ord("C"): ("SHORT_BINBYTES", "bytes1"),
    0x8C: ("SHORT_BINUNICODE", "ustr1"), 0x8D: ("BINUNICODE8", "ustr8"), 0x8E: ("BINBYTES8", "bytes8"),
    0x8F: ("EMPTY_SET", ""), 0x90: ("ADDITEMS", ""), 0x91: ("FROZENSET", ""), 0x92: ("NEWOBJ_EX", ""),
    0x93: ("STACK_GLOBAL", ""), 0x94: ("MEMOIZE", ""), 0x95: ("FRAME", "u8"),
    0x96: ("BYTEARRAY8", "bytes8"), 0x97: ("NEXT_BUFFER", ""), 0x98: ("READONLY_BUFFER", ""),
}
OPCODE_BYTES = frozenset(_OPS)
# copyreg's extension registry of this process (read, never called): code -> (module, name)
_EXTENSIONS: dict[int, tuple[str, str]] = getattr(copyreg, "_inverted_registry", {})
_VALUE_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                        "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"})


def _keep(value: str | bytes) -> object:
    return value if len(value) <= _MAX_KEPT else Blob(len(value))


def _type_name(value: object) -> str:
    if isinstance(value, Global):
        return f"the imported {value.full}"
    if isinstance(value, Call):
        return "the result of a call"
    return type(value).__name__


class _MemoOverlay(MutableMapping[int, object]):
    """The memo of a side walk: reads fall through to the main walk's memo, writes stay here (a copy per
    joblib array would cost O(arrays x memo))."""

    def __init__(self, base: MutableMapping[int, object]) -> None:
        self.base, self.own = base, dict[int, object]()
        self.added = 0  # keys in own that base lacks

    def __getitem__(self, key: int) -> object:
        return self.own[key] if key in self.own else self.base[key]

    def __setitem__(self, key: int, value: object) -> None:
        if key not in self.own and key not in self.base:
            self.added += 1
        self.own[key] = value

    def __delitem__(self, key: int) -> None:  # pragma: no cover - the unpickler never deletes
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.own or key in self.base

    def __iter__(self) -> Iterator[int]:  # pragma: no cover - not used by the walk
        yield from self.base
        yield from (k for k in self.own if k not in self.base)

    def __len__(self) -> int:
        return len(self.base) + self.added


class _Walker:
    """One walk over one pickle, starting at ``start`` in ``data``."""

    def __init__(self, data: bytes | memoryview, start: int, *, where: Location, limits: ScanLimits,
                 deadline: float, probe: bool, joblib: bool) -> None:
        self.data = memoryview(data)
        self.n = len(self.data)
        self.pos = start
        self.start = start
        self.where, self.limits, self.deadline = where, limits, deadline
        self.probe, self.joblib = probe, joblib
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: MutableMapping[int, object] = {}
        self.proto = 0
        self.findings: list[Finding] = []
        self.globals_seen: list[str] = []
        self.pids: list[object] = []
        self.refused = 0                 # refused imports so far (for "error after a dangerous call")
        self.ops = 0
        self.errored = False
        self.op_offset = start
        self.nested_walks: list[PickleWalk] = []
        self.shadow = False              # a walk of pickle.load's reading of joblib array bytes

    # -- reporting ---------------------------------------------------------------------------------
    def add(self, severity: Severity, code: str, message: str, *, offset: int | None = None,
            callable_: str | None = None) -> None:
        if len(self.findings) == _MAX_FINDINGS:
            self.findings.append(Finding(severity="high", code="pickle.too-many-findings",
                                         message=f"more than {_MAX_FINDINGS} findings; the rest are "
                                                 "not listed", location=self.where, offset=self.op_offset))
        if len(self.findings) > _MAX_FINDINGS:
            return
        self.findings.append(Finding(severity=severity, code=code, message=message, location=self.where,
                                     offset=self.op_offset if offset is None else offset,
                                     callable=callable_))

    # -- reading arguments -------------------------------------------------------------------------
    def take(self, k: int) -> memoryview:
        if k < 0 or self.pos + k > self.n:
            raise _Truncated(f"needs {k} bytes at offset {self.pos}; the data ends at {self.n}")
        chunk = self.data[self.pos:self.pos + k]
        self.pos += k
        return chunk

    def line(self) -> bytes:
        end = bytes(self.data[self.pos:min(self.n, self.pos + (1 << 20))]).find(b"\n")
        if end < 0:
            raise _Truncated(f"no newline after the text argument at offset {self.pos}")
        out = bytes(self.data[self.pos:self.pos + end])
        self.pos += end + 1
        return out

    def uint(self, k: int) -> int:
        return int.from_bytes(self.take(k), "little")

    def read_arg(self, kind: str) -> object:
        if kind == "u1":
            return self.uint(1)
        if kind == "u2":
            return self.uint(2)
        if kind == "u4":
            return self.uint(4)
        if kind == "u8":
            return self.uint(8)
        if kind == "i4":
            return int.from_bytes(self.take(4), "little", signed=True)
        if kind == "f8":
            return float(struct.unpack(">d", self.take(8))[0])
        if kind in ("long1", "long4"):
            size = self.uint(1) if kind == "long1" else int.from_bytes(self.take(4), "little", signed=True)
            if size < 0:
                raise _PickleError("LONG4 byte count < 0")
            raw = self.take(size)
            return int.from_bytes(raw[:64], "little", signed=True) if size <= 64 else Blob(size)
        if kind in ("bytes1", "bytes4", "bytes8", "str1", "str4"):
            width = {"bytes1": 1, "str1": 1, "bytes4": 4, "str4": 4, "bytes8": 8}[kind]
            size = int.from_bytes(self.take(width), "little", signed=kind == "str4")
            if size < 0:
                raise _PickleError("BINSTRING pickle has negative byte count")
            raw = self.take(size)
            if kind.startswith("str"):  # Python 2 str: decoded with the unpickler's encoding
                return _keep(_decode_str(bytes(raw))) if size <= _MAX_KEPT else Blob(size)
            return _keep(bytes(raw)) if size <= _MAX_KEPT else Blob(size)
        if kind in ("ustr1", "ustr4", "ustr8"):
            size = self.uint({"ustr1": 1, "ustr4": 4, "ustr8": 8}[kind])
            raw = self.take(size)
            if size > _MAX_KEPT:
                return Blob(size)
            try:
                return bytes(raw).decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise _PickleError(f"invalid UTF-8 in a unicode string: {exc.reason}") from None
        if kind == "decnl":
            text = self.line()
            try:
                return int(text, 0) if text[:1] in b"+-0123456789" and self.op_name == "INT" \
                    else int(text, 10)
            except ValueError:
                try:
                    return int(text, 10)
                except ValueError:
                    raise _PickleError(f"invalid integer line {text[:40]!r}") from None
        if kind == "decnl_long":
            text = self.line()
            try:
                return int(text[:-1] if text.endswith(b"L") else text, 10)  # CPython: base 10
            except ValueError:
                raise _PickleError(f"invalid LONG line {text[:40]!r}") from None
        if kind == "floatnl":
            text = self.line()
            try:
                return float(text)
            except ValueError:
                raise _PickleError(f"invalid FLOAT line {text[:40]!r}") from None
        if kind == "strnl":
            text = self.line()  # CPython strips only the newline: a '\r' breaks the quotes
            if len(text) >= 2 and text[0] == text[-1] and text[:1] in (b"'", b'"'):
                try:
                    with warnings.catch_warnings():  # an invalid escape warns, as in the unpickler
                        warnings.simplefilter("ignore", DeprecationWarning)
                        decoded: bytes = codecs.escape_decode(text[1:-1])[0]
                except ValueError as exc:
                    raise _PickleError(f"STRING with a bad escape: {exc}") from None
                return _keep(_decode_str(decoded))
            raise _PickleError("the STRING opcode argument must be quoted")
        if kind == "unicodenl":
            text = self.line()
            try:
                return _keep(text.decode("raw-unicode-escape"))
            except UnicodeDecodeError as exc:
                raise _PickleError(f"UNICODE with a bad escape: {exc.reason}") from None
        if kind == "strnl_noesc":
            return _keep(self.line().decode("latin-1"))
        if kind == "pair":
            module, name = self.line(), self.line()
            try:
                return (module.decode("utf-8"), name.decode("utf-8"))
            except UnicodeDecodeError:
                raise _PickleError("a GLOBAL module or name is not UTF-8") from None
        return None

    # -- stack -------------------------------------------------------------------------------------
    @property
    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def push(self, value: object) -> None:
        if len(self.stack) + len(self.memo) >= self.limits.max_stack:
            raise _LimitHit(f"stack and memo exceed max_stack={self.limits.max_stack} entries")
        self.stack.append(value)

    def pop(self) -> object:
        if len(self.stack) <= self.fence:
            raise _PickleError("unpickling stack underflow")
        return self.stack.pop()

    def top(self) -> object:
        if len(self.stack) <= self.fence:
            raise _PickleError("unpickling stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[object]:
        if not self.marks:
            raise _PickleError("could not find MARK")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    # -- imports -----------------------------------------------------------------------------------
    def import_(self, module: object, name: object, how: str) -> Global | _Opaque:
        if not isinstance(module, str) or not isinstance(name, str):
            self.add("high", "pickle.global.non-string",
                     f"{how} with a non-string module or name ({_type_name(module)}, {_type_name(name)}): "
                     "the import cannot be resolved statically")
            if how == "STACK_GLOBAL":
                raise _PickleError("STACK_GLOBAL requires str")
            return OPAQUE
        if self.proto < 3:  # the unpickler's fix_imports: Python 2 names map to Python 3 ones
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if self.probe and not (_IDENT.fullmatch(module) and _IDENT.fullmatch(name)):
            raise _PickleError(f"{how} names something that is not a Python name: {full[:80]!r}")
        if "." in name and self.proto < 4:
            note = " (a dotted name, which protocols below 4 cannot resolve)"
        else:
            note = ""
        self.globals_seen.append(full)
        # a dotted name walks attributes (protocol 4: ``sklearn.base`` + ``np.ctypeslib.ctypes.CDLL``
        # reaches ctypes through numpy): the pattern rules of the allow-list only hold for a plain name
        if not is_allowed(full) or ("." in name and full not in ALLOWED):
            self.refused += 1
            sev = severity_of(full)
            self.add(sev, "pickle.global.denied",
                     f"{how} imports {full!r}{note}, which is not on the allow-list"
                     + (" (a known code-execution primitive)" if sev == "critical" else ""),
                     callable_=full)
        return Global(module, name, self.op_offset)

    def check_callable(self, func: object, how: str) -> None:
        if isinstance(func, Global) or func is OPAQUE:
            return  # imports were judged when imported; opaque values are reported where they arose
        self.add("high", "pickle.call.indirect",
                 f"{how} calls {_type_name(func)}, not an imported callable: calls through computed "
                 "values (getattr chains, bound methods) cannot be judged statically")

    def check_allocation(self, func: object, args: object, how: str) -> None:
        """A memory bomb: an allowed allocator asked for MAX_ALLOCATION elements or more."""
        if not isinstance(func, Global) or func.full not in ALLOCATORS or not isinstance(args, tuple):
            return
        asked = _requested(func.full, args)
        if asked >= MAX_ALLOCATION:
            self.add("medium", "pickle.allocation",
                     f"{how} calls {func.full} asking for {asked} elements: loading it allocates that much "
                     "memory (the pickler never writes such a call)", callable_=func.full)

    # -- the walk ----------------------------------------------------------------------------------
    op_name = ""

    def run(self) -> tuple[bool, object]:
        """Walk until STOP; returns (stopped, top value). Errors become findings."""
        while True:
            self.op_offset = self.pos
            if self.pos >= self.n:
                raise _Truncated(f"the pickle ends at offset {self.n} without a STOP opcode")
            code = self.data[self.pos]
            entry = _OPS.get(code)
            if entry is None:
                raise _PickleError(f"unknown opcode 0x{code:02x} ({chr(code)!r})")
            self.pos += 1
            self.ops += 1
            if self.ops > self.limits.max_pickle_ops:
                raise _LimitHit(f"more than max_pickle_ops={self.limits.max_pickle_ops} opcodes")
            if not self.ops & 0xFFF and time.monotonic() > self.deadline:
                raise _LimitHit(f"the scan ran past its time limit of {self.limits.max_seconds} s")
            name, kind = entry
            self.op_name = name
            arg = self.read_arg(kind) if kind else None
            if name == "STOP":
                value = self.pop() if len(self.stack) > self.fence else OPAQUE
                if self.marks:
                    self.add("low", "pickle.unclosed-mark", "STOP with an unclosed MARK")
                if self.stack:
                    self.add("low", "pickle.stack-leftover",
                             f"{len(self.stack)} values left on the stack at STOP (hidden results)")
                return True, value
            self.step(name, arg)

    def step(self, name: str, arg: object) -> None:
        if name == "PROTO":
            assert isinstance(arg, int)
            if arg > 5:
                raise _PickleError(f"unsupported pickle protocol: {arg}")
            self.proto = arg
        elif name == "FRAME":
            assert isinstance(arg, int)
            if arg > self.n - self.pos:
                raise _Truncated(f"a FRAME of {arg} bytes runs past the end of the data")
        elif name in _VALUE_OPS:
            self.push(arg)
        elif name == "BYTEARRAY8":
            self.push(Blob(arg.size) if isinstance(arg, Blob) else OPAQUE)
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            if name == "READONLY_BUFFER":
                self.top()
            else:
                self.push(OPAQUE)
        elif name == "NONE":
            self.push(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            self.push(name == "NEWTRUE")
        elif name == "EMPTY_LIST":
            self.push(PList())
        elif name == "EMPTY_DICT":
            self.push(PDict())
        elif name == "EMPTY_SET":
            self.push(PSet())
        elif name == "EMPTY_TUPLE":
            self.push(())
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name == "POP":
            if self.marks and self.marks[-1] == len(self.stack):
                self.marks.pop()  # CPython's POP discards a MARK on top of the stack
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.push(self.top())
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            if name == "TUPLE":
                items = self.pop_mark()
            else:
                k = int(name[-1])
                if len(self.stack) - self.fence < k:
                    raise _PickleError("unpickling stack underflow")
                items = self.stack[-k:]
                del self.stack[-k:]
            self.push(tuple(items))
        elif name == "LIST":
            self.push(PList(len(self.pop_mark())))
        elif name == "DICT":
            items = self.pop_mark()
            if len(items) % 2:
                raise _PickleError("odd number of items for DICT")
            d = PDict(count=len(items) // 2)
            d.items = list(zip(items[0::2], items[1::2], strict=True))[:_MAX_DICT_ITEMS]
            self.push(d)
        elif name == "FROZENSET":
            self.push(PSet(len(self.pop_mark()), frozen=True))
        elif name in ("APPEND", "APPENDS"):
            items = [self.pop()] if name == "APPEND" else self.pop_mark()
            target = self.top()
            if isinstance(target, PList):
                target.count += len(items)
            else:
                self.container_op(target, name)
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                value, key = self.pop(), self.pop()
                items = [key, value]
            else:
                items = self.pop_mark()
                if len(items) % 2:
                    raise _PickleError("odd number of items for SETITEMS")
            target = self.top()
            if isinstance(target, PList):  # list[i] = v: valid for an index inside the list
                pass
            elif isinstance(target, PDict):
                target.count += len(items) // 2
                room = _MAX_DICT_ITEMS - len(target.items)
                if room > 0:
                    target.items.extend(list(zip(items[0::2], items[1::2], strict=True))[:room])
            else:
                self.container_op(target, name)
        elif name == "ADDITEMS":
            items = self.pop_mark()
            target = self.top()
            if isinstance(target, PSet) and not target.frozen:
                target.count += len(items)
            else:
                self.container_op(target, name)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            assert isinstance(arg, int)
            if arg not in self.memo:
                raise _PickleError(f"memo value not found at index {arg}")
            self.push(self.memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            assert isinstance(index, int)
            if index < 0:
                raise _PickleError("negative PUT argument")
            if index in self.memo and name != "MEMOIZE":
                self.add("low", "pickle.memo.overwrite",
                         f"{name} overwrites memo entry {index} (the standard pickler never does)")
            self.memo[index] = self.top()
            if len(self.stack) + len(self.memo) >= self.limits.max_stack:
                raise _LimitHit(f"stack and memo exceed max_stack={self.limits.max_stack} entries")
        elif name == "GLOBAL":
            assert isinstance(arg, tuple)
            self.push(self.import_(arg[0], arg[1], "GLOBAL"))
        elif name == "STACK_GLOBAL":
            gname, module = self.pop(), self.pop()
            self.push(self.import_(module, gname, "STACK_GLOBAL"))
        elif name in ("EXT1", "EXT2", "EXT4"):
            assert isinstance(arg, int)
            if arg <= 0:
                raise _PickleError("EXT specifies code <= 0")
            key = _EXTENSIONS.get(arg)
            if key is None:
                self.add("high", "pickle.ext.unknown",
                         f"{name} uses extension code {arg}, which is not registered here: what it imports "
                         "depends on the loading process's copyreg registry")
                self.push(OPAQUE)
            else:
                self.push(self.import_(key[0], key[1], name))
        elif name == "REDUCE":
            args, func = self.pop(), self.pop()
            self.check_callable(func, "REDUCE")
            self.check_allocation(func, args, "REDUCE")
            if not isinstance(args, (tuple, Call, Persistent, _Opaque)):  # a call may build a tuple
                raise _PickleError("REDUCE arguments must be a tuple")
            self.push(Call(func, args, self.op_offset))
        elif name == "INST":
            assert isinstance(arg, tuple)
            args = tuple(self.pop_mark())
            self.push(Call(self.import_(arg[0], arg[1], "INST"), args, self.op_offset))
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise _PickleError("OBJ without a class")
            self.check_callable(items[0], "OBJ")
            self.push(Call(items[0], tuple(items[1:]), self.op_offset))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            kwargs = self.pop() if name == "NEWOBJ_EX" else None
            args, cls = self.pop(), self.pop()
            self.check_callable(cls, name)
            self.check_allocation(cls, args, name)
            self.push(Call(cls, (args, kwargs), self.op_offset))
        elif name == "BUILD":
            state = self.pop()
            target = self.top()
            if isinstance(target, Global):
                self.add("high", "pickle.build.global",
                         f"BUILD sets attributes on the imported {target.full} itself (monkey-patching "
                         "a class, function or module)", callable_=target.full)
            elif isinstance(target, Call):
                target.state = state
                if self.joblib and isinstance(target.func, Global) and \
                        target.func.full == "joblib.numpy_pickle.NumpyArrayWrapper":
                    self.skip_joblib_array(state)
            elif state is not None and not isinstance(target, (PDict, PList, PSet, _Opaque, Persistent)):
                # CPython's BUILD with a None state sets nothing and succeeds on any object
                raise _PickleError(f"BUILD on {_type_name(target)}")
        elif name == "PERSID":
            self.push(Persistent(arg))
            self.pids.append(arg)
        elif name == "BINPERSID":
            pid = self.pop()
            self.pids.append(pid)
            self.push(Persistent(pid))
        else:  # pragma: no cover - every opcode of the table is handled above
            raise _PickleError(f"unhandled opcode {name}")

    def container_op(self, target: object, name: str) -> None:
        if isinstance(target, Global):
            self.add("high", "pickle.container-op.global",
                     f"{name} on the imported {target.full}: calls its methods on the class or module",
                     callable_=target.full)
        elif not isinstance(target, (Call, _Opaque)):
            raise _PickleError(f"{name} on {_type_name(target)}")

    def skip_joblib_array(self, state: object) -> None:
        """Skip the array bytes joblib writes right after a NumpyArrayWrapper (or walk the nested
        pickle it writes for object arrays)."""
        info = dict(state.items) if isinstance(state, PDict) else {}
        shape, dtype = info.get("shape"), info.get("dtype")
        desc = _dtype_of(dtype)
        sizes_ok = isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)
        if desc is None or not sizes_ok or not isinstance(shape, tuple):
            self.add("medium", "joblib.array.unknown-layout",
                     "a joblib array wrapper whose shape or dtype cannot be read: the array bytes that "
                     "follow cannot be located")
            raise _PickleError("joblib array layout unknown")
        itemsize, has_object = desc
        if has_object:
            sub = _Walker(self.data, self.pos, where=self.where, limits=self.limits, deadline=self.deadline,
                          probe=False, joblib=True)
            walk = sub.finish()
            self.findings.extend(walk.findings)
            self.refused += sub.refused
            self.globals_seen.extend(walk.globals_seen)
            if not walk.stopped:
                raise _PickleError("the object array's nested pickle is broken")
            self.pos = walk.end
            return
        self.walk_as_pickle_load(self.pos)
        if info.get("numpy_array_alignment_bytes") is not None and "numpy_array_alignment_bytes" in info:
            pad = self.uint(1)
            self.take(pad)
        count = 1
        for s in shape:
            count *= s
        region = self.take(count * itemsize)
        # pickle.load (not joblib.load) reads these bytes as opcodes: imports hidden there are findings
        if len(region) <= _MAX_HIDDEN_SCAN:
            for full, at in hidden_imports(region):
                self.add("high", "pickle.hidden-import",
                         f"the bytes of a joblib array hold an import of {full!r}: pickle.load reads "
                         "them as opcodes", offset=self.pos - len(region) + at, callable_=full)

    def walk_as_pickle_load(self, at: int) -> None:
        """Walk on from ``at`` as ``pickle.load`` (and ``torch.load``) does: it knows nothing of joblib's
        array bytes and reads them as opcodes, with the stack and memo built so far. The bytes can be
        a well-formed continuation (``0(S'true'\nios\nsystem\n.``) that joblib.load reads as data;
        every import refused on that path is a finding. Errors end this walk silently: plain array
        bytes are not opcodes."""
        if self.shadow or not self.joblib:
            return
        # probe=True: an import of a name that is not a Python name ends the walk (array bytes such as
        # b"c\0\0\n\0\n" would otherwise read as a GLOBAL; importing them fails, it runs nothing)
        walker = _Walker(self.data, at, where=self.where, limits=self.limits, deadline=self.deadline,
                         probe=True, joblib=False)
        walker.shadow = True
        walker.stack, walker.marks, walker.memo = list(self.stack), list(self.marks), _MemoOverlay(self.memo)
        walker.proto = self.proto
        walk = walker.finish()
        for f in walk.findings:
            if f.code == "pickle.global.denied" and f.callable is not None:
                self.refused += 1
                self.add(f.severity, "pickle.hidden-import",
                         f"the bytes of a joblib array, read as opcodes by pickle.load or torch.load, import "
                         f"{f.callable!r}, which is not on the allow-list", offset=f.offset,
                         callable_=f.callable)

    def finish(self) -> PickleWalk:
        """Run the walk and turn every error into findings; never raises."""
        stopped, value = False, None
        try:
            stopped, value = self.run()
        except _LimitHit as exc:
            self.add("medium", "pickle.limit", f"walk stopped: {exc}")
        except _PickleError as exc:
            self.errored = True
            if self.probe and not self.globals_seen and self.proto == 0 and not self.findings:
                return PickleWalk(findings=[], start=self.start, end=self.pos, stopped=False,
                                  is_pickle=False)
            self.report_error(exc)
            if not self.shadow:
                self.resync()
        return PickleWalk(findings=self.findings, start=self.start, end=self.pos, stopped=stopped,
                          is_pickle=True, value=value, globals_seen=self.globals_seen,
                          persistent_ids=self.pids, proto=self.proto)

    def report_error(self, exc: Exception) -> None:
        truncated = isinstance(exc, _Truncated)
        if self.refused:
            self.add("high", "pickle.error-after-call",
                     f"the pickle breaks at offset {self.op_offset} ({exc}) after importing a refused "
                     "callable: the loader runs it before it fails")
        else:
            self.add("medium", "pickle.truncated" if truncated else "pickle.malformed",
                     f"the pickle cannot be walked at offset {self.op_offset}: {exc}")

    def resync(self) -> None:
        """After an error, keep decoding opcodes linearly (without the stack model) so that an import
        behind the broken opcode is still judged."""
        self.pos = self.op_offset + 1
        guard = 0
        while self.pos < self.n and guard < self.limits.max_pickle_ops:
            guard += 1
            self.op_offset = self.pos
            code = self.data[self.pos]
            entry = _OPS.get(code)
            if entry is None:
                self.pos += 1
                continue
            self.pos += 1
            name, kind = entry
            self.op_name = name
            try:
                arg = self.read_arg(kind) if kind else None
            except _PickleError:
                continue
            if name in ("GLOBAL", "INST") and isinstance(arg, tuple) and \
                    _IDENT.fullmatch(arg[0]) and _IDENT.fullmatch(arg[1]):
                self.import_(arg[0], arg[1], f"{name} (after the error)")
            elif name == "STOP":
                return
            if not guard & 0xFFF and time.monotonic() > self.deadline:
                return


_MAX_HIDDEN_SCAN = 256 << 20
_HIDDEN = re.compile(rb"c([A-Za-z_][\w.]{0,200})\n([A-Za-z_][\w.]{0,200})\n"
                     rb"|\x8c[\x01-\xc8]([A-Za-z_][\w.]{0,199})\x94?\x8c[\x01-\xc8]([A-Za-z_][\w.]{0,199})\x94?\x93")


def hidden_imports(data: bytes | memoryview) -> list[tuple[str, int]]:
    """Imports spelled as GLOBAL or STACK_GLOBAL opcodes inside bytes that the walk skips (array
    bytes): ``(module.name, offset)`` for each one not on the allow-list."""
    found: list[tuple[str, int]] = []
    for m in _HIDDEN.finditer(bytes(data)):
        module, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        full = f"{module.decode()}.{name.decode()}"
        if m.group(3) and (len(m.group(3)) != data[m.start() + 1]):
            continue  # the SHORT_BINUNICODE length must match the string
        if not is_allowed(full):
            found.append((full, m.start()))
            if len(found) >= 20:
                break
    return found


def _requested(full: str, args: tuple[object, ...]) -> int:
    """Elements an allocator call asks for: the largest int argument, the product of an int tuple
    (a shape), or a range's length."""
    ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    if full == "builtins.range" and ints:
        start, stop, step = ((0, ints[0], 1) if len(ints) == 1
                             else (ints[0], ints[1], ints[2] if len(ints) > 2 else 1))
        return max(0, (stop - start) // step) if step else 0
    best = max((abs(a) for a in ints), default=0)
    for a in args:
        if isinstance(a, tuple) and a and all(isinstance(x, int) and not isinstance(x, bool) for x in a):
            product = 1
            for x in a:
                product *= max(abs(x), 1)
                if product >= MAX_ALLOCATION:
                    break
            best = max(best, product)
    return best


def _decode_str(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _dtype_of(dtype: object) -> tuple[int, bool] | None:
    """(itemsize, has_object) of a pickled numpy.dtype model value; None when unreadable."""
    if not isinstance(dtype, Call) or not isinstance(dtype.func, Global) or dtype.func.full != "numpy.dtype":
        return None
    args = dtype.args
    if not isinstance(args, tuple) or not args or not isinstance(args[0], str):
        return None
    code = args[0]
    state = dtype.state
    if code.startswith("O"):
        return 8, True
    if isinstance(state, tuple) and len(state) >= 8 and isinstance(state[5], int) and state[5] > 0:
        if state[3] is not None or state[2] is not None:  # structured dtype: fields may hold objects
            flags = state[7]
            return state[5], isinstance(flags, int) and bool(flags & 1)
        return state[5], False
    m = re.fullmatch(r"[<>|=]?([bBiufcmMV?]|[iufcbmM]\d*)(\d*)", code)
    sizes = {"b": 1, "B": 1, "?": 1}
    if m is None:
        return None
    letter = m.group(1)[0]
    digits = m.group(1)[1:] + m.group(2)
    if digits:
        return int(digits), False
    return (sizes[letter], False) if letter in sizes else None


def walk_pickle(data: bytes | memoryview, *, where: Location, limits: ScanLimits, start: int = 0,
                deadline: float | None = None, probe: bool = False, joblib: bool = True) -> PickleWalk:
    """Walk one pickle starting at ``start``; never raises.

    Args:
        data: the bytes holding the pickle.
        where: the file and archive members the bytes come from (for the findings).
        limits: bounds on opcodes, stack and memo, and time.
        start: offset of the pickle's first opcode.
        deadline: ``time.monotonic()`` value after which the walk stops (default: now + max_seconds).
        probe: the bytes may not be a pickle at all: when the walk fails before any import, return
            ``is_pickle=False`` and no findings instead of a malformed-pickle finding.
        joblib: skip the array bytes joblib writes after each ``NumpyArrayWrapper``.

    Returns:
        The walk: findings, the offset past STOP, the imports seen and the persistent ids.
    """
    if deadline is None:
        deadline = time.monotonic() + limits.max_seconds
    walker = _Walker(data, start, where=where, limits=limits, deadline=deadline, probe=probe, joblib=joblib)
    return walker.finish()


def looks_like_pickle(data: bytes | memoryview) -> bool:
    """True when the bytes start like a pickle of protocol 2-5 (PROTO opcode)."""
    return len(data) >= 2 and data[0] == 0x80 and data[1] <= 5


def scan_pickle(data: bytes | memoryview, *, where: Location, limits: ScanLimits,
                deadline: float | None = None, probe: bool = False) -> tuple[list[Finding], bool]:
    """Walk every pickle of a stream (pickles may follow each other) and judge what follows the last.

    Returns:
        ``(findings, is_pickle)``; ``is_pickle`` is False when ``probe`` found no pickle at offset 0.
    """
    if deadline is None:
        deadline = time.monotonic() + limits.max_seconds
    first = walk_pickle(data, where=where, limits=limits, deadline=deadline,
                        probe=probe and not looks_like_pickle(data))
    if not first.is_pickle:
        return [], False
    findings = list(first.findings)
    pos, count = first.end, 1
    while first.stopped and pos < len(data) and count < 64:
        tail = len(data) - pos
        nxt = walk_pickle(data, where=where, limits=limits, deadline=deadline, start=pos, probe=True)
        if nxt.is_pickle and nxt.end > pos:
            findings.append(Finding(severity="medium", code="pickle.multiple",
                                    message=f"a second pickle follows STOP at offset {pos} "
                                            "(read by a second load call, or hidden from scanners)",
                                    location=where, offset=pos))
            findings.extend(nxt.findings)
            if not nxt.stopped:
                break
            pos, count = nxt.end, count + 1
            continue
        findings.append(Finding(severity="medium", code="pickle.trailing-data",
                                message=f"{tail} bytes of data follow the pickle's STOP opcode",
                                location=where, offset=pos))
        break
    return findings, True
