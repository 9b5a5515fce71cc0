"""Validation helpers that give every error message the same shape (see errors.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from modelshield.errors import ConfigError, InputError

__all__ = ["check_bounds", "check_choice", "check_inputs", "check_labels", "check_range", "exception_head"]


def check_range(
    name: str,
    value: object,
    *,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    low_open: bool = False,
    fix: str = "",
) -> None:
    """Raise ConfigError unless value is a finite number (an int if integer) within the range."""
    allowed: tuple[type, ...] = (int,) if integer else (int, float)
    ok = isinstance(value, allowed) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]  # checked numeric just above
        ok = not math.isnan(v) and (
            low is None or (v > low if low_open else v >= low)
        ) and (high is None or v <= high)
    if ok:
        return
    what = "an int" if integer else "a number"
    span = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    raise ConfigError(
        f"{owner}: {name!r} must be {what} in {span}; got {value!r}." + (f" {fix}" if fix else "")
    )


def check_choice(
    name: str, value: object, choices: Iterable[Any], *, owner: str, fix: str = ""
) -> None:
    """Raise ConfigError unless value is one of choices."""
    options = tuple(choices)
    if value in options:
        return
    listed = ", ".join(repr(c) for c in options)
    raise ConfigError(
        f"{owner}: {name!r} must be one of {listed}; got {value!r}." + (f" {fix}" if fix else "")
    )


def check_bounds(bounds: object, *, owner: str) -> tuple[float, float]:
    """Return bounds as (lo, hi) floats, or raise ConfigError."""
    if (
        isinstance(bounds, tuple | list)
        and len(bounds) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        and math.isfinite(bounds[0])
        and math.isfinite(bounds[1])
        and bounds[0] < bounds[1]
    ):
        return float(bounds[0]), float(bounds[1])
    raise ConfigError(
        f"{owner}: 'bounds' must be a pair (lo, hi) of finite numbers with lo < hi; got {bounds!r}. "
        "Pass the natural input range, e.g. bounds=(0.0, 1.0) for images scaled to [0, 1]."
    )


def check_inputs(x: object, *, bounds: tuple[float, float], owner: str, tol: float = 1e-6) -> Tensor:
    """Check x is a floating tensor with a batch dimension, finite, within bounds; return it."""
    if not isinstance(x, Tensor):
        raise InputError(
            f"{owner}: x must be a torch.Tensor; got {type(x).__name__}. "
            "Convert with torch.as_tensor(x, dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise InputError(
            f"{owner}: x must be a floating-point tensor; got dtype {x.dtype}. "
            "Convert with x.float() (and scale integer pixels to the model's bounds, e.g. / 255)."
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError(
            f"{owner}: x must have shape (N, *input_shape) with N >= 1; got shape {tuple(x.shape)}. "
            "Add a batch dimension with x.unsqueeze(0) for a single input."
        )
    # One pass of two scalar reductions (NaN propagates, inf is an extreme): nothing of x's size
    # is allocated for a clean batch; the element-wise checks below run only to word an error.
    low_v, high_v = torch.aminmax(x.detach())
    low_f, high_f, lo, hi = float(low_v), float(high_v), *bounds
    if math.isfinite(low_f) and math.isfinite(high_f) and low_f >= lo - tol and high_f <= hi + tol:
        return x
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).nonzero()[0, 0])
        count = int((~finite).sum())
        raise InputError(
            f"{owner}: x has {count} NaN or infinite values (first in row {bad}). "
            "Remove or impute them before attacking."
        )
    outside = (x < lo - tol) | (x > hi + tol)
    if bool(outside.any()):
        count = int(outside.sum())
        flat = x.flatten(1)
        row = int(outside.flatten(1).any(1).nonzero()[0, 0])
        raise InputError(
            f"{owner}: x has {count} values outside bounds [{lo:g}, {hi:g}] "
            f"(min {float(flat.min()):g}, max {float(flat.max()):g}; first in row {row}). "
            "Rescale inputs, or pass bounds=(lo, hi) to as_model() (normalisation belongs "
            "inside the model)."
        )
    return x


def check_labels(
    y: object, *, n: int, n_classes: int, owner: str, name: str = "y", device: torch.device
) -> Tensor:
    """Check y is an (n,) integer tensor of class indices in [0, n_classes); return it as int64."""
    if not isinstance(y, Tensor):
        raise InputError(
            f"{owner}: {name} must be a torch.Tensor of class indices; got {type(y).__name__}. "
            "Convert with torch.as_tensor(y, dtype=torch.long)."
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InputError(
            f"{owner}: {name} must hold integer class indices; got dtype {y.dtype}. "
            f"Convert with {name}.long() (one-hot labels: {name}.argmax(1))."
        )
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(
            f"{owner}: {name} must have shape ({n},) to match x; got shape {tuple(y.shape)}. "
            "Pass one class index per input row."
        )
    if y.device != device:
        raise InputError(
            f"{owner}: {name} is on {y.device} but x is on {device}. Move it with {name}.to(x.device)."
        )
    bad = (y < 0) | (y >= n_classes)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise InputError(
            f"{owner}: {name} must be class indices in [0, {n_classes - 1}]; got {int(y[row])} "
            f"at row {row}. Check the label encoding matches the model's {n_classes} outputs."
        )
    return y.long()


def exception_head(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of exc's message (at most limit characters), else its type name.

    Libraries' messages (torch, onnxruntime) run to paragraphs; one line is what fits in ours.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
