"""Explanations: attributions for every kind of model modelshield takes (work in progress, #19).

Every explainer is a frozen dataclass configured at construction and called with
``(model, x, target=None)``, returning an :class:`Attribution`.
"""

from __future__ import annotations

from modelshield.explain.detectors import (
    AttributionDisagreement,
    DetectionResult,
    ImportanceShift,
    PatchTransplantDetector,
)
from modelshield.explain.gradients import (
    GradientTimesInput,
    GuidedBackprop,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
)
from modelshield.explain.permutation import PermutationImportance, PermutationResult
from modelshield.explain.plots import bars_png, heatmap_png, tokens_html, tokens_png
from modelshield.explain.result import Attribution
from modelshield.explain.sanity import DataRandomisation, ModelRandomisation, SanityReport, SanityResult
from modelshield.explain.shapley import ExactShapley, KernelShap
from modelshield.explain.text import TextKernelShap, TextOcclusion
from modelshield.explain.trees import TreeShap

__all__ = [
    "Attribution",
    "AttributionDisagreement",
    "DataRandomisation",
    "DetectionResult",
    "ExactShapley",
    "GradientTimesInput",
    "GuidedBackprop",
    "ImportanceShift",
    "IntegratedGradients",
    "KernelShap",
    "ModelRandomisation",
    "Occlusion",
    "PatchTransplantDetector",
    "PermutationImportance",
    "PermutationResult",
    "Saliency",
    "SanityReport",
    "SanityResult",
    "SmoothGrad",
    "TextKernelShap",
    "TextOcclusion",
    "TreeShap",
    "bars_png",
    "heatmap_png",
    "tokens_html",
    "tokens_png",
]
