"""Output files: checked before the work, written atomically, never overwritten without force.

Every file modelshield writes for a user (JSON results, reports, PNGs, poisoned data sets)
goes through :func:`write_atomic`: the bytes go to a temporary file in the target's folder,
which then replaces the target with ``os.replace``, so an interrupted run never leaves a torn
file. Commands call :func:`check_output_paths` on all their outputs *before* any work, so a
typo in ``--json`` or an existing file is one clear ``ConfigError`` instead of a crash after
a long attack.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelshield.errors import ConfigError

__all__ = ["check_output_paths", "hash_file", "write_atomic"]


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of path (starting with its parent) that exists."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output_paths(paths: Iterable[str | Path], *, force: bool, owner: str) -> None:
    """Raise ConfigError unless every path can be written as a new file (or replaced with force).

    Checked for each path: it is not a folder; it does not exist unless ``force``; its nearest
    existing ancestor is a folder this process may write into (missing folders are created when
    the file is written). Call it before the work, with every output of the command.

    Raises:
        ConfigError: naming the path, the problem and the fix (``--force`` / another location).
    """
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            raise ConfigError(
                f"{owner}: the output file must not be a folder; got {str(path)!r}, which is a folder. "
                "Give a file name inside it instead."
            )
        if (path.exists() or path.is_symlink()) and not force:
            raise ConfigError(
                f"{owner}: the output file must not exist yet; got {str(path)!r}, which exists. "
                "Pass overwrite=True (CLI: --force) or choose another output location."
            )
        folder = _existing_ancestor(path)
        if not folder.is_dir():
            raise ConfigError(
                f"{owner}: the output file must be in a folder; got {str(path)!r}, but {str(folder)!r} "
                "is a file, not a folder. Choose another output location."
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{owner}: the output location must be writable; got {str(path)!r}, but "
                f"{str(folder)!r} is not writable. Choose another output location or fix its "
                "permissions."
            )


def write_atomic(path: str | Path, data: bytes | str, *, force: bool = False) -> Path:
    """Write data to path atomically (temporary file in the same folder, then ``os.replace``).

    Missing parent folders are created. A ``str`` is written as UTF-8 exactly as given.
    The file gets the usual permissions (``0o666`` less the umask).

    Args:
        path: the file to write.
        data: its whole content.
        force: replace an existing file; without it an existing file is an error.

    Returns:
        The path written.

    Raises:
        ConfigError: the path exists and force is False, or cannot be written (see
            :func:`check_output_paths`); nothing is written then.
    """
    target = Path(path).expanduser()
    check_output_paths([target], force=force, owner="write_atomic")
    blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if force:
            os.replace(tmp, target)
        else:
            try:  # a file that appeared since the check is still not overwritten
                os.link(tmp, target)
            except FileExistsError:
                raise ConfigError(
                    f"write_atomic: the output file must not exist yet; got {str(target)!r}, which "
                    "appeared while writing. Pass overwrite=True (CLI: --force) or choose another "
                    "output location."
                ) from None
            except OSError:  # no hard links here (some network or FAT file systems)
                os.replace(tmp, target)
            else:
                os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def hash_file(path: str | Path, digest: Any = None) -> Any:
    """Feed a file's bytes, 1 MiB at a time, into digest (a new SHA-256 when None); return it.

    Raises:
        OSError: the file cannot be read (callers turn it into their own error).
    """
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest
