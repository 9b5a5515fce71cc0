"""Outlier rows: mean distance to the k nearest neighbours, or an isolation forest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelshield._checks import check_choice, check_range
from modelshield.data.features import Embed, Featurizer, n_rows
from modelshield.defenses.data.label_issues import check_fitted
from modelshield.errors import InputError

__all__ = ["OutlierDetector"]

OutlierMethod = Literal["knn", "isolation_forest"]


@dataclass
class OutlierDetector:
    """Score how unusual each row is relative to the fitted data.

    ``method="knn"``: mean distance to the k nearest fitted rows (cosine on TF-IDF for text,
    Euclidean on standardised features otherwise; Ramaswamy, Rastogi and Shim, SIGMOD 2000).
    ``method="isolation_forest"``: the negated ``score_samples`` of scikit-learn's
    IsolationForest (Liu, Ting and Zhou, ICDM 2008) on the same features (dense only, so text
    is better served by "knn"). The threshold is the ``1 - contamination`` quantile of the
    fitted rows' own scores.

    Attributes (after fit):
        scores_: (N,) scores of the fitted rows (higher is more unusual).
        threshold_: the flagging threshold. outliers_: (N,) bool, scores_ > threshold_.
    """

    method: OutlierMethod = "knn"
    k: int = 10
    contamination: float = 0.01
    embed: Embed | None = None
    seed: int = 0
    scores_: np.ndarray | None = field(default=None, init=False, repr=False)
    threshold_: float | None = field(default=None, init=False, repr=False)
    outliers_: np.ndarray | None = field(default=None, init=False, repr=False)
    _featurizer: Featurizer | None = field(default=None, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("method", self.method, ("knn", "isolation_forest"), owner="OutlierDetector")
        check_range("k", self.k, owner="OutlierDetector", low=1, integer=True)
        check_range("contamination", self.contamination, owner="OutlierDetector", low=0.0, high=0.5)
        check_range("seed", self.seed, owner="OutlierDetector", low=0, high=2**32 - 1, integer=True)

    def fit(self, x: Any, y: Any = None) -> OutlierDetector:
        """Fit on x (y is ignored) and score its rows; returns self."""
        fz = Featurizer(embed=self.embed).fit(x, owner="OutlierDetector")
        feats = fz.transform(x)
        n = n_rows(x)
        if n <= self.k:
            raise InputError(f"OutlierDetector: x must have more than k={self.k} rows; got {n}. Lower k.")
        if self.method == "knn":
            from sklearn.neighbors import NearestNeighbors

            self._model = NearestNeighbors(
                n_neighbors=self.k + 1, metric="cosine" if fz.kind_ == "text" else "euclidean"
            ).fit(feats)
            dist, _ = self._model.kneighbors(feats)
            scores = dist[:, 1:].mean(1)  # the first neighbour is the row itself
        else:
            if fz.kind_ == "text":
                feats = feats.toarray()
            from sklearn.ensemble import IsolationForest

            self._model = IsolationForest(random_state=self.seed).fit(feats)
            scores = -self._model.score_samples(feats)
        self._featurizer = fz
        self.scores_ = scores
        self.threshold_ = float(np.quantile(scores, 1.0 - self.contamination))
        self.outliers_ = scores > self.threshold_
        return self

    def score(self, x: Any) -> np.ndarray:
        """(M,) outlier scores of new rows against the fitted data."""
        check_fitted(self, "threshold_")
        fz = self._featurizer
        if fz is None:
            raise RuntimeError("unreachable")
        feats = fz.transform(x)
        if self.method == "knn":
            dist, _ = self._model.kneighbors(feats, n_neighbors=self.k)
            return np.asarray(dist.mean(1))
        if fz.kind_ == "text":
            feats = feats.toarray()
        return np.asarray(-self._model.score_samples(feats))

    def predict(self, x: Any) -> np.ndarray:
        """(M,) bool: new rows scoring above the fitted threshold."""
        scores = self.score(x)
        return scores > float(self.threshold_ or 0.0)
