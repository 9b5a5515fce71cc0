"""Model extraction of a text classifier: query it on a pool of texts and train a copy on its answers.

The thief's recipe is the query-and-train attack of Tramèr et al. (2016) carried to text as in
Krishna et al. (2020): draw texts from a pool the thief holds, send them to the victim's
prediction API (labels, or probabilities when the API exposes them), and train a surrogate on
the answers. The surrogate here is a deliberately ordinary one, scikit-learn TF-IDF features
of word 1-2-grams and character 2-5-grams (within word boundaries) with logistic regression;
with probabilities it is fitted on soft labels (each text once per class, weighted by the
victim's probability, the cross-entropy against the victim's distribution). A stronger thief
(a fine-tuned language model, as in Krishna et al.) would do at least as well, so the numbers
are a lower bound on what a copy achieves.

Queries are drawn as one seeded permutation of the pool, so the texts behind a smaller budget
are a prefix of those behind a larger one (a curve of one attacker spending more) and the
answers do not depend on the batch size. Every pool text sent is one counted victim query; the
victim's labels on the evaluation texts are obtained by querying it again (counted apart as
``eval_queries``), so fidelity is measured against what the victim answers, not a cached label.

References: Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016; Krishna, Tomar, Parikh, Papernot and Iyyer, "Thieves on
Sesame Street! Model Extraction of BERT-based APIs", ICLR 2020.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.extraction.results import CurvePoint, CurveReadout
from modelshield.errors import ConfigError, DataError
from modelshield.models import TextModel, as_text_model

__all__ = ["SURROGATE", "TextCopy", "TextExtraction", "TextExtractionResult", "text_surrogate"]

SURROGATE = ("scikit-learn TF-IDF of word 1-2-grams and character 2-5-grams (char_wb) with "
             "logistic regression")
"""What the thief trains (see ``text_surrogate``)."""


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


class TextCopy:
    """The stolen text classifier: TF-IDF features and a linear classifier, ``list[str] -> (N, C)``."""

    def __init__(self, features: Any, classifier: Any, n_classes: int) -> None:
        self.features = features
        self.classifier = classifier
        self.n_classes = n_classes

    def __repr__(self) -> str:
        return f"TextCopy({type(self.classifier).__name__}, n_classes={self.n_classes})"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, n_classes)`` probabilities (classes the copy never saw get 0)."""
        feats = self.features.transform(list(texts))
        part = np.asarray(self.classifier.predict_proba(feats), dtype=np.float64)
        out = np.zeros((part.shape[0], self.n_classes))
        out[:, np.asarray(self.classifier.classes_, dtype=np.int64)] = part
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(N,)`` int64 labels."""
        return np.asarray(self.predict_proba(texts).argmax(1), dtype=np.int64)


def text_surrogate(texts: Sequence[str], answers: np.ndarray, *, soft: bool, c: float = 10.0) -> TextCopy:
    """Fit the thief's surrogate on ``texts`` and the victim's ``answers`` ``(N, C)``.

    ``soft``: fit on the probabilities (each text once per class, weighted by its probability);
    else on the argmax labels. A single answered class gives a constant copy.
    """
    from scipy import sparse  # type: ignore[import-untyped]  # scipy ships no type stubs
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion

    n_classes = int(answers.shape[1])
    features = FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True)),
    ]).fit(list(texts))
    x = features.transform(list(texts))
    labels = answers.argmax(1)
    classifier: Any
    if np.unique(labels).size < 2 and not (soft and (answers > 0).sum(0).astype(bool).sum() > 1):
        classifier = DummyClassifier(strategy="most_frequent").fit(x, labels)
    elif soft:
        rows = sparse.vstack([x] * n_classes).tocsr()
        ys = np.repeat(np.arange(n_classes), x.shape[0])
        weights = answers.T.reshape(-1).astype(np.float64)
        keep = weights > 0
        classifier = LogisticRegression(C=c, solver="newton-cg", max_iter=500).fit(rows[keep], ys[keep],
                                                                sample_weight=weights[keep])
    else:
        classifier = LogisticRegression(C=c, solver="newton-cg", max_iter=500).fit(x, labels)
    return TextCopy(features, classifier, n_classes)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class TextExtractionResult(CurveReadout):
    """What a text extraction produced (the text counterpart of ``ExtractionResult``).

    Attributes:
        attack: ``"TextExtraction"``.
        params: the attack's configuration.
        copy: the final surrogate (``TextCopy``: ``predict_proba`` / ``predict`` over strings).
        queries: victim queries the thief spent: the change of the victim's counter while it
            queried the pool (equal to ``budget``).
        curve: the copy's quality at each checkpoint (empty without evaluation data).
        eval_queries: victim queries made only to measure the copy (its labels on the evaluation
            texts), counted apart.
        victim_labels: the victim's labels on the evaluation texts (None without them).
        time_s: wall time of the call.
        extra: JSON-safe details (the surrogate, the pool size, the answer type).
    """

    attack: str
    params: dict[str, Any]
    copy: TextCopy
    queries: int
    curve: tuple[CurvePoint, ...] = ()
    eval_queries: int = 0
    victim_labels: Tensor | None = None
    time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no model, no tensors)."""
        return {"attack": self.attack, "queries": self.queries, "eval_queries": self.eval_queries,
                "fidelity": _json_float(self.fidelity), "accuracy": _json_float(self.accuracy),
                "curve": [p.to_dict() for p in self.curve], "copy": type(self.copy).__name__,
                "time_s": round(self.time_s, 4), "params": self.params, **self.extra}


@dataclass(frozen=True, kw_only=True, slots=True)
class TextExtraction:
    """Steal a text classifier through its prediction API (see the module docstring).

    Args:
        budget: victim queries (pool texts sent); the pool must hold at least that many.
        checkpoints: smaller budgets at which a copy is also trained and measured.
        output: what the API answers, ``"proba"`` (probabilities) or ``"labels"`` (top-1 only).
        batch_size: texts per victim call (the answers do not depend on it).
        c: inverse regularisation strength of the surrogate's logistic regression.
        seed: seed of the permutation that picks the pool texts.

    Call: ``attack(victim, pool, *, eval_data=(texts, y))`` with the victim anything
    ``as_text_model`` accepts (an object with ``predict_proba`` over strings, a callable
    ``list[str] -> (N, C)``, a ``TextModel``); returns a ``TextExtractionResult``.

    References: Tramèr et al., USENIX Security 2016; Krishna et al., ICLR 2020.
    """

    budget: int
    checkpoints: tuple[int, ...] = ()
    output: Literal["proba", "labels"] = "labels"
    batch_size: int = 256
    c: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "TextExtraction"
        check_range("budget", self.budget, owner=owner, low=1, integer=True)
        for b in self.checkpoints:
            check_range("checkpoints", b, owner=owner, low=1, high=self.budget, integer=True)
        check_choice("output", self.output, ("proba", "labels"), owner=owner)
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)
        check_range("c", self.c, owner=owner, low=0.0, low_open=True)
        object.__setattr__(self, "checkpoints", tuple(sorted({int(b) for b in self.checkpoints})))

    def params(self) -> dict[str, Any]:
        """The configuration as a JSON-safe dict."""
        return {"budget": self.budget, "checkpoints": list(self.checkpoints), "output": self.output,
                "batch_size": self.batch_size, "c": self.c, "seed": self.seed, "surrogate": SURROGATE}

    def _answers(self, victim: TextModel, texts: Sequence[str]) -> np.ndarray:
        parts = [victim.scores(texts[i:i + self.batch_size]).numpy().astype(np.float64)
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 2))

    def __call__(self, victim: Any, pool: Sequence[str], *,
                 eval_data: tuple[Sequence[str], Tensor] | None = None) -> TextExtractionResult:
        owner = "TextExtraction"
        texts_pool = list(pool)
        if len(texts_pool) < self.budget:
            raise ConfigError(
                f"{owner}: the pool must hold at least 'budget'={self.budget} texts; got {len(texts_pool)}. "
                "Lower the budget or give a larger pool.")
        if any(not isinstance(t, str) for t in texts_pool):
            raise DataError(f"{owner}: the pool must hold strings; got a "
                            f"{type(next(t for t in texts_pool if not isinstance(t, str))).__name__}. "
                            "Pass the texts themselves.")
        model = as_text_model(victim)
        start = time.perf_counter()
        order = np.random.default_rng(self.seed).permutation(len(texts_pool))[: self.budget]
        sent = [texts_pool[i] for i in order]
        before = model.queries.forward
        answers = self._answers(model, sent)
        queries = model.queries.forward - before
        if self.output == "labels":
            answers = np.eye(answers.shape[1])[answers.argmax(1)]
        soft = self.output == "proba"
        victim_labels: Tensor | None = None
        eval_texts: list[str] = []
        y_eval: np.ndarray | None = None
        eval_queries = 0
        if eval_data is not None:
            eval_texts = list(eval_data[0])
            y_eval = torch.as_tensor(eval_data[1]).detach().cpu().long().numpy().reshape(-1)
            if len(eval_texts) != len(y_eval):
                raise ConfigError(f"{owner}: 'eval_data' must hold one label per text; got {len(eval_texts)} "
                                  f"texts and {len(y_eval)} labels. Pass (texts, y) of the same length.")
            mark = model.queries.forward
            victim_labels = torch.as_tensor(self._answers(model, eval_texts).argmax(1), dtype=torch.long)
            eval_queries = model.queries.forward - mark
        curve: list[CurvePoint] = []
        copies = {b: text_surrogate(sent[:b], answers[:b], soft=soft, c=self.c)
                  for b in (*(c for c in self.checkpoints if c < self.budget), self.budget)}
        for b, copy in copies.items():
            if victim_labels is not None and y_eval is not None:
                pred = copy.predict(eval_texts) if eval_texts else np.zeros(0, dtype=np.int64)
                fid = float((pred == victim_labels.numpy()).mean()) if len(pred) else math.nan
                acc = float((pred == y_eval).mean()) if len(pred) else math.nan
                curve.append(CurvePoint(queries=b, fidelity=fid, accuracy=acc))
        copy = copies[self.budget]
        return TextExtractionResult(
            attack="TextExtraction", params=self.params(), copy=copy, queries=int(queries),
            curve=tuple(curve), eval_queries=int(eval_queries), victim_labels=victim_labels,
            time_s=time.perf_counter() - start,
            extra={"pool_size": len(texts_pool), "answers": self.output, "surrogate": SURROGATE},
        )
