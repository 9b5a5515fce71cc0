"""Parity of StatefulDetector's k-NN statistic with the rule of ART's stateful-detector prototype.

ART's prototype (unmerged pull request Trusted-AI/adversarial-robustness-toolbox#1420,
``BlackBoxDetector.scan``) keeps a deque of the last queries, re-fits a scikit-learn
``NearestNeighbors`` index on it for every query and scores the query by the mean distance to
its k nearest neighbours. StatefulDetector computes the same statistic incrementally (a ring
buffer and one ``cdist`` row per query, batches scored query by query against the history as it
stood when each query arrived); these tests check that both give the same numbers on one
client's stream, including ring-buffer eviction and batches.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from modelshield.defenses.monitoring import StatefulDetector


def reference_scores(x: torch.Tensor, k: int, history: int) -> list[float]:
    """The prototype's rule: per query, re-fit NearestNeighbors on the last ``history`` queries."""
    memory: collections.deque[np.ndarray] = collections.deque(maxlen=history)
    out = []
    for row in x.flatten(1).double().numpy():
        if memory:
            kk = min(k, len(memory))  # fewer than k stored queries: average over those there are
            dist, _ = NearestNeighbors(n_neighbors=kk).fit(np.array(memory)).kneighbors(row[None])
            out.append(float(dist.mean()))
        else:
            out.append(math.inf)
        memory.append(row)
    return out


def stream(seed: int, n: int = 80) -> torch.Tensor:
    """Benign-looking rows mixed with a run of near-duplicates (what a query attack sends)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 4, 4), generator=gen)
    base = x[30]
    x[31:55] = (base + 0.02 * torch.randn((24, 1, 4, 4), generator=gen)).clamp(0, 1)
    return x


@pytest.mark.parametrize(("k", "history"), [(5, 25), (10, 1000), (1, 7)])
def test_score_stream_matches_refit_per_query(k: int, history: int) -> None:
    x = stream(0)
    det = StatefulDetector(k=k, history=history, encoder="pixels").fit(stream(1))
    got = det.score_stream(x).double().numpy()
    want = np.array(reference_scores(x, k, history))
    assert np.isinf(got[0]) and np.isinf(want[0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 80])
def test_update_alerts_where_the_reference_score_is_below_threshold(batch: int) -> None:
    x = stream(2)
    k, history = 5, 25
    det = StatefulDetector(k=k, history=history, encoder="pixels", clear_on_alert=False).fit(stream(3))
    want = np.array(reference_scores(x, k, history))
    # a threshold between the near-duplicate run's scores and the benign rows' scores
    threshold = float(np.median(want[40:55]) * 2)
    assert (want[1:30] > threshold).all()  # the benign prefix stays clear, the run does not
    det.threshold_ = threshold
    alerts = []
    for start in range(0, x.shape[0], batch):
        alerts += det.update("c", x[start:start + batch])
    expected = [i + 1 for i, s in enumerate(want) if s < threshold]
    assert [a.queries for a in alerts] == expected
    assert det.queries_to_detection_["c"] == expected[0]
    np.testing.assert_allclose([a.score for a in alerts], want[np.array(expected) - 1], rtol=1e-4, atol=1e-5)
