"""SharedState: the same contract for LocalState (SQLite + memory) and RedisState (a real redis-server).

The Redis server comes from the session fixture ``redis_url`` (tests/conftest.py); each test takes
a fresh namespace, so tests never see each other's keys.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelshield.errors import ConfigError
from modelshield.serve.keys import KeyStore, Policy
from modelshield.serve.store import LocalState, RedisState, SharedState, open_state, redact_url

Backend = tuple[SharedState, KeyStore, Path]


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """(state, its key store, state_dir) for each backend."""
    keys = KeyStore.open(tmp_path / "keys.db")
    if request.param == "local":
        state: SharedState = open_state(None, state_dir=tmp_path, keys=keys)
    else:
        url = request.getfixturevalue("redis_url")
        state = open_state(url, state_dir=tmp_path, namespace=uuid.uuid4().hex[:16])
    try:
        yield state, keys, tmp_path
    finally:
        state.close()
        keys.close()


def _key(keys: KeyStore, budget: int | None) -> str:
    return keys.create(name="c", role="client", policy=Policy(budget=budget, burst=100))[0]


def test_both_backends_satisfy_the_protocol(backend: Backend) -> None:
    state, _, _ = backend
    assert isinstance(state, SharedState)
    assert isinstance(state, LocalState | RedisState)


def test_token_bucket_grants_burst_then_waits(backend: Backend) -> None:
    state, _, _ = backend
    waits = [state.take_token("k1", rate_per_s=2.0, burst=3) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.0 < waits[3] <= 0.5 + 1e-6 and 0.0 < waits[4] <= 0.5 + 1e-6  # one token per 0.5 s
    assert state.take_token("k2", rate_per_s=2.0, burst=3) == 0.0  # buckets are per key
    time.sleep(0.55)
    assert state.take_token("k1", rate_per_s=2.0, burst=3) == 0.0  # refilled


def test_token_bucket_is_exact_under_concurrency(backend: Backend) -> None:
    """16 threads race for a bucket of 50 at a negligible refill: exactly 50 are granted."""
    state, _, _ = backend
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        n = sum(state.take_token("race", rate_per_s=1e-3, burst=50) == 0.0 for _ in range(10))
        with lock:
            granted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50


def test_budget_charges_up_to_the_budget_and_never_beyond(backend: Backend) -> None:
    state, keys, _ = backend
    kid = _key(keys, budget=10)
    assert state.used(kid) == 0
    assert state.charge(kid, 4, budget=10)
    assert state.charge(kid, 6, budget=10)
    assert state.used(kid) == 10
    assert not state.charge(kid, 1, budget=10)
    assert state.charge(kid, 0, budget=10)  # nothing more to charge is always fine
    assert state.used(kid) == 10


def test_budget_refuses_a_batch_that_does_not_fit_whole(backend: Backend) -> None:
    state, keys, _ = backend
    kid = _key(keys, budget=5)
    assert state.charge(kid, 3, budget=5)
    assert not state.charge(kid, 3, budget=5)  # 3 + 3 > 5: refused, nothing charged
    assert state.used(kid) == 3
    assert state.charge(kid, 2, budget=5)


def test_unlimited_budget_counts_use(backend: Backend) -> None:
    state, keys, _ = backend
    kid = _key(keys, budget=None)
    for _ in range(3):
        assert state.charge(kid, 1000, budget=None)
    assert state.used(kid) == 3000


def test_budget_is_exact_under_concurrency(backend: Backend) -> None:
    state, keys, _ = backend
    kid = _key(keys, budget=37)
    ok: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        got = [state.charge(kid, 1, budget=37) for _ in range(10)]
        with lock:
            ok.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ok) == 37 and state.used(kid) == 37


def test_bad_charge_arguments_raise(backend: Backend) -> None:
    state, keys, _ = backend
    kid = _key(keys, budget=5)
    with pytest.raises(ConfigError, match="'rows' must be an int >= 0"):
        state.charge(kid, -1, budget=5)
    with pytest.raises(ConfigError, match="'budget'"):
        state.charge(kid, 1, budget=-3)


def test_block_until_unblocked(backend: Backend) -> None:
    state, _, _ = backend
    assert state.blocked("k") is None
    assert not state.unblock("k")
    state.block("k", reason="stateful: 31 near-duplicate queries")
    assert state.blocked("k") == "stateful: 31 near-duplicate queries"
    assert state.blocked("other") is None
    assert state.unblock("k")
    assert state.blocked("k") is None


def test_block_with_ttl_expires(backend: Backend) -> None:
    state, _, _ = backend
    state.block("k", reason="r", seconds=0.4)
    assert state.blocked("k") == "r"
    time.sleep(0.5)
    assert state.blocked("k") is None


def test_throttle_factor_expires(backend: Backend) -> None:
    state, _, _ = backend
    assert state.throttle_factor("k") == 1.0
    state.throttle("k", factor=10.0, seconds=0.4)
    assert state.throttle_factor("k") == 10.0
    assert state.throttle_factor("other") == 1.0
    time.sleep(0.5)
    assert state.throttle_factor("k") == 1.0
    with pytest.raises(ConfigError, match="'factor'"):
        state.throttle("k", factor=0.0, seconds=1.0)


def test_gate_combines_block_throttle_and_bucket(backend: Backend) -> None:
    state, _, _ = backend
    assert state.gate("g", rate_per_s=1e-3, burst=20) == (None, 1.0, 0.0)
    state.throttle("g", factor=10.0, seconds=60.0)
    # throttled 10x: the bucket shrinks to max(1, 20 // 10) = 2 tokens
    first, second, third = (state.gate("g", rate_per_s=1e-3, burst=20) for _ in range(3))
    assert first == second == (None, 10.0, 0.0)
    assert third[0] is None and third[1] == 10.0 and third[2] > 1000.0  # rate 1e-4/s: a long wait
    state.block("g", reason="blacklight")
    assert state.gate("g", rate_per_s=1e-3, burst=20) == ("blacklight", 1.0, 0.0)
    state.unblock("g")
    assert state.gate("h", rate_per_s=5.0, burst=1)[2] == 0.0
    assert 0.0 < state.gate("h", rate_per_s=5.0, burst=1)[2] <= 0.2 + 1e-6


def test_alerts_get_increasing_ids_and_filter(backend: Backend) -> None:
    state, _, _ = backend
    ids = [state.add_alert({"key_id": k, "monitor": m, "score": s, "threshold": 0.5, "message": "x"})
           for k, m, s in (("a", "stateful", 0.9), ("b", "prada", 0.7), ("a", "blacklight", float("nan")),
                           ("a", "stateful", 1.0))]
    assert ids == sorted(ids) and len(set(ids)) == 4
    everything = state.alerts()
    assert [a["id"] for a in everything] == ids
    assert everything[2]["score"] is None  # NaN stored as null: strict JSON
    assert everything[0]["monitor"] == "stateful" and isinstance(everything[0]["time"], float)
    assert [a["id"] for a in state.alerts(key_id="a")] == [ids[0], ids[2], ids[3]]
    assert [a["id"] for a in state.alerts(after=ids[1])] == ids[2:]
    assert [a["id"] for a in state.alerts(key_id="a", after=ids[0], limit=1)] == [ids[2]]
    assert state.alerts(key_id="nobody") == [] and state.alerts(key_id="' OR 1=1 --") == []
    assert state.alert_counts() == {"stateful": 2, "prada": 1, "blacklight": 1}


def test_alerts_accept_numpy_scalars(backend: Backend) -> None:
    import numpy as np

    state, _, _ = backend
    i = state.add_alert({"key_id": "k", "detector": "PRADA", "score": np.float32(0.25),
                         "queries": np.int64(7)})
    (got,) = state.alerts(key_id="k")
    assert got["id"] == i and got["score"] == 0.25 and got["queries"] == 7
    assert state.alert_counts() == {"PRADA": 1}


def test_bad_key_id_is_refused(backend: Backend) -> None:
    state, _, _ = backend
    with pytest.raises(ConfigError, match="'key_id'"):
        state.block("a:b", reason="r")


def test_local_blocks_and_alerts_survive_a_restart(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.block("k", reason="blacklight")
    state.add_alert({"key_id": "k", "monitor": "blacklight"})
    state.close()
    state.close()  # idempotent
    again = LocalState(tmp_path)
    try:
        assert again.blocked("k") == "blacklight"
        assert again.alert_counts() == {"blacklight": 1}
        assert (tmp_path / "alerts.db").exists()
    finally:
        again.close()


def test_local_budget_is_the_key_stores(tmp_path: Path) -> None:
    """LocalState charges keys.db: the key listing shows the use, and another process's store agrees."""
    with KeyStore.open(tmp_path / "keys.db") as keys:
        kid = _key(keys, budget=3)
    state = open_state(None, state_dir=tmp_path)
    try:
        assert state.charge(kid, 2, budget=3)
        with KeyStore.open(tmp_path / "keys.db") as other:
            found = other.get(kid)
            assert found is not None and found.used == 2
            assert other.charge(kid, 1)
        assert not state.charge(kid, 1, budget=3)
        assert not state.charge("0123456789abcdef", 1, budget=None)  # not a key of the store
    finally:
        state.close()


def test_redis_replicas_share_state(redis_url: str, tmp_path: Path) -> None:
    """Two clients on one namespace see one budget, bucket, block and alert sequence."""
    ns = uuid.uuid4().hex[:16]
    a, b = RedisState(redis_url, namespace=ns), RedisState(redis_url, namespace=ns)
    other = RedisState(redis_url, namespace=uuid.uuid4().hex[:16])
    try:
        assert a.charge("k", 3, budget=5) and not b.charge("k", 3, budget=5) and b.charge("k", 2, budget=5)
        assert a.used("k") == b.used("k") == 5 and other.used("k") == 0
        takes = [s.take_token("t", rate_per_s=1e-3, burst=2) for s in (a, b, a, b)]
        assert takes[:2] == [0.0, 0.0] and takes[2] > 0 and takes[3] > 0
        a.block("k", reason="r")
        assert b.blocked("k") == "r" and other.blocked("k") is None
        i, j = a.add_alert({"key_id": "k", "monitor": "m"}), b.add_alert({"key_id": "k", "monitor": "m"})
        assert j == i + 1 and [x["id"] for x in b.alerts()] == [i, j] and other.alerts() == []
    finally:
        for s in (a, b, other):
            s.close()


def test_redis_bad_urls_are_config_errors(tmp_path: Path) -> None:
    port = _free_port()  # nobody listens on it
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    with pytest.raises(ConfigError) as err:
        open_state(url, state_dir=tmp_path)
    message = str(err.value)
    assert "state_store" in message and f"127.0.0.1:{port}" in message and "redis-server" in message
    assert "hunter2" not in message and "\n" not in message
    with pytest.raises(ConfigError, match="redis://, rediss:// or unix://"):
        open_state("http://127.0.0.1:6379", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="'namespace'"):
        RedisState("redis://127.0.0.1:1/0", namespace="a b")


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def _free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gateway_yaml_state_batching_and_log_settings() -> None:
    from modelshield.serve.config import GatewayConfig

    cfg = GatewayConfig.from_mapping({"state_dir": "s", "state_store": "redis://127.0.0.1:6379/0",
                                      "batch_max_rows": 64, "batch_wait_ms": 0, "log_format": "text"})
    assert (cfg.state_store, cfg.batch_max_rows, cfg.batch_wait_ms, cfg.log_format) == (
        "redis://127.0.0.1:6379/0", 64, 0.0, "text")
    default = GatewayConfig.from_mapping({"state_dir": "s"})
    assert (default.state_store, default.batch_max_rows, default.batch_wait_ms, default.log_format) == (
        None, 256, 2.0, "json")
    for field, bad in (("batch_max_rows", 0), ("batch_wait_ms", -1), ("log_format", "xml"),
                       ("state_store", "")):
        with pytest.raises(ConfigError) as err:
            GatewayConfig.from_mapping({"state_dir": "s", field: bad})
        assert f"'{field}'" in str(err.value) and "\n" not in str(err.value)
