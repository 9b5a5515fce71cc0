"""Shared pieces of the query monitors: input checks, the LRU client table, FPR thresholds."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import Tensor

from modelshield.errors import ConfigError, InputError, NotFittedError

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


# -- shared by the monitors of issue #18 (coverage, squeezing, STRIP, drift) ---------------------


def check_rate(name: str, value: object, *, owner: str, fix: str = "") -> float:
    """value as a float in the open interval (0, 1), else ConfigError naming it."""
    if (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and 0.0 < value < 1.0):
        return float(value)
    raise ConfigError(
        f"{owner}: {name!r} must be a number in (0, 1); got {value!r}." + (f" {fix}" if fix else "")
    )


def upper_threshold(scores: Tensor, fpr: float) -> float:
    """Smallest observed t with at most floor(fpr * n) scores strictly above t (alert: score > t)."""
    s = scores[torch.isfinite(scores)].double().sort(descending=True).values
    allowed = math.floor(fpr * scores.numel())
    if s.numel() == 0:
        return math.inf
    return float(s[min(allowed, s.numel() - 1)])


def binomial_alert_count(window: int, p: float, level: float) -> int:
    """Smallest k with P(Binomial(window, p) > k) <= level: alert when a count exceeds k."""
    log_p, log_q = math.log(p), math.log1p(-p)
    tail = 1.0
    for k in range(window + 1):
        log_pmf = (math.lgamma(window + 1) - math.lgamma(k + 1) - math.lgamma(window - k + 1)
                   + k * log_p + (window - k) * log_q)
        tail -= math.exp(log_pmf)
        if tail <= level:
            return k
    return window


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    return min(1.0, sum(
        math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(min(k, n) + 1)
    ))


def rate_upper_bound(k: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a rate seen k times in n trials."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: P(Bin(n, p) <= k) falls as p grows
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(slots=True)
class FlagWindow:
    """One client's per-query flags (last ``window`` of them) and counters, for the binomial rule.

    A client is alerted when more than ``limit`` of its last ``window`` flags are set; the window
    is then cleared, so a client that keeps sending flagged queries is alerted again after
    ``limit + 1`` more of them.
    """

    window: int
    limit: int
    flags: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    queries: int = 0
    checked: int = 0
    flagged: int = 0
    detections: int = 0
    last: dict[str, float] = field(default_factory=dict)

    def push(self, flags: Tensor) -> tuple[list[int], int]:
        """Append the batch's flags (B,) in order; returns the batch positions that raise an alert
        and the count of flags in the window after the last one."""
        hits: list[int] = []
        offset = 0
        self.checked += int(flags.numel())
        self.flagged += int(flags.sum())
        while flags.numel():
            seq = torch.cat([self.flags, flags]).long()
            csum = torch.cat([seq.new_zeros(1), seq.cumsum(0)])
            end = self.flags.numel() + torch.arange(1, flags.numel() + 1)
            counts = csum[end] - csum[(end - self.window).clamp_min(0)]
            over = (counts > self.limit).nonzero().flatten()
            if over.numel() == 0:
                self.flags = torch.cat([self.flags, flags])[-self.window:]
                break
            j = int(over[0])
            hits.append(offset + j)
            self.detections += 1
            self.flags = self.flags[:0]
            flags, offset = flags[j + 1:], offset + j + 1
        return hits, int(self.flags.sum())


def check_probs(probs: object, n: int, c: int | None, *, owner: str, name: str = "probs") -> Tensor:
    """probs as an (n, C) finite float CPU tensor (C == c when given), else one InputError line."""
    if (isinstance(probs, Tensor) and probs.is_floating_point() and probs.dim() == 2
            and probs.shape[0] == n and (c is None or probs.shape[1] == c)
            and bool(torch.isfinite(probs).all())):
        return probs.detach().float().cpu()
    got = (f"shape {tuple(probs.shape)}, dtype {probs.dtype}" if isinstance(probs, Tensor)
           else type(probs).__name__)
    raise InputError(
        f"{owner}: {name} must be a finite float tensor of shape ({n}, {'C' if c is None else c}); "
        f"got {got}. Pass the model's class probabilities, one row per query."
    )
