"""MicroBatcher: per-caller results equal per-request calls, batches merge, errors reach every caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from modelshield.errors import ConfigError
from modelshield.serve.batching import MicroBatcher, Outputs


class Model:
    """A row-wise model (y = x @ W, argmax) that records the batch sizes it was called with."""

    def __init__(self, *, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.w = np.random.default_rng(0).normal(size=(4, 3))
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def __call__(self, x: np.ndarray) -> Outputs:
        with self.lock:
            self.sizes.append(len(x))
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay_s)
            if self.fail_on is not None and np.any(x[:, 0] == self.fail_on):
                raise RuntimeError("model failed on a poisoned row")
            scores = x @ self.w
            return scores, scores.argmax(axis=1), None
        finally:
            with self.lock:
                self.concurrent -= 1


def _run_concurrently(n: int, fn: Callable[[int], None]) -> None:
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        start.wait()
        try:
            fn(i)
        except BaseException as exc:  # collected, re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(1 + i % 5, 4)) for i in range(n)]


def test_results_equal_per_request_calls_under_concurrency() -> None:
    model = Model(delay_s=0.005)
    batcher = MicroBatcher(model, max_rows=64, wait_s=0.005)
    xs = _inputs(24)
    got: dict[int, Outputs] = {}

    def one(i: int) -> None:
        batcher.announce()
        got[i] = batcher.submit(xs[i])

    _run_concurrently(len(xs), one)
    for i, x in enumerate(xs):
        scores, labels, extra = got[i]
        assert scores is not None and labels is not None and extra is None
        np.testing.assert_allclose(scores, x @ model.w, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(labels, (x @ model.w).argmax(axis=1))
    stats = batcher.stats()
    assert stats.requests == len(xs) and stats.rows == sum(len(x) for x in xs)
    # batches merged: far fewer model calls than requests
    assert stats.calls == len(model.sizes) < len(xs) // 2, model.sizes
    assert stats.max_requests > 2
    assert model.max_concurrent == 1  # one model call at a time


def test_max_rows_is_respected() -> None:
    model = Model(delay_s=0.005)
    batcher = MicroBatcher(model, max_rows=7, wait_s=0.005)
    xs = _inputs(30)
    _run_concurrently(len(xs), lambda i: (batcher.announce(), batcher.submit(xs[i])))
    assert max(model.sizes) <= 7 and sum(model.sizes) == sum(len(x) for x in xs)


def test_a_request_larger_than_max_rows_runs_alone() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_rows=4, wait_s=0.0)
    x = np.ones((10, 4))
    (scores, labels, _) = batcher.submit(x)
    assert scores is not None and labels is not None and len(labels) == 10 and model.sizes == [10]


def test_errors_reach_every_caller_of_the_batch_and_only_them() -> None:
    model = Model(delay_s=0.02, fail_on=99.0)
    batcher = MicroBatcher(model, max_rows=1000, wait_s=0.05)
    xs = _inputs(12)
    xs[5] = xs[5].copy()
    xs[5][0, 0] = 99.0  # poisons the batch it lands in
    outcome: dict[int, str] = {}

    def one(i: int) -> None:
        batcher.announce()
        try:
            batcher.submit(xs[i])
            outcome[i] = "ok"
        except RuntimeError as exc:
            assert "poisoned" in str(exc)
            outcome[i] = "error"

    _run_concurrently(len(xs), one)
    assert outcome[5] == "error" and len(outcome) == len(xs)
    failed = sum(v == "error" for v in outcome.values())
    assert failed > 1  # the others of its batch failed too
    # and the batcher keeps working afterwards
    (scores, _, _) = batcher.submit(xs[0])
    assert scores is not None and np.allclose(scores, xs[0] @ model.w)


def test_a_lone_caller_does_not_wait() -> None:
    """No announced company: the wait (here 200 ms) is skipped."""
    model = Model()
    batcher = MicroBatcher(model, max_rows=64, wait_s=0.2)
    x = np.ones((2, 4))
    start = time.perf_counter()
    for _ in range(20):
        batcher.announce()  # its own announcement only
        batcher.submit(x)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.01, per_call
    assert model.sizes == [2] * 20


def test_stale_announcements_are_forgotten() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_rows=64, wait_s=0.2, announce_ttl_s=0.05)
    batcher.announce()
    batcher.announce()  # a request that never arrives
    time.sleep(0.06)
    start = time.perf_counter()
    batcher.submit(np.ones((1, 4)))
    assert time.perf_counter() - start < 0.1


def test_a_leader_waits_for_announced_company() -> None:
    """Two announced requests, the second arriving 20 ms later: one model call for both."""
    model = Model()
    batcher = MicroBatcher(model, max_rows=64, wait_s=0.5)
    batcher.announce()
    batcher.announce()
    results: list[Outputs] = []
    t = threading.Thread(target=lambda: results.append(batcher.submit(np.ones((1, 4)))))
    t.start()
    time.sleep(0.02)
    results.append(batcher.submit(np.zeros((2, 4))))
    t.join()
    assert model.sizes == [3] and len(results) == 2


def test_bad_settings_raise() -> None:
    with pytest.raises(ConfigError, match="'max_rows'"):
        MicroBatcher(Model(), max_rows=0)
    with pytest.raises(ConfigError, match="'wait_s'"):
        MicroBatcher(Model(), wait_s=-1.0)


def test_wrong_row_count_is_an_error() -> None:
    batcher = MicroBatcher(lambda x: (x[:1],), max_rows=64, wait_s=0.05)
    errors: list[str] = []

    def one(_: int) -> None:
        try:
            batcher.submit(np.ones((2, 4)))
        except ValueError as exc:
            errors.append(str(exc))

    for _ in range(4):
        batcher.announce()
    _run_concurrently(4, one)
    assert len(errors) == 4 and all("one row per input row" in e for e in errors)
