"""One black-box view of a model: its answers (probabilities or labels) and nothing else.

``as_black_box`` presents any model (a torch module, a ``TorchModel``, an estimator, a callable)
strictly through its outputs, as a ``CallableModel``: a query-only attack, a hardened API or a
logged API cannot reach gradients, logits or parameters through it. A torch model answers in
eval mode with every sub-module's training flag restored afterwards (``eval_mode``).
Layers on top (output hardening, query logging) pass ``on_answer``: it sees each batch of
queries and its answers, and may replace the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._checks import check_bounds, check_choice
from modelshield.models._callable import CallableModel
from modelshield.models._torch import TorchModel, eval_mode

__all__ = ["AnswerHook", "BlackBoxOutput", "as_black_box", "black_box_answers", "probabilities"]

BlackBoxOutput = Literal["proba", "labels"]

AnswerHook = Callable[[Tensor, Tensor], Tensor]
"""``on_answer(x, answer) -> answer``: x the (N, ...) CPU queries as asked, answer the (N, C)
float64 CPU probabilities or (N,) int64 CPU labels; returns what the caller receives."""


def probabilities(model: TorchModel | CallableModel, x: Tensor) -> Tensor:
    """(N, C) class probabilities without autograd: a torch model's softmax, a black box's scores
    (the softmax of an estimator's decision margins, ``score_kind == "margins"``: same argmax).

    Counts N forward queries. Raises ModelCapabilityError for a label-only model.
    """
    with torch.no_grad():
        s = model.scores(x)
    margins = isinstance(model, CallableModel) and model.score_kind == "margins"
    return s.softmax(1) if isinstance(model, TorchModel) or margins else s


def _base(
    model: object, bounds: tuple[float, float] | None, output: BlackBoxOutput, n_classes: int | None
) -> TorchModel | CallableModel:
    if isinstance(model, TorchModel | CallableModel):
        return model
    lo_hi = check_bounds(bounds if bounds is not None else (0.0, 1.0), owner="as_black_box")
    if isinstance(model, nn.Module):
        return TorchModel(model, bounds=lo_hi, n_classes=n_classes)
    # labels: an estimator answers through its own predict(), as a label-only API would
    return CallableModel(model, bounds=lo_hi, output="labels" if output == "labels" else "auto",
                         n_classes=n_classes)


def black_box_answers(
    model: TorchModel | CallableModel,
    *,
    output: BlackBoxOutput = "proba",
    on_answer: AnswerHook | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """The numpy function ``x -> answers`` behind ``as_black_box`` (see there).

    Queries are moved to a torch model's device and floating dtype; answers come back as
    float64 probabilities ``(N, C)`` or int64 labels ``(N,)``, after ``on_answer``.
    """
    check_choice("output", output, ("proba", "labels"), owner="as_black_box")
    device = model.device if isinstance(model, TorchModel) else None
    dtype = model.dtype if isinstance(model, TorchModel) else None

    def quiet() -> AbstractContextManager[None]:
        return eval_mode(model) if isinstance(model, TorchModel) else nullcontext()

    def answer(x_np: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x_np))
        xd = x if dtype is None and x.is_floating_point() else x.to(dtype=dtype or torch.float32)
        if device is not None:
            xd = xd.to(device)
        with torch.no_grad(), quiet():
            if output == "labels":
                out = model.predict(xd).cpu().long()
            else:
                out = probabilities(model, xd).cpu().double()
        if on_answer is not None:
            out = on_answer(x, out)
        arr: np.ndarray = out.numpy()
        return arr

    return answer


def as_black_box(
    model: object,
    *,
    bounds: tuple[float, float] | None = None,
    output: BlackBoxOutput = "proba",
    n_classes: int | None = None,
    budget: int | None = None,
    on_answer: AnswerHook | None = None,
) -> CallableModel:
    """``model`` seen strictly through its outputs: a black-box ``CallableModel``.

    Args:
        model: a ``torch.nn.Module`` returning logits, a ``TorchModel`` or ``CallableModel``, an
            object with ``predict_proba`` (``predict`` with ``output="labels"``), or a callable
            ``x -> probabilities``.
        bounds: the natural input range; defaults to a model's own bounds, else (0, 1).
        output: ``"proba"`` answers class probabilities (a torch model's softmax), ``"labels"``
            answers the top-1 labels only.
        n_classes: the class count; defaults to what the model knows (``n_classes_known``).
        budget: maximum number of queries to the view (the wrapped model counts its own too).
        on_answer: ``on_answer(x, answer) -> answer``, called on every batch (see ``AnswerHook``):
            output hardening post-processes the answers there, a query log records them.

    Raises:
        ConfigError: bad output or bounds.
        ModelCapabilityError: model is none of the above.

    Example:
        api = as_black_box(net, output="labels")
        HopSkipJump()(api, x, y)
    """
    check_choice("output", output, ("proba", "labels"), owner="as_black_box")
    base = _base(model, bounds, output, n_classes)
    lo_hi = base.bounds if bounds is None else check_bounds(bounds, owner="as_black_box")
    known = n_classes if n_classes is not None else base.n_classes_known
    return CallableModel(black_box_answers(base, output=output, on_answer=on_answer), bounds=lo_hi,
                         output=output, n_classes=known, budget=budget)
