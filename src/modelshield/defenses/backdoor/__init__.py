"""Backdoor defences: training-set detection, model inspection, run-time detection and removal.

- Training set: ``ActivationClustering``, ``SpectralSignatures`` (``fit(model, x, y)``, then
  ``flagged_indices_`` / ``scores_``) on penultimate-layer representations.
- Model: ``NeuralCleanse()(model, x_clean) -> NeuralCleanseReport``.
- Run time: ``STRIP(frr=0.05).fit(model, x_clean).predict(x)``.
- All of them at once, with a verdict per class: ``scan_model(model, x_clean, y_clean)``.
- Removal: ``retrain_without``, ``FinePruning``, ``Unlearning`` (each returns a repaired copy).
"""

from __future__ import annotations

from modelshield.defenses.backdoor._common import detection_metrics
from modelshield.defenses.backdoor.activation_clustering import ActivationClustering, ClassClusters
from modelshield.defenses.backdoor.activations import extract_features, penultimate_layer
from modelshield.defenses.backdoor.neural_cleanse import (
    NeuralCleanse,
    NeuralCleanseReport,
    anomaly_indices,
    reverse_trigger,
)
from modelshield.defenses.backdoor.removal import FinePruning, RemovalResult, Unlearning, retrain_without
from modelshield.defenses.backdoor.scan import ScanReport, scan_model
from modelshield.defenses.backdoor.spectral import SpectralSignatures, spectral_scores
from modelshield.defenses.backdoor.strip import STRIP, strip_entropy

__all__ = [
    "STRIP",
    "ActivationClustering",
    "ClassClusters",
    "FinePruning",
    "NeuralCleanse",
    "NeuralCleanseReport",
    "RemovalResult",
    "ScanReport",
    "SpectralSignatures",
    "Unlearning",
    "anomaly_indices",
    "detection_metrics",
    "extract_features",
    "penultimate_layer",
    "retrain_without",
    "reverse_trigger",
    "scan_model",
    "spectral_scores",
    "strip_entropy",
]
