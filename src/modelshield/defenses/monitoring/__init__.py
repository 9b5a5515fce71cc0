"""Live monitors of query-based evasion: per-client streams of queries in, alerts out.

``StatefulDetector`` (Chen, Carlini and Wagner, 2020: k-nearest-neighbour distance over each
client's query history, optionally through an encoder from ``train_contrastive_encoder``) and
``Blacklight`` (Li et al., 2022: probabilistic content fingerprints in a hash table) both
follow the monitor convention: config at construction, ``fit(benign) -> self`` sets the
threshold from a false-positive rate on benign traffic, ``update(client_id, x_batch) ->
list[Alert]`` and ``reset()``. Memory is bounded and each query
costs a bounded amount of work, so they can sit in front of a live model (e.g. the gateway).
"""

from __future__ import annotations

from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring.blacklight import Blacklight, fingerprint
from modelshield.defenses.monitoring.encoder import augment, train_contrastive_encoder
from modelshield.defenses.monitoring.stateful import StatefulDetector, knn_scores

__all__ = [
    "Alert",
    "Blacklight",
    "StatefulDetector",
    "augment",
    "fingerprint",
    "knn_scores",
    "train_contrastive_encoder",
]
