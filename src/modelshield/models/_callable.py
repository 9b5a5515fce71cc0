"""Black-box adapter for callables and scikit-learn-style estimators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import ModelCapabilityError
from modelshield.models._budget import QueryCounter
from modelshield.models.outputs import labels_and_errors, safe_argmax

__all__ = ["CallableModel", "OutputKind"]

OutputKind = Literal["auto", "proba", "labels"]


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
        if arr.ndim == 1 and self._output in ("auto", "labels") and (
            np.issubdtype(arr.dtype, np.integer) or self._output == "labels"
        ):
            self._output = "labels"
            return torch.as_tensor(arr.astype(np.int64), device=x.device)
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
        return torch.as_tensor(arr, dtype=torch.float32, device=x.device)

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
