"""Memory estimates checked before allocating: the guard behind every user-sized allocation.

Sizes that drive memory (extraction query budgets and noise pools, samples per point, batch
sizes, declared sizes of data files) are turned into an honest byte estimate (bytes per
element x elements x copies held at once) and compared with the memory available *before*
anything is allocated, so a typo such as ``--queries 1000000000`` is one clear ``ConfigError``
naming the estimate and the fix instead of an out-of-memory kill.

Available memory is ``MemAvailable`` from ``/proc/meminfo`` (Linux), else the free physical
pages from ``os.sysconf``. The environment variable ``MODELSHIELD_MAX_MEMORY`` overrides it
(bytes, or a number with a K, M, G or T suffix, powers of 1024: ``MODELSHIELD_MAX_MEMORY=2G``),
e.g. to keep a shared machine's jobs small or to test the guard.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from modelshield.errors import ConfigError, DataError, ModelShieldError

__all__ = [
    "MEMORY_ENV",
    "TEXT_PARSE_COPIES",
    "available_memory",
    "check_memory",
    "check_text_file_memory",
    "format_bytes",
    "tensor_bytes",
]

MEMORY_ENV = "MODELSHIELD_MAX_MEMORY"
"""Environment variable capping the memory modelshield may plan to use (e.g. ``4G``)."""

TEXT_PARSE_COPIES = 6
"""Bytes held per byte of a text file while it is read, decoded and split into rows (an estimate)."""

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def _parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(
            f"modelshield: ${MEMORY_ENV} must be a size in bytes, optionally with a K, M, G or T "
            f"suffix; got {text!r}. Write e.g. {MEMORY_ENV}=4G, or unset it."
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> tuple[int | None, str]:
    """(bytes modelshield may plan to use, where that figure comes from); None when unknown."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        return _parse_size(override), f"${MEMORY_ENV}"
    found = _meminfo_available()
    if found is not None:
        return found, "available memory"
    try:
        pages, page = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None, "unknown"
    if pages > 0 and page > 0:
        return int(pages) * int(page), "free memory"
    return None, "unknown"


def format_bytes(n: float) -> str:
    """A byte count in human units, e.g. ``format_bytes(256e9) == '238.4 GiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def tensor_bytes(rows: int, row_shape: Sequence[int], *, itemsize: int = 4, copies: int = 1) -> int:
    """Bytes of ``copies`` tensors of shape ``(rows, *row_shape)`` with ``itemsize``-byte elements."""
    return int(rows) * math.prod(int(s) for s in row_shape) * int(itemsize) * int(copies)


def check_memory(
    owner: str, what: str, n_bytes: int, *, fix: str, error: type[ModelShieldError] = ConfigError
) -> None:
    """Raise ConfigError if an allocation estimated at ``n_bytes`` cannot fit in memory.

    Args:
        owner: the function or command, first word of the message.
        what: the setting and how the estimate was made, e.g. ``"'size' (1000000000 rows x 64
            float32 values x 2 copies)"``.
        n_bytes: the estimate: bytes per element x elements x copies held at once.
        fix: how to make it smaller, e.g. ``"Lower --queries."``.
        error: the exception class raised (``DataError`` for sizes a data file declares).

    Raises:
        ConfigError: (or ``error``) the estimate exceeds the available memory (or
            ``$MODELSHIELD_MAX_MEMORY``); the message gives both in human units. Nothing is
            checked when the available memory cannot be found.
    """
    limit, source = available_memory()
    if limit is None or n_bytes <= limit:
        return
    raise error(
        f"{owner}: {what} must fit in memory; it needs about {format_bytes(n_bytes)}, more than the "
        f"{format_bytes(limit)} of {source}. {fix}"
    )


def check_text_file_memory(owner: str, path: str, size: int, *, fix: str = "Use a smaller file.") -> None:
    """DataError if reading a text file of ``size`` bytes whole (``TEXT_PARSE_COPIES`` copies) cannot fit."""
    check_memory(owner, f"the text file {path!r} ({format_bytes(size)}; parsing holds about "
                 f"{TEXT_PARSE_COPIES} copies)", TEXT_PARSE_COPIES * size, fix=fix, error=DataError)
