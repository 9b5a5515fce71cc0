"""Black-box adapter for text classifiers: ``list[str] -> (N, C)`` probabilities, with query counting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import ModelCapabilityError
from modelshield.models._budget import QueryCounter

__all__ = ["TextModel", "as_text_model"]


class TextModel:
    """A text classifier seen as a black box: ``list[str] -> (N, C)`` probabilities, with query counting.

    Wraps an object with ``predict_proba`` over raw strings (a scikit-learn Pipeline) or a
    callable ``list[str] -> probabilities (N, C)`` (numpy or tensor). Every text scored is one
    forward query; ``budget`` caps them (QueryBudgetExceeded is raised before the call).
    """

    def __init__(self, obj: Any, *, budget: int | None = None) -> None:
        proba = getattr(obj, "predict_proba", None)
        if callable(proba):
            self._fn: Callable[[list[str]], Any] = proba
        elif callable(obj):
            self._fn = obj
        else:
            raise ModelCapabilityError(
                f"TextModel: expected an object with predict_proba over strings or a callable "
                f"list[str] -> probabilities; got {type(obj).__name__}. Wrap your model in a function."
            )
        self._obj = obj
        self.queries = QueryCounter(budget=budget)
        self._n_classes: int | None = None

    def __repr__(self) -> str:
        return f"TextModel({type(self._obj).__name__})"

    @property
    def n_classes(self) -> int:
        if self._n_classes is None:
            raise ModelCapabilityError("TextModel: the number of classes is unknown until the first query.")
        return self._n_classes

    def scores(self, texts: Sequence[str]) -> Tensor:
        """(N, C) float32 probabilities; counts N queries."""
        batch = list(texts)
        self.queries.add_forward(len(batch))
        if not batch:
            return torch.zeros(0, self._n_classes or 2)
        out = self._fn(batch)
        arr = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
        if arr.ndim != 2 or arr.shape[0] != len(batch) or not np.isfinite(arr).all():
            raise ModelCapabilityError(
                f"TextModel: the model must return finite probabilities of shape (N, C) for N={len(batch)} "
                f"texts; got shape {arr.shape}. Return one row of class probabilities per text."
            )
        self._n_classes = int(arr.shape[1])
        return torch.as_tensor(arr, dtype=torch.float32)

    def predict(self, texts: Sequence[str]) -> Tensor:
        """(N,) int64 labels; counts N queries."""
        return self.scores(texts).argmax(1)


def as_text_model(obj: Any, *, budget: int | None = None) -> TextModel:
    """Wrap obj as a TextModel; a TextModel passes through unchanged."""
    return obj if isinstance(obj, TextModel) else TextModel(obj, budget=budget)
