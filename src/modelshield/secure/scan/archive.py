"""Archive walkers: zip (parsed from its own central directory and local headers, not through
``zipfile``), tar, and the compressed streams joblib writes, with every anomaly a finding and every
inflation bounded in bytes, ratio and time.

Reference: PKWARE APPNOTE.TXT 6.3.10 (zip, zip64); POSIX.1-2001 pax / ustar (tar); D. Fifield, "A
better zip bomb" (WOOT 2019) for overlapping entries.
"""

from __future__ import annotations

import bz2
import io
import itertools
import lzma
import struct
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from modelshield.secure.scan.findings import Finding, Location, ScanLimits, Severity

__all__ = ["Budget", "MemberScanner", "ZipMember", "inflate_stream", "scan_tar", "scan_zip"]

_EOCD = b"PK\x05\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_Z64_LOCATOR = b"PK\x06\x07"
_Z64_EOCD = b"PK\x06\x06"
_CHUNK = 1 << 20
_MAX_INDEX_PICKLE = 256 << 20  # a torch data.pkl re-walked to list its raw storage members
_DESCRIPTORS = frozenset({"schema.json", "config.json", "metadata.json"})


@dataclass(slots=True)
class Budget:
    """What one top-level scan may still spend: inflated bytes and time."""

    limits: ScanLimits
    deadline: float
    inflated: int = 0
    findings: list[Finding] = field(default_factory=list)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


MemberScanner = Callable[[bytes | memoryview, Location, int], list[Finding]]
"""``scan(data, where, depth) -> findings``: the content dispatcher, called for each member."""


@dataclass(slots=True)
class ZipMember:
    name: str
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    local_offset: int
    data_offset: int = -1


def _find(where: Location, severity: Severity, code: str, message: str, offset: int | None = None,
          callable_: str | None = None) -> Finding:
    return Finding(severity=severity, code=code, message=message, location=where, offset=offset,
                   callable=callable_)


class _InflateLimit(Exception):
    pass


def _inflate(raw: memoryview, method: int, usize: int, budget: Budget, *,
             keep: bool) -> tuple[bytes, int, int]:
    """Inflate one zip member: (bytes kept, bytes produced, crc32). Raises _InflateLimit past the
    declared size, the ratio bound or the budget; zlib/lzma/bz2 errors propagate as ValueError/OSError."""
    limits = budget.limits
    cap = min(usize, limits.max_decompressed_bytes - budget.inflated)
    if method == 8:
        dec: _Decompressor = zlib.decompressobj(-15)
    elif method == 12:
        dec = bz2.BZ2Decompressor()
    elif method == 14:
        if len(raw) < 4:
            raise ValueError("LZMA member shorter than its header")
        props_size = int.from_bytes(raw[2:4], "little")
        props = bytes(raw[4:4 + props_size])
        if len(props) < 5:
            raise ValueError("LZMA properties shorter than 5 bytes")
        lclppb = props[0]  # APPNOTE 5.8.8: lc + 9 * (lp + 5 * pb), then the dictionary size
        dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
            "id": lzma.FILTER_LZMA1, "lc": lclppb % 9, "lp": lclppb // 9 % 5, "pb": lclppb // 45,
            "dict_size": int.from_bytes(props[1:5], "little")}])
        raw = raw[4 + props_size:]
    else:
        raise ValueError(f"compression method {method}")
    out: list[bytes] = []
    produced, crc = 0, 0
    for chunk in _chunks(dec, raw, budget):
        produced += len(chunk)
        if produced > cap:
            raise _InflateLimit(f"inflates past {cap} bytes (declared size {usize}, budget "
                                f"{limits.max_decompressed_bytes - budget.inflated})")
        crc = zlib.crc32(chunk, crc)
        if keep:
            out.append(chunk)
    budget.inflated += produced
    return b"".join(out), produced, crc


_ZlibDecompress = type(zlib.decompressobj())
if TYPE_CHECKING:
    from zlib import _Decompress

    _Decompressor: TypeAlias = _Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor


def _chunks(dec: _Decompressor, raw: memoryview, budget: Budget) -> Iterator[bytes]:
    """Feed ``raw`` to ``dec`` a megabyte at a time and yield at most a megabyte of output per step,
    so that a bomb is caught after one chunk past its bound. Stops at the end of the stream, or when
    the input runs out (a truncated stream: the caller sees ``dec.eof`` False)."""
    pos = 0
    while not dec.eof:
        if budget.out_of_time():
            raise _InflateLimit(f"time limit of {budget.limits.max_seconds} s reached while inflating")
        if isinstance(dec, _ZlibDecompress):
            src: bytes | memoryview = dec.unconsumed_tail
            if not src:
                src = raw[pos:pos + _CHUNK]
                pos += len(src)
            chunk = dec.decompress(src, _CHUNK)
            if not chunk and not dec.unconsumed_tail and pos >= len(raw):
                return
        else:
            src = b""
            if dec.needs_input:
                src = raw[pos:pos + _CHUNK]
                pos += len(src)
                if not src:
                    return
            chunk = dec.decompress(src, _CHUNK)
        if chunk:
            yield chunk


def _zip_end(data: memoryview, where: Location) -> tuple[int, int, int, int, int, list[Finding]] | None:
    """(eocd offset, entries, cd size, cd offset as stated, comment length, findings) or None."""
    n = len(data)
    tail_start = max(0, n - (65535 + 22))
    tail = bytes(data[tail_start:])
    at = tail.rfind(_EOCD)
    findings: list[Finding] = []
    while at >= 0 and tail_start + at + 22 > n:
        at = tail.rfind(_EOCD, 0, at)
    if at < 0:
        return None
    eocd = tail_start + at
    (_, disk, cd_disk, _, entries, cd_size, cd_offset, comment_len) = struct.unpack(
        "<4sHHHHIIH", data[eocd:eocd + 22])
    if disk or cd_disk:
        findings.append(_find(where, "medium", "zip.multi-disk", "a multi-disk (spanned) zip", eocd))
    if eocd + 22 + comment_len < n:
        findings.append(_find(where, "medium", "zip.trailing-data",
                              f"{n - eocd - 22 - comment_len} bytes after the end-of-central-directory "
                              "record", eocd + 22 + comment_len))
    loc = eocd - 20
    if loc >= 56 and bytes(data[loc:loc + 4]) == _Z64_LOCATOR:  # zip64: the directory ends at its record
        rec = loc - 56  # where the record physically sits (its stated offset ignores prepended bytes)
        if bytes(data[rec:rec + 4]) == _Z64_EOCD:
            (_, _, _, _, _, _, _, entries, cd_size, cd_offset) = struct.unpack(
                "<4sQHHIIQQQQ", data[rec:rec + 56])
            eocd = rec
    return eocd, entries, cd_size, cd_offset, comment_len, findings


def _central(data: memoryview, start: int, end: int, count: int, where: Location,
             limits: ScanLimits) -> tuple[list[ZipMember], list[Finding]]:
    members: list[ZipMember] = []
    findings: list[Finding] = []
    pos = start
    while pos < end and len(members) < count:
        if len(members) >= limits.max_members:
            findings.append(_find(where, "medium", "zip.too-many-members",
                                  f"more than max_members={limits.max_members} members", pos))
            break
        if bytes(data[pos:pos + 4]) != _CENTRAL or pos + 46 > len(data):
            findings.append(_find(where, "high", "zip.central-corrupt",
                                  f"central directory entry {len(members)} is corrupt", pos))
            break
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, local) = struct.unpack(
            "<4sHHHHHHIIIHHHHHII", data[pos:pos + 46])
        raw_name = bytes(data[pos + 46:pos + 46 + nlen])
        extra = bytes(data[pos + 46 + nlen:pos + 46 + nlen + xlen])
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        usize, csize, local = _zip64_extra(extra, usize, csize, local)
        members.append(ZipMember(name, flags, method, crc, csize, usize, local))
        pos += 46 + nlen + xlen + clen
    if len(members) < count and not findings:
        findings.append(_find(where, "high", "zip.central-corrupt",
                              f"the directory promises {count} members but holds {len(members)}", pos))
    return members, findings


def _zip64_extra(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[i:i + 4])
        body = extra[i + 4:i + 4 + size]
        if tag == 1:
            vals = [int.from_bytes(body[j:j + 8], "little") for j in range(0, len(body) - 7, 8)]
            k = 0
            if usize == 0xFFFFFFFF and k < len(vals):
                usize, k = vals[k], k + 1
            if csize == 0xFFFFFFFF and k < len(vals):
                csize, k = vals[k], k + 1
            if local == 0xFFFFFFFF and k < len(vals):
                local = vals[k]
        i += 4 + size
    return usize, csize, local


def scan_zip(data: bytes | memoryview, *, where: Location, budget: Budget, depth: int,
             scan_member: MemberScanner, raw_members: Callable[[list[str], dict[str, bytes]], set[str]]
             | None = None) -> tuple[list[Finding], list[str], dict[str, bytes]]:
    """Walk a zip archive: check its structure and scan each member's content.

    Args:
        data: the whole archive.
        where: its location.
        budget: the shared inflation and time budget.
        depth: nesting depth of this archive (0 for a file on disk).
        scan_member: the content dispatcher for members.
        raw_members: given the member names and the contents of the members scanned first (the
            ``*.pkl`` ones), returns the names that hold raw tensor bytes (torch storages): their CRC
            is checked but their content is not dispatched.

    Returns:
        (findings, member names, the content of the small JSON members at the archive's root that
        describe whole-archive formats: ``schema.json`` of skops, ``config.json`` of Keras).
    """
    view = memoryview(data)
    end = _zip_end(view, where)
    if end is None:
        return [_find(where, "high", "zip.no-directory", "a zip without an end-of-central-directory "
                      "record (truncated or not a zip)", 0)], [], {}
    eocd, count, cd_size, cd_offset, _, findings = end
    concat = eocd - cd_size - cd_offset
    if concat < 0 or cd_offset + concat + cd_size > len(view):
        return [*findings, _find(where, "high", "zip.central-corrupt",
                                 "the central directory lies outside the file", eocd)], [], {}
    members, more = _central(view, cd_offset + concat, cd_offset + concat + cd_size, count, where,
                             budget.limits)
    findings += more
    first_local = min((m.local_offset for m in members), default=cd_offset) + concat
    if first_local > 0:
        findings.append(_find(where, "medium", "zip.prepended-data",
                              f"{first_local} bytes precede the first zip member (a polyglot or a "
                              "self-extracting stub)", 0))
    names: dict[str, int] = {}
    for m in members:
        if m.name in names:
            findings.append(_find(where.inner(m.name), "high", "zip.duplicate-name",
                                  f"member name {m.name!r} appears twice: readers disagree on which is "
                                  "loaded", m.local_offset + concat))
        names[m.name] = names.get(m.name, 0) + 1
        if m.name.startswith(("/", "\\")) or ".." in m.name.replace("\\", "/").split("/") or ":" in m.name:
            findings.append(_find(where.inner(m.name), "high", "zip.path-traversal",
                                  f"member name {m.name!r} leaves the extraction folder",
                                  m.local_offset + concat))
    ranges: list[tuple[int, int, str]] = []
    for m in members:
        findings += _check_local(view, m, concat, where)
        if m.data_offset >= 0:
            ranges.append((m.local_offset + concat, m.data_offset + m.csize, m.name))
    ranges.sort()
    for (_, a1, an), (b0, _, bn) in itertools.pairwise(ranges):
        if b0 < a1:
            findings.append(_find(where.inner(bn), "high", "zip.overlap",
                                  f"member {bn!r} overlaps member {an!r} (an overlapping zip bomb, or two "
                                  "names for one content)", b0))
    # members holding pickles named *.pkl go first: torch's data.pkl names the raw storage members
    order = sorted(members, key=lambda m: (not m.name.endswith(".pkl"), m.local_offset))
    contents: dict[str, bytes] = {}
    kept: dict[str, bytes] = {}
    raw: set[str] = set()
    decided = False
    for m in order:
        if not decided and not m.name.endswith(".pkl"):
            decided = True
            if raw_members is not None:
                raw = raw_members([x.name for x in members], contents)
        if budget.out_of_time():
            findings.append(_find(where, "medium", "scan.time-limit",
                                  f"time limit of {budget.limits.max_seconds} s reached; members left "
                                  "unscanned", None))
            break
        body, extra = _member_bytes(view, m, budget, where, keep=m.name not in raw)
        findings += extra
        if body is None or m.name in raw:
            continue
        if m.name.endswith("data.pkl") and len(contents) < 16 and len(body) <= _MAX_INDEX_PICKLE:
            contents[m.name] = bytes(body)
        if m.name in _DESCRIPTORS and len(body) <= 64 << 20:
            kept[m.name] = bytes(body)
        findings += scan_member(body, where.inner(m.name), depth)
    return findings, [m.name for m in members], kept


def _check_local(view: memoryview, m: ZipMember, concat: int, where: Location) -> list[Finding]:
    inner = where.inner(m.name)
    at = m.local_offset + concat
    out: list[Finding] = []
    if at < 0 or at + 30 > len(view) or bytes(view[at:at + 4]) != _LOCAL:
        return [_find(inner, "high", "zip.local-corrupt",
                      f"member {m.name!r} has no local header at offset {at}", at)]
    (_, _, lflags, lmethod, _, _, lcrc, lcsize, lusize, nlen, xlen) = struct.unpack(
        "<4sHHHHHIIIHH", view[at:at + 30])
    lname_raw = bytes(view[at + 30:at + 30 + nlen])
    lname = lname_raw.decode("utf-8" if lflags & 0x800 else "cp437", "replace")
    if lname != m.name:
        out.append(_find(inner, "high", "zip.name-mismatch",
                         f"local header names {lname!r} but the central directory names {m.name!r}: "
                         "readers disagree on what this member is", at))
    if (m.flags | lflags) & 0x1 or (m.flags | lflags) & 0x40:
        out.append(_find(inner, "high", "zip.encrypted",
                         f"member {m.name!r} is flagged encrypted: readers that honour the flag skip it, "
                         "torch does not (its bytes are scanned as stored)", at))
    if lmethod != m.method:
        out.append(_find(inner, "high", "zip.method-mismatch",
                         f"local compression method {lmethod} differs from the central one {m.method}", at))
    if not lflags & 0x8 and (lcrc, lcsize) != (m.crc, m.csize) and lcsize != 0xFFFFFFFF:
        out.append(_find(inner, "medium", "zip.header-mismatch",
                         "local and central headers disagree on the CRC or the compressed size", at))
    m.data_offset = at + 30 + nlen + xlen
    if m.data_offset + m.csize > len(view):
        out.append(_find(inner, "high", "zip.truncated",
                         f"member {m.name!r} runs past the end of the file", at))
        m.data_offset = -1
    del lusize
    return out


def _member_bytes(view: memoryview, m: ZipMember, budget: Budget, where: Location, *,
                  keep: bool) -> tuple[bytes | memoryview | None, list[Finding]]:
    inner = where.inner(m.name)
    limits = budget.limits
    if m.data_offset < 0:  # an encryption flag is reported, and the bytes are scanned as they are
        return None, []
    raw = view[m.data_offset:m.data_offset + m.csize]
    if m.method == 0:
        if m.csize != m.usize:
            return None, [_find(inner, "high", "zip.size-mismatch",
                                f"stored member of {m.csize} bytes declares {m.usize} bytes", m.data_offset)]
        crc = zlib.crc32(raw)
        body: bytes | memoryview = raw
    else:
        if m.usize > limits.max_decompressed_bytes - budget.inflated or (
                m.usize > (1 << 20) and m.usize > limits.max_ratio * max(m.csize, 1)):
            return None, [_find(inner, "high", "zip.bomb",
                                f"member {m.name!r} declares {m.usize} bytes from {m.csize} (ratio "
                                f"{m.usize / max(m.csize, 1):.0f}, limit {limits.max_ratio:g}; budget "
                                f"{limits.max_decompressed_bytes - budget.inflated} bytes): not inflated",
                                m.data_offset)]
        try:
            body, produced, crc = _inflate(raw, m.method, m.usize, budget, keep=keep)
        except _InflateLimit as exc:
            return None, [_find(inner, "high", "zip.bomb", f"member {m.name!r}: {exc}", m.data_offset)]
        except (ValueError, OSError, zlib.error, lzma.LZMAError, EOFError) as exc:
            sev: Severity = "medium" if m.method in (8, 12, 14) else "high"
            code = "zip.corrupt-data" if m.method in (8, 12, 14) else "zip.unsupported-method"
            return None, [_find(inner, sev, code, f"member {m.name!r} cannot be inflated: {exc}",
                                m.data_offset)]
        if produced != m.usize:
            return None, [_find(inner, "high", "zip.size-mismatch",
                                f"member {m.name!r} inflates to {produced} bytes, not the declared "
                                f"{m.usize}", m.data_offset)]
    if crc != m.crc:
        return body, [_find(inner, "high", "zip.crc-mismatch",
                            f"member {m.name!r} has CRC {crc:08x}, the directory says {m.crc:08x}",
                            m.data_offset)]
    return body, []


def inflate_stream(data: bytes | memoryview, kind: str, budget: Budget, where: Location) -> tuple[
        bytes | None, list[Finding]]:
    """Decompress a whole gzip/zlib/bz2/xz/lzma stream (joblib's compressed files), bounded by the
    ratio and the budget. Returns (bytes or None, findings)."""
    limits = budget.limits
    cap = int(min(limits.max_decompressed_bytes - budget.inflated,
                  max(limits.max_ratio * len(data), 1 << 20)))
    if kind == "gzip":
        dec: _Decompressor = zlib.decompressobj(16 + 15)
    elif kind == "zlib":
        dec = zlib.decompressobj(15)
    elif kind == "bz2":
        dec = bz2.BZ2Decompressor()
    elif kind in ("xz", "lzma"):
        dec = lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
    else:
        return None, [_find(where, "medium", "compressed.unknown", f"unknown compression {kind!r}", 0)]
    view = memoryview(data)
    out = io.BytesIO()
    try:
        for chunk in _chunks(dec, view, budget):
            out.write(chunk)
            if out.tell() > cap:
                return None, [_find(where, "high", "compressed.bomb",
                                    f"{kind} stream inflates past {cap} bytes (ratio limit "
                                    f"{limits.max_ratio:g}, budget "
                                    f"{limits.max_decompressed_bytes - budget.inflated})",
                                    0)]
    except _InflateLimit as exc:
        return None, [_find(where, "medium", "scan.time-limit", str(exc), 0)]
    except (ValueError, OSError, zlib.error, lzma.LZMAError, EOFError) as exc:
        return None, [_find(where, "medium", "compressed.corrupt", f"the {kind} stream is corrupt: {exc}", 0)]
    pos = len(view)
    findings: list[Finding] = []
    if not dec.eof:
        findings.append(_find(where, "medium", "compressed.truncated", f"the {kind} stream is truncated",
                              pos))
    else:
        unused = dec.unused_data
        if unused:
            findings.append(_find(where, "medium", "compressed.trailing-data",
                                  f"{len(unused)} bytes follow the {kind} stream", len(view) - len(unused)))
    budget.inflated += out.tell()
    return out.getvalue(), findings


_LINK_TYPES = (tarfile.SYMTYPE, tarfile.LNKTYPE)


def scan_tar(data: bytes | memoryview, *, where: Location, budget: Budget, depth: int,
             scan_member: MemberScanner, legacy_torch: Callable[[dict[str, bytes], Location], list[Finding]]
             | None = None) -> list[Finding]:
    """Walk a tar archive: links, traversal, device files and each member's content.

    ``legacy_torch``, when the tar holds torch's legacy members (``sys_info``, ``pickle``,
    ``storages``, ``tensors``), walks those by torch's layout instead of the generic dispatch.
    """
    findings: list[Finding] = []
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            count = 0
            for info in tar:
                count += 1
                inner = where.inner(info.name)
                if count > budget.limits.max_members:
                    findings.append(_find(where, "medium", "tar.too-many-members",
                                          f"more than {budget.limits.max_members} members", None))
                    break
                if budget.out_of_time():
                    findings.append(_find(where, "medium", "scan.time-limit", "time limit reached", None))
                    break
                parts = info.name.replace("\\", "/").split("/")
                if info.name.startswith(("/", "\\")) or ".." in parts:
                    findings.append(_find(inner, "high", "tar.path-traversal",
                                          f"member {info.name!r} leaves the extraction folder", info.offset))
                if info.type in _LINK_TYPES:
                    target = info.linkname.replace("\\", "/")
                    leaves = target.startswith("/") or ".." in target.split("/")
                    sev: Severity = "high" if leaves else "low"  # a link inside the archive: its target
                    # is a member scanned on its own
                    findings.append(_find(inner, sev, "tar.link",
                                          f"member {info.name!r} is a link to {info.linkname!r}",
                                          info.offset))
                    continue
                if info.isdev() or info.isfifo():
                    findings.append(_find(inner, "high", "tar.special-file",
                                          f"member {info.name!r} is a device or FIFO", info.offset))
                    continue
                if not info.isfile():
                    continue
                if info.name in members or (info.name in ("sys_info", "pickle", "storages", "tensors") and \
                        info.name in members):
                    findings.append(_find(inner, "high", "tar.duplicate-name",
                                          f"member name {info.name!r} appears twice", info.offset))
                handle = tar.extractfile(info)
                body = handle.read() if handle is not None else b""
                members[info.name] = body
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        findings.append(_find(where, "medium", "tar.corrupt", f"the tar archive is corrupt: {exc}", None))
    legacy = legacy_torch is not None and {"pickle", "storages"} <= set(members)
    if legacy and legacy_torch is not None:
        findings += legacy_torch(members, where)
    for name, body in members.items():
        if legacy and name in ("pickle", "storages", "tensors", "sys_info"):
            continue
        findings += scan_member(body, where.inner(name), depth)
    return findings
