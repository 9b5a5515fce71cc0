"""HttpModel against scripted HTTP answers (httpx.MockTransport): splitting, refusals, bad answers.

The real-server behaviour (a uvicorn gateway on loopback) is in
tests/integration/test_gateway_attacks.py; here each refusal kind is forced exactly.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from modelshield.errors import ConfigError, ModelCapabilityError, QueryRefused
from modelshield.models import HttpModel
from modelshield.models.remote import complete_top_k

INFO = {"model": {"name": "m"}, "input": {"shape": [2], "bounds": [0.0, 1.0], "max_batch": 3},
        "classes": ["a", "b", "c"], "output": "probabilities"}


def remote(handler: Callable[[httpx.Request, list[Any]], httpx.Response],
           **kw: Any) -> tuple[HttpModel, list[Any]]:
    seen: list[Any] = []

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=INFO)
        return handler(request, seen)

    return HttpModel("http://gw.test", api_key="msk_x_y", transport=httpx.MockTransport(route), **kw), seen


def probs(request: httpx.Request, seen: list[Any]) -> httpx.Response:
    rows = json.loads(request.content)["inputs"]
    seen.append((len(rows), request.headers.get("authorization")))
    out = [[r[0], r[1], 1.0 - r[0] - r[1]] for r in rows]
    return httpx.Response(200, json={"labels": [int(np.argmax(o)) for o in out], "probabilities": out})


def test_batches_are_split_to_max_batch_and_sent_with_the_bearer_key() -> None:
    model, seen = remote(probs)
    x = np.full((7, 2), 0.25, dtype=np.float32)
    out = model(x)
    assert out.shape == (7, 3) and np.allclose(out[:, 2], 0.5)
    assert [n for n, _ in seen] == [3, 3, 1] and {a for _, a in seen} == {"Bearer msk_x_y"}
    assert model.queries == 7 and model.requests == 3
    small, seen2 = remote(probs, batch_size=2)
    small(x)
    assert [n for n, _ in seen2] == [2, 2, 2, 1]


def test_a_413_halves_the_batch_and_retries() -> None:
    def picky(request: httpx.Request, seen: list[Any]) -> httpx.Response:
        if len(json.loads(request.content)["inputs"]) > 1:
            return httpx.Response(413, json={"detail": "the body must be at most 1024 bytes"})
        return probs(request, seen)

    model, seen = remote(picky)
    assert model(np.zeros((3, 2), dtype=np.float32)).shape == (3, 3)
    assert [n for n, _ in seen] == [1, 1, 1] and model.queries == 3


@pytest.mark.parametrize(("status", "body", "headers", "decision"), [
    (401, {"detail": "a valid API key is required"}, {}, "unauthenticated"),
    (403, {"detail": "the key k is blocked (monitor 'stateful' ...)"}, {}, "blocked"),
    (403, {"detail": "the key k (client) may not call 'predict'"}, {}, "forbidden"),
    (403, {"detail": "whatever", "decision": "quarantined"}, {}, "quarantined"),
    (422, {"detail": [{"loc": ["body", "inputs"], "msg": "inputs must lie in the bounds"}]}, {}, "invalid"),
    (429, {"detail": "the query budget of key k (5 queries) cannot cover 1 more"}, {"Retry-After": "3600"},
     "budget-exhausted"),
    (429, {"detail": "rate limit of 1 requests/s exceeded"}, {"Retry-After": "7"}, "rate-limited"),
    (500, None, {}, "server-error"),
    (503, {"detail": "not ready"}, {}, "server-error"),
])
def test_refusals_raise_query_refused_with_the_decision(status: int, body: Any, headers: dict[str, str],
                                                         decision: str) -> None:
    def refuse(request: httpx.Request, seen: list[Any]) -> httpx.Response:
        seen.append(1)
        if body is None:
            return httpx.Response(status, text="Internal Server Error", headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    model, seen = remote(refuse, max_wait_s=1.0)
    with pytest.raises(QueryRefused) as info:
        model(np.zeros((2, 2), dtype=np.float32))
    exc = info.value
    assert exc.status == status and exc.decision == decision and str(status) in str(exc)
    assert len(seen) == 1  # never retried: a 7 s Retry-After is beyond max_wait_s=1
    assert model.refusal is exc and model.queries == 0 and model.rows_sent == 2
    if "Retry-After" in headers:
        assert exc.retry_after_s == float(headers["Retry-After"])
    copy = pickle.loads(pickle.dumps(exc))  # crosses process boundaries (runners, pools)
    assert (copy.status, copy.decision, copy.detail) == (exc.status, exc.decision, exc.detail)


def test_a_short_rate_limit_is_waited_out_within_max_wait() -> None:
    def once(request: httpx.Request, seen: list[Any]) -> httpx.Response:
        seen.append(1)
        if len(seen) == 1:
            return httpx.Response(429, json={"detail": "rate limit exceeded"}, headers={"Retry-After": "0"})
        return probs(request, [])

    model, seen = remote(once, max_wait_s=0.5)
    assert model(np.zeros((1, 2), dtype=np.float32)).shape == (1, 3)
    assert len(seen) == 2 and model.queries == 1


def test_labels_and_top_k_answers() -> None:
    def labels(request: httpx.Request, seen: list[Any]) -> httpx.Response:
        n = len(json.loads(request.content)["inputs"])
        return httpx.Response(200, json={"labels": [1] * n, "classes": ["b"] * n})

    model, _ = remote(labels)
    out = model(np.zeros((4, 2), dtype=np.float32))
    assert out.dtype == np.int64 and out.tolist() == [1, 1, 1, 1]
    wrapped = model.as_model()
    assert wrapped.n_classes == 3 and wrapped.bounds == (0.0, 1.0)
    top = complete_top_k([[{"label": 2, "probability": 0.7}, {"label": 0, "probability": 0.2}]], 4)
    assert np.allclose(top, [[0.2, 0.05, 0.7, 0.05]])


def test_malformed_answers_and_settings_are_named() -> None:
    def short(request: httpx.Request, seen: list[Any]) -> httpx.Response:
        return httpx.Response(200, json={"labels": [0]})

    model, _ = remote(short)
    with pytest.raises(ModelCapabilityError, match="one row per input"):
        model(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ModelCapabilityError, match="shape"):
        model(np.zeros((2, 5), dtype=np.float32))
    for bad in ({"url": "ftp://x"}, {"url": "http://x", "timeout": -1}, {"url": "http://x", "batch_size": 0},
                {"url": "http://x", "max_body_bytes": 10}):
        with pytest.raises(ConfigError):
            HttpModel(bad.pop("url"), api_key=None, **bad)  # type: ignore[arg-type]
