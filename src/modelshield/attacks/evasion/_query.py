"""Shared plumbing of the query-based (black-box) attacks: per-point query ledgers and score views."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from modelshield.errors import ModelCapabilityError, QueryBudgetExceeded
from modelshield.models import CallableModel, TorchModel, eval_mode

__all__ = [
    "QueryLedger",
    "black_box_mode",
    "check_room_for_call",
    "is_probability_output",
    "log_scores",
    "probabilities",
    "scores_or_raise",
    "spatial_shape",
]

LABELS_ONLY_FIX = (
    "Use HopSkipJump, which needs only predicted labels, or wrap a function that returns "
    "class probabilities."
)


class QueryLedger:
    """Forward queries spent on each point, capped per point and by the model's total budget.

    The model's own counter keeps ``reserve`` queries free for the final verification
    (one query of x_adv per point), so an attack that runs under ``as_model(..., budget=B)``
    stops early enough that the verification still fits in B.
    """

    def __init__(self, model: TorchModel | CallableModel, n: int, *, max_queries: int,
                 reserve: int, device: torch.device) -> None:
        self.model = model
        self.used = torch.zeros(n, dtype=torch.long, device=device)
        self.max_queries = max_queries
        self.reserve = reserve
        self.exhausted = False  # the model-level budget cut a request short

    def room(self) -> int | None:
        """Forward queries the attack may still spend on the model (None: unlimited)."""
        left = self.model.queries.remaining
        return None if left is None else max(left - self.reserve, 0)

    def allow(self, idx: Tensor, want: int | Tensor) -> Tensor:
        """(k,) long: queries each point of idx may spend now, at most want.

        Capped by each point's own ``max_queries`` and, in index order, by the model's room.
        """
        left = (self.max_queries - self.used[idx]).clamp_min(0)
        grant = left.clamp(max=want) if isinstance(want, int) else torch.minimum(left, want)
        room = self.room()
        if room is not None and grant.numel():
            before = grant.cumsum(0) - grant
            capped = torch.minimum(grant, (room - before).clamp_min(0))
            if bool((capped < grant).any()):
                self.exhausted = True
            grant = capped
        return grant

    def out_of_room(self) -> bool:
        """True (and noted in ``exhausted``) once the model's budget leaves nothing to spend."""
        if self.room() == 0:
            self.exhausted = True
            return True
        return False

    def charge(self, idx: Tensor, counts: Tensor | int = 1) -> None:
        """Record counts (scalar or (k,)) queries for the points idx."""
        if isinstance(counts, int):
            counts = torch.full_like(idx, counts)
        self.used.index_add_(0, idx, counts.to(self.used.dtype))


def check_room_for_call(model: TorchModel | CallableModel, n: int, *, owner: str) -> None:
    """Raise QueryBudgetExceeded unless the model's budget covers 2 queries per point.

    Every query attack spends one clean query and one verification query per point; a
    budget below that cannot produce a verified result.
    """
    left = model.queries.remaining
    if left is not None and left < 2 * n:
        raise QueryBudgetExceeded(
            f"{owner}: the model's remaining query budget must be at least {2 * n} (one clean "
            f"query and one verification query for each of the {n} points); got {left}. "
            "Raise the budget given to as_model(..., budget=...) or attack fewer points."
        )


def scores_or_raise(model: TorchModel | CallableModel, x: Tensor, *, owner: str) -> Tensor:
    """model.scores(x), turning a label-only model's error into one that names the owner and fix."""
    if isinstance(model, CallableModel) and model.output == "labels":
        raise ModelCapabilityError(
            f"{owner}: needs class scores (probabilities or logits), but the model returns "
            f"labels only. {LABELS_ONLY_FIX}"
        )
    try:
        return model.scores(x)
    except ModelCapabilityError as exc:
        # The adapter only learns on the first answer that a callable returns labels.
        if isinstance(model, CallableModel) and model.output == "labels":
            raise ModelCapabilityError(
                f"{owner}: needs class scores (probabilities or logits), but the model "
                f"returned labels only. {LABELS_ONLY_FIX}"
            ) from exc
        raise


def is_probability_output(model: TorchModel | CallableModel, scores: Tensor) -> bool:
    """True when scores are probabilities: a black-box model with rows in [0, 1] summing to 1."""
    if isinstance(model, TorchModel):
        return False
    ok_range = bool(((scores >= 0) & (scores <= 1 + 1e-6)).all())
    return ok_range and bool(((scores.sum(1) - 1).abs() <= 1e-3).all())


def log_scores(scores: Tensor, *, proba: bool) -> Tensor:
    """(N, C) logit-like scores: log-probabilities for probabilities, scores unchanged otherwise.

    Log-probabilities differ from the logits by a per-row constant, so margins are the same.
    """
    if not proba:
        return scores
    return scores.clamp_min(torch.finfo(scores.dtype).tiny).log()


def probabilities(scores: Tensor, *, proba: bool) -> Tensor:
    """(N, C) class probabilities: unchanged for probabilities, softmax of logits otherwise."""
    return scores if proba else scores.softmax(dim=1)


@contextlib.contextmanager
def black_box_mode(model: TorchModel | CallableModel) -> Iterator[None]:
    """No autograd; a torch module also runs in eval mode with its flags restored afterwards."""
    with torch.no_grad():
        if isinstance(model, TorchModel):
            with eval_mode(model):
                yield
        else:
            yield


def spatial_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) view of one input's shape: (D,) -> (1, 1, D); (H, W) -> (1, H, W); (C, H, W, ...)."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return shape[0], shape[1], math.prod(shape[2:])
