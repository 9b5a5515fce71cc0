"""Stickers (RP2, Eykholt et al., 2018): a printable perturbation confined to a mask."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield._typing import Progress
from modelshield.attacks.ops import make_generator
from modelshield.attacks.physical.optimise import (
    EotLoop,
    check_target,
    eot_optimise,
    eot_success,
    start_physical,
)
from modelshield.attacks.physical.results import PhysicalPattern, stamp
from modelshield.attacks.physical.transforms import Draws, Transforms, light, view_scene
from modelshield.attacks.verify import attack_params
from modelshield.errors import InputError
from modelshield.models import ModelLike, eval_mode

__all__ = ["Sticker", "check_mask", "check_palette", "default_palette", "non_printability",
           "total_variation"]


def default_palette(channels: int, bounds: tuple[float, float]) -> Tensor:
    """Colours an office printer reproduces well: 9 greys (1 channel) or the 3x3x3 RGB cube
    from 10% to 90% ink (3 channels), in input units. Pure black and white are left out:
    printers and lighting never reach them exactly."""
    lo, hi = bounds
    levels = torch.tensor([0.1, 0.5, 0.9]) if channels == 3 else torch.linspace(0.1, 0.9, 9)
    if channels == 1:
        cols = levels[:, None]
    elif channels == 3:
        cols = torch.cartesian_prod(levels, levels, levels)
    else:
        cols = levels[:, None].expand(-1, channels)
    return lo + (hi - lo) * cols


def non_printability(content: Tensor, mask: Tensor, palette: Tensor) -> Tensor:
    """Mean over masked pixels of the distance to the nearest printable colour.

    Sharif et al. (2016) score a pixel by the product of its distances to every palette colour;
    both vanish exactly on the palette. The product shrinks geometrically with the palette's
    size (nine greys give scores near 1e-4 and gradients too small to steer the optimiser), so
    the minimum is used, as Thys, Van Ranst and Goedeme ("Fooling automated surveillance
    cameras", CVPRW 2019) do: a score in input units, whatever the palette.
    ``content`` (C, H, W), ``mask`` (H, W) bool, ``palette`` (K, C).
    """
    px = content.flatten(1).T[mask.flatten()]  # (M, C)
    d = torch.cdist(px, palette.to(px.dtype))  # (M, K)
    return d.min(dim=1).values.mean()


def total_variation(content: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked pixels of sqrt(dx^2 + dy^2): smooth patterns print and photograph well."""
    dx = torch.zeros_like(content)
    dy = torch.zeros_like(content)
    dx[..., :, :-1] = content[..., :, 1:] - content[..., :, :-1]
    dy[..., :-1, :] = content[..., 1:, :] - content[..., :-1, :]
    tv = (dx.pow(2) + dy.pow(2)).sum(0).add(1e-8).sqrt()
    return tv[mask].mean()


def check_mask(mask: object, *, height: int, width: int, owner: str) -> Tensor:
    """The mask as an (H, W) bool tensor, or InputError naming the problem and the fix."""
    if not isinstance(mask, Tensor):
        raise InputError(f"{owner}: the mask must be a torch.Tensor of shape (H, W); got "
                         f"{type(mask).__name__}. Load a PNG with modelshield.attacks.physical.load_mask.")
    m = mask.squeeze(0) if mask.dim() == 3 and mask.shape[0] == 1 else mask
    if m.dim() != 2:
        raise InputError(f"{owner}: the mask must have shape (H, W); got {tuple(mask.shape)}. "
                         "Give one 2-D mask for all channels.")
    if tuple(m.shape) != (height, width):
        raise InputError(
            f"{owner}: the mask is {m.shape[1]}x{m.shape[0]} pixels but the images are {width}x{height} "
            "(width x height). Draw the mask at the images' size (white where the sticker goes)."
        )
    if m.dtype != torch.bool:
        if not torch.isfinite(m.float()).all() or not ((m == 0) | (m == 1)).all():
            raise InputError(f"{owner}: the mask must hold only 0 and 1 (or bool); got other values. "
                             "Threshold it first, e.g. mask > 0.5.")
        m = m != 0
    if not bool(m.any()):
        raise InputError(f"{owner}: the mask is empty (no pixel selected). Mark the sticker's "
                         "pixels (white in a PNG mask).")
    if bool(m.all()):
        raise InputError(f"{owner}: the mask covers the whole image; a sticker must leave the "
                         "object visible. Mark only the sticker's pixels.")
    return m


def check_palette(palette: object, *, channels: int, bounds: tuple[float, float], owner: str) -> Tensor:
    """The palette as a (K, C) float tensor within the bounds, or InputError."""
    if not isinstance(palette, Tensor) or palette.dim() != 2 or palette.shape[0] < 1:
        raise InputError(f"{owner}: the palette must be a (K, C) tensor of K colours; got "
                         f"{getattr(palette, 'shape', type(palette).__name__)}. Load one with load_palette.")
    if palette.shape[1] != channels:
        raise InputError(f"{owner}: the palette has {palette.shape[1]} channels but the images have "
                         f"{channels}. Give colours with {channels} values each.")
    lo, hi = bounds
    p = palette.float()
    if not torch.isfinite(p).all() or bool((p < lo - 1e-6).any()) or bool((p > hi + 1e-6).any()):
        raise InputError(f"{owner}: palette colours must lie in the model's bounds [{lo}, {hi}].")
    return p


@dataclass(frozen=True, kw_only=True, slots=True)
class Sticker:
    """Robust physical perturbation (RP2) as stickers on the object, printable.

    The sticker replaces the pixels under ``mask`` (an opaque print: nothing outside the mask
    ever changes). It is optimised, as in RP2, over the whole scene seen under random views
    (rotation, scale, shift: the object from another angle and distance) and light, with the
    non-printability score (Sharif et al.; distance to the nearest palette colour) against
    ``palette`` and a total-variation penalty:

        min_s  E_{t, x}[loss(f(t(stamp(x, s, mask))))] + nps_weight * NPS(s) + tv_weight * TV(s)

    RP2 adds its perturbation to one object's pixels; here the sticker is opaque content, which
    is what a printed sticker is, so the same print works on every image it is trained on.

    Args:
        mask: (H, W) bool (or 0/1) tensor: where the sticker goes, at the images' size.
        steps, batch_size, lr: Adam over the sticker's pixels (one batch of images and fresh
            conditions per step).
        nps_weight: weight of the non-printability score.
        tv_weight: weight of the total variation.
        palette: (K, C) printable colours in input units (None: ``default_palette``).
        transforms: the viewing conditions (EOT).
        seed: seed of the initial sticker, the batches and the draws.

    Reference: Eykholt, Evtimov, Fernandes, Li, Rahmati, Xiao, Prakash, Kohno and Song,
    "Robust Physical-World Attacks on Deep Learning Visual Classification", CVPR 2018
    (arXiv:1707.08945); Sharif, Bhagavatula, Bauer and Reiter, "Accessorize to a Crime",
    CCS 2016 (the non-printability score).

    Example:
        mask = torch.zeros(28, 28, dtype=torch.bool); mask[4:8, 4:24] = True
        sticker = Sticker(mask=mask)(model, x_train, y_train)
        evaluate_pattern(model, sticker, x_test, y_test).success_rate
    """

    mask: Tensor
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.05
    nps_weight: float = 1.0
    tv_weight: float = 0.05
    palette: Tensor | None = None
    transforms: Transforms = field(default_factory=Transforms)
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor):
            raise InputError(f"Sticker: 'mask' must be a torch.Tensor of shape (H, W); got "
                             f"{type(self.mask).__name__}. Load a PNG with load_mask.")
        check_range("nps_weight", self.nps_weight, owner="Sticker", low=0.0)
        check_range("tv_weight", self.tv_weight, owner="Sticker", low=0.0)
        EotLoop(self.steps, self.batch_size, self.lr, self.transforms, "Sticker").check()

    def params(self) -> dict[str, Any]:
        """JSON-safe config: the tensors summarised."""
        out = {k: v for k, v in attack_params(self).items() if k not in ("mask", "palette")}
        out["mask_pixels"] = int((self.mask != 0).sum())
        out["palette_colours"] = None if self.palette is None else int(self.palette.shape[0])
        return out

    def __call__(self, model: ModelLike, x: Tensor, y: Tensor, *, target: int | None = None,
                 progress: Progress | None = None) -> PhysicalPattern:
        call, (c, h, w) = start_physical(model, x, y, owner="Sticker")
        m = call.gradient_model
        tgt = check_target(target, m.n_classes, owner="Sticker")
        mask = check_mask(self.mask, height=h, width=w, owner="Sticker").to(call.x.device)
        bounds = m.bounds
        palette = (default_palette(c, bounds) if self.palette is None
                   else check_palette(self.palette, channels=c, bounds=bounds, owner="Sticker"))
        palette = palette.to(device=call.x.device, dtype=call.x.dtype)
        gen = make_generator(self.seed, call.x.device)
        lo, hi = bounds
        init = lo + (hi - lo) * torch.rand((c, h, w), generator=gen, device=call.x.device,
                                           dtype=call.x.dtype)
        init = torch.where(mask, init, torch.zeros_like(init))

        def render(s: Tensor, xb: Tensor, d: Draws, noise: Tensor | None) -> Tensor:
            lit = light(s.expand(xb.shape[0], *s.shape), d, bounds=bounds,
                        transforms=self.transforms, noise=noise)
            return view_scene(stamp(xb, lit, mask), d, transforms=self.transforms)

        def penalty(s: Tensor) -> Tensor:
            return (self.nps_weight * non_printability(s, mask, palette)
                    + self.tv_weight * total_variation(s, mask))

        loop = EotLoop(self.steps, self.batch_size, self.lr, self.transforms, "Sticker")
        with eval_mode(m):
            content, history = eot_optimise(
                m, call.x, call.y, init, render=render, noise_shape=(c, h, w), loop=loop,
                target=tgt, gen=gen, penalty=penalty, progress=progress,
            )
            content = torch.where(mask, content, torch.zeros_like(content))
            train = eot_success(m, call.x, call.y, content, render=render, noise_shape=(c, h, w),
                                transforms=self.transforms, target=tgt, gen=gen)
            nps = float(non_printability(content, mask, palette))
            tv = float(total_variation(content, mask))
        fwd, bwd = m.queries.snapshot()
        return PhysicalPattern(
            kind="sticker", attack="Sticker", params=self.params(), pattern=content, mask=mask.cpu(),
            target=tgt, share=float(mask.double().mean()), eps=None, norm=None,
            transforms=self.transforms, bounds=bounds, image_shape=(c, h, w), train_success=train,
            history=history, steps=self.steps, queries_forward=fwd - call.queries_start[0],
            queries_backward=bwd - call.queries_start[1], time_s=time.perf_counter() - call.started,
            extra={"non_printability": round(nps, 6), "total_variation": round(tv, 6),
                   "palette": palette.cpu().tolist()},
        )
