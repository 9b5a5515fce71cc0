"""Deterministic scikit-learn spam filters for the zoo entries ``spam-nb`` and ``spam-logreg``.

Like the phishing models these retrain in about a second (naive Bayes) or two (logistic
regression on word and character n-grams) from the data with a fixed seed; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.data.sms_spam import TextDataset
from modelshield.errors import InputError
from modelshield.models.outputs import predict_labels as _predict_labels

__all__ = ["SPAM_KINDS", "SpamKind", "spam_fingerprint", "spam_metrics", "spam_pipeline", "train_spam_model"]

SpamKind: TypeAlias = Literal["nb", "logreg"]
SPAM_KINDS: tuple[SpamKind, ...] = ("nb", "logreg")


def spam_pipeline(kind: SpamKind, *, seed: int = 0) -> Any:
    """An unfitted scikit-learn Pipeline over raw strings (see train_spam_model for the recipes)."""
    check_choice("kind", kind, SPAM_KINDS, owner="spam_pipeline")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import FeatureUnion, Pipeline

    if kind == "nb":
        return Pipeline(
            [
                ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))),
                ("clf", MultinomialNB(alpha=0.05)),
            ]
        )
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))),
            ("char", TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2)),
        ]
    )
    clf = LogisticRegression(C=10.0, solver="liblinear", max_iter=2000, random_state=seed)
    return Pipeline([("features", features), ("clf", clf)])


def _texts_labels(
    data: TextDataset | Sequence[str], y: Tensor | Sequence[int] | np.ndarray | None, owner: str
) -> tuple[list[str], np.ndarray]:
    if isinstance(data, TextDataset):
        return list(data.texts_train), data.y_train.numpy()
    if isinstance(data, str) or not all(isinstance(t, str) for t in data):
        raise InputError(
            f"{owner}: texts must be a TextDataset or a sequence of str; got {type(data).__name__}. "
            "Pass load_sms_spam() or a list of messages with y=labels."
        )
    if y is None:
        raise InputError(
            f"{owner}: y must be given with a list of texts; got None. Pass y=labels (1 = spam)."
        )
    labels = y.numpy() if isinstance(y, Tensor) else np.asarray(y)
    if labels.shape != (len(data),):
        raise InputError(
            f"{owner}: y must have shape ({len(data)},) to match the texts; got {labels.shape}. "
            "Pass one label per text."
        )
    return list(data), labels.astype(np.int64)


def train_spam_model(
    kind: SpamKind,
    data: TextDataset | Sequence[str],
    y: Tensor | Sequence[int] | np.ndarray | None = None,
    *,
    seed: int = 0,
) -> Any:
    """Train a spam filter on raw messages, deterministically.

    Args:
        kind: ``"nb"``: TF-IDF of word 1-2-grams (sublinear tf) + MultinomialNB(alpha=0.05);
            ``"logreg"``: TF-IDF of word 1-2-grams and of character 2-5-grams within word
            boundaries (min_df=2) + LogisticRegression(C=10, liblinear).
        data: a TextDataset (its training split is used) or a sequence of messages.
        y: labels (1 = spam) when data is a sequence of messages.
        seed: the classifier's ``random_state`` (naive Bayes has no randomness).

    Returns:
        The fitted Pipeline; ``predict_proba(list_of_str)`` gives (N, 2) probabilities.

    Raises:
        ConfigError: unknown kind or bad seed. InputError: texts and labels do not match.

    Example:
        nb = train_spam_model("nb", load_sms_spam())
    """
    check_choice("kind", kind, SPAM_KINDS, owner="train_spam_model")
    check_range("seed", seed, owner="train_spam_model", low=0, high=2**32 - 1, integer=True)
    texts, labels = _texts_labels(data, y, "train_spam_model")
    return spam_pipeline(kind, seed=seed).fit(texts, labels)


def spam_metrics(
    model: Any, texts: Sequence[str], y: Tensor | Sequence[int] | np.ndarray, *, positive: int = 1
) -> dict[str, float]:
    """Precision, recall and F1 of the spam class (``positive``) and accuracy, on labelled texts.

    ``model`` is anything with ``predict(list_of_str)``, or a callable returning labels or
    probabilities. Precision is 0.0 when nothing is predicted spam (scikit-learn's convention).
    """
    texts_l, labels = _texts_labels(list(texts), y, "spam_metrics")
    pred = predict_labels(model, texts_l)
    return binary_metrics(labels, pred, positive=positive)


def predict_labels(model: Any, x: Any) -> np.ndarray:
    """(N,) int64 labels as numpy from a predict()-object, a torch module (argmax) or a callable.

    ``modelshield.models.outputs.predict_labels`` as a numpy array (every sub-module's training
    flag is restored for torch modules).
    """
    labels: np.ndarray = _predict_labels(model, x).cpu().numpy().astype(np.int64)
    return labels


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, positive: int = 1) -> dict[str, float]:
    """Precision, recall, F1 of the positive class and accuracy (zero-division gives 0.0)."""
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    tp = float((t & p).sum())
    prec = tp / float(p.sum()) if p.any() else 0.0
    rec = tp / float(t.sum()) if t.any() else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    acc = float((np.asarray(y_true) == np.asarray(y_pred)).mean()) if len(t) else float("nan")
    return {"precision": prec, "recall": rec, "f1": f1, "accuracy": acc}


def spam_fingerprint(model: Any, dataset: TextDataset) -> str:
    """SHA-256 of the model's test-set probabilities (rounded to 1e-6): equal models, equal hash."""
    proba = np.asarray(model.predict_proba(list(dataset.texts_test)), dtype=np.float64)
    return hashlib.sha256(np.round(proba, 6).tobytes()).hexdigest()
