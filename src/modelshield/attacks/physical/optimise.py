"""The optimisation loop shared by the patch and the sticker: Adam on a pattern under EOT."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_range
from modelshield._typing import Progress
from modelshield.attacks.physical.transforms import Draws, Transforms
from modelshield.attacks.verify import AttackCall, start_call
from modelshield.errors import ConfigError, InputError
from modelshield.models import TorchModel

__all__ = ["CE_CLIP", "EotLoop", "check_images", "check_target", "eot_optimise", "eot_success",
           "pattern_loss", "start_physical"]

CE_CLIP = 10.0
"""Untargeted losses stop pushing a view once its cross-entropy exceeds this (p(y) < e^-10),
as in Shafahi et al.'s clipped loss, so views already fooled do not dominate the step."""

Render = Callable[[Tensor, Tensor, Draws, Tensor | None], Tensor]


def pattern_loss(logits: Tensor, y: Tensor, target: int | None) -> Tensor:
    """(N,) loss to minimise: CE to the target (Brown et al.), or minus the clipped CE to y."""
    if target is None:
        return -F.cross_entropy(logits, y, reduction="none").clamp(max=CE_CLIP)
    t = torch.full_like(y, target)
    return F.cross_entropy(logits, t, reduction="none")


def check_images(x: Tensor, *, owner: str) -> tuple[int, int, int]:
    """(C, H, W) of an image batch, or InputError naming the shape and the fix."""
    if x.dim() != 4 or min(x.shape[1:]) < 1:
        raise InputError(
            f"{owner}: x must be a batch of images (N, C, H, W); got shape {tuple(x.shape)}. "
            "Physical attacks need image models (e.g. mnist-cnn) and image data."
        )
    c, h, w = (int(v) for v in x.shape[1:])
    return c, h, w


def check_target(target: object, n_classes: int, *, owner: str) -> int | None:
    """The target class as an int (None: untargeted), or ConfigError."""
    if target is None:
        return None
    if isinstance(target, Tensor) and target.numel() == 1:
        target = int(target.item())
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < n_classes:
        raise ConfigError(
            f"{owner}: 'target' must be one class index in 0..{n_classes - 1} (a physical pattern "
            f"sends every input to the same class) or None; got {target!r}."
        )
    return target


def start_physical(
    model: object, x: object, y: object, *, owner: str
) -> tuple[AttackCall, tuple[int, int, int]]:
    """Validate a physical attack's call (a gradient model, image batch, labels)."""
    call = start_call(model, x, y, None, owner=owner, gradients=True)
    shape = check_images(call.x, owner=owner)
    return call, shape


@dataclass(frozen=True, slots=True)
class EotLoop:
    """Settings of :func:`eot_optimise` (validated by the attacks that use it)."""

    steps: int
    batch_size: int
    lr: float
    transforms: Transforms
    owner: str

    def check(self) -> None:
        check_range("steps", self.steps, owner=self.owner, low=1, integer=True)
        check_range("batch_size", self.batch_size, owner=self.owner, low=1, integer=True)
        check_range("lr", self.lr, owner=self.owner, low=0.0, low_open=True,
                    fix="Adam's step in input units per step, e.g. lr=0.05 for inputs in [0, 1].")
        if not isinstance(self.transforms, Transforms):
            raise ConfigError(f"{self.owner}: 'transforms' must be a Transforms; got "
                              f"{type(self.transforms).__name__}. Use Transforms() or Transforms.none().")


def eot_optimise(
    m: TorchModel, x: Tensor, y: Tensor, init: Tensor, *, render: Render, noise_shape: tuple[int, ...],
    loop: EotLoop, target: int | None, gen: torch.Generator,
    penalty: Callable[[Tensor], Tensor] | None = None, progress: Progress | None = None,
) -> tuple[Tensor, list[float]]:
    """Minimise E_{t ~ transforms, x ~ data}[pattern_loss(f(render(p, x, t)))] + penalty(p) with Adam.

    Every step draws ``batch_size`` training images with replacement and fresh conditions; the
    pattern is clipped to the bounds after each step. Returns the pattern and the mean loss over
    each tenth of the steps. Input gradients only (``torch.autograd.grad``; the model's
    parameters are frozen by the caller's ``eval_mode``).
    """
    lo, hi = m.bounds
    p = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=loop.lr)
    n = x.shape[0]
    chunk = max(1, math.ceil(loop.steps / 10))
    history: list[float] = []
    running = 0.0
    for step in range(loop.steps):
        idx = torch.randint(n, (loop.batch_size,), generator=gen, device=x.device)
        draws = loop.transforms.draw(loop.batch_size, gen, device=x.device, dtype=x.dtype)
        noise = (torch.randn((loop.batch_size, *noise_shape), generator=gen, device=x.device,
                             dtype=x.dtype) if loop.transforms.noise > 0 else None)
        with torch.enable_grad():
            views = render(p, x[idx], draws, noise)
            logits = m.logits(views)
            loss = pattern_loss(logits, y[idx], target).mean()
            if penalty is not None:
                loss = loss + penalty(p)
            (grad,) = torch.autograd.grad(loss, p)
        m.queries.add_backward(loop.batch_size)
        if not torch.isfinite(grad).all():
            raise InputError(
                f"{loop.owner}: the model's gradient is not finite at step {step} (NaN or inf "
                "outputs). Check the model on inputs in its bounds."
            )
        p.grad = grad
        opt.step()
        with torch.no_grad():
            p.clamp_(lo, hi)
        running += float(loss.detach())
        if (step + 1) % chunk == 0 or step + 1 == loop.steps:
            history.append(running / ((step % chunk) + 1))
            running = 0.0
            if progress is not None:
                progress(step + 1, loop.steps, f"{loop.owner}: step {step + 1}/{loop.steps}")
    return p.detach(), history


def eot_success(
    m: TorchModel, x: Tensor, y: Tensor, pattern: Tensor, *, render: Render, noise_shape: tuple[int, ...],
    transforms: Transforms, target: int | None, gen: torch.Generator, rows: int = 256,
    batch_size: int = 256,
) -> float:
    """The attack's own estimate of success on (up to ``rows``) training images, fresh draws."""
    n = min(rows, x.shape[0])
    hits = total = 0
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb, yb = x[s:s + batch_size][: n - s], y[s:s + batch_size][: n - s]
            b = xb.shape[0]
            draws = transforms.draw(b, gen, device=x.device, dtype=x.dtype)
            noise = (torch.randn((b, *noise_shape), generator=gen, device=x.device, dtype=x.dtype)
                     if transforms.noise > 0 else None)
            pred = m.predict(render(pattern, xb, draws, noise))
            if target is None:
                ok = m.predict(xb) == yb
                hits += int((ok & (pred != yb)).sum())
                total += int(ok.sum())
            else:
                ok = yb != target
                hits += int((ok & (pred == target)).sum())
                total += int(ok.sum())
    return hits / total if total else math.nan
