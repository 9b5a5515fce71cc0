"""Micro-batching of concurrent requests: one model call for the rows of many requests.

Requests reach the model from a thread pool. :class:`MicroBatcher` queues each caller's rows; one
caller at a time is the *leader*: it takes the queued requests (FIFO, up to ``max_rows`` rows;
a single bigger request runs alone), runs ONE model call on their concatenation, and hands each
caller its slice of every output. Exceptions of that call are raised in every caller of the
batch. While the leader computes, new requests queue; when it finishes, the oldest queued caller
becomes the next leader and runs at once (the model never idles while work is queued), so batches
grow with the load by themselves, as in continuous/dynamic batching (Triton's dynamic batcher,
Clipper, Crankshaw et al., NSDI 2017).

Waiting for company: a leader that finds the model idle waits up to ``wait_s`` for more rows,
but only while other requests have been *announced* (``announce()``: a request passed its
checks and is on its way to the model) and have not arrived yet; it stops as soon as they all have,
or ``max_rows`` are queued. A lone client is therefore never delayed. Announcements older than
``announce_ttl_s`` are forgotten, so a request that fails between announcing and submitting
cannot make later leaders wait.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from modelshield.errors import ConfigError

__all__ = ["BatchStats", "MicroBatcher", "Outputs"]

Outputs = tuple[np.ndarray | None, ...]
"""What the model function returns: arrays whose first axis is the rows (None entries pass through)."""


@dataclass(slots=True)
class _Request:
    x: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: Outputs | None = None
    error: BaseException | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchStats:
    """Counters since construction: model calls, requests and rows through them, largest batch."""

    calls: int
    requests: int
    rows: int
    max_requests: int

    @property
    def mean_requests(self) -> float:
        return self.requests / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "requests": self.requests, "rows": self.rows,
                "max_requests": self.max_requests, "mean_requests": self.mean_requests}


class MicroBatcher:
    """Run ``fn`` on the concatenated rows of concurrent callers; thread-safe.

    Args:
        fn: the model call, ``(N, ...) array -> tuple of (N, ...) arrays or None``.
        max_rows: most rows in one call (>= 1).
        wait_s: most seconds an idle leader waits for announced requests (>= 0; 0: never waits).
        announce_ttl_s: how long an announcement counts.

    Example:
        batcher = MicroBatcher(lambda x: (model(x),), max_rows=256, wait_s=0.002)
        (probs,) = batcher.submit(x)        # from many threads at once
    """

    def __init__(self, fn: Callable[[np.ndarray], Outputs], *, max_rows: int = 256, wait_s: float = 0.002,
                 announce_ttl_s: float = 1.0) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ConfigError(f"MicroBatcher: 'max_rows' must be an int >= 1; got {max_rows!r}. "
                              "Use e.g. max_rows=256.")
        for name, value in (("wait_s", wait_s), ("announce_ttl_s", announce_ttl_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
                raise ConfigError(f"MicroBatcher: {name!r} must be seconds in [0, 60]; got {value!r}. "
                                  f"Use e.g. {name}=0.002.")
        self.fn = fn
        self.max_rows = max_rows
        self.wait_s = float(wait_s)
        self.announce_ttl_s = float(announce_ttl_s)
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Request] = collections.deque()
        self._announced: collections.deque[float] = collections.deque()
        self._leading = False
        self._calls = self._requests = self._rows = self._max_requests = 0

    def announce(self) -> None:
        """Say a request is on its way to :meth:`submit` (lets an idle leader wait for it)."""
        with self._cond:
            self._announced.append(time.monotonic())

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(calls=self._calls, requests=self._requests, rows=self._rows,
                              max_requests=self._max_requests)

    def submit(self, x: np.ndarray) -> Outputs:
        """``fn(x)``, computed in a batch with concurrent callers' rows; raises what ``fn`` raised."""
        req = _Request(x=x)
        with self._cond:
            if self._announced:
                self._announced.popleft()  # this request's own announcement (or the oldest)
            self._pending.append(req)
            if self._leading:
                self._cond.notify_all()  # a waiting leader may have company now
            else:
                self._leading = req.lead = True
        if not req.lead:
            req.done.wait()
        if req.lead:  # the first caller (model idle), or promoted when the previous batch finished
            self._lead(fresh=not req.done.is_set())
        if req.error is not None:
            raise req.error
        if req.result is None:
            raise RuntimeError("MicroBatcher: a request finished without a result; this is a bug")
        return req.result

    # --- leader ---------------------------------------------------------------------------------
    def _lead(self, *, fresh: bool) -> None:
        """Run one batch (the leader is the oldest queued request), then promote the next oldest."""
        with self._cond:
            if fresh and self.wait_s > 0:
                self._wait_for_company()
            batch = self._take_batch()
        try:
            outputs = self._run(batch)
        except BaseException as exc:  # every caller of the batch gets the call's error
            for r in batch:
                r.error = exc
        else:
            for r, out in zip(batch, outputs, strict=True):
                r.result = out
        with self._cond:
            self._calls += 1
            self._requests += len(batch)
            self._rows += sum(len(r.x) for r in batch)
            self._max_requests = max(self._max_requests, len(batch))
            nxt = self._pending[0] if self._pending else None
            if nxt is None:
                self._leading = False
        for r in batch:
            r.lead = False
            r.done.set()
        if nxt is not None:
            nxt.lead = True
            nxt.done.set()  # wakes it as the next leader (its result is still None)

    def _wait_for_company(self) -> None:
        """Wait (lock held) up to wait_s while announced requests have yet to arrive and rows fit."""
        deadline = time.monotonic() + self.wait_s
        while True:
            now = time.monotonic()
            while self._announced and self._announced[0] < now - self.announce_ttl_s:
                self._announced.popleft()
            rows = sum(len(r.x) for r in self._pending)
            if not self._announced or rows >= self.max_rows or now >= deadline:
                return
            self._cond.wait(deadline - now)

    def _take_batch(self) -> list[_Request]:
        """Pop the oldest requests (lock held) while their rows fit in max_rows (at least one)."""
        batch = [self._pending.popleft()]
        rows = len(batch[0].x)
        while self._pending and rows + len(self._pending[0].x) <= self.max_rows:
            rows += len(self._pending[0].x)
            batch.append(self._pending.popleft())
        return batch

    def _run(self, batch: list[_Request]) -> list[Outputs]:
        """One model call on the batch's rows; each request's slice of every output."""
        sizes = [len(r.x) for r in batch]
        outputs = self.fn(batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch], axis=0))
        total = sum(sizes)
        for out in outputs:
            if out is not None and len(out) != total:
                raise ValueError(f"MicroBatcher: the model function must return one row per input row; got "
                                 f"{len(out)} rows for {total}. Return (N, ...) arrays.")
        if len(batch) == 1:
            return [outputs]
        bounds = np.cumsum([0, *sizes])
        return [tuple(None if out is None else out[lo:hi] for out in outputs)
                for lo, hi in itertools.pairwise(bounds.tolist())]
