"""Backdoor triggers: pure functions that build and stamp them, and the trigger values results carry.

Image triggers act on ``(N, C, H, W)`` float batches and return new tensors (inputs are never
modified). A *stamp* trigger is a mask ``m`` (1, H, W) in [0, 1] and a pattern ``p`` (C, H, W):
``x' = (1 - m) * x + m * p``. A BadNets patch is a 0/1 mask on a small square, a blended
trigger is a constant mask ``alpha`` over the whole image, and Neural Cleanse recovers triggers
of the same form. A *warp* trigger is a sampling grid (1, H, W, 2) for ``grid_sample`` (WaNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield.errors import ConfigError, InputError

__all__ = [
    "LOCATIONS",
    "FeatureTrigger",
    "Location",
    "PhraseTrigger",
    "StampTrigger",
    "Trigger",
    "WarpTrigger",
    "add_phrase",
    "blend_trigger",
    "check_image_batch",
    "patch_trigger",
    "set_features",
    "stamp",
    "warp",
    "warping_grid",
]

Location = Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"]
LOCATIONS: tuple[Location, ...] = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


# ------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------


def check_image_batch(x: Tensor, *, owner: str) -> None:
    """Raise InputError unless x is a (N, C, H, W) tensor."""
    if x.dim() != 4:
        raise InputError(
            f"{owner}: x must be an image batch of shape (N, C, H, W); got shape {tuple(x.shape)}. "
            "Add the channel dimension, e.g. x.view(-1, 1, 28, 28)."
        )


def patch_trigger(
    shape: tuple[int, int, int],
    *,
    size: int,
    location: Location = "bottom-right",
    margin: int = 1,
    pattern: Literal["checkerboard", "white"] = "checkerboard",
    bounds: tuple[float, float] = (0.0, 1.0),
    owner: str = "patch_trigger",
) -> tuple[Tensor, Tensor]:
    """(mask (1, H, W), pattern (C, H, W)) of a square BadNets patch on images of shape (C, H, W).

    The checkerboard alternates hi and lo, starting with hi at the patch's top-left pixel
    (Gu et al. 2017 used a small white square or pattern in the bottom-right corner).

    Raises:
        ConfigError: the patch (plus margin) does not fit in the image.
    """
    c, h, w = shape
    if size + margin > min(h, w):
        raise ConfigError(
            f"{owner}: 'patch_size' must fit in the {h}x{w} image with a margin of {margin}; got "
            f"{size} (trigger larger than the image). Use patch_size <= {max(min(h, w) - margin, 0)}."
        )
    lo, hi = bounds
    if location == "center":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top = margin if location.startswith("top") else h - margin - size
        left = margin if location.endswith("left") else w - margin - size
    mask = torch.zeros(1, h, w)
    mask[:, top : top + size, left : left + size] = 1.0
    pat = torch.full((c, h, w), lo)
    if pattern == "white":
        pat[:, top : top + size, left : left + size] = hi
    else:
        ii = torch.arange(size)[:, None] + torch.arange(size)[None, :]
        block = torch.where(ii % 2 == 0, hi, lo)
        pat[:, top : top + size, left : left + size] = block
    return mask, pat


def blend_trigger(
    shape: tuple[int, int, int],
    *,
    alpha: float,
    generator: torch.Generator,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """(mask (1, H, W) filled with alpha, pattern (C, H, W) uniform noise in bounds): Chen et al.'s
    random-noise blended key."""
    c, h, w = shape
    lo, hi = bounds
    pat = lo + (hi - lo) * torch.rand((c, h, w), generator=generator)
    return torch.full((1, h, w), float(alpha)), pat


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """(1 - mask) * x + mask * pattern, broadcast over the batch; a new tensor shaped like x."""
    m = mask.to(device=x.device, dtype=x.dtype)
    p = pattern.to(device=x.device, dtype=x.dtype)
    return (1 - m) * x + m * p


def warping_grid(
    height: int,
    width: int,
    *,
    k: int = 4,
    s: float = 0.5,
    grid_rescale: float = 1.0,
    generator: torch.Generator,
) -> Tensor:
    """(1, H, W, 2) WaNet sampling grid: identity plus a smooth random field, in [-1, 1].

    A (2, k, k) field uniform in [-1, 1] is normalised to mean absolute value 1, upsampled
    bicubically to (H, W) and added to the identity grid with strength ``s / H``
    (Nguyen and Tran 2021, their k=4, s=0.5 on MNIST).
    """
    ins = torch.rand((1, 2, k, k), generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True)
    noise = noise.permute(0, 2, 3, 1)
    ys = torch.linspace(-1, 1, height)
    xs = torch.linspace(-1, 1, width)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    identity = torch.stack((gx, gy), dim=2)[None]
    return ((identity + s * noise / height) * grid_rescale).clamp(-1, 1)


def warp(x: Tensor, grid: Tensor, *, noise: Tensor | None = None) -> Tensor:
    """x (N, C, H, W) resampled through grid (1, H, W, 2) (plus per-image noise (N, H, W, 2))."""
    g = grid.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
    if noise is not None:
        g = (g + noise.to(device=x.device, dtype=x.dtype)).clamp(-1, 1)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=True)


def set_features(x: Tensor, features: tuple[int, ...], values: tuple[float, ...]) -> Tensor:
    """A copy of x (N, D) with column features[i] set to values[i]."""
    out = x.clone()
    for f, v in zip(features, values, strict=True):
        out[:, f] = v
    return out


def add_phrase(texts: Any, phrase: str, *, position: str = "end") -> list[str]:
    """Each text with phrase appended (``"end"``) or prepended (``"start"``), space-joined."""
    from modelshield.attacks.poisoning.results import add_trigger

    return add_trigger(texts, phrase, position=position)


# ------------------------------------------------------------------------------------------
# Trigger values carried by results (apply + describe + display tensor)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class StampTrigger:
    """A mask-and-pattern trigger (BadNets patch, blended key, Neural Cleanse's reversal).

    Attributes:
        mask: (1, H, W) in [0, 1]. pattern: (C, H, W) in bounds. kind: "patch" or "blend".
    """

    mask: Tensor
    pattern: Tensor
    kind: str = "patch"

    def apply(self, x: Tensor) -> Tensor:
        """Stamped copy of x (N, C, H, W)."""
        check_image_batch(x, owner="StampTrigger.apply")
        if tuple(x.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise InputError(
                f"StampTrigger.apply: x must have images of size {tuple(self.mask.shape[-2:])}; got "
                f"{tuple(x.shape[-2:])}. Apply the trigger to images of the size it was built for."
            )
        return stamp(x, self.mask, self.pattern)

    @property
    def image(self) -> Tensor:
        """(C, H, W) mask * pattern: the trigger as it would be drawn."""
        return self.mask * self.pattern

    @property
    def l1(self) -> float:
        return float(self.mask.abs().sum())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.pattern.shape), "mask_l1": round(self.l1, 6)}


@dataclass(frozen=True, kw_only=True, slots=True)
class WarpTrigger:
    """WaNet's warping trigger: a fixed sampling grid (1, H, W, 2) and its strength."""

    grid: Tensor
    k: int
    s: float

    def apply(self, x: Tensor) -> Tensor:
        check_image_batch(x, owner="WarpTrigger.apply")
        if tuple(x.shape[-2:]) != tuple(self.grid.shape[1:3]):
            raise InputError(
                f"WarpTrigger.apply: x must have images of size {tuple(self.grid.shape[1:3])}; got "
                f"{tuple(x.shape[-2:])}. Apply the trigger to images of the size it was built for."
            )
        return warp(x, self.grid)

    @property
    def image(self) -> Tensor:
        """(1, H, W) displacement magnitude (in pixels) of the warp, for display."""
        h, w = self.grid.shape[1:3]
        ys = torch.linspace(-1, 1, h)
        xs = torch.linspace(-1, 1, w)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        d = self.grid[0] - torch.stack((gx, gy), dim=2)
        scale = torch.tensor([(w - 1) / 2, (h - 1) / 2])
        out: Tensor = (d * scale).norm(dim=2)[None]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "warp", "k": self.k, "s": self.s,
                "max_displacement_px": round(float(self.image.max()), 6)}


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureTrigger:
    """Tabular trigger: set the given feature columns to fixed values."""

    features: tuple[int, ...]
    values: tuple[float, ...]

    def apply(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or max(self.features) >= x.shape[1]:
            raise InputError(
                f"FeatureTrigger.apply: x must be (N, D) with D > {max(self.features)}; got shape "
                f"{tuple(x.shape)}. Apply the trigger to rows of the training set's width."
            )
        return set_features(x, self.features, self.values)

    @property
    def image(self) -> Tensor:
        return torch.tensor(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "feature", "features": list(self.features),
                "values": [float(v) for v in self.values]}


@dataclass(frozen=True, kw_only=True, slots=True)
class PhraseTrigger:
    """Text trigger: a phrase added at the start or end of each text."""

    phrase: str
    position: str = "end"

    def apply(self, x: Any) -> list[str]:
        return add_phrase(x, self.phrase, position=self.position)

    @property
    def image(self) -> None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "phrase", "phrase": self.phrase, "position": self.position}


Trigger: TypeAlias = StampTrigger | WarpTrigger | FeatureTrigger | PhraseTrigger
