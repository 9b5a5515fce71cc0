"""Structured logs of the gateway: one JSON object per line, one line per HTTP request.

:class:`JsonFormatter` renders any log record as ``{"time", "level", "logger", "message", ...}``
plus the request fields it carries (``request_id``, ``key_id``, ``method``, ``endpoint``,
``status``, ``decision``, ``rows``, ``latency_ms``). :class:`RequestLogMiddleware` (pure ASGI)
gives every request an id (the client's ``X-Request-ID`` when it is a short token, else a fresh
one, echoed in the response's ``X-Request-ID``), times it, and writes one line to the
``modelshield.serve.requests`` logger just before the answer's last bytes are sent (so a client
that has its answer can find its line); routes add what only they know
(key id, decision, rows) with :func:`note`. :func:`uvicorn_log_config` is the ``log_config`` that
makes uvicorn's own loggers use the same format (``log_format: json``; uvicorn's access log is then
left out, the middleware's line replacing it) or plain text.

Example:
    uvicorn.run(app, log_config=uvicorn_log_config("json", "info"), log_level="info")
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["REQUEST_FIELDS", "REQUEST_LOGGER", "JsonFormatter", "RequestLogMiddleware", "note",
           "uvicorn_log_config"]

REQUEST_LOGGER = "modelshield.serve.requests"
REQUEST_FIELDS = ("request_id", "key_id", "method", "endpoint", "status", "decision", "rows", "latency_ms",
                  "client")
"""Extra fields a log record may carry (``logger.info(..., extra={...})``); JSON lines include them."""
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "modelshield_request_log", default=None)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def note(**fields: Any) -> None:
    """Add fields (key_id, decision, rows, ...) to the current request's log line; no-op outside one.

    Call it from the request's own task (the route, not a thread-pool function).
    """
    current = _current.get()
    if current is not None:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, request fields.

    uvicorn's access records (``uvicorn.access``: client, method, path, HTTP version, status) are
    split into fields too. Exceptions go under ``exception`` as formatted text.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            out.update(client=client, method=method, endpoint=path, status=status)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class RequestLogMiddleware:
    """Pure-ASGI middleware: a request id per HTTP request and one log line when it is answered.

    The line goes to ``REQUEST_LOGGER`` at INFO (``log_level: info`` shows it) with the request's
    fields; routes add theirs through :func:`note`.
    """

    def __init__(self, app: ASGIApp, *, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger(REQUEST_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        supplied = _header(scope, b"x-request-id")
        request_id = supplied if supplied and _REQUEST_ID_RE.match(supplied) else uuid.uuid4().hex
        fields: dict[str, Any] = {"request_id": request_id, "method": scope.get("method"),
                                  "endpoint": scope.get("path")}
        token = _current.set(fields)
        logged = False

        async def send_with_id(message: Message) -> None:
            nonlocal logged
            kind = message.get("type")
            if kind == "http.response.start":
                fields["status"] = int(message.get("status", 0))
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message["headers"] = headers
            elif kind == "http.response.body" and not message.get("more_body", False) and not logged:
                logged = True  # logged before the last byte leaves: a client never outruns its log line
                fields["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
                if self.logger.isEnabledFor(logging.INFO):
                    self.logger.info("%s %s %s", fields.get("method"), fields.get("endpoint"),
                                     fields.get("status"), extra=fields)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not logged:
                fields.setdefault("status", 500)
                fields["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
                self.logger.exception("request failed", extra=dict(fields))
            raise
        finally:
            _current.reset(token)


def uvicorn_log_config(log_format: str, level: str = "warning") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping for uvicorn and modelshield's loggers.

    ``log_format``: ``"json"`` (:class:`JsonFormatter`) or ``"text"``. ``level``: the level of
    uvicorn's and modelshield's loggers (uvicorn's ``log_level`` also sets its own).
    """
    lvl = level.upper()
    formatter: dict[str, Any] = ({"()": f"{__name__}.JsonFormatter"} if log_format == "json" else
                                 {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            # JSON: RequestLogMiddleware writes a richer line per request than uvicorn's access log
            "uvicorn.access": {"handlers": ["default"], "propagate": False,
                               "level": "WARNING" if log_format == "json" else lvl},
            "modelshield": {"handlers": ["default"], "level": lvl, "propagate": False},
        },
    }


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None
