"""Black-box adapter for text classifiers: ``list[str] -> (N, C)`` probabilities, with query counting.

A text model may answer probabilities (``predict_proba``, or a callable returning ``(N, C)``) or
labels only (``predict``, or a callable returning ``(N,)`` names or indices, e.g. a TF-IDF +
LinearSVC pipeline or a remote API answering "spam" / "ham"): label answers are read as one-hot
probabilities over the class names, so decision-based use (text evasion, extraction) still works.
An estimator without ``predict_proba`` but with ``decision_function`` (a TF-IDF + LinearSVC
pipeline) answers its margins as scores (``score_kind == "margins"``): not probabilities, but their
argmax is checked to be its ``predict`` on every query, and a text attack that follows margins
finds what one that sees labels only cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import ModelCapabilityError
from modelshield.models._budget import QueryCounter
from modelshield.models._callable import MARGINS_NOTE, ScoreKind, has_margins, label_indices, margin_scores

__all__ = ["TextAnswers", "TextModel", "as_text_model"]


def _answer_fn(obj: Any) -> Callable[[list[str]], Any]:
    proba = getattr(obj, "predict_proba", None)
    if callable(proba):
        fn: Callable[[list[str]], Any] = proba
        return fn
    predict = getattr(obj, "predict", None)
    if callable(predict) and not callable(obj):  # an estimator without probabilities: labels only
        fn = predict
        return fn
    if callable(obj):
        fn = obj
        return fn
    raise ModelCapabilityError(
        f"TextModel: expected an object with predict_proba or predict over strings, or a callable "
        f"list[str] -> probabilities (N, C) or labels (N,); got {type(obj).__name__}. Pass a fitted "
        "text pipeline or such a function."
    )


class TextModel:
    """A text classifier seen as a black box: ``list[str] -> (N, C)`` probabilities, with query counting.

    Wraps an object with ``predict_proba`` over raw strings (a scikit-learn Pipeline), an object
    with only ``predict`` (labels), or a callable ``list[str] -> probabilities (N, C)`` or
    ``-> labels (N,)`` (numpy, list or tensor). Label answers are looked up in the model's own
    ``classes_``, else in ``class_names`` (names, e.g. "spam"; integers are class indices), and
    returned one-hot over ``n_classes`` (default: the number of classes); ``output`` then reads
    ``"labels"``. Every text scored is one forward query; ``budget`` caps them
    (QueryBudgetExceeded is raised before the call).
    """

    def __init__(self, obj: Any, *, budget: int | None = None, class_names: Sequence[str] | None = None,
                 n_classes: int | None = None) -> None:
        self._fn = _answer_fn(obj)
        self._obj = obj
        self.queries = QueryCounter(budget=budget)
        classes = getattr(obj, "classes_", None)
        self._classes: list[Any] | None = (
            list(np.asarray(classes).tolist()) if classes is not None
            else (list(class_names) if class_names is not None else None)
        )
        self._width = n_classes if n_classes is not None else (
            len(self._classes) if self._classes is not None else None)
        self._n_classes: int | None = None
        self.output = "proba"
        self._margins = has_margins(obj)
        self._notes: list[str] = [MARGINS_NOTE] if self._margins else []

    def __repr__(self) -> str:
        return f"TextModel({type(self._obj).__name__})"

    @property
    def score_kind(self) -> ScoreKind:
        """``"margins"`` (decision_function), ``"labels"`` once the model answered labels, else
        ``"probabilities"``."""
        if self._margins:
            return "margins"
        return "labels" if self.output == "labels" else "probabilities"

    @property
    def notes(self) -> tuple[str, ...]:
        """How the model's answers are read (margins used as scores, or why they were dropped)."""
        return tuple(self._notes)

    @property
    def n_classes(self) -> int:
        if self._n_classes is None:
            raise ModelCapabilityError("TextModel: the number of classes is unknown until the first query.")
        return self._n_classes

    def _one_hot(self, arr: np.ndarray) -> np.ndarray:
        idx = label_indices(arr, classes=self._classes, owner="TextModel")
        width = self._width if self._width is not None else max(int(idx.max(initial=1)) + 1, 2)
        if idx.size and (idx.min() < 0 or idx.max() >= width):
            bad = int(idx[(idx < 0) | (idx >= width)][0])
            raise ModelCapabilityError(
                f"TextModel: a label the model answers must be a class index in [0, {width - 1}]; got "
                f"{bad}. Answer class names or indices of the data's {width} classes."
            )
        out = np.zeros((len(idx), width), dtype=np.float32)
        out[np.arange(len(idx)), idx] = 1.0
        return out

    def _margin_answer(self, batch: list[str]) -> np.ndarray:
        """The margins of the batch, or its predict labels one-hot after dropping margins for good."""
        scores, labels, reason = margin_scores(self._obj, batch, classes=self._classes, n_classes=self._width,
                                               owner="TextModel")
        if reason is None:
            return scores.astype(np.float32)
        self._margins = False
        self.output = "labels"
        self._notes = [f"The model's decision_function margins were not used as scores: {reason}. The model "
                       "is read through predict alone (labels only)."]
        width = self._width if self._width is not None else max(int(labels.max(initial=1)) + 1, 2)
        out = np.zeros((len(labels), width), dtype=np.float32)  # one-hot, as for any label answer
        out[np.arange(len(labels)), labels] = 1.0
        return out

    def scores(self, texts: Sequence[str]) -> Tensor:
        """(N, C) float32 probabilities, margins when ``score_kind == "margins"``, or one-hot labels for
        a label-only model; counts N queries."""
        batch = list(texts)
        self.queries.add_forward(len(batch))
        if not batch:
            return torch.zeros(0, self._n_classes or self._width or 2)
        arr = self._margin_answer(batch) if self._margins else None
        if arr is None:
            out = self._fn(batch)
            arr = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
        if arr.ndim == 1 and arr.shape[0] == len(batch) and (
            self.output == "labels" or not np.issubdtype(arr.dtype, np.floating)
        ):
            self.output = "labels"
            arr = self._one_hot(arr)
        if arr.ndim != 2 or arr.shape[0] != len(batch) or not np.issubdtype(arr.dtype, np.number):
            raise ModelCapabilityError(
                f"TextModel: the model must return probabilities of shape (N, C) or labels of shape (N,) "
                f"for N={len(batch)} texts; got shape {arr.shape} ({arr.dtype}). Return one row of class "
                "probabilities, or one label, per text."
            )
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ModelCapabilityError(
                f"TextModel: the model must return finite probabilities; got NaN or inf in {len(bad)} of "
                f"{len(batch)} rows (first: text {int(bad[0])}). Return finite class probabilities for every "
                "text."
            )
        self._n_classes = int(arr.shape[1])
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)

    def predict(self, texts: Sequence[str]) -> Tensor:
        """(N,) int64 labels; counts N queries."""
        return self.scores(texts).argmax(1)


class TextAnswers:
    """A text model's answers as a plain function ``list[str] -> (N, C)`` float64 probabilities.

    The same reading as ``TextModel`` (label answers one-hot over the class names), without query
    counting: what a text attack or the assessment receives as "the model" when the user's model
    answers labels or has no ``predict_proba``. Decision margins (``score_kind == "margins"``) are
    answered as their softmax: probabilities in form (a thief or a hardened API may treat them so),
    with the margins' order and argmax, so a text attack ranks its edits exactly as on the margins.
    ``model`` is the object as given.
    """

    def __init__(self, obj: Any, *, class_names: Sequence[str] | None = None,
                 n_classes: int | None = None) -> None:
        self.model = obj
        self._reader = TextModel(obj, class_names=class_names, n_classes=n_classes)

    def __repr__(self) -> str:
        return f"TextAnswers({type(self.model).__name__})"

    @property
    def output(self) -> str:
        """``"labels"`` once the model has answered labels, else ``"proba"``."""
        return self._reader.output

    @property
    def score_kind(self) -> ScoreKind:
        """``"margins"``, ``"probabilities"`` or ``"labels"`` (see ``TextModel.score_kind``)."""
        return self._reader.score_kind

    @property
    def notes(self) -> tuple[str, ...]:
        """How the model's answers are read (see ``TextModel.notes``)."""
        return self._reader.notes

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        scores = self._reader.scores(texts).double()
        if self._reader.score_kind == "margins":
            scores = scores.softmax(1)
        out: np.ndarray = scores.numpy()
        return out


def as_text_model(obj: Any, *, budget: int | None = None) -> TextModel:
    """Wrap obj as a TextModel; a TextModel passes through unchanged."""
    return obj if isinstance(obj, TextModel) else TextModel(obj, budget=budget)
