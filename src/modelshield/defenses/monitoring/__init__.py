"""Live monitors of a model's traffic: per-client streams of queries in, alerts out.

``StatefulDetector`` (Chen, Carlini and Wagner, 2020: k-nearest-neighbour distance over each
client's query history, optionally through an encoder from ``train_contrastive_encoder``) and
``Blacklight`` (Li et al., 2022: probabilistic content fingerprints in a hash table) both
follow the monitor convention: config at construction, ``fit(benign) -> self`` sets the
threshold from a false-positive rate on benign traffic, ``update(client_id, x_batch) ->
list[Alert]`` and ``reset()``. Memory is bounded and each query
costs a bounded amount of work, so they can sit in front of a live model (e.g. the gateway).

The monitors of issue #18 share one interface, ``fit(...) -> self``, ``update(client_id, x_batch,
probs=None) -> list[Alert]``, ``reset(client_id=None)``, ``queries(client_id)`` and
``last_scores(client_id)``: ``CoverageMonitor`` (natural-data extraction, Kesarwani et al. 2018 /
Knockoff Nets), ``SqueezingMonitor`` (adversarial inputs, feature squeezing), ``StripMonitor``
(backdoor triggers, STRIP) and ``DriftMonitor`` (input drift against a reference set, PSI).
"""

from __future__ import annotations

from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring.blacklight import Blacklight, fingerprint
from modelshield.defenses.monitoring.coverage import CoverageMonitor, histogram_divergence, kmeans
from modelshield.defenses.monitoring.drift_monitor import DriftMonitor, psi_counts
from modelshield.defenses.monitoring.encoder import augment, train_contrastive_encoder
from modelshield.defenses.monitoring.squeezing_monitor import SqueezingMonitor
from modelshield.defenses.monitoring.stateful import StatefulDetector, knn_scores
from modelshield.defenses.monitoring.strip_monitor import StripMonitor

__all__ = [
    "Alert",
    "Blacklight",
    "CoverageMonitor",
    "DriftMonitor",
    "SqueezingMonitor",
    "StatefulDetector",
    "StripMonitor",
    "augment",
    "fingerprint",
    "histogram_divergence",
    "kmeans",
    "knn_scores",
    "psi_counts",
    "train_contrastive_encoder",
]
