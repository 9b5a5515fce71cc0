"""Training-data validation: label issues, duplicates, outliers and drift, combined in validate_dataset.

Works on text (list of str), tabular rows (2-D arrays or tensors) and images ((N, C, H, W),
raw pixels or a model's embedding through ``embed=``).

Example:
    report = validate_dataset(texts, y)
    report.rows[:5]                        # most suspicious rows, with reasons
    x_clean, y_clean, kept = report.cleaned()
"""

from __future__ import annotations

from modelshield.defenses.data.drift import DriftReport, FeatureDrift, drift_report, psi
from modelshield.defenses.data.duplicates import DuplicateGroup, DuplicateReport, find_duplicates
from modelshield.defenses.data.label_issues import (
    ConfidentLearning,
    KNNLabelConsistency,
    confident_joint,
    per_class_thresholds,
    prune_by_noise_rate,
)
from modelshield.defenses.data.outliers import OutlierDetector
from modelshield.defenses.data.report import (
    CHECKS,
    REMOVABLE,
    SuspiciousRow,
    ValidationReport,
    validate_dataset,
)

__all__ = [
    "CHECKS",
    "REMOVABLE",
    "ConfidentLearning",
    "DriftReport",
    "DuplicateGroup",
    "DuplicateReport",
    "FeatureDrift",
    "KNNLabelConsistency",
    "OutlierDetector",
    "SuspiciousRow",
    "ValidationReport",
    "confident_joint",
    "drift_report",
    "find_duplicates",
    "per_class_thresholds",
    "prune_by_noise_rate",
    "psi",
    "validate_dataset",
]
