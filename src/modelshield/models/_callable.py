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

__all__ = ["CallableModel", "OutputKind", "ScoreKind", "label_indices", "margin_scores"]

OutputKind = Literal["auto", "proba", "labels"]
ScoreKind = Literal["probabilities", "margins", "labels"]
"""What a black box's answers are: class probabilities, decision margins (scores that are not
probabilities), or labels only."""

MARGINS_NOTE = (
    "The model has no predict_proba: its scores are decision_function margins (signed distances to "
    "the decision boundary, not probabilities; binary margin d read as the two columns [-d/2, d/2]), "
    "checked on every query to give the same class as its predict. Score-based attacks use them: an "
    "assessor holding the model file can, so the robustness measured is the honest (lower) one."
)


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


def has_margins(obj: Any) -> bool:
    """True for an estimator without ``predict_proba`` but with ``decision_function`` and ``predict``
    (LinearSVC, SVC(probability=False), RidgeClassifier, a pipeline ending in one)."""
    return (not callable(obj) and not callable(getattr(obj, "predict_proba", None))
            and callable(getattr(obj, "decision_function", None)) and callable(getattr(obj, "predict", None)))


def margin_scores(
    obj: Any, x: Any, *, classes: Sequence[Any] | None, n_classes: int | None, owner: str
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """An estimator's ``decision_function`` margins as (N, C) scores, checked against its ``predict``.

    A binary margin d (N,) becomes the columns ``[-d/2, d/2]``: their difference is d, so the
    argmax is class 1 exactly when d > 0, as in scikit-learn's ``predict``, and a softmax of the
    columns is ``sigmoid(d)``. One-vs-rest margins (N, C) are kept as they are. Margins are not
    probabilities: they are unbounded and do not sum to one, but their order is the model's.

    Returns:
        (scores (N, C) float64, the labels of ``predict`` as class indices (N,), None) when the
        argmax of the margins equals ``predict`` on every finite row; else (the margins as read,
        the predict labels, a one-line reason they cannot stand in for the model's scores).
    """
    labels = label_indices(np.asarray(obj.predict(x)), classes=classes, owner=owner)
    d = np.asarray(obj.decision_function(x), dtype=np.float64)
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]
    if d.ndim == 1:
        d = np.stack([-d / 2.0, d / 2.0], axis=1)
    n = labels.shape[0]
    if d.ndim != 2 or d.shape[0] != n or (n_classes is not None and d.shape[1] != n_classes):
        want = f"(N, {n_classes})" if n_classes is not None else "(N, C)"
        return d, labels, (f"its decision_function answers shape {d.shape}, not one margin per class "
                           f"{want} (e.g. one-vs-one SVC margins)")
    finite = np.isfinite(d).all(axis=1)
    wrong = finite & (d.argmax(axis=1) != labels)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        return d, labels, (f"the argmax of its decision_function margins differs from its predict on "
                           f"{int(wrong.sum())} of {n} inputs (first: input {first})")
    return d, labels, None


class CallableModel:
    """Any function ``x -> probabilities (N, C)`` or ``x -> labels (N,)``, seen as a Model.

    Accepts a plain callable (numpy in, numpy or tensor out), or an object with
    ``predict_proba`` (scikit-learn estimators), or, without ``predict_proba``, an estimator with
    ``decision_function``: its margins are the scores (``score_kind == "margins"``, see
    ``margin_scores``; not probabilities, but their argmax is the model's ``predict``, checked on
    every query; on the first disagreement the model is read through ``predict`` alone from then on,
    and ``notes`` says why), or, for label-only models, ``predict``.
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
        self._margins = False
        self._notes: list[str] = []
        proba = getattr(obj, "predict_proba", None)
        if output != "labels" and callable(proba):
            self._fn = proba
            self._output = "proba"
        elif output != "labels" and has_margins(obj):
            # no probabilities, but margins: score-based attacks use them (see margin_scores)
            self._fn = obj.predict
            self._margins = True
            self._output = "proba"
            self._notes.append(MARGINS_NOTE)
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
        """``"proba"`` when the model answers scores (probabilities or margins), ``"labels"`` when
        it answers labels only, ``"auto"`` before a callable's first answer."""
        return self._output

    @property
    def score_kind(self) -> ScoreKind | None:
        """``"margins"`` (decision_function), ``"probabilities"``, ``"labels"``, or None before a
        callable's first answer."""
        if self._margins:
            return "margins"
        return {"proba": "probabilities", "labels": "labels"}.get(self._output)  # type: ignore[return-value]

    @property
    def notes(self) -> tuple[str, ...]:
        """Facts to report about how the model's answers are read (margins used as scores, or why
        they were dropped)."""
        return tuple(self._notes)

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
        if self._margins:
            return self._call_margins(x)
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

    def _call_margins(self, x: Tensor) -> Tensor:
        scores, labels, reason = margin_scores(self._obj, x.detach().cpu().numpy(), classes=self._classes,
                                               n_classes=self._n_classes, owner="CallableModel")
        if reason is None:
            if self._n_classes is None:
                self._n_classes = int(scores.shape[1])
            return torch.as_tensor(np.ascontiguousarray(scores), dtype=torch.float32, device=x.device)
        # margins that do not give the model's own predictions would fake successes: labels only
        self._margins = False
        self._output = "labels"
        self._notes = [n for n in self._notes if n != MARGINS_NOTE]
        self._notes.append(
            f"The model's decision_function margins were not used as scores: {reason}. The model is "
            "read through predict alone (labels only), so score-based attacks do not apply."
        )
        return torch.as_tensor(labels, device=x.device)

    def scores(self, x: Tensor) -> Tensor:
        """(N, C) probabilities, or margins when ``score_kind == "margins"``; counts N queries.
        Raises for label-only models."""
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
