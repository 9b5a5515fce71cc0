"""Static model-file scanning: formats recognised by content, pickles walked opcode by opcode and
judged against an allow-list, archives checked for anomalies; nothing is ever loaded or executed.

Example:
    report = scan_path("model.pt")
    if report.blocked:
        print([f.to_dict() for f in report.findings])
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
import time
from pathlib import Path

from modelshield.errors import MissingDataError
from modelshield.secure.scan.archive import Budget
from modelshield.secure.scan.detect import scan_content, sniff
from modelshield.secure.scan.findings import BLOCKING, Finding, Location, ScanLimits, ScanReport

__all__ = ["BLOCKING", "Finding", "Location", "ScanLimits", "ScanReport", "scan_bytes", "scan_path", "sniff"]


def scan_bytes(data: bytes | bytearray | memoryview, *, name: str,
               limits: ScanLimits | None = None) -> ScanReport:
    """Scan a byte stream that is not (or not yet) a file.

    Args:
        data: the bytes, whatever their format.
        name: the name reported as the path of every finding.
        limits: bounds on time, size, nesting and inflation (default ``ScanLimits()``).

    Returns:
        The report; ``report.blocked`` is True when a finding makes the bytes unsafe to load.
    """
    limits = ScanLimits() if limits is None else limits
    start = time.monotonic()
    budget = Budget(limits=limits, deadline=start + limits.max_seconds)
    formats: dict[str, str] = {}
    findings = _guarded(memoryview(data).cast("B"), Location(path=name), budget, formats)
    return ScanReport(path=name, formats=formats, findings=tuple(findings), files=1,
                      bytes_scanned=len(data), seconds=time.monotonic() - start)


def scan_path(path: str | os.PathLike[str], *, limits: ScanLimits | None = None) -> ScanReport:
    """Scan a file, or every file under a folder, without loading or executing any of them.

    A folder is walked without following symbolic links to folders (so link loops end); a link to a
    file inside the folder is scanned, one that leaves the folder is a finding. Unreadable files,
    FIFOs, sockets and devices are findings and are never opened.

    Args:
        path: a file or a folder.
        limits: bounds on time (for the whole path), size, nesting and inflation.

    Returns:
        The report of every file scanned.

    Raises:
        MissingDataError: when ``path`` does not exist.

    Reference: issue 17 of modelshield (the scanner's specification and bypass corpus).
    """
    limits = ScanLimits() if limits is None else limits
    root = Path(path)
    if not os.path.lexists(root):
        raise MissingDataError(f"scan: path {str(root)!r} does not exist; give a model file or a folder.")
    start = time.monotonic()
    budget = Budget(limits=limits, deadline=start + limits.max_seconds)
    formats: dict[str, str] = {}
    findings: list[Finding] = []
    files, nbytes = 0, 0
    for item, problem in _walk(root):
        if problem is not None:
            findings.append(problem)
            continue
        if budget.out_of_time():
            findings.append(Finding(severity="medium", code="scan.time-limit",
                                    message=f"time limit of {limits.max_seconds} s reached; files left "
                                            "unscanned",
                                    location=Location(path=str(item))))
            break
        got, size = _scan_file(item, budget, formats)
        findings += got
        files += 1
        nbytes += size
    return ScanReport(path=str(root), formats=formats, findings=tuple(findings), files=files,
                      bytes_scanned=nbytes, seconds=time.monotonic() - start)


def _guarded(data: memoryview, where: Location, budget: Budget, formats: dict[str, str]) -> list[Finding]:
    """scan_content, with a last-resort net: a scanner bug becomes a blocking finding, not a crash."""
    try:
        return scan_content(data, where, budget, 0, formats)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError, struct.error, BufferError, UnicodeError, LookupError) as exc:
        return [Finding(severity="medium", code="scan.internal-error",
                        message=f"the scanner failed on this file ({type(exc).__name__}: {exc}); it "
                                "cannot be verified (please report this as a modelshield bug)",
                        location=where)]


def _problem(path: Path, severity: str, code: str, message: str) -> Finding:
    return Finding(severity="medium" if severity == "medium" else "high" if severity == "high" else "low",
                   code=code, message=message, location=Location(path=str(path)))


def _walk(root: Path) -> list[tuple[Path, Finding | None]]:
    """Regular files to scan under ``root`` (or root itself), and findings for what is not scanned."""
    out: list[tuple[Path, Finding | None]] = []
    try:
        top = root.stat()
    except OSError as exc:
        return [(root, _problem(root, "medium", "path.unreadable",
                                f"cannot stat {str(root)!r}: {exc.strerror or exc}"))]
    if not stat.S_ISDIR(top.st_mode):
        # a file the user names is scanned where its links lead (a Hugging Face cache keeps
        # snapshots/<rev>/model.bin -> ../../blobs/<sha>): that target is what a loader reads
        return [_classify(root, root.resolve().parent)]
    base = root.resolve()
    seen = {(top.st_dev, top.st_ino)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = _list(folder)
        except OSError as exc:
            out.append((folder, _problem(folder, "medium", "path.unreadable",
                                         f"cannot list folder {str(folder)!r}: {exc.strerror or exc}")))
            continue
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        stack.append(p)
                    continue
                if entry.is_symlink() and p.is_dir():
                    out.append((p, _problem(p, "low", "path.symlink-dir",
                                            f"link {str(p)!r} to a folder is not followed")))
                    continue
            except OSError as exc:
                out.append((p, _problem(p, "medium", "path.unreadable", f"cannot stat {str(p)!r}: {exc}")))
                continue
            out.append(_classify(p, base))
    return out


def _list(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of a folder, sorted by name (raises OSError when it cannot be listed)."""
    with os.scandir(folder) as listing:
        return sorted(listing, key=lambda e: e.name)


def _classify(p: Path, base: Path) -> tuple[Path, Finding | None]:
    try:
        if p.is_symlink():
            target = p.resolve(strict=True)
            if not target.is_relative_to(base.resolve()):
                return p, _problem(p, "high", "path.symlink-outside",
                                   f"link {str(p)!r} points outside the folder, to {str(target)!r}")
        st = p.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        return p, _problem(p, "medium", "path.unreadable", f"cannot stat {str(p)!r}: {exc}")
    if not stat.S_ISREG(st.st_mode):
        return p, _problem(p, "medium", "path.special-file",
                           f"{str(p)!r} is not a regular file (a FIFO, socket or device): not opened")
    return p, None


def _scan_file(path: Path, budget: Budget, formats: dict[str, str]) -> tuple[list[Finding], int]:
    where = Location(path=str(path))
    limits = budget.limits
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limits.max_file_bytes:
                return [Finding(severity="medium", code="file.too-large",
                                message=f"{size} bytes exceeds max_file_bytes={limits.max_file_bytes}: not "
                                        "scanned", location=where)], 0
            if size == 0:
                formats[str(where)] = "empty"
                return [Finding(severity="info", code="file.empty", message="an empty file",
                                location=where)], 0
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                view = memoryview(mapped)
                try:
                    return _guarded(view, where, budget, formats), size
                finally:
                    with contextlib.suppress(BufferError):
                        view.release()
            finally:
                # a slice still referenced keeps the map open until it is collected
                with contextlib.suppress(BufferError):
                    mapped.close()
    except OSError as exc:
        return [Finding(severity="medium", code="path.unreadable",
                        message=f"cannot read {str(path)!r}: {exc.strerror or exc}", location=where)], 0
