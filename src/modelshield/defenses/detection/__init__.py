"""Input detectors against evasion: feature squeezing (Xu et al., 2018) and its adaptive attack.

Example:
    det = FeatureSqueezing(fpr=0.05).fit(model, x_clean)
    adaptive_attack(det, model, x, y, eps=0.1).detection_rate
"""

from __future__ import annotations

from modelshield.defenses.detection.squeezing import (
    DetectorEvaluation,
    FeatureSqueezing,
    adaptive_attack,
    median_filter,
    reduce_bit_depth,
)

__all__ = [
    "DetectorEvaluation",
    "FeatureSqueezing",
    "adaptive_attack",
    "median_filter",
    "reduce_bit_depth",
]
