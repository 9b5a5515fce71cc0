"""Certified robustness: randomized smoothing (Cohen et al., 2019) and its noise training, and
PatchCleanser double masking against adversarial patches (Xiang et al., 2022), with its
masking-consistency patch detector.

Example:
    noise_augmented_training(model, (x_train, y_train), sigma=0.25, epochs=20)
    model.eval()
    result = RandomizedSmoothing(sigma=0.25, n=10_000).certify(model, x_test, y_test)
    result.certified_accuracy([0.25, 0.5, 1.0])
    masked_training(model, (x_train, y_train), cleanser=PatchCleanser(patch_size=0.05), epochs=5)
    PatchCleanser(patch_size=0.05, masks_per_axis=6).certify(model, x_test, y_test).certified_accuracy
"""

from __future__ import annotations

from modelshield.defenses.certification.adaptive import (
    AdaptivePatchDetection,
    MaskedViews,
    detect_adaptive_patch,
)
from modelshield.defenses.certification.masked_training import masked_training
from modelshield.defenses.certification.patchcleanser import (
    MaskingConsistencyDetector,
    MaskingDetectionResult,
    PatchCleanser,
    PatchCleanserPrediction,
    PatchCleanserResult,
    mask_set,
    patch_side,
)
from modelshield.defenses.certification.smoothing import (
    ABSTAIN,
    CertificationResult,
    RandomizedSmoothing,
    SmoothedPrediction,
    certified_accuracy,
    clopper_pearson_lower,
    noise_augmented_training,
)

__all__ = [
    "ABSTAIN",
    "AdaptivePatchDetection",
    "CertificationResult",
    "MaskedViews",
    "MaskingConsistencyDetector",
    "MaskingDetectionResult",
    "PatchCleanser",
    "PatchCleanserPrediction",
    "PatchCleanserResult",
    "RandomizedSmoothing",
    "SmoothedPrediction",
    "certified_accuracy",
    "clopper_pearson_lower",
    "detect_adaptive_patch",
    "mask_set",
    "masked_training",
    "noise_augmented_training",
    "patch_side",
]
