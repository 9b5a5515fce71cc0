"""What a physical attack returns (the printable pattern) and how it fared on held-out images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from modelshield._typing import Norm
from modelshield.attacks.physical.transforms import Transforms, light, place_patch, view_scene
from modelshield.attacks.results import EvasionResult

__all__ = ["Kind", "PhysicalEvaluation", "PhysicalPattern", "stamp"]

Kind = Literal["patch", "sticker", "universal"]


def stamp(x: Tensor, content: Tensor, mask: Tensor) -> Tensor:
    """Images x (N, C, H, W) with the pixels under ``mask`` (H, W) replaced by ``content``.

    An opaque sticker: pixels outside the mask are returned bit for bit unchanged.
    """
    return torch.where(mask.to(torch.bool), content.to(x.dtype), x)


def _r(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


@dataclass(frozen=True, slots=True)
class PhysicalPattern:
    """One pattern meant to work on any input: an adversarial patch, a sticker or a universal
    perturbation, with what it took to find it.

    Attributes:
        kind: ``"patch"``, ``"sticker"`` or ``"universal"``.
        attack: the attack's class name; params: its configuration.
        pattern: the pattern in input units: the patch (C, s, s), the sticker's content
            (C, H, W; only the masked pixels matter) or the perturbation (C, H, W).
        mask: (H, W) bool sticker mask (None for the others).
        target: the class the pattern sends inputs to, or None (untargeted).
        share: the share of the image the pattern covers (1.0 for a universal perturbation).
        eps, norm: the budget of a universal perturbation (None for the others).
        transforms: the conditions it was optimised under (EOT).
        bounds: the model's input bounds; image_shape: (C, H, W).
        train_success: success on the training images under fresh draws at the end (the attack's
            own estimate, not verified: use ``evaluate_pattern`` on held-out images for that).
        history: mean loss over each tenth of the steps.
        steps: optimisation steps (or passes over the data, for DeepFool's universal
            perturbation) actually run.
        queries_forward, queries_backward: model rows scored / differentiated.
        time_s: wall time.
    """

    kind: Kind
    attack: str
    params: dict[str, Any]
    pattern: Tensor
    mask: Tensor | None
    target: int | None
    share: float
    eps: float | None
    norm: Norm | None
    transforms: Transforms
    bounds: tuple[float, float]
    image_shape: tuple[int, int, int]
    train_success: float
    history: list[float]
    steps: int
    queries_forward: int
    queries_backward: int
    time_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def apply(self, x: Tensor, *, draws: Any = None, noise: Tensor | None = None,
              transforms: Transforms | None = None) -> Tensor:
        """The pattern on every image of x (N, C, H, W).

        - patch: placed under ``draws`` (``Transforms.draw``; required);
        - sticker: stamped on the masked pixels, then, when ``draws`` is given, the lit
          sticker is stamped and the whole scene is viewed under the draws;
        - universal: ``clip(x + pattern)``.
        """
        t = transforms or self.transforms
        lo, hi = self.bounds
        p = self.pattern.to(device=x.device, dtype=x.dtype)
        if self.kind == "universal":
            return (x + p).clamp(lo, hi)
        if self.kind == "patch":
            if draws is None:
                raise ValueError("PhysicalPattern.apply: a patch needs draws (Transforms.draw)")
            return place_patch(x, p, draws, bounds=self.bounds, transforms=t, noise=noise)
        assert self.mask is not None
        mask = self.mask.to(x.device)
        if draws is None:
            return stamp(x, p, mask)
        lit = light(p.expand(x.shape[0], *p.shape), draws, bounds=self.bounds, transforms=t,
                    noise=noise)
        return view_scene(stamp(x, lit, mask), draws, transforms=t)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors)."""
        return {
            "kind": self.kind, "attack": self.attack, "params": self.params, "target": self.target,
            "share": round(self.share, 6), "eps": self.eps, "norm": self.norm,
            "pattern_shape": list(self.pattern.shape),
            "mask_pixels": None if self.mask is None else int(self.mask.sum()),
            "transforms": self.transforms.to_dict(), "bounds": list(self.bounds),
            "image_shape": list(self.image_shape), "train_success": _r(self.train_success),
            "history": [_r(v) for v in self.history], "steps": self.steps,
            "queries_forward": self.queries_forward, "queries_backward": self.queries_backward,
            "time_s": round(self.time_s, 3), "extra": self.extra,
        }


@dataclass(frozen=True, slots=True)
class PhysicalEvaluation:
    """A pattern tested on held-out images under freshly drawn conditions, re-verified.

    Attributes:
        kind, target, share: from the pattern.
        draws: conditions drawn per image (each image is tested ``draws`` times).
        strength: the transformations' strength relative to the pattern's own (1.0: the same
            distribution; see ``Transforms.scaled``).
        evasion: the verified result over the N * draws views: ``x`` is the clean view (the
            image, or the scene under the same view for a sticker), ``x_adv`` the pattern on it.
        success_rate: share of eligible views broken (untargeted: clean view correct and
            misclassified with the pattern; targeted: true class not the target, classified as
            the target), from the model's fresh answers.
        fooling_rate: share of views whose label changes with the pattern (Moosavi-Dezfooli
            et al.'s fooling rate for universal perturbations; needs no labels).
    """

    kind: Kind
    target: int | None
    share: float
    draws: int
    strength: float
    evasion: EvasionResult
    seed: int | None

    @property
    def success_rate(self) -> float:
        return self.evasion.attack_success_rate

    @property
    def fooling_rate(self) -> float:
        ev = self.evasion
        ok = ev.clean_pred >= 0
        if ev.model_errors is not None:
            ok &= ~ev.model_errors
        changed = ev.adv_pred[ok] != ev.clean_pred[ok]
        return float(changed.double().mean()) if changed.numel() else math.nan

    @property
    def n_eligible(self) -> int:
        return int(self.evasion.eligible.sum())

    def to_dict(self) -> dict[str, Any]:
        ev = self.evasion
        return {
            "kind": self.kind, "target": self.target, "share": round(self.share, 6),
            "draws": self.draws, "strength": self.strength, "seed": self.seed,
            "views": ev.n, "eligible": self.n_eligible,
            "success_rate": _r(self.success_rate), "fooling_rate": _r(self.fooling_rate),
            "clean_accuracy": _r(ev.clean_accuracy), "accuracy_with_pattern": _r(ev.robust_accuracy),
            "queries_forward": ev.queries_forward, "time_s": round(ev.time_s, 3),
            "stochastic": bool(ev.extra.get("stochastic", False)),
        }
