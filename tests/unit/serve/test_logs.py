"""Structured logs: one parseable JSON line per request, with the route's fields and a request id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from modelshield.serve.logs import (
    REQUEST_LOGGER,
    JsonFormatter,
    RequestLogMiddleware,
    note,
    uvicorn_log_config,
)


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    """The request logger's output, JSON-formatted, at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(REQUEST_LOGGER)
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield stream
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestLogMiddleware)

    @app.post("/v1/predict")
    async def predict() -> JSONResponse:
        note(key_id="0123456789abcdef", decision="answered", rows=3)
        return JSONResponse({"labels": [1, 2, 3]})

    @app.get("/boom")
    async def boom() -> JSONResponse:
        raise RuntimeError("kaput")

    return app


class AsgiClient:
    """The app called in-process over httpx's ASGI transport (starlette's AsgiClient would need the
    httpx2 package); ``post``/``get`` return httpx responses."""

    def __init__(self, app: FastAPI, *, raise_server_exceptions: bool = True) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_server_exceptions)

    def __enter__(self) -> AsgiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://gateway") as client:
                return await client.request(method, path, **kw)

        return asyncio.run(go())

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_json_line_per_request_with_the_routes_fields(captured: io.StringIO) -> None:
    with AsgiClient(_app()) as client:
        r = client.post("/v1/predict", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    (line,) = _lines(captured)
    assert line["logger"] == REQUEST_LOGGER and line["level"] == "info"
    assert {"time", "message"} <= set(line)
    assert line["request_id"] == "req-42" and line["endpoint"] == "/v1/predict" and line["method"] == "POST"
    assert line["status"] == 200 and line["decision"] == "answered" and line["rows"] == 3
    assert line["key_id"] == "0123456789abcdef"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0.0


def test_request_ids_are_generated_when_absent_or_unsafe(captured: io.StringIO) -> None:
    with AsgiClient(_app()) as client:
        a = client.post("/v1/predict")
        b = client.post("/v1/predict", headers={"X-Request-ID": "bad id\twith spaces"})
    ids = [str(line["request_id"]) for line in _lines(captured)]
    assert ids == [a.headers["x-request-id"], b.headers["x-request-id"]]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)


def test_a_failing_request_is_logged_with_its_exception(captured: io.StringIO) -> None:
    with AsgiClient(_app(), raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    lines = _lines(captured)
    assert len(lines) == 1 and lines[0]["status"] == 500 and lines[0]["level"] == "error"
    assert "kaput" in str(lines[0]["exception"])


def test_nothing_is_logged_below_info(captured: io.StringIO) -> None:
    logging.getLogger(REQUEST_LOGGER).setLevel(logging.WARNING)
    with AsgiClient(_app()) as client:
        client.post("/v1/predict")
    assert captured.getvalue() == ""


def test_uvicorn_log_config_is_valid_for_dictconfig() -> None:
    for fmt in ("json", "text"):
        cfg = uvicorn_log_config(fmt, "info")
        assert cfg["loggers"]["modelshield"]["level"] == "INFO"
    json_cfg = uvicorn_log_config("json", "info")
    assert json_cfg["formatters"]["default"]["()"].endswith("JsonFormatter")
    assert json_cfg["loggers"]["uvicorn.access"]["level"] == "WARNING"  # the middleware's line replaces it
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name in ("uvicorn", "uvicorn.access",
             "uvicorn.error", "modelshield") for lg in [logging.getLogger(name)]}
    try:
        logging.config.dictConfig(json_cfg)
        handler = logging.getLogger("modelshield").handlers[0]
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def test_json_formatter_splits_uvicorn_access_records() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/healthz", "1.1", 200), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["endpoint"] == "/healthz" and line["status"] == 200 and line["method"] == "GET"
    assert line["message"] == '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200'
