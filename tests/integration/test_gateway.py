"""The inference gateway against a real uvicorn server on loopback (started and stopped here).

The model is a small digits CNN (``cnn-8x8``) trained for a second and saved as a modelshield-v1
file, loaded through ``load_target`` (the gated loaders) on the ``digits`` data. The server runs in
a thread on a pre-bound free port; requests go over HTTP with httpx.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from testkit import gateway as support

from modelshield.errors import ConfigError
from modelshield.secure.audit import AuditLog
from modelshield.serve import GatewayConfig, KeyStore, Policy, create_app, load_config
from modelshield.targets import Target, load_target

MAX_BODY = 64 * 1024
MAX_BATCH = 32


@dataclass
class Server:
    """A gateway served by uvicorn in a thread; ``calls`` counts (path, status) of every /v1 request."""

    url: str
    state: Path
    target: Target
    keys: dict[str, str]
    thread: threading.Thread
    server: Any
    calls: Counter[tuple[str, int]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        r = httpx.request(method, self.url + path, headers=headers, timeout=10.0, **kw)
        if path.startswith("/v1/"):
            with self.lock:  # clients may run in threads
                self.calls[(path.split("?")[0], r.status_code)] += 1
        return r

    def predict(self, key: str | None, inputs: Any, **kw: Any) -> httpx.Response:
        return self.request("POST", "/v1/predict", key=key, json={"inputs": inputs}, **kw)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gateway")
    model_path = root / "digits-cnn.pt"
    support.train_digits_cnn(model_path)
    target = load_target(str(model_path), data="digits", data_dir=None, arch=None, n=64)
    config = GatewayConfig(state_dir=root / "state", max_body_bytes=MAX_BODY, max_batch=MAX_BATCH)
    with KeyStore.open(config.key_store) as store:
        made = {
            "client": store.create(name="app", role="client")[1],
            "analyst": store.create(name="analyst", role="analyst")[1],
            "admin": store.create(name="ops", role="admin")[1],
            "slow": store.create(name="slow", role="client", policy=Policy(rate_per_s=0.05, burst=2))[1],
            "small": store.create(name="small", role="client", policy=Policy(budget=5, burst=100))[1],
        }
    run = support.start_uvicorn(create_app(target, config), timeout_s=10)
    srv = Server(url=run.url, state=config.state_dir, target=target, keys=made, thread=run.thread,
                 server=run.server)
    try:
        yield srv
    finally:
        run.stop()


def _rows(target: Target, n: int) -> list[Any]:
    return target.x[:n].tolist()


# --- access control ---------------------------------------------------------------------------


def test_missing_and_wrong_keys_get_401(gateway: Server) -> None:
    rows = _rows(gateway.target, 1)
    r = gateway.predict(None, rows)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "API key" in r.json()["detail"]
    real = gateway.keys["client"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")  # right id, wrong secret
    for bad in ("nonsense", "msk_0000000000000000_" + "A" * 43, forged):
        assert gateway.predict(bad, rows).status_code == 401, bad
    assert gateway.predict(real, rows).status_code == 200


def test_revoked_key_gets_401(gateway: Server) -> None:
    admin = gateway.keys["admin"]
    made = gateway.request("POST", "/v1/admin/keys", key=admin, json={"name": "temp", "role": "client"})
    assert made.status_code == 201, made.text
    secret, key_id = made.json()["key"], made.json()["key_id"]
    assert secret.startswith(f"msk_{key_id}_") and len(secret) == 4 + 16 + 1 + 43  # 256 bits
    rows = _rows(gateway.target, 1)
    assert gateway.predict(secret, rows).status_code == 200
    assert gateway.request("DELETE", f"/v1/admin/keys/{key_id}", key=admin).json()["active"] is False
    assert gateway.predict(secret, rows).status_code == 401
    listed = gateway.request("GET", "/v1/admin/keys", key=admin).json()["keys"]
    assert any(k["key_id"] == key_id and not k["active"] for k in listed)
    assert secret not in json.dumps(listed)  # never the secret (and no hashes either)
    assert all("hash" not in json.dumps(k) for k in listed)


def test_keys_are_stored_only_as_hashes(gateway: Server) -> None:
    raw = (gateway.state / "keys.db").read_bytes()
    for secret in gateway.keys.values():
        assert secret.encode() not in raw and secret[21:].encode() not in raw


def test_roles_forbid_endpoints_with_403(gateway: Server) -> None:
    client, analyst, admin = (gateway.keys[r] for r in ("client", "analyst", "admin"))
    assert gateway.request("GET", "/v1/admin/audit", key=client).status_code == 403
    assert gateway.request("GET", "/v1/admin/keys", key=client).status_code == 403
    assert gateway.request("POST", "/v1/admin/keys", key=analyst,
                           json={"name": "x", "role": "admin"}).status_code == 403
    assert gateway.request("GET", "/v1/admin/keys", key=analyst).status_code == 200
    assert gateway.request("GET", "/v1/admin/audit?limit=2", key=analyst).status_code == 200
    assert gateway.request("GET", "/v1/admin/audit", key=admin).status_code == 200


def test_rate_limit_gives_429_with_retry_after(gateway: Server) -> None:
    key, rows = gateway.keys["slow"], _rows(gateway.target, 1)
    codes = [gateway.predict(key, rows).status_code for _ in range(2)]
    assert codes == [200, 200]  # the burst
    r = gateway.predict(key, rows)
    assert r.status_code == 429 and "rate limit" in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1  # rate 0.05/s: about 20 s until the next token


def test_budget_exhaustion_gives_429_with_retry_after(gateway: Server) -> None:
    key = gateway.keys["small"]  # budget 5 queries (rows)
    assert gateway.predict(key, _rows(gateway.target, 4)).status_code == 200
    r = gateway.predict(key, _rows(gateway.target, 2))
    assert r.status_code == 429 and "budget" in r.json()["detail"]
    assert int(r.headers["retry-after"]) == 3600
    assert gateway.predict(key, _rows(gateway.target, 1)).status_code == 200  # exactly 5 used
    assert gateway.predict(key, _rows(gateway.target, 1)).status_code == 429


# --- input validation -------------------------------------------------------------------------

ROW = [[[0.5] * 8 for _ in range(8)]]  # one (1, 8, 8) input
MALFORMED: dict[str, tuple[bytes, str]] = {
    "wrong shape": (json.dumps({"inputs": [[0.5] * 64]}).encode(), "shape"),
    "ragged rows": (json.dumps({"inputs": [ROW, [[[0.5] * 7]]]}).encode(), "shape"),
    "wrong dtype (strings)": (json.dumps({"inputs": [[[["0.5"] * 8] * 8]]}).encode(), "numbers"),
    "wrong dtype (null)": (json.dumps({"inputs": [[[[None] * 8] * 8]]}).encode(), "numbers"),
    "declared dtype": (json.dumps({"inputs": [ROW], "dtype": "int8"}).encode(), "dtype"),
    "out of bounds": (json.dumps({"inputs": [[[[1.5] * 8] * 8]]}).encode(), "bounds"),
    "NaN": (b'{"inputs": [[[' + b",".join([b"[" + b",".join([b"NaN"] * 8) + b"]"] * 8) + b"]]]}", "finite"),
    "Infinity": (json.dumps({"inputs": [[[[1e400] * 8] * 8]]}).encode(), "finite"),
    "too big a batch": (json.dumps({"inputs": [ROW] * (MAX_BATCH + 1)}).encode(), "at most"),
    "empty batch": (json.dumps({"inputs": []}).encode(), "non-empty"),
    "non-JSON": (b"inputs=0.5", "JSON"),
    "not an object": (b"[1, 2]", "object"),
    "missing inputs": (b"{}", "required"),
    "unknown field": (json.dumps({"inputs": [ROW], "debug": True}).encode(), "only"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_gets_422_naming_the_field(gateway: Server, case: str) -> None:
    body, words = MALFORMED[case]
    r = gateway.request("POST", "/v1/predict", key=gateway.keys["admin"], content=body,
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (case, r.text)
    detail = r.json()["detail"][0]
    assert detail["loc"][0] == "body" and words in detail["msg"], detail
    if case not in ("non-JSON", "not an object"):
        assert len(detail["loc"]) >= 2  # names the field (inputs, dtype, ...)


def test_oversized_body_gets_413_before_parsing(gateway: Server) -> None:
    key = gateway.keys["admin"]
    big = b'{"inputs": [' + b"0," * MAX_BODY + b"0]}"
    r = gateway.request("POST", "/v1/predict", key=key, content=big)
    assert r.status_code == 413
    chunks = (b"x" * 8192 for _ in range(MAX_BODY // 8192 + 2))  # chunked: no Content-Length to trust
    r = gateway.request("POST", "/v1/predict", key=key, content=chunks)
    assert r.status_code == 413


# --- answers ----------------------------------------------------------------------------------


def test_predictions_equal_the_models_labels(gateway: Server) -> None:
    target = gateway.target
    x = target.x[:MAX_BATCH]
    expected = target.adapted().predict(x).tolist()
    r = gateway.predict(gateway.keys["admin"], x.tolist())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == expected
    with torch.no_grad():
        probs = torch.softmax(target.module(x), dim=1).to(torch.float64)
    got = torch.tensor(body["probabilities"], dtype=torch.float64)
    assert torch.allclose(got, probs, atol=6e-5)  # rounded to 4 digits
    accuracy = (torch.tensor(expected) == target.y[:MAX_BATCH]).float().mean().item()
    assert accuracy > 0.7  # a model that learned something, so labels are not all one class


def test_output_detail_follows_the_keys_policy(gateway: Server) -> None:
    rows = _rows(gateway.target, 3)
    client = gateway.predict(gateway.keys["client"], rows).json()
    assert set(client) == {"labels", "classes"}  # label only
    analyst = gateway.predict(gateway.keys["analyst"], rows).json()
    assert "probabilities" not in analyst and len(analyst["top_k"]) == 3
    for labels, top in zip(analyst["labels"], analyst["top_k"], strict=True):
        assert len(top) == 3 and top[0]["label"] == labels
        ps = [t["probability"] for t in top]
        assert ps == sorted(ps, reverse=True) and all(round(p, 4) == p for p in ps)


def test_concurrent_clients_each_get_their_own_answers(gateway: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    target, key = gateway.target, gateway.keys["admin"]
    expected = target.adapted().predict(target.x).tolist()

    def one(i: int) -> tuple[int, list[int]]:
        r = gateway.predict(key, target.x[i:i + 2].tolist())
        return r.status_code, r.json().get("labels", [])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert [code for code, _ in answers] == [200] * 24
    assert [labels for _, labels in answers] == [expected[i:i + 2] for i in range(24)]


# --- operations -------------------------------------------------------------------------------


def test_health_ready_metrics_and_openapi(gateway: Server) -> None:
    assert gateway.request("GET", "/healthz").json() == {"status": "ok"}
    ready = gateway.request("GET", "/readyz")
    assert ready.status_code == 200 and all(ready.json()["checks"].values())
    metrics = gateway.request("GET", "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'modelshield_requests_total{endpoint="/v1/predict",status="200"}' in text
    assert "modelshield_predict_seconds_bucket{le=\"+Inf\"}" in text and "modelshield_ready 1" in text
    schema = gateway.request("GET", "/openapi.json").json()
    assert {"/v1/predict", "/healthz", "/readyz", "/metrics", "/v1/admin/keys"} <= set(schema["paths"])
    assert "inputs" in json.dumps(schema["paths"]["/v1/predict"]["post"]["requestBody"])
    assert gateway.request("GET", "/v1/model").status_code == 401
    model = gateway.request("GET", "/v1/model", key=gateway.keys["client"]).json()
    assert model["input"]["shape"] == [1, 8, 8] and model["input"]["max_batch"] == MAX_BATCH


def test_zz_audit_chain_verifies_with_one_record_per_request(gateway: Server) -> None:
    """Runs last: stop the server (a final checkpoint is signed), then read the log."""
    gateway.predict(gateway.keys["client"], _rows(gateway.target, 1))
    gateway.stop()
    with AuditLog.open(gateway.state / "audit.db") as log:
        report = log.verify()
        records = log.records()
    assert report.ok, report.to_dict()
    assert report.checkpoints >= 1 and report.latest_checkpoint == len(records)
    assert len(records) == sum(gateway.calls.values())  # every /v1 request, refusals included
    answered = [r for r in records if r.details["endpoint"] == "/v1/predict" and r.details["status"] == 200]
    assert len(answered) == gateway.calls[("/v1/predict", 200)]
    assert all(r.details["decision"] == "answered" and len(r.details["input_sha256"]) == 64
               and r.details["output"]["labels"] for r in answered)
    refused = Counter(r.details["decision"] for r in records)
    assert refused["unauthenticated"] >= 4 and refused["invalid"] >= len(MALFORMED)
    assert refused["rate-limited"] >= 1 and refused["budget-exhausted"] >= 2 and refused["too-large"] >= 2


# --- configuration ----------------------------------------------------------------------------


def test_bad_config_names_each_field_value_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("state_dir: ./s\nmax_batch: 0\nround_digits: nine\nbounds: [1, 0]\nmax_bodybytes: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    by_field = {f: next(ln for ln in lines if f"'{f}'" in ln) for f in
                ("max_batch", "round_digits", "bounds", "max_bodybytes")}
    assert "got 0" in by_field["max_batch"] and "max_batch: 256" in by_field["max_batch"]
    assert "'nine'" in by_field["round_digits"]
    assert "low < high" in by_field["bounds"]
    assert "not a setting" in by_field["max_bodybytes"]
    assert load_config_ok(tmp_path).max_batch == 256


def load_config_ok(tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "ok.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    return load_config(path)


def test_cli_bad_config_exits_2_and_keys_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelshield.cli.app import app

    bad = tmp_path / "gateway.yaml"
    bad.write_text("max_batch: -1\nlog_level: loud\n")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--model", "digits-cnn", "--config", str(bad)])
    assert result.exit_code == 2, result.output
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert "'state_dir' is required" in text and "'max_batch'" in text and "'log_level'" in text
    state = tmp_path / "state"
    made = runner.invoke(app, ["serve", "keys", "create", "--state", str(state), "--name", "cli",
                               "--role", "analyst", "--budget", "7", "--json"])
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)
    assert key["role"] == "analyst" and key["policy"]["budget"] == 7 and key["key"].startswith("msk_")
    revoked = runner.invoke(app, ["serve", "keys", "revoke", key["key_id"], "--state", str(state)])
    assert revoked.exit_code == 0, revoked.output
    listed = json.loads(runner.invoke(app, ["serve", "keys", "list", "--state", str(state), "--json"]).stdout)
    assert [k["active"] for k in listed["keys"]] == [False]
    with KeyStore.open(state / "keys.db") as store:
        assert store.authenticate(key["key"]) is None
