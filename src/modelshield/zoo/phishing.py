"""Deterministic scikit-learn models for the phishing zoo entries (retrained, never unpickled).

Persistence: these three models train in about a second on the UCI phishing split, so the
zoo stores no model file at all. It retrains from the data with a fixed seed and checks the
result against a fingerprint (a SHA-256 of the test-set probabilities) cached as plain JSON
metadata. Nothing is unpickled, so a tampered cache cannot run code.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypeAlias

import numpy as np

from modelshield._checks import check_choice, check_range
from modelshield.data.phishing import TabularDataset

__all__ = ["PHISHING_KINDS", "PhishingKind", "phishing_fingerprint", "train_phishing_model"]

PhishingKind: TypeAlias = Literal["logreg", "rf", "gbm"]
PHISHING_KINDS: tuple[PhishingKind, ...] = ("logreg", "rf", "gbm")


def train_phishing_model(kind: PhishingKind, dataset: TabularDataset, *, seed: int = 0) -> Any:
    """Train a phishing detector on ``dataset``'s training split, deterministically.

    Args:
        kind: ``"logreg"`` (LogisticRegression, lbfgs, max_iter=1000), ``"rf"``
            (RandomForestClassifier, 100 trees, n_jobs=1) or ``"gbm"``
            (HistGradientBoostingClassifier, defaults; no early stopping below 10,000 rows).
            Fitting uses one thread; each kind trains in under a second.
        dataset: a TabularDataset, e.g. ``load_phishing()``; labels 1 = phishing.
        seed: the estimator's ``random_state``.

    Returns:
        The fitted scikit-learn estimator (``predict_proba`` gives (N, 2) probabilities; wrap it
        with ``as_model(est, bounds=dataset.bounds)``).

    Raises:
        ConfigError: unknown kind or a bad seed.

    Example:
        rf = train_phishing_model("rf", load_phishing())
    """
    check_choice("kind", kind, PHISHING_KINDS, owner="train_phishing_model")
    check_range("seed", seed, owner="train_phishing_model", low=0, high=2**32 - 1, integer=True)
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    est: Any
    if kind == "logreg":
        est = LogisticRegression(max_iter=1000, random_state=seed)
    elif kind == "rf":
        est = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    else:
        est = HistGradientBoostingClassifier(random_state=seed)
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # sklearn dep, no stubs

    x = dataset.x_train.numpy()
    y = dataset.y_train.numpy()
    # One OpenMP thread: on a busy machine HistGradientBoosting's threads contend and take
    # ten times longer; the fitted model is the same either way.
    with threadpool_limits(limits=1):
        return est.fit(x, y)


def phishing_fingerprint(model: Any, dataset: TabularDataset) -> str:
    """SHA-256 of the model's test-set probabilities (rounded to 1e-6): equal models, equal hash.

    Store it next to the data's ``sha256`` to check that a retrained model reproduces the one
    that was evaluated (same data, seed and scikit-learn behaviour).
    """
    proba = np.asarray(model.predict_proba(dataset.x_test.numpy()), dtype=np.float64)
    return hashlib.sha256(np.round(proba, 6).tobytes()).hexdigest()
