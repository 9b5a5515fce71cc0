"""Two gateway replicas of one model sharing one Redis (a real redis-server) and one state folder.

A client must not multiply its rate limit or query budget by spreading requests over replicas, and
a block set through one replica holds on the other. Each replica is a uvicorn server in a thread on
its own free loopback port (as in test_gateway.py), with its own Gateway and Redis connection
pool; they share keys.db, the audit log and the Redis namespace of the model's digest.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from testkit import gateway as support

from modelshield.secure.audit import AuditLog
from modelshield.serve import GatewayConfig, KeyStore, Policy, create_app
from modelshield.serve.logs import REQUEST_LOGGER, JsonFormatter
from modelshield.serve.store import RedisState
from modelshield.targets import Target, load_target


@dataclass
class Replica:
    url: str
    app: Any
    run: Any  # testkit.gateway.Uvicorn

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    def predict(self, key: str, rows: list[Any], **kw: Any) -> httpx.Response:
        return httpx.post(self.url + "/v1/predict", json={"inputs": rows},
                          headers={"Authorization": f"Bearer {key}", **kw.pop("headers", {})}, timeout=10.0)

    def stop(self) -> None:
        self.run.stop()


def _start(target: Target, config: GatewayConfig) -> Replica:
    app = create_app(target, config)
    run = support.start_uvicorn(app, timeout_s=10)
    return Replica(url=run.url, app=app, run=run)


@dataclass
class Cluster:
    a: Replica
    b: Replica
    target: Target
    keys: dict[str, str]
    ids: dict[str, str]
    state_dir: Path

    def rows(self, n: int = 1) -> list[Any]:
        return self.target.x[:n].tolist()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    support.train_digits_cnn(root / "digits-cnn.pt")
    target = load_target(str(root / "digits-cnn.pt"), data="digits", data_dir=None, arch=None, n=16)
    config = GatewayConfig(state_dir=root / "state", state_store=redis_url, max_batch=8)
    made: dict[str, tuple[str, str]] = {}
    with KeyStore.open(config.key_store) as store:
        made["budget"] = store.create(name="budget", role="client",
                                      policy=Policy(budget=13, rate_per_s=1000.0, burst=1000))
        made["rate"] = store.create(name="rate", role="client",
                                    policy=Policy(budget=None, rate_per_s=0.01, burst=4))
        made["victim"] = store.create(name="victim", role="client",
                                      policy=Policy(budget=None, rate_per_s=1000.0, burst=1000))
        made["admin"] = store.create(name="ops", role="admin")
    a = _start(target, config)
    try:
        b = _start(target, config)
    except BaseException:
        a.stop()
        raise
    try:
        yield Cluster(a=a, b=b, target=target, keys={k: v[1] for k, v in made.items()},
                      ids={k: v[0] for k, v in made.items()}, state_dir=config.state_dir)
    finally:
        b.stop()
        a.stop()


def test_replicas_share_one_redis_namespace(cluster: Cluster) -> None:
    sa, sb = cluster.a.gateway.state, cluster.b.gateway.state
    assert isinstance(sa, RedisState) and isinstance(sb, RedisState)
    assert sa is not sb and sa.namespace == sb.namespace
    assert sa.namespace == cluster.a.gateway.artifact.sha256[:16]  # the model's digest


def test_budget_holds_across_replicas_under_concurrency(cluster: Cluster) -> None:
    """8 threads, each alternating replicas, send 1-row requests: exactly the budget (13) is answered."""
    key, rows = cluster.keys["budget"], cluster.rows(1)
    statuses: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(5):
            replica = cluster.a if (i + j) % 2 == 0 else cluster.b
            r = replica.predict(key, rows)
            with lock:
                statuses[("a" if replica is cluster.a else "b", r.status_code)] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    answered = statuses[("a", 200)] + statuses[("b", 200)]
    assert answered == 13, statuses
    assert statuses[("a", 200)] > 0 and statuses[("b", 200)] > 0  # both replicas answered some
    assert statuses[("a", 429)] + statuses[("b", 429)] == 40 - 13
    kid = cluster.ids["budget"]
    assert cluster.a.gateway.state.used(kid) == cluster.b.gateway.state.used(kid) == 13
    # the counter of record is Redis's, not the shared keys.db (which would share it by itself)
    key_row = cluster.a.gateway.keys.get(kid)
    assert key_row is not None and key_row.used == 0
    refused = cluster.b.predict(key, rows)
    assert refused.status_code == 429 and "budget" in refused.json()["detail"]


def test_a_batch_is_charged_whole_or_not_at_all_across_replicas(cluster: Cluster) -> None:
    admin = cluster.keys["admin"]
    with KeyStore.open(cluster.state_dir / "keys.db") as store:
        kid, key = store.create(name="batches", role="client", policy=Policy(budget=10, burst=100))
    assert cluster.a.predict(key, cluster.rows(6)).status_code == 200
    assert cluster.b.predict(key, cluster.rows(6)).status_code == 429  # 6 + 6 > 10: refused whole
    assert cluster.b.predict(key, cluster.rows(4)).status_code == 200
    assert cluster.a.predict(key, cluster.rows(1)).status_code == 429
    assert cluster.a.gateway.state.used(kid) == 10
    assert admin  # the admin key is used by the block test


def test_rate_limit_holds_across_replicas(cluster: Cluster) -> None:
    """Burst 4 at a negligible refill: alternating replicas, 4 of 10 requests are answered, no more."""
    key, rows = cluster.keys["rate"], cluster.rows(1)
    codes = [(cluster.a if i % 2 == 0 else cluster.b).predict(key, rows).status_code for i in range(10)]
    assert codes[:4] == [200] * 4 and codes[4:] == [429] * 6, codes
    r = cluster.a.predict(key, rows)
    assert r.status_code == 429 and float(r.headers["retry-after"]) > 1


def test_a_block_set_on_one_replica_holds_on_the_other(cluster: Cluster) -> None:
    key, kid, admin = cluster.keys["victim"], cluster.ids["victim"], cluster.keys["admin"]
    rows = cluster.rows(1)
    assert cluster.b.predict(key, rows).status_code == 200
    cluster.a.gateway.state.block(kid, reason="monitor 'stateful' raised alert 1")
    refused = cluster.b.predict(key, rows)
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert "blocked" in detail and "stateful" in detail and f"DELETE /v1/admin/blocks/{kid}" in detail
    assert cluster.a.predict(key, rows).status_code == 403
    listed = httpx.get(cluster.b.url + "/v1/admin/blocks", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200 and [b["key_id"] for b in listed.json()["blocks"]] == [kid]
    lifted = httpx.delete(cluster.b.url + f"/v1/admin/blocks/{kid}",
                          headers={"Authorization": f"Bearer {admin}"})
    assert lifted.status_code == 200, lifted.text
    assert cluster.a.predict(key, rows).status_code == 200  # lifted on B, seen by A


def test_alerts_from_either_replica_share_one_sequence(cluster: Cluster) -> None:
    sa, sb = cluster.a.gateway.state, cluster.b.gateway.state
    i = sa.add_alert({"key_id": cluster.ids["victim"], "monitor": "prada", "score": 0.9})
    j = sb.add_alert({"key_id": cluster.ids["victim"], "monitor": "prada", "score": 0.8})
    assert j > i and [x["id"] for x in sb.alerts(after=i - 1)] == [i, j]
    assert sa.alert_counts()["prada"] >= 2


def test_each_request_logs_one_json_line(cluster: Cluster) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(REQUEST_LOGGER)
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        r = cluster.a.predict(cluster.keys["victim"], cluster.rows(3),
                              headers={"X-Request-ID": "replica-a-1"})
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    assert r.status_code == 200 and r.headers["x-request-id"] == "replica-a-1"
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    mine = [x for x in lines if x.get("request_id") == "replica-a-1"]
    assert len(mine) == 1, lines
    (line,) = mine
    assert line["key_id"] == cluster.ids["victim"] and line["decision"] == "answered" and line["rows"] == 3
    assert line["status"] == 200 and line["endpoint"] == "/v1/predict" and line["latency_ms"] > 0


def test_an_unreachable_state_store_fails_at_start(cluster: Cluster, tmp_path: Path) -> None:
    from modelshield.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens
    config = GatewayConfig(state_dir=tmp_path / "state", state_store=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ConfigError, match="'state_store' must be a reachable Redis server"):
        create_app(cluster.target, config)


def test_zz_the_shared_audit_chain_verifies(cluster: Cluster) -> None:
    """Both replicas appended to one audit log; its chain verifies (read after the requests above)."""
    with AuditLog.open(str(cluster.state_dir / "audit.db")) as log:
        assert log.verify().ok
        assert log.size() >= 40 + 10 + 5
