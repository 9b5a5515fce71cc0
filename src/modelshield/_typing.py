"""Shared type aliases."""

from __future__ import annotations

from typing import Literal, TypeAlias

Norm: TypeAlias = Literal["inf", "2"]
NORMS: tuple[Norm, ...] = ("inf", "2")
Bounds: TypeAlias = tuple[float, float]
