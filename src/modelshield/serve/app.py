"""The HTTP face of the gateway: ``create_app(target, config)`` builds a FastAPI app over a Gateway.

Endpoints: ``POST /v1/predict``; ``GET /v1/model``; ``GET /healthz``, ``/readyz``, ``/metrics``
(Prometheus text); admin ``GET|POST /v1/admin/keys``, ``DELETE /v1/admin/keys/{key_id}``,
``GET /v1/admin/audit``, ``GET /v1/admin/audit/verify``, ``GET /v1/admin/alerts``,
``GET /v1/admin/blocks``, ``DELETE /v1/admin/blocks/{key_id}``; the schema at ``/openapi.json``.
FastAPI is the ``serve`` extra's and is imported inside :func:`create_app` only; the app holds its
state (``app.state.gateway``), never module globals. Each request to a ``/v1`` endpoint is audited
(denials included) before its answer leaves.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# at runtime, and the classes they name are imported inside create_app.

import contextlib
import copy
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from modelshield import __version__
from modelshield.errors import ConfigError, ModelShieldError
from modelshield.serve.config import GatewayConfig
from modelshield.serve.gateway import Decision, Gateway
from modelshield.serve.inputs import FieldError, body_digest, retry_after, unique_keys
from modelshield.serve.keys import ENDPOINTS, NAME_PATTERN, OUTPUTS, ROLE_ENDPOINTS, ROLES, ApiKey, Policy
from modelshield.serve.logs import RequestLogMiddleware, note
from modelshield.targets import Target

__all__ = ["create_app", "require_serve_extra"]

_PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "required": ["inputs"],
        "properties": {
            "inputs": {"type": "array", "minItems": 1, "description": "A batch of rows, each of the model's "
                       "input shape (GET /v1/model), with finite numbers inside its bounds; for a text "
                       "model, a batch of non-empty strings.",
                       "items": {}},
            "dtype": {"type": "string", "enum": ["float32", "float64"], "default": "float32"},
        }}}},
}
_KEY_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "required": ["name", "role"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN},
            "role": {"type": "string", "enum": list(ROLES)},
            "policy": {"type": ["object", "null"], "additionalProperties": False,
                       "description": "endpoints (within the role's), output, top_k, rate_per_s, burst, "
                       "budget (null: unlimited); each field defaults to the role's",
                       "properties": {
                           "endpoints": {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "enum": list(ENDPOINTS)}},
                           "output": {"type": "string", "enum": list(OUTPUTS)},
                           "top_k": {"type": "integer", "minimum": 1},
                           "rate_per_s": {"type": "number", "exclusiveMinimum": 0},
                           "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                           "budget": {"type": ["integer", "null"], "minimum": 0}}},
        },
        "allOf": [{"if": {"properties": {"role": {"const": role}}},
                   "then": {"properties": {"policy": {"properties": {"endpoints": {
                       "items": {"enum": sorted(ROLE_ENDPOINTS[role])}}}}}}} for role in ROLES],
    }}},
}
_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}]
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def create_app(target: Target, config: GatewayConfig) -> Any:
    """Build the gateway's FastAPI app (a ``fastapi.FastAPI``) for one model.

    Opens the key store and the audit log of ``config`` now (so a bad state folder fails before
    serving); they are closed, with a final signed audit checkpoint, when the app shuts down.

    Raises:
        ConfigError / DataError: the state folder or audit log cannot be opened, or the model
            cannot be served.

    Example:
        app = create_app(load_target("digits-cnn", data=None, data_dir=None, arch=None, n=10),
                         load_config("gateway.yaml"))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    require_serve_extra()
    from fastapi import FastAPI, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.requests import ClientDisconnect

    gw = Gateway.open(target, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(gw.close)

    app = FastAPI(title="modelshield gateway", version=__version__, lifespan=lifespan,
                  description="Access-controlled, audited inference for one model. Send API keys as "
                              "'Authorization: Bearer <key>' (or 'X-API-Key').")
    app.state.gateway = gw
    app.add_middleware(RequestLogMiddleware)  # a request id and one structured log line per request

    def api_key(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.headers.get("x-api-key")

    async def refuse(key: ApiKey | None, path: str, d: Decision | FieldError, *, digest: str | None,
                     status: int | None = None, decision: str | None = None) -> Response:
        """Audit the refusal, count it, and render it (422 in FastAPI's shape, others as detail)."""
        if isinstance(d, FieldError):
            code, name, body = 422, "invalid", d.to_dict()
        else:
            code, name, body = d.status, d.decision, {"detail": d.detail}
        code, name = status or code, decision or name
        note(decision=name)
        await run_in_threadpool(gw.record, key, endpoint=path, status=code, decision=name,
                                input_sha256=digest)
        gw.metrics.observe(endpoint=path, status=code, decision=name, audited=1)
        headers = {}
        if isinstance(d, Decision) and d.retry_after_s is not None:
            headers["Retry-After"] = retry_after(d.retry_after_s)
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(body, status_code=code, headers=headers)

    async def guard(request: Request, endpoint: str) -> ApiKey | Response:
        token = api_key(request)

        def check() -> tuple[ApiKey | None, Decision]:  # one thread hop: admit may call the state store
            found = gw.authenticate(token)
            return found, gw.admit(found, endpoint)

        key, d = await run_in_threadpool(check)
        note(key_id=None if key is None else key.key_id)
        if d.allowed and key is not None:
            return key
        return await refuse(key, request.url.path, d, digest=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        """A parameter FastAPI refused (e.g. ``?start=x``): audited like every refusal, 401 first when
        the request holds no valid key (so parameters are not checked for anonymous callers)."""
        path = request.url.path
        key = await run_in_threadpool(gw.authenticate, api_key(request))
        if key is None:
            return await refuse(None, path, gw.admit(None, "predict"), digest=None)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(part) for part in first.get("loc", ())]
        msg = " ".join(str(first.get("msg", "is invalid")).split())
        detail = {"loc": loc, "type": str(first.get("type", "value_error")),
                  "msg": f"{'.'.join(loc[1:]) or 'a parameter'}: {msg}; got {first.get('input')!r}. Fix it."}
        await run_in_threadpool(gw.record, key, endpoint=path, status=422, decision="invalid",
                                input_sha256=None)
        gw.metrics.observe(endpoint=path, status=422, decision="invalid", audited=1)
        return JSONResponse({"detail": [detail]}, status_code=422)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it exceeds max_body_bytes (checked on Content-Length, then while read)."""
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def not_json(key: ApiKey, request: Request) -> Response | None:
        """415 (audited) when the request declares a Content-Type other than JSON (none: read as JSON)."""
        declared = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if declared == "application/json" or declared.endswith("+json"):
            return None
        return await refuse(key, request.url.path, Decision(
            status=415, decision="unsupported-media-type",
            detail=f"the body must be JSON; got Content-Type {declared[:60]!r}. Send Content-Type: "
                   "application/json"), digest=None)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        """The client closed the connection before its body was complete: audited (499, as nginx
        logs it), nothing to answer."""
        key = await run_in_threadpool(gw.authenticate, api_key(request))
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=499,
                                decision="client-disconnected", input_sha256=None)
        gw.metrics.observe(endpoint=request.url.path, status=499, decision="client-disconnected", audited=1)
        return Response(status_code=499)

    async def too_large(key: ApiKey, path: str) -> Response:
        return await refuse(key, path, Decision(status=413, decision="too-large",
                                          detail=f"the body must be at most {config.max_body_bytes} bytes; "
                                                 "split the batch"), digest=None)

    @app.post("/v1/predict", tags=["inference"], openapi_extra={"requestBody": _PREDICT_BODY,
                                                                 "security": _SECURITY})
    async def predict(request: Request) -> Response:
        """Labels (and, as the key's policy allows, rounded top-k or all probabilities) for a batch."""
        start = time.perf_counter()
        path = request.url.path
        key = await guard(request, "predict")
        if not isinstance(key, ApiKey):
            return key
        if (unsupported := await not_json(key, request)) is not None:
            return unsupported
        body = await read_body(request)
        if body is None:
            return await too_large(key, path)
        digest = body_digest(body)
        x = gw.parse(body)
        if isinstance(x, FieldError):
            return await refuse(key, path, x, digest=digest)

        def charge_and_answer() -> tuple[Decision | None, dict[str, Any] | Decision]:
            """One thread hop for the budget charge and the answer: (refusal to audit, None) or
            (None, answer or a monitor's already-audited block)."""
            charged = gw.charge(key, len(x))
            if not charged.allowed:
                return charged, charged
            return None, gw.predict(key, x, input_sha256=digest, endpoint=path)

        refused, answer = await run_in_threadpool(charge_and_answer)
        if refused is not None:
            return await refuse(key, path, refused, digest=digest)
        note(rows=len(x), decision="answered")
        if isinstance(answer, Decision):  # a monitor blocked the key on this request (already audited)
            note(decision=answer.decision)
            gw.metrics.observe(endpoint=path, status=answer.status, decision=answer.decision, audited=1)
            return JSONResponse({"detail": answer.detail}, status_code=answer.status)
        gw.metrics.observe(endpoint=path, status=200, decision="answered",
                           seconds=time.perf_counter() - start, rows=len(x), audited=1)
        return JSONResponse(answer)

    @app.get("/v1/model", tags=["inference"], openapi_extra={"security": _SECURITY})
    async def model_info(request: Request) -> Response:
        """What a request may hold (input shape, bounds, batch size) and the model's classes."""
        key = await guard(request, "predict")
        if not isinstance(key, ApiKey):
            return key
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None)
        return JSONResponse(gw.describe())

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> Response:
        """Readiness: model loaded, key store and audit log answering (503 otherwise)."""
        checks = gw.ready()
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus metrics (text exposition format 0.0.4)."""
        active = sum(1 for k in gw.keys.list() if k.active)
        return PlainTextResponse(gw.metrics.render(active_keys=active, ready=all(gw.ready().values()),
                                                   alerts=gw.state.alert_counts()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/admin/keys", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def list_keys(request: Request) -> Response:
        """Every key (ids, roles, policies, use; never secrets or hashes)."""
        key = await guard(request, "keys.list")
        if not isinstance(key, ApiKey):
            return key
        listed = [k.to_dict() for k in await run_in_threadpool(gw.keys.list)]
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None)
        return JSONResponse({"keys": listed})

    @app.post("/v1/admin/keys", tags=["admin"], status_code=201,
              openapi_extra={"requestBody": _KEY_BODY, "security": _SECURITY})
    async def create_key(request: Request) -> Response:
        """Create a key; the answer holds its secret, shown this once."""
        path = request.url.path
        key = await guard(request, "keys.manage")
        if not isinstance(key, ApiKey):
            return key
        if (unsupported := await not_json(key, request)) is not None:
            return unsupported
        body = await read_body(request)
        if body is None:
            return await too_large(key, path)
        digest = body_digest(body)
        try:
            req = json.loads(body, object_pairs_hook=unique_keys)
            if not isinstance(req, dict) or set(req) - {"name", "role", "policy"}:
                raise ValueError("expected an object with name, role and optional policy")
            policy = None if req.get("policy") is None else Policy.from_dict(
                {**_role_defaults(str(req.get("role"))), **req["policy"]})
            name, role = req.get("name"), str(req.get("role"))
            if not isinstance(name, str):
                raise ValueError(f"'name' must be a string naming the client; got {name!r}")
            key_id, secret = await run_in_threadpool(
                lambda: gw.keys.create(name=name, role=role, policy=policy))
        except (ValueError, TypeError, RecursionError, ModelShieldError) as exc:  # Recursion: deep nesting
            message = " ".join(str(exc).split())
            problem = FieldError(loc=(), message=message, kind="value_error")
            return await refuse(key, path, problem, digest=digest)
        made = gw.keys.get(key_id)
        await run_in_threadpool(gw.record, key, endpoint=path, status=201, decision="answered",
                                input_sha256=digest, extra={"created_key_id": key_id})
        shown = made.to_dict() if made else {"key_id": key_id}
        return JSONResponse({"key": secret, **shown}, status_code=201)

    @app.delete("/v1/admin/keys/{key_id}", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def revoke_key(key_id: str, request: Request) -> Response:
        """Revoke a key (its next request gets 401)."""
        path = request.url.path
        key = await guard(request, "keys.manage")
        if not isinstance(key, ApiKey):
            return key
        if gw.keys.get(key_id) is None:
            return await refuse(key, path, Decision(status=404, decision="not-found",
                                                    detail=f"no key has the id {key_id!r}"), digest=None)
        revoked = await run_in_threadpool(gw.keys.revoke, key_id)
        await run_in_threadpool(gw.record, key, endpoint=path, status=200, decision="answered",
                                input_sha256=None, extra={"revoked_key_id": key_id})
        return JSONResponse(revoked.to_dict())

    @app.get("/v1/admin/audit", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def read_audit(request: Request, start: int = 0, limit: int = 100) -> Response:
        """Audit records from seq ``start`` (at most ``limit``, up to 1000)."""
        key = await guard(request, "audit")
        if not isinstance(key, ApiKey):
            return key
        start, limit = min(max(0, start), 1 << 62), min(max(1, limit), 1000)  # SQLite integers: 64 bits
        records = await run_in_threadpool(lambda: gw.audit.records(start, start + limit))
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None, extra={"start": start, "limit": limit})
        return JSONResponse({"size": gw.audit.size(), "records": [r.to_dict() for r in records]})

    @app.get("/v1/admin/audit/verify", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def verify_audit(request: Request) -> Response:
        """Verify the whole audit chain, Merkle tree and signed checkpoints."""
        key = await guard(request, "audit")
        if not isinstance(key, ApiKey):
            return key
        report = await run_in_threadpool(gw.audit.verify)
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None, extra={"verified": report.ok})
        return JSONResponse(report.to_dict())

    @app.get("/v1/admin/alerts", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def read_alerts(request: Request,
                          key_id: str | None = Query(default=None, pattern=_KEY_ID_RE.pattern,
                                                     description="one key's alerts (16 hex digits)"),
                          after: int = 0, limit: int = 100) -> Response:
        """The live monitors' alerts with ids above ``after`` (at most ``limit``, up to 1000), oldest
        first; ``key_id`` keeps one key's (analyst or admin)."""
        key = await guard(request, "alerts")
        if not isinstance(key, ApiKey):
            return key
        after, limit = min(max(0, after), 1 << 62), min(max(1, limit), 1000)  # SQLite integers: 64 bits
        found = await run_in_threadpool(lambda: gw.alerts(key_id=key_id or None, after=after, limit=limit))
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None, extra={"key_id_filter": key_id, "after": after,
                                                          "limit": limit, "alerts": len(found)})
        return JSONResponse({"alerts": found, "monitors": list(gw.monitors.names)})

    @app.get("/v1/admin/blocks", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def list_blocks(request: Request) -> Response:
        """The keys blocked now by a monitor, with each block's reason (admin)."""
        key = await guard(request, "keys.manage")
        if not isinstance(key, ApiKey):
            return key
        blocks = await run_in_threadpool(gw.blocks)
        await run_in_threadpool(gw.record, key, endpoint=request.url.path, status=200, decision="answered",
                                input_sha256=None, extra={"blocks": len(blocks)})
        return JSONResponse({"blocks": blocks})

    @app.delete("/v1/admin/blocks/{key_id}", tags=["admin"], openapi_extra={"security": _SECURITY})
    async def unblock_key(key_id: str, request: Request) -> Response:
        """Lift a monitor's block on a key (404 when the key is unknown or not blocked; admin)."""
        path = request.url.path
        key = await guard(request, "keys.manage")
        if not isinstance(key, ApiKey):
            return key
        lifted = gw.keys.get(key_id) is not None and await run_in_threadpool(gw.unblock, key_id)
        if not lifted:
            return await refuse(key, path, Decision(status=404, decision="not-found",
                                                    detail=f"no blocked key has the id {key_id!r}; list them "
                                                           "with GET /v1/admin/blocks"), digest=None)
        await run_in_threadpool(gw.record, key, endpoint=path, status=200, decision="answered",
                                input_sha256=None, extra={"unblocked_key_id": key_id})
        return JSONResponse({"key_id": key_id, "unblocked": True})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "http", "scheme": "bearer", "description": "msk_<id>_<secret>"}}
            _document_refusals(schema, gw.spec)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app


def require_serve_extra() -> None:
    """Raise ConfigError naming the extra to install when FastAPI or uvicorn is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"modelshield serve: the gateway needs {' and '.join(missing)}; got "
                          f"{missing!r} not installed. Install the extra: pip install 'modelshield[serve]'.")


def _role_defaults(role: str) -> dict[str, Any]:
    from modelshield.serve.keys import default_policy

    return default_policy(role).to_dict()


_REFUSALS = {"401": "No valid API key (missing, unknown or revoked).",
             "403": "The key's role or policy forbids this endpoint, or a monitor blocked the key.",
             "429": "Over the key's rate limit or query budget; retry after Retry-After seconds.",
             "413": "The body is larger than max_body_bytes.",
             "415": "The body's Content-Type is not application/json.",
             "422": "The body or a parameter is invalid; detail names the field.",
             "404": "No such key (or no such block)."}
_DETAIL_SCHEMA = {"type": "object", "required": ["detail"], "properties": {"detail": {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {
        "type": "object", "required": ["loc", "msg", "type"],
        "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}}}}]}}}


def _document_refusals(schema: dict[str, Any], spec: object) -> None:
    """Document in the OpenAPI ``schema`` every refusal a keyed operation may answer (401, 403, 429;
    413 and 422 with a body or parameters; 404 with a key id in its path), and give ``/v1/predict``'s
    rows the model's shape and bounds, so that schema-valid requests are the accepted ones."""
    from modelshield.serve.inputs import InputSpec

    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            if not isinstance(op, dict) or not op.get("security"):
                continue
            codes = ["401", "403", "429"]
            codes += ["413", "415", "422"] if "requestBody" in op else ["422"] if op.get("parameters") else []
            codes += ["404"] if "{" in path else []
            for code in codes:
                op.setdefault("responses", {})[code] = {
                    "description": _REFUSALS[code],
                    "content": {"application/json": {"schema": _DETAIL_SCHEMA}}}
    predict = schema.get("paths", {}).get("/v1/predict", {}).get("post", {})
    if isinstance(spec, InputSpec) and "requestBody" in predict:
        body = copy.deepcopy(predict["requestBody"])  # FastAPI shares openapi_extra's dicts: copy, then edit
        inputs = body["content"]["application/json"]["schema"]["properties"]["inputs"]
        row: dict[str, Any] = {"type": "number", "minimum": spec.bounds[0], "maximum": spec.bounds[1]}
        for dim in reversed(spec.shape):
            row = {"type": "array", "minItems": dim, "maxItems": dim, "items": row}
        inputs.update(maxItems=spec.max_batch, items=row)
        predict["requestBody"] = body
