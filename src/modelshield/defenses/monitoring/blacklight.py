"""Blacklight: detection of query-based evasion by probabilistic content fingerprints (Li et al., 2022)."""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring._common import (
    ClientTable,
    check_queries,
    check_streams,
    high_threshold,
    not_fitted,
)
from modelshield.errors import InputError

__all__ = ["Blacklight", "Scope", "fingerprint"]

Scope = Literal["global", "client"]


def fingerprint(x: Tensor, *, step: float, window: int, stride: int, top_n: int) -> list[tuple[int, ...]]:
    """Blacklight's probabilistic fingerprint of each row of x (N, D): its top_n window hashes.

    Each value is quantised to ``floor(x / step)``; every ``window`` consecutive values (taken
    each ``stride`` values along the flattened input) are hashed with a cryptographic hash
    (BLAKE2b, 64-bit digests; the paper uses SHA-256) and the ``top_n`` largest distinct
    hashes are kept, a pseudo-random but content-determined sample of the windows.
    """
    q = torch.floor(x / step).to(torch.int64)
    lo, hi = (int(q.min()), int(q.max())) if q.numel() else (0, 0)
    dtype: type[np.integer[Any]] = np.uint8 if lo >= 0 and hi < 256 else np.int32
    rows = q.numpy().astype(dtype)
    size = rows.dtype.itemsize
    prints: list[tuple[int, ...]] = []
    for row in rows:
        b = row.tobytes()
        span = window * size
        hashes = {
            int.from_bytes(hashlib.blake2b(b[i:i + span], digest_size=8).digest(), "big")
            for i in range(0, len(b) - span + 1, stride * size)
        }
        prints.append(tuple(sorted(hashes, reverse=True)[:top_n]))
    return prints


class _Table:
    """Fingerprints of the last ``capacity`` queries and an inverted index hash -> query ids."""

    def __init__(self, capacity: int, bucket: int) -> None:
        self.capacity = capacity
        self.bucket = bucket
        self.index: dict[int, deque[int]] = {}
        self.prints: deque[tuple[int, tuple[int, ...]]] = deque()
        self.next_id = 0
        self.queries = 0
        self.detections = 0

    def match(self, fp: tuple[int, ...]) -> int:
        """The most hashes fp shares with any stored fingerprint (0 when none)."""
        counts = Counter(chain.from_iterable(self.index.get(h, ()) for h in fp))
        return max(counts.values(), default=0)

    def add(self, fp: tuple[int, ...]) -> None:
        qid = self.next_id
        self.next_id += 1
        for h in fp:
            dq = self.index.get(h)
            if dq is None:
                dq = self.index[h] = deque(maxlen=self.bucket)
            dq.append(qid)
        self.prints.append((qid, fp))
        while len(self.prints) > self.capacity:
            old, hashes = self.prints.popleft()
            for h in hashes:
                dq = self.index.get(h)
                if dq is not None and dq and dq[0] == old:
                    dq.popleft()
                if dq is not None and not dq:
                    del self.index[h]


@dataclass
class Blacklight:
    """Flags a query that shares too many content fingerprints with earlier queries.

    Query-based evasion attacks send long runs of highly similar images. Blacklight quantises
    each query, hashes every sliding window of its flattened pixels, keeps the ``top_n``
    largest hashes as the query's probabilistic fingerprint and looks them up in a hash table
    of earlier queries' fingerprints; a query sharing more than ``threshold_`` hashes with one
    earlier query is flagged. Because it is a table look-up, not a nearest-neighbour search, the
    table can be global (``scope="global"``, the paper's choice: it also catches an attacker
    spreading queries over several accounts) or per client (``scope="client"``).

    The paper fixes the match threshold by hand (about half of the top 50 hashes); here
    ``fit(benign)`` chooses the smallest threshold whose per-query false-positive rate on benign
    streams is at most ``fpr``. Quantisation makes the fingerprint robust to small noise, not to
    transforms that move pixels (shifts change which values fall in each window, except a shift
    along the flattened order).

    Bounded memory and cost. Each table keeps the fingerprints of its last ``history`` queries
    (oldest evicted first, with their index entries) and each hash remembers at most ``bucket``
    recent query ids, so a common window (e.g. blank background) cannot make a look-up scan the
    whole table: a look-up costs O(top_n * bucket) at worst. With ``scope="client"`` at most
    ``max_clients`` tables are kept (least recently seen evicted).

    Args:
        step: quantisation step in input units (the paper quantises 0-255 pixels in steps of
            about 50, i.e. about 0.2 for inputs in [0, 1]).
        window: values per hashed window (the paper uses windows of tens of pixels; on 8x8
            digits 8 works, see benchmarks/monitors.py).
        stride: values between window starts.
        top_n: hashes kept per query (the paper: 50).
        fpr: target per-query false-positive rate on benign traffic, in (0, 1).
        scope: ``"global"`` (one table for every client) or ``"client"``.
        history: fingerprints kept per table.
        bucket: query ids kept per hash.
        max_clients: tables kept with ``scope="client"``.

    Attributes:
        threshold_: alert when a query shares more than this many hashes (set by ``fit``).
        calibration_: the benign queries, target and in-sample false-positive rate of ``fit``.
        queries_to_detection_: client -> the client's query count at its first alert.

    Reference: Li, Shan, Wenger, Zhang, Zheng and Zhao, "Blacklight: Scalable Defense for Neural
    Networks against Query-Based Black-Box Attacks", USENIX Security 2022 (arXiv:2006.14042).

    Example:
        det = Blacklight(fpr=0.005).fit(x_benign)
        alerts = det.update("client-7", x_batch)
    """

    step: float = 0.2
    window: int = 20
    stride: int = 1
    top_n: int = 50
    fpr: float = 0.005
    scope: Scope = "global"
    history: int = 100_000
    bucket: int = 256
    max_clients: int = 1000
    threshold_: int | None = field(init=False, default=None)
    input_dim_: int | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _global: _Table = field(init=False, repr=False)
    _clients: ClientTable[_Table] = field(init=False, repr=False)
    _counts: ClientTable[list[int]] = field(init=False, repr=False)  # global scope: [queries, alerts]
    _last: ClientTable[int] = field(init=False, repr=False)  # the most matches in the client's last batch
    _scratch: _Table | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        owner = "Blacklight"
        check_range("step", self.step, owner=owner, low=0.0, low_open=True,
                    fix="Give the quantisation step in input units, e.g. step=0.2 for [0, 1] inputs.")
        check_range("window", self.window, owner=owner, low=1, integer=True)
        check_range("stride", self.stride, owner=owner, low=1, integer=True)
        check_range("top_n", self.top_n, owner=owner, low=1, integer=True, fix="The paper uses top_n=50.")
        check_range("fpr", self.fpr, owner=owner, low=0.0, high=1.0, low_open=True,
                    fix="Give a per-query false-positive rate such as fpr=0.005.")
        check_choice("scope", self.scope, ("global", "client"), owner=owner)
        check_range("history", self.history, owner=owner, low=1, integer=True)
        check_range("bucket", self.bucket, owner=owner, low=1, integer=True)
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        self._global = _Table(self.history, self.bucket)
        self._clients = ClientTable(self.max_clients)
        self._counts = ClientTable(self.max_clients)
        self._last = ClientTable(self.max_clients)

    def fingerprints(self, x_batch: Tensor) -> list[tuple[int, ...]]:
        """The fingerprint (top_n window hashes) of each query of the (N, *input_shape) batch."""
        flat = check_queries(x_batch, owner="Blacklight", dim=self.input_dim_)
        if flat.shape[1] < self.window:
            raise InputError(
                f"Blacklight: queries must hold at least window={self.window} values; got "
                f"{flat.shape[1]}. Use a smaller window."
            )
        return fingerprint(flat.cpu(), step=self.step, window=self.window, stride=self.stride,
                           top_n=self.top_n)

    def fit(self, benign: Tensor | Sequence[Tensor]) -> Blacklight:
        """Learn ``threshold_`` from benign query streams.

        With ``scope="global"`` the streams go through one table, one after the other (as
        benign clients would share it); with ``"client"`` each stream gets a fresh table.

        Returns:
            self, fitted; every table is emptied afterwards.
        """
        streams = check_streams(benign, owner="Blacklight")
        self.input_dim_ = None
        dims = {int(np.prod(s.shape[1:])) for s in streams}
        if len(dims) != 1:
            raise InputError(
                f"Blacklight: every benign stream must have the same query size; got {sorted(dims)}. "
                "Fit one detector per input shape."
            )
        scores = torch.cat([self.score_stream(s, fresh=self.scope == "client" or i == 0)
                            for i, s in enumerate(streams)])
        self.input_dim_ = dims.pop()
        self.threshold_ = high_threshold(scores, self.fpr)
        flagged = int((scores > self.threshold_).sum())
        self.calibration_ = {
            "queries": int(scores.numel()), "streams": len(streams), "fpr_target": self.fpr,
            "fpr_in_sample": flagged / scores.numel(), "threshold": self.threshold_,
            "max_benign_matches": int(scores.max()),
        }
        self._scratch = None
        self.reset()
        return self

    def score_stream(self, x: Tensor, *, fresh: bool = True) -> Tensor:
        """(N,) match counts of a stream replayed through a scratch table (fresh, or the one used by
        the previous call when ``fresh=False``); the detector's own tables are untouched."""
        if fresh or self._scratch is None:
            self._scratch = _Table(self.history, self.bucket)
        table = self._scratch
        out = []
        for fp in self.fingerprints(x):
            out.append(table.match(fp))
            table.add(fp)
        return torch.tensor(out, dtype=torch.long)

    def update(self, client_id: Hashable, x_batch: Tensor) -> list[Alert]:
        """Feed one client's queries, in arrival order; returns one Alert per flagged query."""
        if self.threshold_ is None:
            raise not_fitted(self)
        prints = self.fingerprints(x_batch)
        if self.scope == "client":
            table = self._clients.get(client_id) or _Table(self.history, self.bucket)
            for gone in self._clients.touch(client_id, table):
                self.queries_to_detection_.pop(gone, None)
            counts = [table.queries, table.detections]
        else:
            table = self._global
            counts = self._counts.get(client_id) or [0, 0]
            for gone in self._counts.touch(client_id, counts):
                self.queries_to_detection_.pop(gone, None)
        alerts: list[Alert] = []
        most = 0
        for fp in prints:
            score = table.match(fp)
            most = max(most, score)
            table.add(fp)
            counts[0] += 1
            if score > self.threshold_:
                counts[1] += 1
                alerts.append(self._alert(client_id, score, self.threshold_, counts[0]))
        if self.scope == "client":
            table.queries, table.detections = counts
        self._last.touch(client_id, most)
        return alerts

    def last_scores(self, client_id: Hashable) -> dict[str, float]:
        """The client's latest statistic: ``{"matches": most hashes shared by a query of its last
        batch with an earlier query}``; empty for an unknown client."""
        most = self._last.get(client_id)
        return {} if most is None else {"matches": float(most)}

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or everything when None); the threshold stays.

        With ``scope="global"`` a client's fingerprints stay in the shared table (they are not
        tracked per client); only its counters are forgotten.
        """
        if client_id is None:
            self._global = _Table(self.history, self.bucket)
            self._clients.clear()
            self._counts.clear()
            self._last.clear()
            self.queries_to_detection_.clear()
            return
        self._clients.pop(client_id)
        self._counts.pop(client_id)
        self._last.pop(client_id)
        self.queries_to_detection_.pop(client_id, None)

    def queries(self, client_id: Hashable) -> int:
        """Queries seen from the client since it was last reset or evicted (0 if unknown)."""
        if self.scope == "client":
            table = self._clients.get(client_id)
            return 0 if table is None else table.queries
        counts = self._counts.get(client_id)
        return 0 if counts is None else counts[0]

    def _alert(self, client_id: Hashable, score: int, threshold: int, at: int) -> Alert:
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="Blacklight", score=float(score), threshold=float(threshold),
            queries=at,
            message=(f"Blacklight: client {client_id!r} sent a query sharing {score} of its "
                     f"{self.top_n} fingerprint hashes with an earlier query (> {threshold}; query "
                     f"{at}); this looks like a query-based evasion attack."),
        )
