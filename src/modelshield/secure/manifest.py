"""Dataset integrity manifests: every file's SHA-256, size and rows, under one Merkle root.

``create_manifest(root)`` walks a folder (or takes one file) without following symbolic links and
records, for every regular file, its relative POSIX path, size and SHA-256. Tabular and text files
also get a row count and row digests, so that ``verify_manifest`` can say *which* rows were
edited, inserted or deleted, like a unified diff:

- ``.csv``: CSV records (quoted fields may span lines), parsed with :mod:`csv` as UTF-8. A file
  that is not UTF-8 or has a field over :func:`csv.field_size_limit` falls back to lines (noted).
- ``.tsv``, ``.txt``, ``.jsonl``, ``.ndjson``: lines, without the ``\\n`` or ``\\r\\n`` ending.
- ``.parquet``: table rows, through pyarrow when it is installed (the ``parquet`` extra).

Rows are numbered from 1 and every record counts (a CSV header is row 1).

**Compact row digests.** A row digest is the first 8 bytes of the SHA-256 of the row (of its
fields, JSON-encoded, for CSV and Parquet). They only *locate* changes: integrity rests on the full
SHA-256 of each file and on the Merkle root; a 64-bit digest misses a changed row with probability
2**-64. Up to ``row_limit`` rows (default 1,000,000, i.e. 8 MB per file) a file keeps one digest
per row. Beyond that its rows are grouped into content-defined blocks (a block ends after a row
whose digest is 0 modulo ``block_rows``, as in LBFS's and rsync's content-defined chunking,
Muthitacharoen et al., SOSP 2001; at most 8 x ``block_rows`` rows), each stored as an 8-byte
digest and a row count. An inserted or deleted row then changes only the block around it, and
``verify`` names the row range of each changed block. Digests are stored packed and base64
encoded in the JSON, so memory and manifest size stay proportional to ``rows / block_rows`` for
big files, and all reading is streamed in 1 MiB chunks.

**Merkle root.** The file entries, sorted by path, are the leaves of an RFC 6962 Merkle tree
(Certificate Transparency, section 2.1): ``leaf = SHA-256(0x00 || entry)``,
``node = SHA-256(0x01 || left || right)``, where ``entry`` is the canonical JSON of
``[path, size, sha256, row kind, row count, row granularity, SHA-256 of the row digests]``. The
empty tree's root is ``SHA-256("")``. ``verify`` recomputes the root both from the manifest's own
entries (so an edited manifest is caught) and from the files on disk.

**Hostile trees.** Symbolic links (including loops) are never followed: they are listed as refused,
as are FIFOs, sockets, devices and files or folders that cannot be read. Nothing here raises for a
bad file inside the tree; only a bad ``root`` or a malformed manifest raises.

Example:
    manifest = create_manifest("data/")
    manifest.save("data.manifest.json")
    diff = verify_manifest(Manifest.load("data.manifest.json"), "data/")
    print(diff.ok, diff.added, diff.removed, [c.path for c in diff.changed])
"""

from __future__ import annotations

import base64
import csv
import difflib
import fnmatch
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelshield._io import write_atomic
from modelshield.errors import ConfigError, DataError, MissingDataError

__all__ = [
    "SCHEMA",
    "FileChange",
    "FileEntry",
    "Manifest",
    "ManifestDiff",
    "Refused",
    "RowDiff",
    "RowDigest",
    "RowHunk",
    "check_plain_path",
    "create_manifest",
    "merkle_root",
    "open_regular",
    "verify_manifest",
    "walk_tree",
]

SCHEMA = "modelshield.manifest/1"
"""The ``schema`` field of a manifest's JSON; a reader refuses any other value."""

ROW_LIMIT = 1_000_000
BLOCK_ROWS = 1024
_DIGEST = 8  # bytes kept of each row / block SHA-256
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 1 << 30

_ROW_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # a CSV record's canonical form
_PARQUET_JSON = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))

RowKind = Literal["csv", "lines", "parquet"]
_ROW_KINDS: dict[str, RowKind] = {
    ".csv": "csv", ".tsv": "lines", ".txt": "lines", ".jsonl": "lines", ".ndjson": "lines",
    ".parquet": "parquet",
}


# ----------------------------------------------------------------------------------------------
# Result and record types
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RowDigest:
    """Row count and packed row digests of one tabular or text file.

    ``granularity == "row"``: ``digests`` holds 8 bytes per row. ``"block"``: 12 bytes per
    content-defined block (8-byte digest, then the block's row count as a big-endian uint32).
    """

    kind: RowKind
    count: int
    granularity: Literal["row", "block"]
    digests: bytes = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "granularity": self.granularity,
                "digests": base64.b64encode(self.digests).decode("ascii")}

    def blocks(self, block_rows: int) -> list[tuple[bytes, int]]:
        """The (digest, row count) blocks of these rows (rows are grouped as when streamed)."""
        if self.granularity == "block":
            d = self.digests
            return [(d[i:i + _DIGEST], int.from_bytes(d[i + _DIGEST:i + _DIGEST + 4], "big"))
                    for i in range(0, len(d), _DIGEST + 4)]
        acc = _Blocks(block_rows)
        for i in range(0, len(self.digests), _DIGEST):
            acc.add(self.digests[i:i + _DIGEST])
        return acc.finish()

    def rows(self) -> list[bytes]:
        """One 8-byte digest per row (only for ``granularity == "row"``)."""
        return [self.digests[i:i + _DIGEST] for i in range(0, len(self.digests), _DIGEST)]


@dataclass(frozen=True, kw_only=True, slots=True)
class FileEntry:
    """One regular file: relative POSIX path, size in bytes, SHA-256 and (tabular/text) rows."""

    path: str
    size: int
    sha256: str
    rows: RowDigest | None = None
    note: str = ""  # why rows were read another way or not at all

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.rows is not None:
            out["rows"] = self.rows.to_dict()
        if self.note:
            out["note"] = self.note
        return out

    def leaf(self) -> bytes:
        """The canonical bytes of this entry hashed into the Merkle tree."""
        rows = self.rows
        fields = [self.path, self.size, self.sha256,
                  rows.kind if rows else None, rows.count if rows else None,
                  rows.granularity if rows else None,
                  hashlib.sha256(rows.digests).hexdigest() if rows else None]
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused:
    """A path that was not hashed: a symbolic link, a special file, or one that cannot be read."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """Every regular file under a root with its digest, plus the Merkle root over the entries."""

    files: tuple[FileEntry, ...]
    root: str
    refused: tuple[Refused, ...] = ()
    exclude: tuple[str, ...] = ()
    row_limit: int = ROW_LIMIT
    block_rows: int = BLOCK_ROWS
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "hash": "sha256", "root": self.root,
                "n_files": len(self.files), "n_bytes": sum(f.size for f in self.files),
                "row_limit": self.row_limit, "block_rows": self.block_rows,
                "exclude": list(self.exclude),
                "files": [f.to_dict() for f in self.files],
                "refused": [r.to_dict() for r in self.refused]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=True) + "\n"

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the JSON atomically; an existing file is replaced only with ``force``."""
        return write_atomic(path, self.to_json(), force=force)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "manifest") -> Manifest:
        """Rebuild a manifest from :meth:`to_dict`'s output; DataError naming the first bad field."""
        return _manifest_from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest JSON file (DataError when missing, too big or malformed)."""
        p = Path(path).expanduser()
        try:
            with open_regular(p, follow_symlinks=True) as fh:
                blob = fh.read(_MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise MissingDataError(
                f"Manifest.load: the manifest file must exist; got {str(p)!r}, which does not. "
                "Create one with 'modelshield manifest create'."
            ) from None
        except OSError as exc:
            raise DataError(f"Manifest.load: cannot read {str(p)!r} ({exc.strerror or exc}). "
                            "Check the path and its permissions.") from None
        if len(blob) > _MAX_MANIFEST_BYTES:
            raise DataError(f"Manifest.load: a manifest must be at most 1 GiB; {str(p)!r} is larger. "
                            "Check that this is a modelshield manifest.")
        try:
            data = json.loads(blob)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"Manifest.load: {str(p)!r} is not valid JSON ({exc}). "
                            "Recreate it with 'modelshield manifest create'.") from None
        return _manifest_from_dict(data, str(p))


@dataclass(frozen=True, kw_only=True, slots=True)
class RowHunk:
    """A run of rows that differ, numbered from 1: old rows ``old_start..old_start+old_count-1``
    became new rows ``new_start..new_start+new_count-1`` (a count of 0 means none on that side)."""

    kind: Literal["changed", "added", "removed"]
    old_start: int
    old_count: int
    new_start: int
    new_count: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "old_start": self.old_start, "old_count": self.old_count,
                "new_start": self.new_start, "new_count": self.new_count}

    def describe(self) -> str:
        def span(start: int, count: int) -> str:
            return f"row {start}" if count == 1 else f"rows {start}-{start + count - 1}"

        if self.kind == "added":
            return f"{span(self.new_start, self.new_count)} added"
        if self.kind == "removed":
            return f"{span(self.old_start, self.old_count)} removed"
        if self.old_start == self.new_start and self.old_count == self.new_count:
            return f"{span(self.new_start, self.new_count)} changed"
        return f"{span(self.old_start, self.old_count)} changed (now {span(self.new_start, self.new_count)})"


@dataclass(frozen=True, kw_only=True, slots=True)
class RowDiff:
    """Which rows of a changed tabular/text file differ (exact for ``granularity == "row"``; for
    ``"block"`` each hunk covers the content-defined blocks that hold the changed rows)."""

    granularity: Literal["row", "block"]
    old_rows: int
    new_rows: int
    hunks: tuple[RowHunk, ...]

    def _rows(self, kind: str, side: str) -> set[int]:
        out: set[int] = set()
        for h in self.hunks:
            if h.kind == kind:
                start, count = (h.old_start, h.old_count) if side == "old" else (h.new_start, h.new_count)
                out.update(range(start, start + count))
        return out

    @property
    def changed_rows(self) -> set[int]:
        """Numbers (in the new file) of rows whose content changed."""
        return self._rows("changed", "new")

    @property
    def added_rows(self) -> set[int]:
        """Numbers (in the new file) of inserted rows."""
        return self._rows("added", "new")

    @property
    def removed_rows(self) -> set[int]:
        """Numbers (in the old file) of deleted rows."""
        return self._rows("removed", "old")

    def to_dict(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "old_rows": self.old_rows, "new_rows": self.new_rows,
                "hunks": [h.to_dict() for h in self.hunks]}


@dataclass(frozen=True, kw_only=True, slots=True)
class FileChange:
    """A file present in both the manifest and the tree whose content differs."""

    path: str
    old_sha256: str
    new_sha256: str
    old_size: int
    new_size: int
    rows: RowDiff | None = None
    note: str = ""

    def describe(self) -> str:
        if self.rows is None:
            note = f"; {self.note}" if self.note else ""
            return f"{self.path}: changed ({self.old_size} -> {self.new_size} bytes){note}"
        if not self.rows.hunks:
            return (f"{self.path}: changed ({self.old_size} -> {self.new_size} bytes) but every row is "
                    "the same: only formatting (quoting, line endings) changed")
        return f"{self.path}: " + ", ".join(h.describe() for h in self.rows.hunks)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "old_sha256": self.old_sha256, "new_sha256": self.new_sha256,
                "old_size": self.old_size, "new_size": self.new_size,
                "rows": self.rows.to_dict() if self.rows else None, "note": self.note}


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestDiff:
    """What differs between a manifest and the files now under its root.

    ``ok`` holds when nothing was added, removed, changed or refused, the manifest's stored root
    matches its own entries (``manifest_intact``) and the tree's root equals it.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[FileChange, ...]
    refused: tuple[Refused, ...]
    root_expected: str
    root_actual: str
    manifest_intact: bool

    @property
    def ok(self) -> bool:
        return (not (self.added or self.removed or self.changed or self.refused)
                and self.manifest_intact and self.root_expected == self.root_actual)

    def problems(self) -> list[str]:
        """One line per problem found (empty when ``ok``)."""
        lines: list[str] = []
        if not self.manifest_intact:
            lines.append("the manifest's root does not match its own entries: the manifest was edited")
        lines += [f"{p}: added" for p in self.added]
        lines += [f"{p}: removed" for p in self.removed]
        lines += [c.describe() for c in self.changed]
        lines += [f"{r.path}: refused ({r.reason})" for r in self.refused]
        if self.root_expected != self.root_actual:
            lines.append(f"Merkle root mismatch: manifest {self.root_expected}, files {self.root_actual}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "added": list(self.added), "removed": list(self.removed),
                "changed": [c.to_dict() for c in self.changed],
                "refused": [r.to_dict() for r in self.refused],
                "root_expected": self.root_expected, "root_actual": self.root_actual,
                "manifest_intact": self.manifest_intact, "problems": self.problems()}


# ----------------------------------------------------------------------------------------------
# Merkle tree (RFC 6962, section 2.1)
# ----------------------------------------------------------------------------------------------


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash of the leaf data (SHA-256; 0x00 leaf and 0x01 node prefixes).

    MTH({}) = SHA-256(""); MTH({d}) = SHA-256(0x00 || d); for n > 1, with k the largest power of
    two below n, MTH(D) = SHA-256(0x01 || MTH(D[:k]) || MTH(D[k:])). Computed bottom-up, which
    gives the same tree: carrying an odd last node up unchanged is exactly the k-split.
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [hashlib.sha256(b"\x00" + d).digest() for d in leaves]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _root_of(files: Sequence[FileEntry]) -> str:
    return merkle_root([f.leaf() for f in sorted(files, key=lambda f: f.path)]).hex()


# ----------------------------------------------------------------------------------------------
# Row digests
# ----------------------------------------------------------------------------------------------


class _Blocks:
    """Groups a stream of 8-byte row digests into content-defined blocks."""

    def __init__(self, block_rows: int) -> None:
        self.block_rows = block_rows
        self.blocks: list[tuple[bytes, int]] = []
        self._h = hashlib.sha256()
        self._n = 0

    def add(self, d: bytes) -> None:
        self._h.update(d)
        self._n += 1
        if int.from_bytes(d[4:8], "big") % self.block_rows == 0 or self._n >= 8 * self.block_rows:
            self._close()

    def _close(self) -> None:
        if self._n:
            self.blocks.append((self._h.digest()[:_DIGEST], self._n))
        self._h, self._n = hashlib.sha256(), 0

    def finish(self) -> list[tuple[bytes, int]]:
        self._close()
        return self.blocks


class _Rows:
    """Accumulates row digests: one per row up to row_limit rows, then content-defined blocks."""

    def __init__(self, kind: RowKind, row_limit: int, block_rows: int) -> None:
        self.kind, self.row_limit, self.block_rows = kind, row_limit, block_rows
        self.count = 0
        self._rows = bytearray()
        self._blocks: _Blocks | None = None

    def add(self, data: bytes) -> None:
        self.add_digest(hashlib.sha256(data).digest()[:_DIGEST])

    def add_digest(self, d: bytes) -> None:
        self.count += 1
        if self._blocks is not None:
            self._blocks.add(d)
            return
        self._rows += d
        if self.count > self.row_limit:
            self._blocks = _Blocks(self.block_rows)
            for i in range(0, len(self._rows), _DIGEST):
                self._blocks.add(bytes(self._rows[i:i + _DIGEST]))
            self._rows = bytearray()

    def finish(self) -> RowDigest:
        if self._blocks is None:
            return RowDigest(kind=self.kind, count=self.count, granularity="row", digests=bytes(self._rows))
        packed = b"".join(d + n.to_bytes(4, "big") for d, n in self._blocks.finish())
        return RowDigest(kind=self.kind, count=self.count, granularity="block", digests=packed)


class _TeeReader(io.RawIOBase):
    """A raw reader that feeds every byte it returns into a SHA-256 and counts them."""

    def __init__(self, fh: io.BufferedReader) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._fh.readinto(b)
        if n:
            self.digest.update(memoryview(b)[:n])
            self.size += n
        return n or 0


def _line_rows(fh: io.BufferedReader, rows: _Rows, digest: Any) -> int:
    """Hash the stream and its lines (without ``\\n`` / ``\\r\\n``), 1 MiB at a time; return its size.

    A line's digest does not depend on where the chunks split it: a ``\\r`` ending a chunk is held
    back until the next byte shows whether it ends the line.
    """
    size = 0
    line = hashlib.sha256()
    pending = False  # the current line has begun
    held_cr = False
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if held_cr:
                held_cr = False
                if last or part:  # not directly followed by \n: the \r is part of the line
                    line.update(b"\r")
            if last:
                if part.endswith(b"\r"):
                    part, held_cr = part[:-1], True
                if part or held_cr:
                    line.update(part)
                    pending = True
                continue
            line.update(part[:-1] if part.endswith(b"\r") else part)
            rows.add_digest(line.digest()[:_DIGEST])
            line, pending = hashlib.sha256(), False
    if pending:  # a last line without \n (a final \r is dropped, as before \n)
        rows.add_digest(line.digest()[:_DIGEST])
    return size


def _csv_rows(fh: io.BufferedReader, rows: _Rows) -> tuple[str, int]:
    """Hash the stream and its CSV records; raise csv.Error / UnicodeDecodeError when not CSV."""
    tee = _TeeReader(fh)
    text = io.TextIOWrapper(io.BufferedReader(tee, _CHUNK), encoding="utf-8", newline="")
    encode, sha256, add = _ROW_JSON.encode, hashlib.sha256, rows.add_digest
    for record in csv.reader(text):
        add(sha256(encode(record).encode("utf-8", "surrogatepass")).digest()[:_DIGEST])
    return tee.digest.hexdigest(), tee.size


def _parquet_rows(fh: io.BufferedReader, rows: _Rows) -> str:
    """Hash a Parquet file's rows through pyarrow; return a note ('' when read)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return "rows not read: pyarrow is not installed (pip install 'modelshield[parquet]')"
    try:
        fh.seek(0)
        pf = pq.ParquetFile(fh)
        for batch in pf.iter_batches(batch_size=65536):
            for record in batch.to_pylist():
                rows.add(_PARQUET_JSON.encode(record).encode("utf-8", "surrogatepass"))
    except Exception as exc:  # pyarrow raises many types for a corrupt file; the file is still hashed
        return f"rows not read: not a readable Parquet file ({type(exc).__name__}: {_short(exc)})"
    return ""


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


# ----------------------------------------------------------------------------------------------
# Walking and hashing
# ----------------------------------------------------------------------------------------------


def open_regular(path: str | Path, *, follow_symlinks: bool = False) -> io.BufferedReader:
    """Open a regular file for reading, never blocking on a FIFO and (by default) never through a
    symbolic link. Raises OSError for a link (unless follow_symlinks), a FIFO, socket or device."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{str(path)!r} is not a regular file ({_kind_of(os.fstat(fd).st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.BufferedReader(io.FileIO(fd, "rb", closefd=True), buffer_size=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def _hash_file(path: str, rel: str, *, row_limit: int, block_rows: int) -> FileEntry:
    """Stream one regular file: SHA-256, size and (by extension) rows. Raises OSError."""
    kind = _ROW_KINDS.get(os.path.splitext(rel)[1].lower())
    with open_regular(path) as fh:
        if kind is None:
            digest = hashlib.sha256()
            size = 0
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
            return FileEntry(path=rel, size=size, sha256=digest.hexdigest())
        rows = _Rows(kind, row_limit, block_rows)
        note = ""
        if kind == "csv":
            try:
                sha, size = _csv_rows(fh, rows)
                return FileEntry(path=rel, size=size, sha256=sha, rows=rows.finish())
            except (csv.Error, UnicodeDecodeError) as exc:
                fh.seek(0)
                rows = _Rows("lines", row_limit, block_rows)
                note = f"rows are lines: not read as CSV ({type(exc).__name__}: {_short(exc)})"
        if kind == "parquet":
            digest = hashlib.sha256()
            size = 0
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
            note = _parquet_rows(fh, rows)
            return FileEntry(path=rel, size=size, sha256=digest.hexdigest(),
                             rows=None if note else rows.finish(), note=note)
        digest = hashlib.sha256()
        size = _line_rows(fh, rows, digest)
        return FileEntry(path=rel, size=size, sha256=digest.hexdigest(), rows=rows.finish(), note=note)


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    for pat in patterns:
        p = pat.rstrip("/")
        if rel == p or rel.startswith(p + "/") or fnmatch.fnmatchcase(rel, pat):
            return True
    return False


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def walk_tree(root: Path, exclude: Sequence[str] = ()) -> Iterator[tuple[str, str, str | None]]:
    """Yield (path, relative POSIX path, None) for each regular file under root, and (path, relative
    path, reason) for each symbolic link, special file or unreadable entry; skip ``exclude``.

    Iterative (no recursion limit on deep trees); never follows a symbolic link.
    """
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield folder, prefix or ".", f"folder cannot be read ({exc.strerror or exc})"
            continue
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if _excluded(rel, exclude):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                yield entry.path, rel, f"cannot be read ({exc.strerror or exc})"
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    target = "?"
                yield entry.path, rel, f"symbolic link to {target!r}, not followed"
            elif stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                yield entry.path, rel, None
            else:
                yield entry.path, rel, f"{_kind_of(st.st_mode)}, not read"


def check_plain_path(path: str | Path, *, owner: str, what: str) -> Path:
    """``path`` as a Path when it is an existing folder or regular file that is not a symbolic
    link (manifests and signatures never follow links); one clear error otherwise.

    Raises:
        MissingDataError: it does not exist. DataError: it is a link, a special file, or unreadable.
    """
    p = Path(path).expanduser()
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise MissingDataError(f"{owner}: {what} must be an existing folder or file; got {str(p)!r}, "
                               "which does not exist. Check the path.") from None
    except OSError as exc:
        raise DataError(f"{owner}: cannot read {what} {str(p)!r} ({exc.strerror or exc}). "
                        "Check its permissions.") from None
    if stat.S_ISLNK(st.st_mode):
        raise DataError(f"{owner}: {what} must not be a symbolic link; got {str(p)!r} -> "
                        f"{os.readlink(p)!r}. Pass the real path ({os.path.realpath(p)!r}) after "
                        "checking it.")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise DataError(f"{owner}: {what} must be a folder or a regular file; got {str(p)!r}, which is "
                        f"{_kind_of(st.st_mode)}. Pass a folder or a regular file.")
    return p


def _check_exclude(exclude: Sequence[str], owner: str) -> tuple[str, ...]:
    if isinstance(exclude, str) or not all(isinstance(p, str) and p for p in exclude):
        raise ConfigError(f"{owner}: 'exclude' must be a sequence of non-empty relative paths or glob "
                          f"patterns; got {exclude!r}. Pass e.g. exclude=('manifest.json',).")
    return tuple(exclude)


def create_manifest(
    root: str | Path,
    *,
    exclude: Sequence[str] = (),
    row_limit: int = ROW_LIMIT,
    block_rows: int = BLOCK_ROWS,
    progress: Callable[[int, int | None, str], None] | None = None,
) -> Manifest:
    """Build the manifest of every regular file under root (or of root itself, a single file).

    Args:
        root: a data folder, or one data file (its entry's path is then its name).
        exclude: relative POSIX paths (a folder excludes its subtree) or glob patterns to leave out,
            e.g. the manifest file itself when it lives inside root. Recorded in the manifest.
        row_limit: files with more rows keep content-defined block digests instead of row digests.
        block_rows: the expected rows per block (blocks hold at most 8 x as many).
        progress: optional ``progress(done, total, path)`` callback, called after each file.

    Returns:
        The manifest; symbolic links, special and unreadable files are listed in ``refused``.

    Raises:
        MissingDataError / DataError: root does not exist, is a symlink or a special file.
        ConfigError: a bad ``exclude``, ``row_limit`` or ``block_rows``.
    """
    owner = "create_manifest"
    base = check_plain_path(root, owner=owner, what="the root")
    patterns = _check_exclude(exclude, owner)
    for name, value in (("row_limit", row_limit), ("block_rows", block_rows)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{owner}: {name!r} must be an int >= 1; got {value!r}. "
                              f"Use the default ({ROW_LIMIT if name == 'row_limit' else BLOCK_ROWS}).")
    items = list(walk_tree(base, patterns)) if base.is_dir() else [(str(base), base.name, None)]
    files: list[FileEntry] = []
    refused: list[Refused] = []
    for i, (path, rel, reason) in enumerate(items):
        if reason is not None:
            refused.append(Refused(path=rel, reason=reason))
        else:
            try:
                files.append(_hash_file(path, rel, row_limit=row_limit, block_rows=block_rows))
            except OSError as exc:
                refused.append(Refused(path=rel, reason=f"cannot be read ({exc.strerror or exc})"))
        if progress is not None:
            progress(i + 1, len(items), rel)
    files.sort(key=lambda f: f.path)
    refused.sort(key=lambda r: r.path)
    return Manifest(files=tuple(files), root=_root_of(files), refused=tuple(refused), exclude=patterns,
                    row_limit=row_limit, block_rows=block_rows)


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------


def _opcodes(old: Sequence[bytes], new: Sequence[bytes]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes (not 'equal') after trimming the common prefix and suffix (fast path)."""
    lo = 0
    limit = min(len(old), len(new))
    while lo < limit and old[lo] == new[lo]:
        lo += 1
    hi = 0
    while hi < limit - lo and old[len(old) - 1 - hi] == new[len(new) - 1 - hi]:
        hi += 1
    a, b = old[lo:len(old) - hi], new[lo:len(new) - hi]
    if not a and not b:
        return []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=len(a) + len(b) > 20_000)
    return [(tag, i1 + lo, i2 + lo, j1 + lo, j2 + lo)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _hunks(opcodes: list[tuple[str, int, int, int, int]], old_starts: Sequence[int],
           new_starts: Sequence[int]) -> tuple[RowHunk, ...]:
    """Turn opcodes over units (rows or blocks) into row hunks; ``*_starts[k]`` is unit k's first
    row index (0-based), with one extra entry holding the row count."""
    out: list[RowHunk] = []

    def hunk(kind: Literal["changed", "added", "removed"], i1: int, i2: int, j1: int, j2: int) -> None:
        out.append(RowHunk(kind=kind, old_start=old_starts[i1] + 1, old_count=old_starts[i2] - old_starts[i1],
                           new_start=new_starts[j1] + 1, new_count=new_starts[j2] - new_starts[j1]))

    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "insert":
            hunk("added", i1, i1, j1, j2)
        elif tag == "delete":
            hunk("removed", i1, i2, j1, j1)
        else:  # replace: pair up rows as changed, the rest were added or removed
            m = min(i2 - i1, j2 - j1)
            hunk("changed", i1, i1 + m, j1, j1 + m)
            if i2 - i1 > m:
                hunk("removed", i1 + m, i2, j1 + m, j1 + m)
            if j2 - j1 > m:
                hunk("added", i1 + m, i1 + m, j1 + m, j2)
    return tuple(out)


def _diff_rows(old: RowDigest, new: RowDigest, block_rows: int) -> RowDiff | None:
    if old.kind != new.kind:
        return None
    if old.granularity == "row" and new.granularity == "row":
        a, b = old.rows(), new.rows()
        return RowDiff(granularity="row", old_rows=old.count, new_rows=new.count,
                       hunks=_hunks(_opcodes(a, b), range(len(a) + 1), range(len(b) + 1)))
    ob, nb = old.blocks(block_rows), new.blocks(block_rows)

    def starts(blocks: list[tuple[bytes, int]]) -> list[int]:
        out = [0]
        for _, n in blocks:
            out.append(out[-1] + n)
        return out

    return RowDiff(granularity="block", old_rows=old.count, new_rows=new.count,
                   hunks=_hunks(_opcodes([d for d, _ in ob], [d for d, _ in nb]), starts(ob), starts(nb)))


def verify_manifest(manifest: Manifest, root: str | Path) -> ManifestDiff:
    """Compare the files under root with a manifest; name every file and row that differs.

    The tree is hashed again exactly as :func:`create_manifest` would (same ``exclude``,
    ``row_limit`` and ``block_rows``). Symbolic links, special and unreadable files found now are
    listed in ``refused`` (and make the result not ok); none is ever followed or read.

    Raises:
        MissingDataError / DataError: root does not exist, is a symlink or a special file.
        ConfigError: manifest is not a :class:`Manifest`.
    """
    if not isinstance(manifest, Manifest):
        raise ConfigError(f"verify_manifest: 'manifest' must be a Manifest; got {type(manifest).__name__}. "
                          "Load one with Manifest.load(path).")
    now = create_manifest(root, exclude=manifest.exclude, row_limit=manifest.row_limit,
                          block_rows=manifest.block_rows)
    old = {f.path: f for f in manifest.files}
    new = {f.path: f for f in now.files}
    changed: list[FileChange] = []
    for path in sorted(old.keys() & new.keys()):
        a, b = old[path], new[path]
        if a.sha256 == b.sha256 and a.size == b.size:
            continue
        rows = _diff_rows(a.rows, b.rows, manifest.block_rows) if a.rows and b.rows else None
        note = "" if rows is not None or not (a.rows or b.rows) else "rows could not be compared"
        changed.append(FileChange(path=path, old_sha256=a.sha256, new_sha256=b.sha256, old_size=a.size,
                                  new_size=b.size, rows=rows, note=note))
    unreadable = {r.path for r in now.refused}  # named there, not also as removed
    return ManifestDiff(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys() - unreadable)),
        changed=tuple(changed),
        refused=now.refused,
        root_expected=manifest.root,
        root_actual=now.root,
        manifest_intact=_root_of(manifest.files) == manifest.root,
    )


# ----------------------------------------------------------------------------------------------
# JSON reading
# ----------------------------------------------------------------------------------------------


def _bad(source: str, what: str, value: object) -> DataError:
    shown = repr(value)
    shown = shown[:80] + "..." if len(shown) > 80 else shown
    return DataError(f"Manifest: {what} in {source}; got {shown}. Recreate the manifest with "
                     "'modelshield manifest create'.")


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str, where: str) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad(source, f"{where}{key!r} must be a {getattr(kind, '__name__', kind)}", value)
    return value


def _manifest_from_dict(data: object, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise _bad(source, "the manifest must be a JSON object", type(data).__name__)
    if data.get("schema") != SCHEMA:
        raise _bad(source, f"'schema' must be {SCHEMA!r}", data.get("schema"))
    root = _field(data, "root", str, source, "")
    files: list[FileEntry] = []
    for i, item in enumerate(_field(data, "files", list, source, "")):
        where = f"files[{i}]."
        if not isinstance(item, dict):
            raise _bad(source, f"files[{i}] must be an object", item)
        rows = None
        if item.get("rows") is not None:
            r = _field(item, "rows", dict, source, where)
            kind = r.get("kind")
            gran = r.get("granularity")
            if kind not in ("csv", "lines", "parquet") or gran not in ("row", "block"):
                raise _bad(source, f"{where}rows needs kind csv/lines/parquet, granularity row/block", r)
            try:
                digests = base64.b64decode(_field(r, "digests", str, source, where + "rows."), validate=True)
            except ValueError:
                raise _bad(source, f"{where}rows.digests must be base64", r.get("digests")) from None
            count = _field(r, "count", int, source, where + "rows.")
            unit = _DIGEST if gran == "row" else _DIGEST + 4
            if len(digests) % unit or (gran == "row" and len(digests) != unit * count):
                raise _bad(source, f"{where}rows.digests must hold {unit} bytes per {gran}", len(digests))
            rows = RowDigest(kind=kind, count=count, granularity=gran, digests=digests)
        size = _field(item, "size", int, source, where)
        sha = _field(item, "sha256", str, source, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or size < 0:
            raise _bad(source, f"{where}sha256 must be 64 hex digits and size >= 0", item)
        files.append(FileEntry(path=_field(item, "path", str, source, where), size=size, sha256=sha,
                               rows=rows, note=str(item.get("note", ""))))
    refused = []
    for i, item in enumerate(data.get("refused") or []):
        if not isinstance(item, dict):
            raise _bad(source, f"refused[{i}] must be an object", item)
        refused.append(Refused(path=str(item.get("path")), reason=str(item.get("reason"))))
    exclude = data.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(p, str) and p for p in exclude):
        raise _bad(source, "'exclude' must be a list of non-empty strings", exclude)
    row_limit = _field(data, "row_limit", int, source, "")
    block_rows = _field(data, "block_rows", int, source, "")
    if row_limit < 1 or block_rows < 1:
        raise _bad(source, "'row_limit' and 'block_rows' must be >= 1", (row_limit, block_rows))
    return Manifest(files=tuple(files), root=root, refused=tuple(refused), exclude=tuple(exclude),
                    row_limit=row_limit, block_rows=block_rows)

