"""Shared pieces of the query monitors: input checks, the LRU client table, FPR thresholds."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from modelshield.errors import InputError, NotFittedError

S = TypeVar("S")


def check_queries(x_batch: object, *, owner: str, dim: int | None = None) -> Tensor:
    """(N, D) float32 CPU-detached view of a (N, *input_shape) float query batch; D checked if given."""
    if not isinstance(x_batch, Tensor) or x_batch.dim() < 2 or not x_batch.is_floating_point():
        got = (f"shape {tuple(x_batch.shape)}, dtype {x_batch.dtype}"
               if isinstance(x_batch, Tensor) else type(x_batch).__name__)
        raise InputError(
            f"{owner}: x_batch must be a float tensor of shape (N, *input_shape); got {got}. "
            "Add a batch dimension with x.unsqueeze(0) for one query."
        )
    flat = x_batch.detach().flatten(1).float()
    if dim is not None and flat.shape[1] != dim:
        raise InputError(
            f"{owner}: x_batch must have {dim} values per query (as in fit); got shape "
            f"{tuple(x_batch.shape)}. Send queries of the shape the monitor was fitted on."
        )
    if not bool(torch.isfinite(flat).all()):
        raise InputError(f"{owner}: x_batch holds NaN or infinite values; send finite queries.")
    return flat


def check_streams(benign: object, *, owner: str) -> list[Tensor]:
    """The benign streams given to fit: one (N, ...) tensor or a sequence of them, non-empty."""
    streams = [benign] if isinstance(benign, Tensor) else benign
    if (not isinstance(streams, Sequence) or len(streams) == 0
            or not all(isinstance(s, Tensor) and s.dim() >= 2 and s.shape[0] > 0 for s in streams)):
        raise InputError(
            f"{owner}: benign must be a (N, *input_shape) tensor or a non-empty sequence of them "
            f"(one per benign client stream); got {type(benign).__name__}. Pass held-out benign "
            "queries, e.g. a test split."
        )
    return list(streams)


def not_fitted(owner: object) -> NotFittedError:
    """The scikit-learn-worded error for a monitor used before fit."""
    return NotFittedError(
        f"This {type(owner).__name__} instance is not fitted yet. Call 'fit' with appropriate "
        "arguments before using this estimator."
    )


def low_threshold(scores: Tensor, fpr: float) -> float:
    """Largest t with at most floor(fpr * n) scores strictly below t (alert rule: score < t)."""
    s = scores[torch.isfinite(scores)].double().sort().values
    allowed = math.floor(fpr * scores.numel())
    if allowed >= s.numel():
        return math.inf
    return float(s[allowed])


def high_threshold(scores: Tensor, fpr: float) -> int:
    """Smallest integer T with at most floor(fpr * n) scores strictly above T (alert: score > T)."""
    s = scores.long().sort(descending=True).values
    allowed = math.floor(fpr * scores.numel())
    if allowed >= s.numel():
        return -1
    return int(s[allowed])


class ClientTable(Generic[S]):
    """A dict client -> state capped at ``max_clients`` entries, least recently used evicted."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._states: OrderedDict[Hashable, S] = OrderedDict()

    def get(self, client_id: Hashable) -> S | None:
        return self._states.get(client_id)

    def touch(self, client_id: Hashable, state: S) -> list[Hashable]:
        """Store/refresh the client's state as most recent; returns the clients evicted."""
        self._states[client_id] = state
        self._states.move_to_end(client_id)
        evicted: list[Hashable] = []
        while len(self._states) > self.max_clients:
            old, _ = self._states.popitem(last=False)
            evicted.append(old)
        return evicted

    def pop(self, client_id: Hashable) -> None:
        self._states.pop(client_id, None)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states
