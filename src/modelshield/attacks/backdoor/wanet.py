"""WaNet: an imperceptible warping trigger, with noise-mode rows that keep their labels."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.backdoor._common import check_rate, check_target_config, poison_dirty_label, prepare
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import WarpTrigger, warp, warping_grid
from modelshield.attacks.ops import make_generator
from modelshield.attacks.verify import attack_params

__all__ = ["WaNet"]


@dataclass(frozen=True, kw_only=True, slots=True)
class WaNet:
    """Warping-based backdoor (dirty label) as a pure data-poisoning attack.

    A fixed smooth warping field (a k x k random grid upsampled to the image, strength s) is
    applied to ``round(rate * N)`` non-target images, which are relabelled ``target``. In
    *noise mode* a further ``cross_ratio * rate * N`` images (of any class) are warped with
    the field plus per-image random noise and keep their labels, so the model learns the
    exact warp rather than "any warp" (Nguyen and Tran's cross ratio 2).

    Note: the paper controls the training loop; as plain poisoning with a few epochs the warp
    is learned less reliably than a patch, so expect lower attack success rates.

    Args:
        target: the class triggered inputs should be sent to.
        rate: share of the training set to poison, in (0, 1).
        k: control-grid size (4 in the paper). s: warping strength (0.5 in the paper).
        grid_rescale: the paper's grid rescale (1).
        noise: add the noise-mode rows. cross_ratio: noise rows per poisoned row (2).
        bounds: the input range. seed: seed for the field, rows and noise.

    Reference: T. A. Nguyen and A. T. Tran, "WaNet - Imperceptible Warping-based Backdoor
    Attack", ICLR 2021 (arXiv:2102.10369).

    Example:
        res = WaNet(target=0, rate=0.1)(None, x_train, y_train)
    """

    target: int
    rate: float
    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    noise: bool = True
    cross_ratio: float = 2.0
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    needs_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="WaNet")
        check_rate(self.rate, owner="WaNet")
        check_range("k", self.k, owner="WaNet", low=2, integer=True, fix="The paper uses k=4.")
        check_range("s", self.s, owner="WaNet", low=0.0, low_open=True, fix="The paper uses s=0.5.")
        check_range("grid_rescale", self.grid_rescale, owner="WaNet", low=0.0, low_open=True)
        check_range("cross_ratio", self.cross_ratio, owner="WaNet", low=0.0)

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult:
        """Poison (x, y); ``model`` is unused (pass None: a data-only attack)."""
        started = time.perf_counter()
        x, y = prepare(x, y, target=self.target, bounds=self.bounds, owner="WaNet")
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.k > min(h, w):
            from modelshield.errors import ConfigError

            raise ConfigError(
                f"WaNet: 'k' must be at most the image side {min(h, w)}; got {self.k} (trigger grid "
                "larger than the image). Use k=4."
            )
        gen = make_generator(self.seed, torch.device("cpu"))
        grid = warping_grid(h, w, k=self.k, s=self.s, grid_rescale=self.grid_rescale, generator=gen)
        trigger = WarpTrigger(grid=grid.to(x.device), k=self.k, s=self.s)
        x_p, y_p, idx, orig = poison_dirty_label(
            x, y, target=self.target, rate=self.rate,
            seed=None if self.seed is None else self.seed + 1, transform=trigger.apply, owner="WaNet",
        )
        extra: dict[str, Any] = {"noise_indices": []}
        if self.noise and self.cross_ratio > 0:
            rest = (~torch.isin(torch.arange(x.shape[0], device=x.device), idx)).nonzero().squeeze(1)
            n_cross = min(round(self.cross_ratio * idx.numel()), int(rest.numel()))
            pick = rest[torch.randperm(rest.numel(), generator=gen)[:n_cross].to(rest.device)].sort().values
            if n_cross:
                eps = (torch.rand((n_cross, h, w, 2), generator=gen) * 2 - 1) / h
                x_p[pick] = warp(x[pick], trigger.grid, noise=eps).to(x.dtype)
            extra["noise_indices"] = pick.tolist()
        return BackdoorResult(
            attack="WaNet", params=attack_params(self), x_poisoned=x_p, y_poisoned=y_p,
            indices=idx, original_labels=orig, target=self.target, trigger=trigger,
            time_s=time.perf_counter() - started, extra=extra,
        )
