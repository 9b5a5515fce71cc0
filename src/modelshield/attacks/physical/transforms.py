"""Expectation over transformation: the random placements and lighting a printed pattern meets.

A physical attacker cannot choose where the camera sees the pattern: it is pasted at some place,
seen at some angle and distance, under some light, by a noisy sensor. Expectation over
transformation (EOT; Athalye, Engstrom, Ilyas and Kwok, "Synthesizing Robust Adversarial
Examples", ICML 2018, arXiv:1707.07397) optimises the expected loss over a distribution of such
transformations, sampled afresh at every step. This module holds that distribution
(:class:`Transforms`) and the batched, differentiable functions that apply it:

- :func:`place_patch`: paste a square patch at a random location, rotation and scale
  (Brown et al.'s adversarial patch), alpha-blended with bilinear edges;
- :func:`view_scene`: rotate, scale and shift the whole image (a sign seen from another
  angle and distance, RP2's setting), the background filled from the image's border;
- :func:`light`: brightness, contrast and sensor noise on the printed pattern.

Every draw comes from a private ``torch.Generator``: the same seed gives the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_range
from modelshield.errors import ConfigError

__all__ = ["Draws", "Transforms", "largest_patch_side", "light", "max_patch_share", "patch_side",
           "place_patch", "view_scene"]


def patch_side(share: float, height: int, width: int) -> int:
    """Side in pixels of a square patch covering ``share`` of an ``height`` x ``width`` image.

    ``ceil(sqrt(share * height * width))``, at least 1. The same rule sizes the patch of the
    attacks and the patch a PatchCleanser certificate is computed for. Floating point can round
    a product that should be a perfect square up by one pixel (0.04 * 35 * 35 is
    49.00000000000001: side 8, not 7); that errs towards a larger certified patch, and both
    sides err alike.

    Raises:
        ConfigError: share outside (0, 1), or a side that is not a positive int.
    """
    fix = "Give the share of the image the patch covers, e.g. 0.05 for 5%."
    check_range("share", share, owner="patch_side", low=0.0, high=1.0, low_open=True, fix=fix)
    if share >= 1.0:
        raise ConfigError(f"patch_side: 'share' must be a number in (0, 1); got {share!r}. {fix}")
    check_range("height", height, owner="patch_side", low=1, integer=True)
    check_range("width", width, owner="patch_side", low=1, integer=True)
    return max(1, math.ceil(math.sqrt(share * height * width)))


def largest_patch_side(height: int, width: int) -> int:
    """The largest square patch side that fits in the image and leaves part of it visible."""
    return min(height, width) - (1 if height == width else 0)


def max_patch_share(height: int, width: int) -> float:
    """The largest share (3 decimals, rounded down) whose ``patch_side`` is ``largest_patch_side``
    or less: the hint given when a patch does not fit."""
    side = largest_patch_side(height, width)
    return math.floor(side * side / (height * width) * 1000) / 1000


def _check_pair(name: str, value: object, owner: str, low: float, high: float) -> tuple[float, float]:
    ok = isinstance(value, tuple | list) and len(value) == 2
    if ok:
        assert isinstance(value, tuple | list)
        a, b = value
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                 for v in (a, b)) and low <= a <= b <= high
    if not ok:
        raise ConfigError(
            f"{owner}: {name!r} must be a pair (low, high) with {low} <= low <= high <= {high}; "
            f"got {value!r}. E.g. {name}=(0.9, 1.1)."
        )
    return float(value[0]), float(value[1])  # type: ignore[index]


@dataclass(frozen=True, kw_only=True, slots=True)
class Transforms:
    """The distribution of physical conditions (EOT) a pattern is optimised and tested under.

    Args:
        rotation: maximum rotation in degrees; each draw is uniform in [-rotation, rotation].
        scale: (low, high) relative size of the pattern (a patch) or of the scene (a sticker);
            each draw is uniform in the range.
        shift: for whole-scene views only: maximum shift as a share of the image side.
        brightness: maximum additive brightness change, as a share of the input range.
        contrast: (low, high) multiplicative contrast around the middle of the input range.
        noise: standard deviation of Gaussian sensor noise, as a share of the input range.

    ``Transforms.none()`` is the identity (a digital pattern, placed at a random location
    only, for a patch). ``t.scaled(s)`` is the same distribution with every range multiplied
    by ``s`` around the identity: reports use it for success against the strength of the
    transformations.
    """

    rotation: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.9, 1.1)
    noise: float = 0.01

    def __post_init__(self) -> None:
        owner = "Transforms"
        check_range("rotation", self.rotation, owner=owner, low=0.0, high=180.0,
                    fix="Give the maximum rotation in degrees, e.g. rotation=20.")
        object.__setattr__(self, "scale", _check_pair("scale", self.scale, owner, 0.05, 4.0))
        check_range("shift", self.shift, owner=owner, low=0.0, high=0.5)
        check_range("brightness", self.brightness, owner=owner, low=0.0, high=1.0)
        object.__setattr__(self, "contrast", _check_pair("contrast", self.contrast, owner, 0.0, 4.0))
        check_range("noise", self.noise, owner=owner, low=0.0, high=1.0)

    @classmethod
    def none(cls) -> Transforms:
        """No transformation at all."""
        return cls(rotation=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0,
                   contrast=(1.0, 1.0), noise=0.0)

    def scaled(self, strength: float) -> Transforms:
        """Every range multiplied by ``strength`` around the identity (0: none, 1: self)."""
        check_range("strength", strength, owner="Transforms.scaled", low=0.0, high=4.0)

        def around_one(pair: tuple[float, float]) -> tuple[float, float]:
            lo, hi = (max(0.05, 1.0 + strength * (v - 1.0)) for v in pair)
            return (min(lo, hi), max(lo, hi))

        return replace(
            self, rotation=min(180.0, self.rotation * strength), scale=around_one(self.scale),
            shift=min(0.5, self.shift * strength), brightness=min(1.0, self.brightness * strength),
            contrast=around_one(self.contrast), noise=min(1.0, self.noise * strength),
        )

    def to_dict(self) -> dict[str, object]:
        return {"rotation": self.rotation, "scale": list(self.scale), "shift": self.shift,
                "brightness": self.brightness, "contrast": list(self.contrast), "noise": self.noise}

    def draw(self, n: int, gen: torch.Generator, *, device: torch.device,
             dtype: torch.dtype = torch.float32) -> Draws:
        """n independent draws of the conditions (angles in radians)."""
        u = torch.rand((6, n), generator=gen, device=device, dtype=dtype)
        angle = (2 * u[0] - 1) * math.radians(self.rotation)
        scale = self.scale[0] + u[1] * (self.scale[1] - self.scale[0])
        place = u[2:4]  # location in [0, 1]^2 of the free range (patch) or shift (scene)
        bright = (2 * u[4] - 1) * self.brightness
        contrast = self.contrast[0] + u[5] * (self.contrast[1] - self.contrast[0])
        return Draws(angle, scale, place.T.contiguous(), bright, contrast)


class Draws(NamedTuple):
    """Sampled conditions, one per row: angle (rad), scale, place (N, 2) in [0, 1], light."""

    angle: Tensor
    scale: Tensor
    place: Tensor
    brightness: Tensor
    contrast: Tensor


def _rotations(angle: Tensor, scale: Tensor, height: int, width: int) -> Tensor:
    """(N, 2, 2) map from output to input normalised coordinates of a rotation+scale in pixels.

    In pixels, input = R(-angle) output / scale; normalised coordinates divide x by W/2 and y
    by H/2, so the matrix is D^-1 R(-angle) D / scale with D = diag(W/2, H/2).
    """
    c, s = torch.cos(angle), torch.sin(angle)
    ar = width / height
    a = torch.stack([torch.stack([c, s / ar], -1), torch.stack([-s * ar, c], -1)], -2)
    return a / scale[:, None, None]


def place_patch(
    x: Tensor, patch: Tensor, draws: Draws, *, bounds: tuple[float, float],
    transforms: Transforms, noise: Tensor | None = None,
) -> Tensor:
    """Paste ``patch`` (C, s, s) on every image of x (N, C, H, W) under its draw.

    The patch is rotated and scaled about its centre, lit (:func:`light`) and placed at a
    uniformly drawn location where it lies wholly inside the image; edges are blended
    bilinearly. ``noise``: optional standard-normal (N, C, s, s) sensor noise for :func:`light`.
    Differentiable with respect to the patch.
    """
    n, _, h, w = x.shape
    side = patch.shape[-1]
    lo, hi = bounds
    lit = light(patch.expand(n, *patch.shape), draws, bounds=bounds, transforms=transforms,
                noise=noise)
    # Canvas of the image's size with the patch in the middle, and its opacity.
    top, left = (h - side) // 2, (w - side) // 2
    canvas = F.pad(lit - lo, (left, w - side - left, top, h - side - top))
    alpha = F.pad(torch.ones((n, 1, side, side), device=x.device, dtype=x.dtype),
                  (left, w - side - left, top, h - side - top))
    # Centre offset of the patch on the canvas (pixels), then a location where the rotated and
    # scaled patch (half-extent r) stays inside the image.
    off_x = (left + side / 2) - w / 2
    off_y = (top + side / 2) - h / 2
    r = draws.scale * side / 2 * (draws.angle.cos().abs() + draws.angle.sin().abs())
    free_x = (w / 2 - r).clamp_min(0.0)
    free_y = (h / 2 - r).clamp_min(0.0)
    cx = (2 * draws.place[:, 0] - 1) * free_x  # new centre, pixels from the image centre
    cy = (2 * draws.place[:, 1] - 1) * free_y
    a = _rotations(draws.angle, draws.scale, h, w)
    # input_n = A (output_n - t_n) + o_n, with t the new centre and o the canvas centre.
    t_n = torch.stack([cx / (w / 2), cy / (h / 2)], -1)
    o_n = torch.tensor([off_x / (w / 2), off_y / (h / 2)], device=x.device, dtype=x.dtype)
    b = o_n - (a @ t_n[:, :, None]).squeeze(-1)
    theta = torch.cat([a, b[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    both = F.grid_sample(torch.cat([canvas, alpha], 1), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False)
    content, opacity = both[:, :-1], both[:, -1:]
    return (x * (1 - opacity) + content + lo * opacity).clamp(lo, hi)


def view_scene(x: Tensor, draws: Draws, *, transforms: Transforms) -> Tensor:
    """Rotate, scale and shift each whole image of x (N, C, H, W) under its draw.

    The scene is seen from another angle and distance; pixels that come from outside the image
    repeat its border. Differentiable with respect to x.
    """
    n, _, h, w = x.shape
    a = _rotations(draws.angle, draws.scale, h, w)
    shift = (2 * draws.place - 1) * (2 * transforms.shift)  # normalised units: side share * 2
    b = -(a @ shift[:, :, None]).squeeze(-1)
    theta = torch.cat([a, b[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def light(x: Tensor, draws: Draws, *, bounds: tuple[float, float], transforms: Transforms,
          noise: Tensor | None = None) -> Tensor:
    """Contrast about the middle of the range, then brightness, then sensor noise; clipped.

    ``noise`` is an optional standard-normal tensor like x (drawn by the caller from its own
    generator); it is scaled by ``transforms.noise`` times the range.
    """
    lo, hi = bounds
    mid, span = (lo + hi) / 2, hi - lo
    shape = (-1,) + (1,) * (x.dim() - 1)
    out = (x - mid) * draws.contrast.view(shape) + mid + draws.brightness.view(shape) * span
    if noise is not None and transforms.noise > 0:
        out = out + noise * (transforms.noise * span)
    return out.clamp(lo, hi)
