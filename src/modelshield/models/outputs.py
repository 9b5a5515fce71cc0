"""Reading labels from model outputs, with non-finite answers (NaN, inf) marked, never guessed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["evaluating", "labels_and_errors", "predict_labels", "safe_argmax"]


def safe_argmax(scores: Tensor) -> Tensor:
    """(N,) int64 argmax of (N, C) scores with NaN read as -inf (an all-NaN row gives class 0).

    ``Tensor.argmax`` treats NaN as the largest value, so a NaN would silently become a class.
    """
    if scores.is_floating_point():
        scores = torch.nan_to_num(scores, nan=-torch.inf)
    return scores.argmax(1)


def labels_and_errors(out: Tensor) -> tuple[Tensor, Tensor]:
    """Labels and a (N,) bool mask of model errors from (N, C) scores or (N,) labels.

    A row is a model error when any of its scores is NaN or infinite; its label comes from
    ``safe_argmax`` but must not be trusted (callers count such rows as model errors).
    """
    if out.dim() == 1:
        return out.long(), torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    errors = ~torch.isfinite(out).all(1) if out.is_floating_point() else torch.zeros(
        out.shape[0], dtype=torch.bool, device=out.device)
    return safe_argmax(out), errors


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with every sub-module in eval mode; restore each one's own training flag.

    ``module.train(was_training)`` would flatten the flags (a frozen BatchNorm inside a training
    model would come back in training mode); this saves and restores them one by one.
    """
    modules = list(module.modules())
    saved = [m.training for m in modules]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in zip(modules, saved, strict=True):
            m.training = flag


def _module_labels(module: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    out: list[Tensor] = []
    with evaluating(module), torch.no_grad():
        for chunk in torch.split(x, batch_size):
            z = module(chunk)
            if isinstance(z, tuple | list):
                z = z[0]
            if z.dim() == 2 and z.shape[1] == 1:  # one logit: a binary classifier, as in TorchModel
                z = torch.cat([torch.zeros_like(z), z], dim=1)
            out.append(safe_argmax(z))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def predict_labels(model: Any, x: Any, *, batch_size: int = 1024) -> Tensor:
    """(N,) int64 labels from any classifier, without autograd.

    A torch module is run in eval mode in batches of ``batch_size`` with every sub-module's
    training flag restored afterwards (``evaluating``); its logits' argmax (NaN read as -inf) are
    the labels, on x's device. A modelshield model (``TorchModel``, ``CallableModel``) answers
    through ``predict`` in batches (counted queries). Anything else, e.g. a scikit-learn
    estimator over texts, is asked once through ``predict(x)`` or called as ``x -> labels or
    probabilities``; its labels come back as a CPU tensor.
    """
    from modelshield.models._callable import CallableModel
    from modelshield.models._torch import TorchModel

    if isinstance(model, TorchModel | CallableModel) and isinstance(x, Tensor):
        with torch.no_grad():
            parts = [model.predict(chunk) for chunk in torch.split(x, batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=x.device)
    if isinstance(model, nn.Module):
        xt = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
        return _module_labels(model, xt, batch_size)
    out = model.predict(x) if callable(getattr(model, "predict", None)) else model(x)
    arr = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
    if arr.ndim == 2:
        arr = arr.argmax(1)
    return torch.as_tensor(arr.astype(np.int64))
