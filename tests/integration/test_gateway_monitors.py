"""The gateway's live monitors against a real uvicorn server on loopback (started and stopped here).

A digits CNN (``cnn-8x8``, trained for a second, saved as a modelshield-v1 file and loaded on the
``digits`` data, so the monitors calibrate on the digits *training* split) is served with the
stateful detector and Blacklight set to block and PRADA to alert. A probing client (small random
perturbations of one test image, as HopSkipJump's or Square's queries are) must be alerted and then
refused with 403 "blocked"; benign clients streaming held-out test images must not be; alerts show
at /v1/admin/alerts (analyst yes, client no) and in /metrics; an admin lifts the block; every audit
record of a predict request carries the monitors' scores and the chain verifies. A text model
(``spam-nb``, needs the SMS data) is served end to end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from testkit import gateway as support
from typer.testing import CliRunner

from modelshield.errors import ConfigError
from modelshield.secure.audit import AuditLog
from modelshield.serve import Gateway, GatewayConfig, KeyStore, Policy, create_app, load_config
from modelshield.serve.store import open_state
from modelshield.targets import Target, load_target

MONITORS = {"fpr": 0.005, "reference": 1000, "stateful": {"action": "block"},
            "blacklight": {"action": "block"}, "prada": {"action": "alert"}}
BENIGN_CLIENTS = 3
BENIGN_ROWS = 120  # per client, disjoint slices of the digits test split (540 rows)


@dataclass
class Server:
    url: str
    state: Path
    config: GatewayConfig
    target: Target
    keys: dict[str, str]
    app: Any
    run: Any  # testkit.gateway.Uvicorn

    def request(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=10.0, **kw)

    def predict(self, key: str, inputs: Any) -> httpx.Response:
        return self.request("POST", "/v1/predict", key=key, json={"inputs": inputs})


def _serve(target: Target, config: GatewayConfig, keys: dict[str, str]) -> Server:
    app = create_app(target, config)
    run = support.start_uvicorn(app)
    return Server(url=run.url, state=config.state_dir, config=config, target=target, keys=keys, app=app,
                  run=run)


def _stop(srv: Server) -> None:
    srv.run.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("monitored")
    model_path = root / "digits-cnn.pt"
    support.train_digits_cnn(model_path)
    target = load_target(str(model_path), data="digits", data_dir=None, arch=None, n=None)
    config = GatewayConfig.from_mapping({"state_dir": str(root / "state"), "max_batch": 32,
                                         "monitors": MONITORS})
    free = Policy(rate_per_s=1000.0, burst=1000, budget=None)
    with KeyStore.open(config.key_store) as store:
        made = {"probe": store.create(name="probe", role="client", policy=free)[1],
                "analyst": store.create(name="analyst", role="analyst")[1],
                "admin": store.create(name="ops", role="admin")[1]}
        made.update({f"benign{i}": store.create(name=f"benign{i}", role="client", policy=free)[1]
                     for i in range(BENIGN_CLIENTS)})
    srv = _serve(target, config, made)
    try:
        yield srv
    finally:
        _stop(srv)


def _key_id(secret: str) -> str:
    return secret.split("_")[1]


def test_a_benign_test_streams_are_not_blocked(gateway: Server) -> None:
    x = gateway.target.x
    for i in range(BENIGN_CLIENTS):
        key = gateway.keys[f"benign{i}"]
        rows = x[1 + i * BENIGN_ROWS: 1 + (i + 1) * BENIGN_ROWS]
        for batch in rows.split(4):
            r = gateway.predict(key, batch.tolist())
            assert r.status_code == 200, r.text
    r = gateway.request("GET", "/v1/admin/blocks", key=gateway.keys["admin"])
    assert r.status_code == 200 and r.json()["blocks"] == []
    alerts = gateway.request("GET", "/v1/admin/alerts", key=gateway.keys["admin"]).json()["alerts"]
    benign_ids = {_key_id(gateway.keys[f"benign{i}"]) for i in range(BENIGN_CLIENTS)}
    # per-query rate 0.005 -> about 2 expected alerts per monitor over 360 queries; allow a few
    assert sum(a["key_id"] in benign_ids for a in alerts) <= 6


def test_b_near_duplicate_probe_is_alerted_then_blocked(gateway: Server) -> None:
    key = gateway.keys["probe"]
    base = gateway.target.x[0].numpy()
    gen = np.random.default_rng(0)
    statuses = []
    for _ in range(50):
        q = np.clip(base + gen.normal(0.0, 0.03, base.shape), 0.0, 1.0)
        r = gateway.predict(key, [q.tolist()])
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    assert statuses[-1] == 403, statuses
    assert 2 <= len(statuses) <= 50
    assert r.json()["detail"].startswith(f"the key {_key_id(key)} is blocked (monitor ")
    assert "DELETE /v1/admin/blocks/" in r.json()["detail"]
    again = gateway.predict(key, [gateway.target.x[5].tolist()])  # even a fresh image: still blocked
    assert again.status_code == 403 and "blocked" in again.json()["detail"]


def test_c_alerts_are_exposed_to_analysts_and_in_metrics(gateway: Server) -> None:
    probe = _key_id(gateway.keys["probe"])
    r = gateway.request("GET", "/v1/admin/alerts", key=gateway.keys["analyst"], params={"key_id": probe})
    assert r.status_code == 200
    alerts = r.json()["alerts"]
    assert alerts and all(a["key_id"] == probe for a in alerts)
    assert any(a["acted"] and a["action"] == "block" for a in alerts)
    assert {a["monitor"] for a in alerts} <= {"stateful", "blacklight", "prada"}
    assert all(a["score"] is not None and a["threshold"] is not None and a["message"] for a in alerts)
    last = alerts[-1]["id"]
    later = gateway.request("GET", "/v1/admin/alerts", key=gateway.keys["analyst"], params={"after": last})
    assert later.status_code == 200 and later.json()["alerts"] == []
    bad = gateway.request("GET", "/v1/admin/alerts", key=gateway.keys["analyst"], params={"key_id": "x:y"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "key_id"]
    assert gateway.request("GET", "/v1/admin/alerts", key=gateway.keys["probe"]).status_code == 403
    assert gateway.request("GET", "/v1/admin/alerts").status_code == 401
    metrics = gateway.request("GET", "/metrics").text
    for monitor in {a["monitor"] for a in alerts}:
        head = f'modelshield_alerts_total{{monitor="{monitor}"}}'
        line = next(ln for ln in metrics.splitlines() if ln.startswith(head))
        assert int(line.split()[-1]) >= 1
    assert 'modelshield_decisions_total{decision="blocked"}' in metrics
    paths = gateway.request("GET", "/openapi.json").json()["paths"]
    assert {"/v1/admin/alerts", "/v1/admin/blocks", "/v1/admin/blocks/{key_id}"} <= set(paths)


def test_d_an_admin_lifts_the_block(gateway: Server) -> None:
    probe, admin = gateway.keys["probe"], gateway.keys["admin"]
    pid = _key_id(probe)
    blocks = gateway.request("GET", "/v1/admin/blocks", key=admin).json()["blocks"]
    assert [b["key_id"] for b in blocks] == [pid] and "monitor" in blocks[0]["reason"]
    assert gateway.request("GET", "/v1/admin/blocks", key=gateway.keys["analyst"]).status_code == 403
    assert gateway.request("DELETE", f"/v1/admin/blocks/{pid}", key=probe).status_code == 403
    r = gateway.request("DELETE", f"/v1/admin/blocks/{pid}", key=admin)
    assert r.status_code == 200 and r.json() == {"key_id": pid, "unblocked": True}
    assert gateway.request("DELETE", f"/v1/admin/blocks/{pid}", key=admin).status_code == 404
    assert gateway.request("DELETE", "/v1/admin/blocks/0000000000000000", key=admin).status_code == 404
    r = gateway.predict(probe, [gateway.target.x[500].tolist()])  # an image no client has sent
    assert r.status_code == 200, r.text


def test_z_audit_records_carry_monitor_scores_and_the_chain_verifies(gateway: Server) -> None:
    _stop(gateway)  # runs last: a final checkpoint is signed, then the log is read
    with AuditLog.open(gateway.config.audit_target) as log:
        report = log.verify()
        records = log.records()
    assert report.ok, report.to_dict()
    predicts = [r.details for r in records
                if r.action == "serve.request" and r.details["endpoint"] == "/v1/predict"
                and r.details["status"] in (200, 403) and "rows" in r.details]
    assert len(predicts) >= BENIGN_CLIENTS * BENIGN_ROWS // 4
    for d in predicts:
        mon = d["monitors"]
        assert set(mon) >= {"scores", "alerts", "action", "ms", "alert_ids"}
        assert mon["action"] in ("none", "throttle", "block")
        assert all(name.split(".")[0] in ("stateful", "blacklight", "prada") for name in mon["scores"])
        assert "blacklight.matches" in mon["scores"]  # every query gets a Blacklight score
    blocked = [d for d in predicts if d["decision"] == "blocked"]
    assert len(blocked) == 1 and blocked[0]["monitors"]["action"] == "block" and "output" not in blocked[0]
    assert blocked[0]["monitors"]["alert_ids"]
    answered = [d for d in predicts if d["decision"] == "answered"]
    assert any("stateful.knn_distance" in d["monitors"]["scores"] for d in answered)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("monitors", "field", "fix"), [
    ("{fpr: 0.01, statefull: {action: block}}", "'monitors.statefull'", "stateful, blacklight, prada"),
    ("{stateful: {action: ban}}", "'monitors.stateful.action'", "alert, throttle, block"),
    ("{fpr: 1.5, stateful: {}}", "'monitors.fpr'", "strictly between 0 and 1"),
    ("{blacklight: {fpr: 0}}", "'monitors.blacklight.fpr'", "strictly between 0 and 1"),
])
def test_bad_monitor_config_is_one_line_naming_field_and_fix(tmp_path: Path, monitors: str, field: str,
                                                             fix: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmonitors: {monitors}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway.yaml: {field} ") and fix in lines[0]


def test_monitor_parameters_are_checked_at_start(tmp_path: Path) -> None:
    x = torch.rand(40, 1, 8, 8)
    fake = Target(module=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), x=x,
                  y=torch.zeros(40, dtype=torch.long), bounds=(0.0, 1.0), model_info={"name": "tiny"},
                  data_info={"name": "random"})
    for monitors, needle in (({"stateful": {"kk": 3}}, "'monitors.stateful.kk' is not a parameter of "
                                                       "StatefulDetector"),
                             ({"stateful": {"k": 0}}, "'monitors.stateful' has a value StatefulDetector "
                                                      "refuses")):
        config = GatewayConfig.from_mapping({"state_dir": str(tmp_path / "s"), "monitors": monitors})
        with pytest.raises(ConfigError) as info:
            Gateway.open(fake, config)
        assert needle in str(info.value) and len(str(info.value).splitlines()) == 1
    # only test points: the second half calibrates, and the monitors still start
    config = GatewayConfig.from_mapping({"state_dir": str(tmp_path / "s"), "monitors": {"stateful": {}}})
    gw = Gateway.open(fake, config)
    try:
        assert "test points 20..39" in gw.monitors.reference_source
    finally:
        gw.close()


def test_cli_unblock_lifts_a_block_on_the_local_state(tmp_path: Path) -> None:
    from modelshield.cli.app import app

    path = tmp_path / "gateway.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    cfg = load_config(path)
    state = open_state(None, state_dir=cfg.state_dir)
    try:
        state.block("00000000000000aa", reason="monitor 'stateful' raised alert 1")
    finally:
        state.close()
    runner = CliRunner()
    done = runner.invoke(app, ["serve", "keys", "unblock", "00000000000000aa", "--config", str(path)])
    assert done.exit_code == 0, done.output
    assert "Unblocked key 00000000000000aa" in done.output
    state = open_state(None, state_dir=cfg.state_dir)
    try:
        assert state.blocked("00000000000000aa") is None
    finally:
        state.close()
    again = runner.invoke(app, ["serve", "keys", "unblock", "00000000000000aa", "--config", str(path)])
    assert again.exit_code == 2 and "not blocked" in again.output


# --- a text model -----------------------------------------------------------------------------


def _sms_data() -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")


@pytest.fixture(scope="module")
def text_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _sms_data()
    root = tmp_path_factory.mktemp("text")
    target = load_target("spam-nb", data=None, data_dir=None, arch=None, n=200)
    config = GatewayConfig.from_mapping({"state_dir": str(root / "state"), "max_batch": 8,
                                         "max_text_chars": 200,
                                         "monitors": {"stateful": {"action": "block"}, "prada": {}}})
    with KeyStore.open(config.key_store) as store:
        made = {"client": store.create(name="app", role="client",
                                       policy=Policy(rate_per_s=1000.0, burst=1000, budget=None))[1],
                "admin": store.create(name="ops", role="admin")[1]}
    srv = _serve(target, config, made)
    try:
        yield srv
    finally:
        _stop(srv)


def test_text_model_is_served_end_to_end(text_gateway: Server) -> None:
    key = text_gateway.keys["client"]
    info = text_gateway.request("GET", "/v1/model", key=key).json()
    assert info["input"] == {"kind": "text", "max_chars": 200, "max_batch": 8}
    texts = list(text_gateway.target.texts[:6])
    r = text_gateway.predict(key, texts)
    assert r.status_code == 200, r.text
    body = r.json()
    module = text_gateway.target.module
    assert body["labels"] == [int(v) for v in module.predict(texts)]
    assert set(body["classes"]) <= {"ham", "spam"}
    for bad, index in ((["ok", 3], "1"), (["ok", "  "], "1"), (["x" * 201], "0"), ([None], "0")):
        r = text_gateway.predict(key, bad)
        assert r.status_code == 422, (bad, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "inputs", index] and f"inputs[{index}]" in detail["msg"]
    assert text_gateway.predict(key, ["m"] * 9).status_code == 422
    assert text_gateway.predict(key, []).status_code == 422
    r = text_gateway.request("POST", "/v1/predict", key=key, json={"inputs": ["hi"], "dtype": "float32"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dtype"]


def test_text_probe_of_near_duplicate_messages_is_blocked(text_gateway: Server) -> None:
    key = text_gateway.keys["client"]
    statuses = []
    for i in range(40):
        r = text_gateway.predict(key, [f"WINNER!! claim your free prize now, call 0906{i:06d}"])
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    assert statuses[-1] == 403 and len(statuses) <= 40, statuses
    alerts = text_gateway.request("GET", "/v1/admin/alerts", key=text_gateway.keys["admin"]).json()["alerts"]
    assert alerts and alerts[-1]["monitor"] == "stateful"


def test_image_only_monitors_are_refused_for_text_models(tmp_path: Path) -> None:
    _sms_data()
    target = load_target("spam-nb", data=None, data_dir=None, arch=None, n=50)
    config = GatewayConfig.from_mapping({"state_dir": str(tmp_path / "s"), "monitors": {"blacklight": {}}})
    with pytest.raises(ConfigError) as info:
        Gateway.open(target, config)
    line = str(info.value)
    assert len(line.splitlines()) == 1
    assert line.startswith("gateway config: 'monitors.blacklight' is not available for text models")
    assert "use stateful, prada" in line


# --- every monitor at once (slow) ---------------------------------------------------------------


@pytest.mark.slow
def test_all_seven_monitors_block_a_probe_and_spare_the_whole_test_split(tmp_path: Path) -> None:
    """All monitors on, as recommended for production (block after 2 alerts within 100 queries):
    four benign clients stream the whole digits test split, a probe is blocked."""
    model_path = tmp_path / "digits-cnn.pt"
    support.train_digits_cnn(model_path)
    target = load_target(str(model_path), data="digits", data_dir=None, arch=None, n=None)
    strict = {"action": "block", "act_after": 2, "act_window": 100}
    monitors = {"stateful": strict, "blacklight": strict, "prada": {}, "coverage": {}, "squeezing": {},
                "strip": {}, "drift": {"window": 100}}
    config = GatewayConfig.from_mapping({"state_dir": str(tmp_path / "state"), "monitors": monitors})
    free = Policy(rate_per_s=1000.0, burst=1000, budget=None)
    with KeyStore.open(config.key_store) as store:
        keys = {name: store.create(name=name, role="client", policy=free)[1]
                for name in ("b0", "b1", "b2", "b3", "probe")}
        keys["admin"] = store.create(name="ops", role="admin")[1]
    srv = _serve(target, config, keys)
    try:
        x = target.x
        for i, rows in enumerate(x.tensor_split(4)):
            for row in rows:
                r = srv.predict(keys[f"b{i}"], [row.tolist()])
                assert r.status_code == 200, r.text
        gen = np.random.default_rng(3)
        base = x[7].numpy()
        probes = [np.clip(base + gen.normal(0, 0.03, base.shape), 0, 1).tolist() for _ in range(30)]
        statuses = [srv.predict(keys["probe"], [q]).status_code for q in probes]
        assert 403 in statuses, statuses
        first = statuses.index(403)
        assert first < 20 and set(statuses[first:]) == {403}, statuses
        alerts = srv.request("GET", "/v1/admin/alerts", key=keys["admin"],
                             params={"limit": 1000}).json()["alerts"]
        benign = [a for a in alerts if a["key_id"] != _key_id(keys["probe"])]
        assert len(benign) <= 0.01 * len(x) * len(monitors)  # per-query rate far below 1% per monitor
    finally:
        _stop(srv)
