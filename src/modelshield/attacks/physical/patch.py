"""Adversarial patch (Brown et al., 2017): one printable patch that fools the model anywhere."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

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
from modelshield.attacks.physical.results import PhysicalPattern
from modelshield.attacks.physical.transforms import (
    Draws,
    Transforms,
    largest_patch_side,
    max_patch_share,
    patch_side,
    place_patch,
)
from modelshield.attacks.verify import attack_params
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, eval_mode

__all__ = ["AdversarialPatch"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AdversarialPatch:
    """A universal, robust, printable patch, trained with expectation over transformation.

    The patch is a square of ``size`` of the image's area (``patch_side``). At every step a
    batch of training images is drawn, the patch is pasted on each at a random location,
    rotation and scale and under random light (``transforms``, Athalye et al.'s EOT) and the
    patch takes one Adam step on the expected loss: cross-entropy to ``target`` (the paper's
    targeted patch) or, untargeted, minus the clipped cross-entropy to the true class.

    Args:
        size: share of the image area the patch covers, in (0, 1).
        steps: optimisation steps (one batch of fresh images and conditions each).
        batch_size: images (and draws) per step.
        lr: Adam's learning rate, in input units.
        transforms: the conditions it must survive (``Transforms()``: rotation +-20 degrees,
            scale 0.9-1.1, brightness +-10%, contrast 0.9-1.1, 1% sensor noise).
        seed: seed of the initial patch, the batches and the draws (None: fresh entropy).

    Call ``attack(model, x, y, target=None)`` with training images; it returns a
    :class:`PhysicalPattern`. Measure it with ``evaluate_pattern`` on held-out images.

    Reference: Brown, Mane, Roy, Abadi and Gilmer, "Adversarial Patch", 2017
    (arXiv:1712.09665); Athalye, Engstrom, Ilyas and Kwok, "Synthesizing Robust Adversarial
    Examples", ICML 2018 (arXiv:1707.07397).

    Example:
        patch = AdversarialPatch(size=0.05, steps=300)(model, x_train, y_train, target=0)
        evaluate_pattern(model, patch, x_test, y_test).success_rate
    """

    size: float = 0.05
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.05
    transforms: Transforms = field(default_factory=Transforms)
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("size", self.size, owner="AdversarialPatch", low=0.0, high=1.0, low_open=True,
                    fix="Give the share of the image the patch covers, e.g. size=0.05 for 5%.")
        EotLoop(self.steps, self.batch_size, self.lr, self.transforms, "AdversarialPatch").check()

    def __call__(self, model: ModelLike, x: Tensor, y: Tensor, *, target: int | None = None,
                 progress: Progress | None = None) -> PhysicalPattern:
        call, (c, h, w) = start_physical(model, x, y, owner="AdversarialPatch")
        m = call.gradient_model
        tgt = check_target(target, m.n_classes, owner="AdversarialPatch")
        side = patch_side(self.size, h, w)
        if side > largest_patch_side(h, w):
            raise ConfigError(
                f"AdversarialPatch: a patch of size={self.size} is {side}x{side} pixels, which does not "
                f"fit inside the {h}x{w} image with part of the image left visible. Use a smaller size "
                f"(at most {max_patch_share(h, w)})."
            )
        bounds = m.bounds
        gen = make_generator(self.seed, call.x.device)
        lo, hi = bounds
        init = lo + (hi - lo) * torch.rand((c, side, side), generator=gen, device=call.x.device,
                                           dtype=call.x.dtype)

        def render(p: Tensor, xb: Tensor, d: Draws, noise: Tensor | None) -> Tensor:
            return place_patch(xb, p, d, bounds=bounds, transforms=self.transforms, noise=noise)

        loop = EotLoop(self.steps, self.batch_size, self.lr, self.transforms, "AdversarialPatch")
        with eval_mode(m):
            patch, history = eot_optimise(
                m, call.x, call.y, init, render=render, noise_shape=(c, side, side), loop=loop,
                target=tgt, gen=gen, progress=progress,
            )
            train = eot_success(m, call.x, call.y, patch, render=render, noise_shape=(c, side, side),
                                transforms=self.transforms, target=tgt, gen=gen)
        fwd, bwd = m.queries.snapshot()
        return PhysicalPattern(
            kind="patch", attack="AdversarialPatch", params=attack_params(self), pattern=patch,
            mask=None, target=tgt, share=side * side / (h * w), eps=None, norm=None,
            transforms=self.transforms, bounds=bounds, image_shape=(c, h, w), train_success=train,
            history=history, steps=self.steps, queries_forward=fwd - call.queries_start[0],
            queries_backward=bwd - call.queries_start[1],
            time_s=time.perf_counter() - call.started,
        )
