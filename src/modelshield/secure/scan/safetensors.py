"""Static checks of safetensors files: the header, the offsets, and what hides around them.

The format (https://github.com/huggingface/safetensors#format): 8 bytes, a little-endian u64 ``N``;
``N`` bytes of UTF-8 JSON that begin with ``{`` (padding with spaces allowed); then the byte
buffer. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the buffer) plus an optional ``"__metadata__"`` map of strings to strings.
The spec (and the reference Rust parser) requires: a header of at most 100 MB, no duplicate
keys, offsets that lie in the buffer, sizes equal to ``prod(shape) * bits(dtype) / 8``, and a
buffer *entirely indexed, with no holes*, which the spec states is there to prevent polyglot
files.

What this module adds beyond the reference parser is looking at the bytes nobody owns: space
after the JSON, holes between tensors and bytes after the last one. A pickle (``0x80`` PROTO,
or a protocol-0 ``c`` GLOBAL) or a zip (local header or an end-of-central-directory record whose
central directory lies in the file, which ``torch.load`` would open) hidden there is a finding:
a ``.safetensors`` file that ``torch.load`` also accepts is a pickle in disguise. The reader
never allocates more than the header's size and never trusts a length before checking it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator

from modelshield.secure.scan._collect import Collector
from modelshield.secure.scan.findings import Finding, Location, ScanLimits

__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "scan_safetensors", "sniff_safetensors"]

MAX_HEADER_BYTES = 100_000_000
"""The safetensors spec's (and the reference parser's) limit on the JSON header length."""

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
"""Bits per element of every dtype of safetensors 0.6-0.8 (``Dtype::bitsize`` in the Rust crate)."""

_PICKLE_PROTO = re.compile(rb"\x80[\x02-\x05]")
_PICKLE_GLOBAL = re.compile(rb"c[A-Za-z_][\w.]{0,200}\n[A-Za-z_][\w.]{0,200}\n")
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_EOCD = b"PK\x05\x06"

Data = bytes | bytearray | memoryview


def sniff_safetensors(head: bytes, size: int) -> bool:
    """True when ``head`` (the first bytes of a ``size``-byte file) starts like a safetensors file.

    A plausible header length (2 bytes to 100 MB, inside the file) followed by ``{``.
    """
    if len(head) < 9 or size < 10:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def scan_safetensors(data: Data, *, where: Location, limits: ScanLimits,
                     size: int | None = None) -> list[Finding]:
    """Check a safetensors file given as bytes (or a memoryview of an mmap).

    ``size`` is the file's true size when ``data`` holds only its first bytes (the 8-byte length
    and the header at least); checks of bytes not given (holes, trailing bytes) are then skipped.
    Returns findings; never raises on any input.
    """
    del limits  # the header is bounded by the spec's 100 MB; nothing here scales past that
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    total = len(view) if size is None else max(size, len(view))
    out = Collector(where=where)
    if total < 8 or len(view) < 8:
        out.add("medium", "safetensors.truncated",
                f"file of {total} bytes is shorter than the 8-byte header length", 0)
        return out.items
    (n,) = struct.unpack_from("<Q", view, 0)
    if n > MAX_HEADER_BYTES:
        out.add("high", "safetensors.header.too-large",
                f"header length {n} exceeds the safetensors limit of {MAX_HEADER_BYTES} bytes", 0)
        return out.items
    if 8 + n > total:
        out.add("medium", "safetensors.truncated",
                f"header length {n} runs past the end of the {total}-byte file", 0)
        return out.items
    if 8 + n > len(view):
        out.add("medium", "safetensors.truncated",
                f"only {len(view)} bytes given, the header needs {8 + n}", 0)
        return out.items
    raw = bytes(view[8:8 + n])
    header = _parse_header(raw, out)
    if header is None:
        return out.items
    buffer_size = total - 8 - n
    spans = _check_entries(header, buffer_size, out)
    _check_layout(view, 8 + n, buffer_size, spans, out)
    _check_zip_tail(view, total, out)
    return out.items


def _parse_header(raw: bytes, out: Collector) -> dict[str, object] | None:
    if not raw.startswith(b"{"):
        out.add("medium", "safetensors.header.invalid",
                f"header does not begin with '{{' (starts with {raw[:8]!r})", 8)
        return None
    # Undecodable bytes become lone surrogates, so that JSON followed by binary (a pickle in the
    # padding) is still read up to its end; surrogates inside the JSON itself are caught below.
    text = raw.decode("utf-8", "surrogateescape")
    try:
        obj, end = json.JSONDecoder(object_pairs_hook=_no_duplicates,
                                    parse_constant=_reject_constant).raw_decode(text)
        text[:end].encode("utf-8")
    except UnicodeEncodeError as exc:
        at = len(text[:exc.start].encode("utf-8", "surrogateescape"))
        out.add("medium", "safetensors.header.not-utf8", f"header is not valid UTF-8 at byte {at}", 8 + at)
        return None
    except _DuplicateKeyError as exc:
        out.add("medium", "safetensors.header.duplicate-key",
                f"header repeats the key {exc.args[0]!r}; parsers disagree on which entry wins", 8)
        return None
    except RecursionError:
        out.add("medium", "safetensors.header.too-deep", "header JSON is nested too deeply to read", 8)
        return None
    except ValueError as exc:
        out.add("medium", "safetensors.header.not-json", f"header is not valid JSON: {exc}", 8)
        return None
    rest = raw[len(text[:end].encode("utf-8", "surrogateescape")):]
    if rest.strip(b" "):
        off = 8 + len(raw) - len(rest)
        out.add("medium", "safetensors.header.trailing",
                f"{len(rest)} bytes after the header JSON are not space padding", off)
        _hidden_payload(rest, off, "after the header JSON", out)
    if not isinstance(obj, dict):
        out.add("medium", "safetensors.header.not-object",
                f"header JSON is a {type(obj).__name__}, not an object", 8)
        return None
    return obj


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entries(header: dict[str, object], buffer_size: int,
                   out: Collector) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    furthest = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                out.add("medium", "safetensors.metadata.invalid",
                        "__metadata__ must map strings to strings")
            continue
        if not isinstance(entry, dict):
            out.add("medium", "safetensors.tensor.invalid",
                    f"tensor {name!r}: entry is a {type(entry).__name__}, not an object")
            continue
        extra = sorted(set(entry) - {"dtype", "shape", "data_offsets"})
        if extra:
            out.add("low", "safetensors.tensor.extra-keys", f"tensor {name!r}: unknown keys {extra}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        bits = DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
        if bits is None:
            out.add("medium", "safetensors.dtype.unknown", f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            out.add("medium", "safetensors.shape.invalid",
                    f"tensor {name!r}: shape {str(shape)[:80]} is not a list of non-negative ints")
            shape = None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            out.add("high", "safetensors.offsets.invalid",
                    f"tensor {name!r}: data_offsets {str(offsets)[:80]} is not [begin, end]")
            continue
        begin, end = offsets[0], offsets[1]
        furthest = max(furthest, end)
        if begin < 0 or end < begin:
            out.add("high", "safetensors.offsets.invalid",
                    f"tensor {name!r}: data_offsets [{begin}, {end}] are negative or reversed")
            continue
        if end > buffer_size:
            out.add("high", "safetensors.offsets.out-of-range",
                    f"tensor {name!r}: data_offsets [{begin}, {end}] leave the {buffer_size}-byte buffer "
                    "(an out-of-bounds read in loaders that trust the header)")
            continue
        if bits is not None and shape is not None:
            elements = 1
            for d in shape:
                elements *= d
                if elements * bits > 8 * (buffer_size + 1):  # already larger than the whole buffer
                    break
            nbits = elements * bits
            if nbits % 8 or nbits // 8 != end - begin:
                out.add("high", "safetensors.offsets.size-mismatch",
                        f"tensor {name!r}: {dtype} x {shape} needs {nbits / 8:g} bytes, "
                        f"data_offsets give {end - begin}")
        spans.append((begin, end, name))
    if furthest > buffer_size:
        out.add("medium", "safetensors.truncated",
                f"the header describes {furthest} bytes of tensor data, the file holds {buffer_size}")
    return spans


def _check_layout(view: memoryview, start: int, buffer_size: int,
                  spans: list[tuple[int, int, str]], out: Collector) -> None:
    spans.sort()
    cursor = 0
    prev = ""
    for begin, end, name in spans:
        if begin < cursor:
            out.add("medium", "safetensors.offsets.overlap",
                    f"tensor {name!r} [{begin}, {end}] overlaps {prev!r} (ends at {cursor}); "
                    "two names own the same bytes", start + begin)
        elif begin > cursor:
            out.add("medium", "safetensors.data.hole",
                    f"{begin - cursor} bytes at buffer offset {cursor} belong to no tensor "
                    "(the spec forbids holes, which allow polyglot files)", start + cursor)
            _scan_region(view, start + cursor, start + begin, "in a hole of the data buffer", out)
        if end >= cursor:
            cursor, prev = end, name
    if cursor < buffer_size:
        out.add("medium", "safetensors.data.trailing",
                f"{buffer_size - cursor} bytes after the last tensor belong to no tensor",
                start + cursor)
        _scan_region(view, start + cursor, start + buffer_size, "after the last tensor", out)
    if spans and spans[0][0] == 0 and spans[0][1] - spans[0][0] >= 4 and start + 2 <= len(view):
        first = bytes(view[start:start + 2])
        last_at = start + spans[0][1] - 1
        if (_PICKLE_PROTO.fullmatch(first) and last_at < len(view)
                and bytes(view[last_at:last_at + 1]) == b"."):
            out.add("medium", "safetensors.hidden-pickle",
                    f"tensor {spans[0][2]!r}, right after the header, holds bytes framed like a pickle "
                    "(PROTO ... STOP)", start)


def _scan_region(view: memoryview, lo: int, hi: int, what: str, out: Collector) -> None:
    hi = min(hi, len(view))
    if lo >= hi:
        return
    _hidden_payload(bytes(view[lo:min(hi, lo + (16 << 20))]), lo, what, out)


def _hidden_payload(chunk: bytes, offset: int, what: str, out: Collector) -> None:
    for label, match in _payload_matches(chunk):
        out.add("high", f"safetensors.hidden-{label}",
                f"a {label} signature sits {what} (a polyglot file that torch.load or pickle "
                "would also open)", offset + match)
        return


def _payload_matches(chunk: bytes) -> Iterator[tuple[str, int]]:
    m = _PICKLE_PROTO.search(chunk[:64])
    if m:
        yield "pickle", m.start()
    g = _PICKLE_GLOBAL.search(chunk)
    if g:
        yield "pickle", g.start()
    z = chunk.find(_ZIP_LOCAL)
    if z >= 0:
        yield "zip", z


def _check_zip_tail(view: memoryview, total: int, out: Collector) -> None:
    """An end-of-central-directory record in the last 64 KiB whose directory lies in the file."""
    if len(view) < total:
        return
    lo = max(0, total - (65_535 + 22))
    tail = bytes(view[lo:total])
    pos = tail.rfind(_ZIP_EOCD)
    while pos >= 0:
        rec = tail[pos:pos + 22]
        if len(rec) == 22:
            cd_size, cd_offset = struct.unpack_from("<II", rec, 12)
            if cd_size > 0 and cd_offset + cd_size <= lo + pos:
                out.add("high", "safetensors.hidden-zip",
                        "a zip end-of-central-directory record whose directory lies inside the file: "
                        "torch.load would open this file as a zip checkpoint", lo + pos)
                return
        pos = tail.rfind(_ZIP_EOCD, 0, pos)
