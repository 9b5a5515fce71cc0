"""A model served by a modelshield gateway, queried over HTTP as a black box.

:class:`HttpModel` sends batches to the gateway's ``POST /v1/predict`` (API key as
``Authorization: Bearer <key>``), split to the server's ``max_batch`` (read once from
``GET /v1/model``) and to a body-size limit, and returns what the key's policy lets the server
answer: full probabilities, top-k probabilities (completed to full rows, see below) or labels
only. ``HttpModel.as_model()`` wraps it in a :class:`~modelshield.models.CallableModel`, so every
query attack (Square, SimBA, HopSkipJump, Knockoff Nets, ...) takes a served model exactly as it
takes any black-box callable.

A refusal is final for an attack: 401, 403 (e.g. blocked by a live monitor), 413 on a single row,
422, 429 beyond the wait allowed, a 5xx or no answer at all raise
:class:`~modelshield.errors.QueryRefused`, which names the status, the gateway's decision and its
detail; the attack stops there instead of retrying. A 429 for the rate limit whose ``Retry-After``
fits in ``max_wait_s`` is waited out and retried.

httpx is the ``serve`` extra's and is imported on first use only.

Example:
    with HttpModel("http://127.0.0.1:8000", api_key="msk_...") as remote:
        result = Square(eps=0.1, max_queries=500)(remote.as_model(), x, y)
        remote.queries  # rows the gateway answered
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from modelshield.errors import ConfigError, ModelCapabilityError, QueryRefused
from modelshield.models._callable import CallableModel

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpModel", "complete_top_k"]

_FIXES = {
    "unauthenticated": "Check the API key (missing, unknown or revoked).",
    "forbidden": "Use a key whose role and policy allow /v1/predict.",
    "blocked": "The key is blocked: an admin must unblock it before it may query again.",
    "rate-limited": "Slow down, or allow a longer wait with HttpModel(..., max_wait_s=...).",
    "budget-exhausted": "The key's query budget is spent: ask an admin to raise it.",
    "too-large": "Lower HttpModel(..., max_body_bytes=...) to the server's limit.",
    "invalid": "Send rows of the model's input shape inside its bounds (GET /v1/model).",
    "server-error": "The gateway failed: see its log.",
    "unreachable": "Check that the gateway runs at this URL.",
}


def complete_top_k(top_k: list[list[Mapping[str, Any]]], n_classes: int) -> np.ndarray:
    """(N, C) rows from top-k answers: the k given probabilities, the rest of the mass spread evenly.

    The argmax of each row is the gateway's label; the missing classes share ``1 - sum(top-k)``
    (at least 0), so rows sum to one (up to the server's rounding). This is an approximation the
    attacker makes, not the model's answer: score-based attacks read it as probabilities.
    """
    out = np.zeros((len(top_k), n_classes), dtype=np.float64)
    for i, row in enumerate(top_k):
        given = np.zeros(n_classes, dtype=bool)
        for item in row:
            c = int(item["label"])
            out[i, c] = float(item["probability"])
            given[c] = True
        rest = int((~given).sum())
        if rest:
            out[i, ~given] = max(0.0, 1.0 - float(out[i, given].sum())) / rest
    return out


class HttpModel:
    """A gateway-served model as a callable ``x (N, *shape) -> probabilities (N, C) or labels (N,)``.

    Args:
        url: the gateway's base URL, e.g. ``"http://127.0.0.1:8000"``.
        api_key: the client's API key (sent as ``Authorization: Bearer``); None sends none.
        timeout: seconds per HTTP request.
        max_wait_s: the longest total wait for 429 rate-limit answers per call (their
            ``Retry-After``); 0 raises on the first 429. Budget exhaustion is never waited for.
        max_body_bytes: split a batch whose JSON body would be larger (the server's
            ``max_body_bytes``; a 413 also halves the batch and retries).
        batch_size: the most rows per request (None: the server's ``max_batch``); a client that
            sends small requests, as an application answering users one by one would.
        transport: an httpx transport (tests), else httpx's default.

    Attributes (counters, thread-safe):
        queries: rows the gateway answered.
        rows_sent: rows sent, refused ones included.
        requests: HTTP requests to ``/v1/predict``.
        refusal: the last :class:`QueryRefused` raised, or None.

    Raises (from calls):
        QueryRefused: the gateway refused a query or could not be reached.
        ModelCapabilityError: the gateway's answer is not of the shape expected.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        timeout: float = 30.0,
        max_wait_s: float = 0.0,
        max_body_bytes: int = 1 << 20,
        batch_size: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"HttpModel: 'url' must be an http:// or https:// URL; got {url!r}. Give the "
                              "gateway's base URL, e.g. http://127.0.0.1:8000.")
        for name, value in (("timeout", timeout), ("max_wait_s", max_wait_s)):
            if not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"HttpModel: {name!r} must be a number of seconds >= 0; got {value!r}. "
                                  f"Pass e.g. {name}=30.")
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
            raise ConfigError(f"HttpModel: 'max_body_bytes' must be an integer >= 1024; got "
                              f"{max_body_bytes!r}. Use the gateway's limit, e.g. 1048576.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"HttpModel: 'batch_size' must be a row count >= 1 or None; got "
                              f"{batch_size!r}. Pass e.g. batch_size=16, or None for the server's max_batch.")
        self.batch_size = batch_size
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_wait_s = float(max_wait_s)
        self.max_body_bytes = max_body_bytes
        self._api_key = api_key
        self._transport = transport
        self._http: httpx.Client | None = None
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.queries = 0
        self.rows_sent = 0
        self.requests = 0
        self.refusal: QueryRefused | None = None

    def __repr__(self) -> str:
        return f"HttpModel({self.url!r}, queries={self.queries})"

    # --- connection ---------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                import httpx

                headers = {"Content-Type": "application/json"}
                if self._api_key is not None:
                    headers["Authorization"] = f"Bearer {self._api_key}"
                self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout,
                                          transport=self._transport)
            return self._http

    def close(self) -> None:
        """Close the HTTP connection pool (a later call opens a new one)."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def __enter__(self) -> HttpModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the server accepts ----------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """The gateway's ``GET /v1/model`` answer (fetched once): input shape, bounds, max batch,
        classes and whether the model answers probabilities."""
        if self._info is None:
            r = self._send("GET", "/v1/model", None, rows=0)
            info = r.json()
            if not isinstance(info, dict) or not isinstance(info.get("input"), dict):
                raise ModelCapabilityError(f"HttpModel: GET {self.url}/v1/model must answer an object with "
                                           f"'input'; got {str(info)[:80]!r}. Point the URL at a modelshield "
                                           "gateway.")
            self._info = info
        return self._info

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.info["input"]["shape"])

    @property
    def bounds(self) -> tuple[float, float]:
        lo, hi = self.info["input"]["bounds"]
        return float(lo), float(hi)

    @property
    def max_batch(self) -> int:
        return int(self.info["input"]["max_batch"])

    @property
    def n_classes(self) -> int | None:
        """The class count when the gateway names its classes, else None."""
        classes = self.info.get("classes")
        return len(classes) if isinstance(classes, list) and classes else None

    def as_model(self, *, budget: int | None = None, n_classes: int | None = None) -> CallableModel:
        """This gateway as a :class:`CallableModel` (bounds and class count from ``GET /v1/model``).

        ``budget`` caps the queries the attack may spend on our side (the gateway keeps its own).
        With labels-only keys the class count must be known: the gateway's class list, else
        ``n_classes``.
        """
        return CallableModel(self, bounds=self.bounds, n_classes=n_classes or self.n_classes, budget=budget)

    # --- queries --------------------------------------------------------------------------------
    def __call__(self, x: Any) -> np.ndarray:
        """Answer a batch: (N, C) float64 probabilities, or (N,) int64 labels for label-only keys.

        The batch is sent in requests of at most ``max_batch`` (or ``batch_size``) rows and
        ``max_body_bytes``.
        """
        arr = np.asarray(x, dtype=np.float32)
        shape = self.input_shape
        if arr.shape[1:] != shape:
            if arr.shape == shape:
                arr = arr[None]
            else:
                dims = ", ".join(map(str, shape))
                raise ModelCapabilityError(f"HttpModel: inputs must have shape (N, {dims}) as the gateway "
                                           f"serves; got {arr.shape}. Reshape the batch.")
        step = self.max_batch if self.batch_size is None else min(self.batch_size, self.max_batch)
        parts = [self._predict(arr[i:i + step]) for i in range(0, len(arr), step)]
        if any(p.ndim != parts[0].ndim for p in parts):
            raise ModelCapabilityError("HttpModel: the gateway answered probabilities for some requests and "
                                       "labels for others; got mixed answers. Use one key with one policy.")
        return np.concatenate(parts)

    def _predict(self, chunk: np.ndarray) -> np.ndarray:
        body = json.dumps({"inputs": chunk.tolist()}).encode()
        if len(body) > self.max_body_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            return np.concatenate([self._predict(chunk[:half]), self._predict(chunk[half:])])
        r = self._send("POST", "/v1/predict", body, rows=len(chunk))
        if r.status_code == 413 and len(chunk) > 1:  # the server's limit is below ours
            half = len(chunk) // 2
            return np.concatenate([self._predict(chunk[:half]), self._predict(chunk[half:])])
        if r.status_code != 200:
            raise self._refused(r)
        with self._lock:
            self.queries += len(chunk)
        return self._answer(r.json(), len(chunk))

    def _send(self, method: str, path: str, body: bytes | None, *, rows: int) -> httpx.Response:
        """One request, waiting out 429 rate limits up to ``max_wait_s`` in all; non-2xx of another
        kind are returned (POST) or raised (GET)."""
        import httpx

        client = self._client()
        waited = 0.0
        while True:
            with self._lock:
                self.requests += path == "/v1/predict"
                self.rows_sent += rows
            try:
                r = client.request(method, path, content=body)
            except httpx.TransportError as exc:
                raise self._remember(QueryRefused(
                    f"HttpModel: the gateway at {self.url} must answer {method} {path}; got no answer "
                    f"({type(exc).__name__}: {exc}). {_FIXES['unreachable']}",
                    status=None, decision="unreachable", detail=str(exc))) from exc
            wait = _retry_after(r)
            if (r.status_code == 429 and _decision(r) == "rate-limited" and wait is not None
                    and waited + wait <= self.max_wait_s):
                time.sleep(wait)
                waited += wait
                continue
            if r.status_code >= 300 and (method == "GET" or r.status_code != 413):
                raise self._refused(r)
            return r

    def _refused(self, r: httpx.Response) -> QueryRefused:
        decision = _decision(r)
        detail = _detail(r)
        path = r.request.url.path if r.request is not None else "?"
        return self._remember(QueryRefused(
            f"HttpModel: the gateway at {self.url} must answer {r.request.method} {path}; got "
            f"{r.status_code} ({decision}): {detail}. {_FIXES.get(decision, 'Stop querying.')}",
            status=r.status_code, decision=decision, detail=detail, retry_after_s=_retry_after(r)))

    def _remember(self, exc: QueryRefused) -> QueryRefused:
        with self._lock:
            self.refusal = exc
        return exc

    def _answer(self, payload: Any, n: int) -> np.ndarray:
        if not isinstance(payload, dict) or not isinstance(payload.get("labels"), list):
            raise ModelCapabilityError(f"HttpModel: /v1/predict must answer an object with 'labels'; got "
                                       f"{str(payload)[:80]!r}. Point the URL at a modelshield gateway.")
        if "probabilities" in payload:
            out = np.asarray(payload["probabilities"], dtype=np.float64)
        elif "top_k" in payload and self.n_classes is not None:
            out = complete_top_k(payload["top_k"], self.n_classes)
        else:
            out = np.asarray(payload["labels"], dtype=np.int64)
        if out.shape[0] != n:
            raise ModelCapabilityError(f"HttpModel: the gateway must answer one row per input; got "
                                       f"{out.shape[0]} for {n} inputs. Check the gateway's version.")
        return out


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return " ".join(r.text.split())[:300]
    if isinstance(body, dict):
        detail = body.get("detail", body)
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # 422: FastAPI's shape
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)[:300]
        return str(detail)[:300]
    return str(body)[:300]


def _decision(r: httpx.Response) -> str:
    """The gateway's decision name: the body's ``decision`` when it gives one, else read from the
    status and detail."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("decision"), str):
        return str(body["decision"])
    detail = _detail(r).lower()
    code = r.status_code
    if code == 401:
        return "unauthenticated"
    if code == 403:
        return "blocked" if "block" in detail else "forbidden"
    if code == 413:
        return "too-large"
    if code == 422:
        return "invalid"
    if code == 429:
        return "budget-exhausted" if "budget" in detail else "rate-limited"
    return "server-error" if code >= 500 else f"http-{code}"


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None
