"""The masking-consistency detector against a patch attacker who knows it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield.attacks.physical import AdversarialPatch, PhysicalEvaluation, evaluate_pattern
from modelshield.defenses.certification.patchcleanser import (
    MaskingConsistencyDetector,
    PatchCleanser,
    mask_set,
)
from modelshield.errors import ConfigError
from modelshield.models import as_model

__all__ = ["AdaptivePatchDetection", "MaskedViews", "detect_adaptive_patch"]


class MaskedViews(nn.Module):
    """A classifier seen through all of a PatchCleanser's one-mask views at once.

    ``forward(x)`` is the mean, over the unmasked image and its M one-mask views, of the
    module's log-probabilities. A patch optimised against it must fool every view together,
    which is what an attacker who knows the masking-consistency detector needs: the detector
    flags inputs whose one-mask predictions disagree with the unmasked one.
    """

    def __init__(self, module: nn.Module, cleanser: PatchCleanser, *, height: int, width: int,
                 fill: float) -> None:
        super().__init__()
        self.module = module
        masks = mask_set(height, width, cleanser.patch_pixels(height, width), cleanser.masks_per_axis)
        self.register_buffer("masks", masks, persistent=False)
        self.fill = float(fill)

    def forward(self, x: Tensor) -> Tensor:
        masks: Tensor = self.masks  # type: ignore[assignment]
        views = torch.where(masks[:, None, None], torch.full_like(x, self.fill)[None], x[None])
        allv = torch.cat([x[None], views], 0)  # (M + 1, N, C, H, W)
        logp = F.log_softmax(self.module(allv.flatten(0, 1)), dim=1)
        return logp.view(allv.shape[0], x.shape[0], -1).mean(0)


@dataclass(frozen=True, slots=True)
class AdaptivePatchDetection:
    """Patches with and without knowledge of the detector, and what the detector caught.

    For each attacker (``naive``: the plain patch; ``adaptive``: the patch optimised against
    ``MaskedViews``), on held-out views: ``success`` is the share of eligible views the model
    gets wrong, ``tpr`` the share of those successful views the detector flags, and
    ``undetected_success`` the attacker's real gain: the share of eligible views both fooled
    and not flagged.
    """

    naive: dict[str, float]
    adaptive: dict[str, float]
    threshold: float
    clean_fpr: float
    size: float

    def to_dict(self) -> dict[str, Any]:
        return {"naive": self.naive, "adaptive": self.adaptive, "threshold": round(self.threshold, 6),
                "clean_fpr": round(self.clean_fpr, 6), "size": self.size}


def _caught(model: nn.Module, detector: MaskingConsistencyDetector,
            ev: PhysicalEvaluation) -> dict[str, float]:
    e = ev.evasion
    hit = e.success & e.eligible
    flagged = detector.predict(model, e.x_adv) if bool(hit.any()) else torch.zeros_like(hit)
    n_el = int(e.eligible.sum())
    n_hit = int(hit.sum())
    return {
        "success": round(n_hit / n_el, 6) if n_el else math.nan,
        "tpr": round(float((flagged & hit).sum()) / n_hit, 6) if n_hit else math.nan,
        "undetected_success": round(float((hit & ~flagged).sum()) / n_el, 6) if n_el else math.nan,
    }


def detect_adaptive_patch(
    model: nn.Module, detector: MaskingConsistencyDetector, attack: AdversarialPatch,
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, x_clean: Tensor,
    draws: int = 1,
) -> AdaptivePatchDetection:
    """Evaluate a fitted detector against a naive and an adaptive patch attacker.

    Both patches are trained on ``x_train`` with ``attack``'s settings; the adaptive one against
    :class:`MaskedViews` of the detector's masks (so that every one-mask view agrees on the
    wrong class). Both are tested on ``x_test`` under fresh draws, on the real model; the
    detector's false-positive rate is re-measured on ``x_clean`` (clean images it was not
    fitted on).
    """
    if not isinstance(detector, MaskingConsistencyDetector) or not hasattr(detector, "threshold_"):
        raise ConfigError("detect_adaptive_patch: 'detector' must be a fitted MaskingConsistencyDetector; "
                          "call detector.fit(model, x_clean_fit) first.")
    h, w = int(x_test.shape[-2]), int(x_test.shape[-1])
    cleanser = PatchCleanser(patch_size=detector.patch_size, masks_per_axis=detector.masks_per_axis,
                             mask_value=detector.mask_value)
    lo, hi = as_model(model).bounds
    fill = (lo + hi) / 2 if detector.mask_value is None else float(detector.mask_value)
    naive = attack(model, x_train, y_train)
    views = MaskedViews(model, cleanser, height=h, width=w, fill=fill).eval()
    adaptive = attack(views, x_train, y_train)
    ev_naive = evaluate_pattern(model, naive, x_test, y_test, draws=draws)
    ev_adapt = evaluate_pattern(model, adaptive, x_test, y_test, draws=draws)
    clean_fpr = float(detector.predict(model, x_clean).double().mean())
    return AdaptivePatchDetection(naive=_caught(model, detector, ev_naive),
                                  adaptive=_caught(model, detector, ev_adapt),
                                  threshold=float(detector.threshold_), clean_fpr=clean_fpr,
                                  size=attack.size)
