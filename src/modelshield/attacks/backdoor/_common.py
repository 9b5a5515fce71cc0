"""Validation and row selection shared by the backdoor attacks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from modelshield._checks import check_bounds, check_inputs, check_range
from modelshield.attacks.backdoor.triggers import check_image_batch
from modelshield.attacks.ops import make_generator
from modelshield.errors import ConfigError, InputError

__all__ = [
    "check_rate", "check_target_config", "choose_rows", "poison_dirty_label", "prepare", "prepare_labels",
]


def check_rate(rate: object, *, owner: str) -> None:
    """Raise ConfigError unless 0 < rate < 1."""
    if (
        isinstance(rate, int | float)
        and not isinstance(rate, bool)
        and not math.isnan(float(rate))
        and 0.0 < float(rate) < 1.0
    ):
        return
    raise ConfigError(
        f"{owner}: 'rate' must be a number in (0, 1); got {rate!r}. Give the share of the training "
        "set to poison, e.g. rate=0.05 for 5%."
    )


def check_target_config(target: object, *, owner: str) -> None:
    check_range("target", target, owner=owner, low=0, integer=True,
                fix="Give the class index the backdoor should send inputs to, e.g. target=0.")


def prepare_labels(y: object, *, n: int, device: torch.device, target: int, owner: str) -> Tensor:
    """(n,) int64 labels on device; ConfigError if target is not one of the labels present."""
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(
            f"{owner}: y must be an integer torch.Tensor of class indices; got "
            f"{type(y).__name__ if not isinstance(y, Tensor) else y.dtype}. "
            "Convert with torch.as_tensor(y, dtype=torch.long)."
        )
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(
            f"{owner}: y must have shape ({n},) to match x; got shape {tuple(y.shape)}. "
            "Pass one label per row."
        )
    if bool((y < 0).any()):
        raise InputError(
            f"{owner}: y must hold class indices >= 0; got {int(y.min())}. Encode labels 0..K-1."
        )
    y = y.long().to(device)
    classes = torch.unique(y)
    if not bool((classes == target).any()):
        raise ConfigError(
            f"{owner}: 'target' must be a class present in y_train "
            f"({', '.join(str(int(c)) for c in classes[:20])}); got {target!r} (that class does "
            "not exist). Pick one of the training labels."
        )
    return y


def prepare(
    x: object, y: object, *, target: int, bounds: tuple[float, float], owner: str, image: bool = True
) -> tuple[Tensor, Tensor]:
    """Validated (x, y): x a finite float batch in bounds ((N, C, H, W) when image), y int64 labels."""
    lo_hi = check_bounds(bounds, owner=owner)
    xt = check_inputs(x, bounds=lo_hi, owner=owner)
    if image:
        check_image_batch(xt, owner=owner)
    yt = prepare_labels(y, n=int(xt.shape[0]), device=xt.device, target=target, owner=owner)
    return xt, yt


def choose_rows(pool: Tensor, rate: float, n: int, *, seed: int | None, owner: str, what: str) -> Tensor:
    """round(rate * n) rows drawn without replacement from pool (1-D int64), sorted ascending."""
    k = math.floor(rate * n + 0.5)
    if k < 1:
        raise ConfigError(
            f"{owner}: 'rate' must poison at least one of the {n} rows; got {rate!r} (rounds to 0). "
            f"Raise rate to at least {1 / (2 * n):.3g}."
        )
    if k > pool.numel():
        raise ConfigError(
            f"{owner}: 'rate' must select at most the {pool.numel()} {what}; got {rate!r} "
            f"({k} rows). Lower rate."
        )
    gen = make_generator(seed, torch.device("cpu"))
    pick = torch.randperm(pool.numel(), generator=gen)[:k].to(pool.device)
    return pool[pick].sort().values


def poison_dirty_label(
    x: Tensor,
    y: Tensor,
    *,
    target: int,
    rate: float,
    seed: int | None,
    transform: Callable[[Tensor], Tensor],
    owner: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_poisoned, y_poisoned, indices, original_labels): rate * N non-target rows triggered by
    transform and relabelled target; x and y are not modified."""
    pool = (y != target).nonzero().squeeze(1)
    idx = choose_rows(pool, rate, int(x.shape[0]), seed=seed, owner=owner, what="rows of other classes")
    x_p = x.clone()
    x_p[idx] = transform(x[idx]).to(x.dtype)
    y_p = y.clone()
    y_p[idx] = target
    return x_p, y_p, idx, y[idx].clone()
