"""The gateway's framework-free parts: keys, token buckets, body validation, answers, config, metrics."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from modelshield.errors import ConfigError
from modelshield.serve import (
    FieldError,
    GatewayConfig,
    InputSpec,
    KeyStore,
    Metrics,
    Policy,
    TokenBuckets,
    parse_predict,
    shape_answer,
)

SPEC = InputSpec(shape=(2, 3), bounds=(0.0, 1.0), max_batch=4)


def _body(value: object) -> bytes:
    return json.dumps(value).encode()


# --- keys -------------------------------------------------------------------------------------


def test_keys_have_256_bits_and_are_stored_as_sha256_only(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db") as store:
        key_id, key = store.create(name="app", role="client")
        other_id, other = store.create(name="app2", role="client")
        assert key != other and key_id != other_id
        assert key.startswith(f"msk_{key_id}_")
        secret = key[len(f"msk_{key_id}_"):]
        assert len(secret) == 43  # base64url of 32 random bytes
        found = store.authenticate(key)
        assert found is not None and found.key_id == key_id and found.role == "client"
        assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert store.authenticate(f"msk_{key_id}_" + "x" * 43) is None
        assert store.authenticate("") is None and store.authenticate("msk_" + "0" * 16) is None
    rows = sqlite3.connect(tmp_path / "keys.db").execute("SELECT key_hash FROM keys").fetchall()
    import hashlib

    assert {r[0] for r in rows} == {hashlib.sha256(k.encode()).hexdigest() for k in (key, other)}
    assert key.encode() not in (tmp_path / "keys.db").read_bytes()


def test_revoked_keys_do_not_authenticate(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db") as store:
        key_id, key = store.create(name="app", role="analyst")
        assert store.revoke(key_id).active is False
        assert store.authenticate(key) is None
        with pytest.raises(ConfigError, match="key_id"):
            store.revoke("0" * 16)


def test_roles_bound_policies(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db") as store:
        with pytest.raises(ConfigError, match="within the client role"):
            store.create(name="x", role="client", policy=Policy(endpoints=("predict", "audit")))
        with pytest.raises(ConfigError, match="role"):
            store.create(name="x", role="root")
        key_id, _ = store.create(name="x", role="analyst")
        key = store.get(key_id)
        assert key is not None and key.allows("audit") and not key.allows("keys.manage")


def test_budget_is_charged_atomically_and_never_overspent(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db") as store:
        key_id, _ = store.create(name="x", role="client", policy=Policy(budget=10))
        assert store.charge(key_id, 6) and not store.charge(key_id, 5) and store.charge(key_id, 4)
        assert not store.charge(key_id, 1)
        key = store.get(key_id)
        assert key is not None and key.used == 10
    with KeyStore.open(tmp_path / "keys.db") as second:  # another process's view of the same file
        assert not second.charge(key_id, 1)


@pytest.mark.parametrize(("field", "value"), [("output", "everything"), ("top_k", 0), ("rate_per_s", 0.0),
                                              ("burst", 0), ("budget", -1), ("endpoints", ("predict", "x"))])
def test_policy_rejects_bad_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        Policy(**{field: value})  # type: ignore[arg-type]  # deliberately wrong values


# --- token buckets ----------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    now = [100.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("k", rate_per_s=2.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", rate_per_s=2.0, burst=3) == pytest.approx(0.5)
    assert buckets.take("other", rate_per_s=2.0, burst=3) == 0.0  # per key
    now[0] += 0.5
    assert buckets.take("k", rate_per_s=2.0, burst=3) == 0.0
    now[0] += 100.0  # refills only up to the burst
    assert [buckets.take("k", rate_per_s=2.0, burst=3) > 0 for _ in range(4)] == [False, False, False, True]


# --- bodies -----------------------------------------------------------------------------------

GOOD = [[[0.0, 0.5, 1.0], [0.1, 0.2, 0.3]]]


def test_valid_body_gives_float32_batch() -> None:
    x = parse_predict(_body({"inputs": GOOD * 2, "dtype": "float64"}), SPEC)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (2, 2, 3)
    assert np.allclose(x[0], GOOD[0])


@pytest.mark.parametrize(("body", "loc", "kind"), [
    (b"{", (), "json_invalid"),
    (b"[]", (), "type_error.object"),
    (_body({"inputs": GOOD, "x": 1}), ("x",), "extra_forbidden"),
    (_body({"inputs": GOOD, "dtype": "int8"}), ("dtype",), "value_error.dtype"),
    (_body({}), ("inputs",), "missing"),
    (_body({"inputs": "abc"}), ("inputs",), "type_error.list"),
    (_body({"inputs": GOOD * 5}), ("inputs",), "value_error.batch_size"),
    (_body({"inputs": [[0.1] * 6]}), ("inputs",), "value_error.shape"),
    (_body({"inputs": [[["a"] * 3] * 2]}), ("inputs",), "type_error.number"),
    (_body({"inputs": [[[True] * 3] * 2]}), ("inputs",), "type_error.number"),
    (b'{"inputs": [[[NaN, 0, 0], [0, 0, 0]]]}', ("inputs",), "value_error.not_finite"),
    (_body({"inputs": [GOOD[0], [[0, 0, 2.0], [0, 0, 0]]]}), ("inputs", "1"), "value_error.bounds"),
    (b'{"inputs": [[[1e999, 0, 0], [0, 0, 0]]]}', ("inputs", "0"), "value_error.not_finite"),  # overflows
])
def test_malformed_bodies_name_the_field(body: bytes, loc: tuple[str, ...], kind: str) -> None:
    problem = parse_predict(body, SPEC)
    assert isinstance(problem, FieldError), problem
    assert problem.loc == loc and problem.kind == kind
    assert problem.to_dict()["detail"][0]["loc"] == ["body", *loc]


# --- answers ----------------------------------------------------------------------------------

PROBS = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])


def test_answers_follow_the_output_policy() -> None:
    labels = PROBS.argmax(1)
    only = shape_answer(PROBS, labels, policy=Policy(output="label"), round_digits=2, class_names=None)
    assert only == {"labels": [1, 0]}
    top = shape_answer(PROBS, labels, policy=Policy(output="top-k", top_k=2), round_digits=1,
                       class_names=("a", "b", "c"))
    assert top["classes"] == ["b", "a"] and "probabilities" not in top
    assert top["top_k"][0] == [{"label": 1, "probability": 0.6}, {"label": 2, "probability": 0.3}]
    full = shape_answer(PROBS, labels, policy=Policy(output="probabilities"), round_digits=1,
                        class_names=None)
    assert full["probabilities"] == [[0.1, 0.6, 0.3], [0.5, 0.2, 0.2]]  # round half to even
    assert shape_answer(None, labels, policy=Policy(output="probabilities"), round_digits=1,
                        class_names=None) == {"labels": [1, 0]}


# --- config and metrics -----------------------------------------------------------------------


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    cfg = GatewayConfig.from_mapping({"state_dir": str(tmp_path)})
    assert cfg.max_batch == 256 and cfg.audit_target == str(tmp_path / "audit.db")
    assert cfg.key_store == tmp_path / "keys.db"
    with pytest.raises(ConfigError, match="mapping"):
        GatewayConfig.from_mapping([1, 2])
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_mapping({"state_dir": "s", "max_body_bytes": 10, "log_level": "loud"})
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and "'max_body_bytes'" in lines[0] and "got 10" in lines[0]
    assert "'log_level'" in lines[1] and "'loud'" in lines[1]


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.observe(endpoint="/v1/predict", status=200, decision="answered", seconds=0.003, rows=4, audited=1)
    m.observe(endpoint="/v1/predict", status=401, decision="unauthenticated", audited=1)
    text = m.render(active_keys=2, ready=True)
    assert 'modelshield_requests_total{endpoint="/v1/predict",status="200"} 1' in text
    assert 'modelshield_predict_seconds_bucket{le="0.002"} 0' in text
    assert 'modelshield_predict_seconds_bucket{le="0.005"} 1' in text
    assert "modelshield_predicted_rows_total 4" in text and "modelshield_audit_records_total 2" in text
    assert "modelshield_active_keys 2" in text and text.endswith("\n")
