"""What a scan reports: findings, their severity and where in the file they sit.

Shared by every format scanner of :mod:`modelshield.secure.scan` (pickle, archives, Keras, ONNX,
safetensors). A format scanner is a function ``scan_<format>(data, *, where, limits) -> list[Finding]``
that never loads or executes what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BLOCKING", "Finding", "Location", "ScanLimits", "ScanReport", "Severity"]

Severity = Literal["critical", "high", "medium", "low", "info"]
BLOCKING: frozenset[str] = frozenset({"critical", "high", "medium"})
"""Severities that make a file unsafe to load (exit code 1, loading refused)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScanLimits:
    """Bounds on the work one scan may do; crossing one is a finding, never a hang or a crash."""

    max_seconds: float = 60.0            # wall time per top-level path
    max_file_bytes: int = 64 << 30        # a single file (read in chunks; hashing streams)
    max_decompressed_bytes: int = 8 << 30  # total bytes inflated from archives/compressed members
    max_ratio: float = 200.0              # decompressed / compressed, per member (zip bombs)
    max_members: int = 100_000            # archive members
    max_nesting: int = 4                  # archives inside archives
    max_pickle_ops: int = 50_000_000      # opcodes walked per pickle
    max_stack: int = 1_000_000            # pickle stack + memo entries


@dataclass(frozen=True, kw_only=True, slots=True)
class Location:
    """Where a byte stream sits: the file on disk and the chain of archive members inside it."""

    path: str
    members: tuple[str, ...] = ()

    def inner(self, member: str) -> Location:
        return Location(path=self.path, members=(*self.members, member))

    def __str__(self) -> str:
        return "!".join((self.path, *self.members))


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One problem found in a file.

    ``code`` is a stable identifier (``pickle.global.denied``, ``zip.crc-mismatch``, ...);
    ``callable`` is the ``module.name`` a pickle imports, when the finding is about one;
    ``offset`` is the byte offset inside the innermost member (or the file).
    """

    severity: Severity
    code: str
    message: str
    location: Location
    offset: int | None = None
    callable: str | None = None

    @property
    def blocking(self) -> bool:
        return self.severity in BLOCKING

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "path": self.location.path,
            "member": "!".join(self.location.members) or None,
            "offset": self.offset,
            "callable": self.callable,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ScanReport:
    """The scan of one path (a file, or every file under a folder)."""

    path: str
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    findings: tuple[Finding, ...] = ()
    files: int = 0
    bytes_scanned: int = 0
    seconds: float = 0.0

    @property
    def blocked(self) -> bool:
        """True when any finding makes the file unsafe to load."""
        return any(f.blocking for f in self.findings)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "blocked": self.blocked,
            "formats": dict(self.formats),
            "files": self.files,
            "bytes_scanned": self.bytes_scanned,
            "seconds": round(self.seconds, 6),
            "findings": [f.to_dict() for f in self.findings],
        }
