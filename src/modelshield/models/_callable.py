"""Black-box adapter for callables and scikit-learn-style estimators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import ModelCapabilityError
from modelshield.models._budget import QueryCounter
from modelshield.models.outputs import labels_and_errors, safe_argmax

__all__ = ["CallableModel", "OutputKind", "label_indices"]

OutputKind = Literal["auto", "proba", "labels"]


def label_indices(labels: np.ndarray, *, classes: Sequence[Any] | None, owner: str) -> np.ndarray:
    """(N,) int64 class indices of a model's 1-D label answer.

    ``classes`` are the class values by index (an estimator's ``classes_``, or the data's class
    names): every answer is looked up among them (by value, else by its string form), so a
    scikit-learn model trained on names ("ham", "spam") or on labels 1..3 answers indices.
    Without ``classes``, integer answers are taken as indices as they are.

    Raises:
        ModelCapabilityError: an answer that is not one of ``classes`` (or, without classes, not
            an integer).
    """
    arr = np.asarray(labels)
    if classes is None:
        if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_):
            return arr.astype(np.int64)
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            return arr.astype(np.int64)
        first = arr.ravel()[0] if arr.size else None
        raise ModelCapabilityError(
            f"{owner}: a model answering labels must answer class indices when the class names are "
            f"unknown; got {first!r} ({arr.dtype}). Return indices 0..C-1, or give the class names."
        )
    values = [c.item() if isinstance(c, np.generic) else c for c in classes]
    if np.issubdtype(arr.dtype, np.integer) and values == list(range(len(values))):  # indices already
        inside = (arr >= 0) & (arr < len(values))
        if inside.all():
            return arr.astype(np.int64)
    exact: dict[Any, int] = {}
    for i, c in enumerate(values):
        exact.setdefault(c, i)
    by_name = {str(c): i for i, c in enumerate(values)}
    out = np.empty(arr.shape[0], dtype=np.int64)
    for k, v in enumerate(arr.tolist()):
        hit = exact.get(v)
        if hit is None:
            hit = by_name.get(str(v))
        if hit is None:
            raise ModelCapabilityError(
                f"{owner}: every label the model answers must be one of its classes "
                f"{[str(c) for c in values]!r}; got {v!r} for input {k}. Answer one of those labels "
                "(or class indices), or pass the data the model was trained on."
            )
        out[k] = hit
    return out


class CallableModel:
    """Any function ``x -> probabilities (N, C)`` or ``x -> labels (N,)``, seen as a Model.

    Accepts a plain callable (numpy in, numpy or tensor out), or an object with
    ``predict_proba`` (scikit-learn estimators), or, for label-only models, ``predict``.
    Inputs are converted to numpy once per batch and outputs back to tensors on x's device.
    With ``output="auto"`` the first answer decides: a 1-D integer array means labels only.
    NaN or infinite scores are passed on as they are (like ``TorchModel``): ``predict`` reads
    NaN as -inf and ``predict_with_errors`` marks such rows as model errors.
    """

    def __init__(
        self,
        obj: Any,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        output: OutputKind = "auto",
        n_classes: int | None = None,
        budget: int | None = None,
        class_names: Sequence[Any] | None = None,
    ) -> None:
        self.bounds = bounds
        self.queries = QueryCounter(budget=budget)
        self._output: OutputKind = output
        self._obj = obj
        self._fn: Callable[[np.ndarray], Any]
        proba = getattr(obj, "predict_proba", None)
        if output != "labels" and callable(proba):
            self._fn = proba
            self._output = "proba"
        elif output == "labels" and callable(getattr(obj, "predict", None)):
            self._fn = obj.predict
        elif callable(getattr(obj, "predict", None)) and not callable(obj):
            # an estimator without predict_proba (LinearSVC, SVC(probability=False), ...): a
            # label-only black box, which decision-based attacks (HopSkipJump) still apply to
            self._fn = obj.predict
            self._output = "labels"
        elif callable(obj):
            self._fn = obj
        else:
            raise ModelCapabilityError(
                f"as_model: expected a torch.nn.Module, an object with predict_proba, or a "
                f"callable returning class probabilities or labels; got {type(obj).__name__}. "
                "Wrap your model in a function x -> probabilities."
            )
        classes = getattr(obj, "classes_", None)
        self._n_classes = n_classes if n_classes is not None else (
            len(classes) if classes is not None else None
        )
        # what 1-D label answers are looked up in: the estimator's own classes_, else the names given
        self._classes: Sequence[Any] | None = (
            list(np.asarray(classes).tolist()) if classes is not None else
            (list(class_names) if class_names is not None else None)
        )

    def __repr__(self) -> str:
        return f"CallableModel({type(self._obj).__name__}, output={self._output!r})"

    @property
    def output(self) -> OutputKind:
        return self._output

    @property
    def n_classes_known(self) -> int | None:
        """The class count if given or seen in an answer, else None (``n_classes`` raises then)."""
        return self._n_classes

    @property
    def n_classes(self) -> int:
        if self._n_classes is None:
            raise ModelCapabilityError(
                "CallableModel: the number of classes is unknown. Pass n_classes=... to as_model()."
            )
        return self._n_classes

    def _call(self, x: Tensor) -> Tensor:
        self.queries.add_forward(x.shape[0])
        out = self._fn(x.detach().cpu().numpy())
        arr = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
        if arr.ndim == 1 and arr.shape[0] == x.shape[0] and self._output in ("auto", "labels") and (
            self._output == "labels" or not np.issubdtype(arr.dtype, np.floating)
        ):
            self._output = "labels"
            idx = label_indices(arr, classes=self._classes, owner="CallableModel")
            return torch.as_tensor(idx, device=x.device)
        if arr.ndim != 2 or arr.shape[0] != x.shape[0]:
            raise ModelCapabilityError(
                f"CallableModel: the model must return probabilities of shape (N, C) or labels "
                f"of shape (N,) for N={x.shape[0]} inputs; got shape {arr.shape}. Return one row "
                "of class probabilities per input."
            )
        if self._output == "auto":
            self._output = "proba"
        if self._n_classes is None:
            self._n_classes = int(arr.shape[1])
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32, device=x.device)

    def scores(self, x: Tensor) -> Tensor:
        """(N, C) probabilities; counts N queries. Raises for label-only models."""
        if self._output == "labels":
            raise ModelCapabilityError(
                "CallableModel: this model returns labels only, so score-based attacks cannot "
                "use it. Use a decision-based attack, or wrap a function that returns "
                "probabilities."
            )
        out = self._call(x)
        if out.dim() == 1:  # auto-detected on this call: the model answers with labels
            raise ModelCapabilityError(
                "CallableModel: this model returned labels, not probabilities. Use a "
                "decision-based attack, or wrap a function that returns probabilities."
            )
        return out

    def predict(self, x: Tensor) -> Tensor:
        """(N,) int64 labels; counts N queries. NaN scores are read as -inf."""
        out = self._call(x)
        return out if out.dim() == 1 else safe_argmax(out)

    def predict_with_errors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) labels and (N,) bool model errors (rows with NaN or inf scores); N queries."""
        return labels_and_errors(self._call(x))

    def outputs(self, x: Tensor) -> Tensor:
        """The model's raw answer to x: (N, C) scores or, for label-only models, (N,) labels."""
        return self._call(x)
