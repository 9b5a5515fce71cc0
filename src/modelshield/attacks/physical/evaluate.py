"""Honest evaluation of a physical pattern: held-out images, fresh conditions, re-verified."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield._typing import Progress
from modelshield.attacks.ops import make_generator
from modelshield.attacks.physical.optimise import check_images
from modelshield.attacks.physical.patch import AdversarialPatch
from modelshield.attacks.physical.results import PhysicalEvaluation, PhysicalPattern
from modelshield.attacks.physical.transforms import Transforms, view_scene
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.errors import InputError
from modelshield.models import ModelLike

__all__ = ["EVAL_SEED", "evaluate_pattern", "size_curve", "strength_curve"]

EVAL_SEED = 0x5EED_E7A1
"""Default seed of the evaluation draws: a stream the attacks (seed 0, ...) never use."""


def _views(pattern: PhysicalPattern, x: Tensor, transforms: Transforms, draws: int,
           gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(clean views, pattern views), draws per image, image-major order."""
    xr = x.repeat_interleave(draws, dim=0)
    if pattern.kind == "universal":
        return xr, pattern.apply(xr)
    d = transforms.draw(xr.shape[0], gen, device=x.device, dtype=x.dtype)
    shape = tuple(pattern.pattern.shape)
    noise = (torch.randn((xr.shape[0], *shape), generator=gen, device=x.device, dtype=x.dtype)
             if transforms.noise > 0 else None)
    adv = pattern.apply(xr, draws=d, noise=noise, transforms=transforms)
    if pattern.kind == "patch":
        return xr, adv
    # A sticker: the clean view is the same scene from the same view, without the sticker.
    return view_scene(xr, d, transforms=transforms), adv


def evaluate_pattern(
    model: ModelLike, pattern: PhysicalPattern, x: Tensor, y: Tensor, *,
    transforms: Transforms | None = None, strength: float = 1.0, draws: int = 4,
    seed: int | None = EVAL_SEED,
) -> PhysicalEvaluation:
    """Test a pattern on images it was not trained on, under freshly drawn conditions.

    Each image is seen ``draws`` times, each time under a new draw of ``transforms`` (default:
    the pattern's own, scaled by ``strength``), from a generator seeded with ``seed`` (not the
    attack's). The views with and without the pattern are scored again by the model through
    ``verify_evasion``: success comes from those fresh answers (and votes, for a randomised
    model), never from the attack. A universal perturbation is digital: one view per image.

    Returns a :class:`PhysicalEvaluation` (success rate over eligible views, fooling rate).
    """
    owner = "evaluate_pattern"
    if not isinstance(pattern, PhysicalPattern):
        raise InputError(f"{owner}: 'pattern' must be a PhysicalPattern (what AdversarialPatch, "
                         f"Sticker or UniversalPerturbation return); got {type(pattern).__name__}.")
    check_range("draws", draws, owner=owner, low=1, integer=True)
    check_range("strength", strength, owner=owner, low=0.0, high=4.0)
    if not isinstance(x, Tensor):
        raise InputError(f"{owner}: x must be a torch.Tensor of images (N, C, H, W); got "
                         f"{type(x).__name__}.")
    shape = check_images(x, owner=owner)
    if shape != pattern.image_shape:
        raise InputError(f"{owner}: the images are {shape} (C, H, W) but the pattern was made for "
                         f"{pattern.image_shape}. Evaluate on images of the model it was made for.")
    base = transforms if transforms is not None else pattern.transforms
    t = base.scaled(strength) if strength != 1.0 else base
    n_draws = 1 if pattern.kind == "universal" else draws
    gen = make_generator(seed, x.device)
    x_clean, x_adv = _views(pattern, x.detach(), t, n_draws, gen)
    y_t = y.repeat_interleave(n_draws, dim=0) if isinstance(y, Tensor) else y
    target = None
    if pattern.target is not None:
        target = torch.full((x_clean.shape[0],), pattern.target, dtype=torch.int64, device=x.device)
    call = start_call(model, x_clean, y_t, target, owner=owner, gradients=False)
    ev = call.finish(x_adv, attack=pattern, eps=pattern.eps, norm=pattern.norm,
                     extra={"physical": pattern.kind})
    return PhysicalEvaluation(kind=pattern.kind, target=pattern.target, share=pattern.share,
                              draws=n_draws, strength=strength, evasion=_named(ev, pattern),
                              seed=seed)


def _named(ev: EvasionResult, pattern: PhysicalPattern) -> EvasionResult:
    return replace(ev, attack=pattern.attack, params=pattern.params)


def strength_curve(
    model: ModelLike, pattern: PhysicalPattern, x: Tensor, y: Tensor, *,
    strengths: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0), draws: int = 4,
    seed: int | None = EVAL_SEED,
) -> list[PhysicalEvaluation]:
    """Success of one pattern under transformations of growing strength (0: none)."""
    return [evaluate_pattern(model, pattern, x, y, strength=s, draws=draws, seed=seed)
            for s in strengths]


def size_curve(
    model: ModelLike, attack: AdversarialPatch, x_train: Tensor, y_train: Tensor, x_test: Tensor,
    y_test: Tensor, *, sizes: Sequence[float] = (0.03, 0.05, 0.1), target: int | None = None,
    draws: int = 4, seed: int | None = EVAL_SEED, progress: Progress | None = None,
) -> list[tuple[PhysicalPattern, PhysicalEvaluation]]:
    """Train one patch per size on the training images and test each on the held-out ones."""
    out = []
    for i, size in enumerate(sizes):
        if progress is not None:
            progress(i, len(sizes), f"patch of {size:.0%} of the image")
        patch = replace(attack, size=size)(model, x_train, y_train, target=target)
        out.append((patch, evaluate_pattern(model, patch, x_test, y_test, draws=draws, seed=seed)))
    if progress is not None:
        progress(len(sizes), len(sizes), "patch sizes done")
    return out

