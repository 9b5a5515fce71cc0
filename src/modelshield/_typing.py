"""Shared type aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

Norm: TypeAlias = Literal["inf", "2"]
NORMS: tuple[Norm, ...] = ("inf", "2")
Bounds: TypeAlias = tuple[float, float]
Progress: TypeAlias = Callable[[int, int, str], None]
"""A ``progress(done, total, message)`` callback: long library calls report through it, never print."""
