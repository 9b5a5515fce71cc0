"""The stateful detector of query-based evasion (Chen, Carlini and Wagner, 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring._common import (
    ClientTable,
    check_queries,
    check_streams,
    low_threshold,
    not_fitted,
)
from modelshield.errors import ConfigError, InputError

__all__ = ["Encoder", "StatefulDetector", "knn_scores"]

Encoder = Callable[[Tensor], Tensor]
"""``encoder(x) -> (N, d)``: x the (N, *input_shape) queries; similar queries map to close rows."""

_FIT_CHUNK = 256  # benign streams are replayed in chunks so fit's memory stays O(chunk * history)


def knn_scores(history: Tensor, valid: Tensor, e: Tensor, k: int) -> Tensor:
    """(B,) mean L2 distance from each row of e (B, d) to its k nearest valid rows of history.

    ``valid`` is a (B, M) bool mask of the history rows each query may use; a query with fewer
    than k valid rows averages over those it has, and one with none scores +inf.
    """
    d = torch.cdist(e, history) if history.shape[0] else e.new_zeros(e.shape[0], 0)
    d = d.masked_fill(~valid, math.inf)
    kk = min(k, d.shape[1])
    if kk == 0:
        return torch.full((e.shape[0],), math.inf)
    near = d.topk(kk, dim=1, largest=False).values
    finite = torch.isfinite(near)
    n = finite.sum(1)
    total = near.masked_fill(~finite, 0.0).sum(1)
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, math.inf))


@dataclass(slots=True)
class _History:
    """One client's ring buffer of encoded queries, grown by doubling up to its capacity."""

    capacity: int
    buf: Tensor
    seq: Tensor  # sequence number of the query in each slot (-1: empty)
    count: int = 0  # queries written since the last clear
    queries: int = 0  # every query of the client
    detections: int = 0
    last: float = math.inf  # the lowest k-NN score of the client's latest batch

    @classmethod
    def empty(cls, capacity: int, d: int) -> _History:
        n = min(capacity, 64)
        return cls(capacity, torch.empty(n, d), torch.full((n,), -1, dtype=torch.long))

    def score(self, e: Tensor, k: int, min_history: int = 1) -> Tensor:
        """(B,) k-NN scores of the batch e, each query against the history as it stood when it came."""
        b = e.shape[0]
        j = torch.arange(b)
        first = self.count + j - self.capacity  # the oldest sequence number still held for query j
        ok_hist = (self.seq >= 0)[None, :] & (self.seq[None, :] >= first[:, None])
        ok_batch = (j[None, :] < j[:, None]) & (j[None, :] >= (j - self.capacity)[:, None])
        rows = torch.cat([self.buf, e])
        valid = torch.cat([ok_hist, ok_batch], dim=1)
        out = knn_scores(rows, valid, e, k)
        return out if min_history <= 1 else out.masked_fill(valid.sum(1) < min_history, math.inf)

    def add(self, e: Tensor) -> None:
        """Append the batch e (B, d) in order, overwriting the oldest rows once full."""
        e = e[-self.capacity:]
        need = min(self.capacity, self.count + e.shape[0])
        if need > self.buf.shape[0]:
            size = min(self.capacity, max(need, 2 * self.buf.shape[0]))
            buf = torch.empty(size, self.buf.shape[1])
            seq = torch.full((size,), -1, dtype=torch.long)
            buf[: self.buf.shape[0]] = self.buf
            seq[: self.seq.shape[0]] = self.seq
            self.buf, self.seq = buf, seq
        numbers = torch.arange(self.count, self.count + e.shape[0])
        slots = numbers % self.capacity
        self.buf[slots] = e
        self.seq[slots] = numbers
        self.count += e.shape[0]

    def clear(self) -> None:
        self.seq.fill_(-1)
        self.count = 0


@dataclass
class StatefulDetector:
    """Flags a client whose queries sit unusually close to its own earlier queries.

    Query-based evasion attacks (Square, SimBA, HopSkipJump, boundary attacks) ask many
    near-duplicates of one image. Chen, Carlini and Wagner keep each client's query history,
    map every query through a similarity encoder and compute the mean distance from the new
    query to its k nearest neighbours in that history; a mean below a threshold raises an
    alert, and the history is then cleared (so an attack that continues raises further
    detections). The threshold is set on benign traffic so that at most ``fpr`` of benign
    queries would be flagged (the paper: the 0.1th percentile of benign k-NN distances).

    Encoder. The paper trains a CNN encoder with a contrastive loss (an image and a small
    perturbation of it close, different images far apart). Here ``encoder`` is:
    ``"projection"`` (default: a fixed, seeded Gaussian random projection of the flattened
    input to ``dim`` values, which keeps L2 distances up to a small factor, Johnson-Lindenstrauss),
    ``"pixels"`` (the flattened input itself), or any callable ``x -> (N, d)`` such as the
    protected model's penultimate features or an encoder trained contrastively
    (``train_contrastive_encoder``). With the two built-in encoders the detector sees L2
    distance in input space, which is what an encoder trained on small perturbations
    approximates; it is weaker than the paper's against transforms (shifts, large noise).

    Bounded memory and cost. Each client keeps at most ``history`` encoded queries in a ring
    buffer (``history * d`` floats) and at most ``max_clients`` clients are kept, the least
    recently seen evicted first. Each query costs one ``torch.cdist`` row over the buffer,
    O(history * d), whatever the client's total count (no index is re-fitted per query, unlike
    ART's prototype).

    Choosing the threshold. ``fit(benign)`` replays benign streams (each as a fresh client,
    under the same buffer rules) and keeps the largest threshold that flags at most ``fpr`` of
    their queries. A longer benign history has closer neighbours, so fit on streams at least as
    long as ``history`` (or as long as real clients' sessions) and check the false-positive
    rate on other benign streams: the calibration is in-sample.

    Args:
        k: neighbours averaged (paper: 50 on CIFAR-10; smaller k detects sooner, since an
            attack needs k near-duplicates before the mean drops).
        history: ring-buffer size per client (queries).
        max_clients: clients kept at once (LRU eviction).
        fpr: target per-query false-positive rate on benign traffic, in (0, 1).
        encoder: ``"projection"``, ``"pixels"`` or a callable (see above).
        dim: output size of the ``"projection"`` encoder.
        clear_on_alert: clear the client's history after each alert (as in the paper).
        seed: seed of the random projection.
        min_history: a query is scored (and may raise an alert) only once the client's history holds
            at least this many earlier queries; 1 (default) scores from the second query on, over the
            neighbours there are. The authors' code waits for k, so that a client's first repeat
            (a retry) is not flagged: pass ``min_history=k`` for that.

    Attributes:
        threshold_: alert when the k-NN mean distance is below this (set by ``fit``).
        input_shape_: the query shape seen by ``fit``.
        calibration_: the benign queries, target and in-sample false-positive rate of ``fit``.
        queries_to_detection_: client -> the client's query count at its first alert.

    Reference: Chen, Carlini and Wagner, "Stateful Detection of Black-Box Adversarial Attacks",
    ACM SPAI 2020 (arXiv:1907.05587).

    Example:
        det = StatefulDetector(k=10, fpr=0.005).fit(x_benign)
        alerts = det.update("client-7", x_batch)
    """

    k: int = 10
    history: int = 1000
    max_clients: int = 1000
    fpr: float = 0.005
    encoder: str | Encoder = "projection"
    dim: int = 64
    clear_on_alert: bool = True
    seed: int = 0
    min_history: int = 1
    threshold_: float | None = field(init=False, default=None)
    input_shape_: tuple[int, ...] | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _projection: Tensor | None = field(init=False, default=None, repr=False)
    _clients: ClientTable[_History] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "StatefulDetector"
        check_range("k", self.k, owner=owner, low=1, integer=True, fix="The paper uses k=50 on CIFAR-10.")
        check_range("history", self.history, owner=owner, low=1, integer=True,
                    fix="Give the queries kept per client, e.g. history=1000.")
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        check_range("fpr", self.fpr, owner=owner, low=0.0, high=1.0, low_open=True,
                    fix="Give a per-query false-positive rate such as fpr=0.005.")
        check_range("dim", self.dim, owner=owner, low=1, integer=True)
        check_range("min_history", self.min_history, owner=owner, low=1, integer=True,
                    fix="Give the earlier queries needed before scoring, e.g. min_history=10 (= k).")
        check_range("seed", self.seed, owner=owner, integer=True)
        if not callable(self.encoder) and self.encoder not in ("projection", "pixels"):
            raise ConfigError(
                f"{owner}: 'encoder' must be 'projection', 'pixels' or a callable x -> (N, d); got "
                f"{self.encoder!r}. Pass e.g. the model's penultimate-feature function."
            )
        self._clients = ClientTable(self.max_clients)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, benign: Tensor | Sequence[Tensor]) -> StatefulDetector:
        """Learn ``threshold_`` from benign query streams (each replayed as a fresh client).

        Args:
            benign: ``(N, *input_shape)`` benign queries in arrival order, or a sequence of such
                streams (one per benign client).

        Returns:
            self, fitted; every client's state is reset.
        """
        streams = check_streams(benign, owner="StatefulDetector")
        shape = tuple(streams[0].shape[1:])
        if any(tuple(s.shape[1:]) != shape for s in streams):
            raise InputError(
                "StatefulDetector: every benign stream must have the same query shape; got "
                f"{sorted({tuple(s.shape[1:]) for s in streams})}. Fit one detector per input shape."
            )
        self.input_shape_ = shape
        if self.encoder == "projection":
            gen = torch.Generator().manual_seed(self.seed)
            d_in = math.prod(shape)
            self._projection = torch.randn(d_in, self.dim, generator=gen) / math.sqrt(self.dim)
        scores = torch.cat([self.score_stream(s) for s in streams])
        self.threshold_ = low_threshold(scores, self.fpr)
        flagged = int((scores < self.threshold_).sum())
        self.calibration_ = {
            "queries": int(scores.numel()), "streams": len(streams), "fpr_target": self.fpr,
            "fpr_in_sample": flagged / scores.numel(), "threshold": self.threshold_,
        }
        self.reset()
        return self

    def score_stream(self, x: Tensor) -> Tensor:
        """(N,) k-NN scores of a stream replayed as a fresh client; no alerts, no state change.

        The history is never cleared here (no threshold is applied). Needs the encoder: for
        ``"projection"`` call after ``fit``.
        """
        e_all = self._encode(x)
        state = _History.empty(self.history, e_all.shape[1])
        out = []
        for start in range(0, e_all.shape[0], _FIT_CHUNK):
            e = e_all[start:start + _FIT_CHUNK]
            out.append(state.score(e, self.k, self.min_history))
            state.add(e)
        return torch.cat(out)

    # -- streaming ---------------------------------------------------------------------------

    def update(self, client_id: Hashable, x_batch: Tensor) -> list[Alert]:
        """Feed one client's queries, in arrival order; returns one Alert per flagged query.

        Args:
            client_id: any hashable client key (API key, IP, ...).
            x_batch: ``(N, *input_shape)`` float queries, of the shape given to ``fit``.

        Returns:
            The alerts raised by this batch, in order (empty when none).
        """
        if self.threshold_ is None:
            raise not_fitted(self)
        e = self._encode(x_batch)
        state = self._clients.get(client_id) or _History.empty(self.history, e.shape[1])
        alerts: list[Alert] = []
        state.last = math.inf
        while e.shape[0]:
            scores = state.score(e, self.k, self.min_history)
            state.last = min(state.last, float(scores.min()))
            hits = (scores < self.threshold_).nonzero().flatten().tolist()
            if not hits:
                state.add(e)
                state.queries += e.shape[0]
                break
            if not self.clear_on_alert:
                state.add(e)
                base = state.queries
                state.queries += e.shape[0]
                alerts.extend(self._alert(client_id, state, float(scores[h]), base + h + 1, self.threshold_)
                              for h in hits)
                break
            j = hits[0]  # the history is cleared at the first hit: later rows start afresh
            alerts.append(self._alert(client_id, state, float(scores[j]), state.queries + j + 1,
                                      self.threshold_))
            state.queries += j + 1
            state.clear()
            e = e[j + 1:]
        for gone in self._clients.touch(client_id, state):
            self.queries_to_detection_.pop(gone, None)
        return alerts

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or every client's when None); the threshold stays."""
        if client_id is None:
            self._clients.clear()
            self.queries_to_detection_.clear()
            return
        self._clients.pop(client_id)
        self.queries_to_detection_.pop(client_id, None)

    def queries(self, client_id: Hashable) -> int:
        """Queries seen from the client since it was last reset or evicted (0 if unknown)."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.queries

    def last_scores(self, client_id: Hashable) -> dict[str, float]:
        """The client's latest statistic: ``{"knn_distance": lowest k-NN score of its last batch}``
        (inf while it has no history); empty for an unknown client."""
        state = self._clients.get(client_id)
        return {} if state is None else {"knn_distance": state.last}

    def detections(self, client_id: Hashable) -> int:
        """Alerts raised for the client since it was last reset or evicted."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.detections

    @property
    def n_clients(self) -> int:
        """Clients currently held (at most ``max_clients``)."""
        return len(self._clients)

    def _alert(
        self, client_id: Hashable, state: _History, score: float, at: int, threshold: float
    ) -> Alert:
        state.detections += 1
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="StatefulDetector", score=score,
            threshold=threshold, queries=at,
            message=(f"StatefulDetector: client {client_id!r} sent a query whose {self.k} nearest "
                     f"earlier queries lie at mean distance {score:.4g} < {threshold:.4g} "
                     f"(query {at}); this looks like a query-based evasion attack."),
        )

    def _encode(self, x_batch: Tensor) -> Tensor:
        """(N, d) float32 CPU encodings of the batch."""
        owner = "StatefulDetector"
        flat = check_queries(x_batch, owner=owner)
        if self.input_shape_ is not None and tuple(x_batch.shape[1:]) != self.input_shape_:
            raise InputError(
                f"{owner}: x_batch must have queries of shape {self.input_shape_} (as in fit); got "
                f"{tuple(x_batch.shape[1:])}. Send queries of the fitted shape."
            )
        if self.encoder == "pixels":
            return flat.cpu()
        if not callable(self.encoder):  # "projection", the only other string __post_init__ allows
            if self._projection is None:
                raise not_fitted(self)
            return flat.cpu() @ self._projection
        with torch.no_grad():
            out = self.encoder(x_batch.detach())
        if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != x_batch.shape[0]:
            raise InputError(
                f"{owner}: the encoder must return a ({x_batch.shape[0]}, d) tensor; got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}. "
                "Return one feature row per query."
            )
        return out.detach().flatten(1).float().cpu()
