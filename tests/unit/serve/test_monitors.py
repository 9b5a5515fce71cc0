"""The gateway's live monitors without a server: the bank, its actions, text embedding and parsing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from modelshield.defenses.monitoring import Blacklight, StatefulDetector
from modelshield.serve import Gateway, GatewayConfig, Metrics, TextSpec, parse_texts
from modelshield.serve.monitors import available_monitors, embed_texts
from modelshield.targets import Target


def _target(n: int = 400, seed: int = 0) -> Target:
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    net.eval()
    return Target(module=net, x=torch.rand(n, 1, 8, 8, generator=gen), y=torch.zeros(n, dtype=torch.long),
                  bounds=(0.0, 1.0), model_info={"name": "random-linear"}, data_info={"name": "uniform"})


def _gateway(tmp_path: Path, monitors: dict[str, object]) -> Gateway:
    config = GatewayConfig.from_mapping({"state_dir": str(tmp_path / "state"), "monitors": monitors})
    return Gateway.open(_target(), config)


def _probe(gw: Gateway, key_id: str, n: int, *, sigma: float = 0.01,
           alerted: list[bool] | None = None) -> list[str]:
    """n near-duplicates of one image through the bank; the action of each step (and, into
    ``alerted``, whether each step raised an alert)."""
    gen = np.random.default_rng(1)
    base = gw.target.x[0].numpy()
    actions: list[str] = []
    for _ in range(n):
        x = np.clip(base + gen.normal(0.0, sigma, base.shape), 0, 1).astype(np.float32)[None]
        probs, labels = gw._answers(x)
        outcome = gw.monitors.observe(key_id, x, probs, labels)
        actions.append(outcome.action)
        if alerted is not None:
            alerted.append(bool(outcome.alerts))
    return actions


def test_act_after_delays_the_action_until_that_many_alerts(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, {"reference": 200, "stateful": {"action": "block", "act_after": 3, "k": 3}})
    try:
        alerted: list[bool] = []
        actions = _probe(gw, "k1", 40, alerted=alerted)
        first_block = actions.index("block")
        # alerts from query k+1 on (min_history = k), one per near-duplicate query (the gateway keeps
        # the history after an alert): the 3rd alert acts, two queries after the first
        assert sum(alerted[:first_block + 1]) == 3 and alerted[first_block]
        assert first_block == alerted.index(True) + 2 and first_block >= 3
        assert set(actions[:first_block]) == {"none"}
    finally:
        gw.close()


def test_act_window_counts_only_recent_alerts(tmp_path: Path) -> None:
    from modelshield.serve.config import MonitorSpec
    from modelshield.serve.monitors import _Recent

    spec = MonitorSpec(name="stateful", action="block", act_after=2, act_window=10)
    recent = _Recent(cap=4)
    assert recent.add(spec, "k", 5) == 1
    assert recent.add(spec, "k", 30) == 1  # the first alert is 25 queries old: outside the window
    assert recent.add(spec, "k", 35) == 2
    recent.reset("k")
    assert recent.add(spec, "k", 36) == 1
    forever = MonitorSpec(name="stateful", action="block", act_after=2, act_window=0)
    assert recent.add(forever, "j", 1) == 1 and recent.add(forever, "j", 10_000) == 2
    # left out, act_after is the binomial count: P(Bin(100, 0.005) >= 5) = 0.00017 <= 0.001 < P(>= 4)
    auto = MonitorSpec(name="stateful", action="block")
    assert (auto.act_after, auto.act_window, auto.alerts_to_act) == (None, 100, 5)
    assert MonitorSpec(name="stateful", action="block", act_window=0).alerts_to_act == 1
    assert GatewayConfig.from_mapping({"state_dir": str(tmp_path), "monitors": {
        "stateful": {"act_after": 3, "act_window": 100}}}).monitors.entries[0].act_window == 100


def test_throttle_action_divides_the_keys_rate(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, {"reference": 200, "throttle_factor": 4, "throttle_s": 60,
                             "stateful": {"action": "throttle", "k": 3}})
    try:
        key_id, secret = gw.keys.create(name="c", role="client")
        key = gw.authenticate(secret)
        assert key is not None
        base = gw.target.x[0].numpy()[None]
        for _ in range(8):
            answer = gw.predict(key, base.copy(), input_sha256="0" * 64, endpoint="/v1/predict")
            assert isinstance(answer, dict)  # throttling never withholds the answer
        assert gw.state.throttle_factor(key_id) == 4.0
        assert gw.state.blocked(key_id) is None
        assert [a["monitor"] for a in gw.alerts(key_id=key_id)][:1] == ["stateful"]
        assert gw.metrics.alerts["stateful"] >= 1
    finally:
        gw.close()


def test_observe_is_thread_safe_and_scores_name_each_monitor(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, {"reference": 300, "stateful": {}, "blacklight": {}, "prada": {}, "drift": {}})
    errors: list[BaseException] = []
    x = gw.target.x.numpy()

    def client(i: int) -> None:
        try:
            for j in range(25):
                rows = x[(i * 25 + j) % len(x):][:2]
                probs, labels = gw._answers(rows)
                out = gw.monitors.observe(f"c{i}", rows, probs, labels)
                assert all(k.split(".")[0] in gw.monitors.names for k in out.scores)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        probs, labels = gw._answers(x[:1])
        out = gw.monitors.observe("c0", x[:1], probs, labels)
        assert {"stateful.knn_distance", "blacklight.matches"} <= set(out.scores)
        assert out.to_dict()["action"] == "none" and out.seconds > 0
    finally:
        gw.close()


def test_stateful_min_history_spares_a_first_retry() -> None:
    benign = [torch.rand(200, 16, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    eager = StatefulDetector(k=5, fpr=0.01).fit(benign)
    patient = StatefulDetector(k=5, fpr=0.01, min_history=5).fit(benign)
    q = torch.rand(1, 16, generator=torch.Generator().manual_seed(9))
    assert eager.update("a", q) == [] and len(eager.update("a", q.clone())) == 1  # the retry is flagged
    assert patient.update("a", q) == [] and patient.update("a", q.clone()) == []
    assert patient.last_scores("a") == {"knn_distance": float("inf")}
    raised = [len(patient.update("a", q.clone())) for _ in range(4)]
    assert raised == [0, 0, 0, 1]  # the 6th query is the first with k=5 earlier ones: flagged
    assert patient.last_scores("a")["knn_distance"] < patient.threshold_  # type: ignore[operator]


def test_blacklight_last_scores_report_the_batchs_most_matches() -> None:
    gen = torch.Generator().manual_seed(0)
    det = Blacklight(window=8, fpr=0.01, scope="client").fit([torch.rand(100, 64, generator=gen)])
    q = torch.rand(1, 64, generator=gen)
    det.update("a", q)
    assert det.last_scores("a") == {"matches": 0.0}
    det.update("a", q.clone())
    assert det.last_scores("a")["matches"] == float(det.top_n) or det.last_scores("a")["matches"] > 0
    assert det.last_scores("unknown") == {}


def test_embed_texts_puts_edited_copies_close_and_is_stable() -> None:
    e = embed_texts(["WINNER claim your prize now", "WINNER claim your prize now!!", "see you at lunch"])
    assert e.shape == (3, 256) and torch.allclose(e.norm(dim=1), torch.ones(3))
    assert float((e[0] - e[1]).norm()) < 0.5 * float((e[0] - e[2]).norm())
    assert torch.equal(e, embed_texts(["WINNER claim your prize now", "WINNER claim your prize now!!",
                                       "see you at lunch"]))


def test_text_monitors_are_the_distance_based_ones() -> None:
    assert available_monitors(text=True) == ("stateful", "prada")
    assert set(available_monitors()) == {"stateful", "blacklight", "prada", "coverage", "squeezing", "strip",
                                         "drift"}


@pytest.mark.parametrize(("body", "loc", "kind"), [
    ({"inputs": ["ok", 1]}, ["body", "inputs", "1"], "type_error.string"),
    ({"inputs": ["ok", ""]}, ["body", "inputs", "1"], "value_error.empty"),
    ({"inputs": ["x" * 11]}, ["body", "inputs", "0"], "value_error.too_long"),
    ({"inputs": ["a"] * 4}, ["body", "inputs"], "value_error.batch_size"),
    ({"inputs": []}, ["body", "inputs"], "type_error.list"),
    ({"inputs": "text"}, ["body", "inputs"], "type_error.list"),
    ({"texts": ["a"]}, ["body", "texts"], "extra_forbidden"),
    ({}, ["body", "inputs"], "missing"),
    (["a"], ["body"], "type_error.object"),
])
def test_parse_texts_names_the_bad_field(body: object, loc: list[str], kind: str) -> None:
    out = parse_texts(json.dumps(body).encode(), TextSpec(max_batch=3, max_chars=10))
    assert not isinstance(out, list)
    detail = out.to_dict()["detail"][0]
    assert detail["loc"] == loc and detail["type"] == kind and detail["msg"]


def test_parse_texts_accepts_strings() -> None:
    assert parse_texts(b'{"inputs": ["a b", "caf\\u00e9"]}', TextSpec(max_batch=3, max_chars=10)) == ["a b",
                                                                                                       "café"]


def test_metrics_render_alert_counters() -> None:
    m = Metrics()
    m.alert("stateful")
    m.alert("stateful")
    text = m.render(active_keys=1, ready=True)
    assert 'modelshield_alerts_total{monitor="stateful"} 2' in text
    shared = m.render(active_keys=1, ready=True, alerts={"blacklight": 5})
    assert 'modelshield_alerts_total{monitor="blacklight"} 5' in shared and 'monitor="stateful"' not in shared


def test_an_estimator_with_predict_proba_is_served_with_probabilities() -> None:
    """Zoo estimators carry no probe width (n_outputs None) but answer predict_proba: before, the
    gateway served them labels only, whatever the key's policy allowed."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    from modelshield.serve.gateway import _query_model
    from modelshield.targets import Target

    gen = np.random.default_rng(0)
    x = gen.choice([-1.0, 0.0, 1.0], size=(120, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def target(module: object) -> Target:
        return Target(module=module, x=torch.from_numpy(x[:10]), y=torch.from_numpy(y[:10]),
                      bounds=(-1.0, 1.0), model_info={"name": "t"}, data_info={}, kind="sklearn")

    model, labels_only = _query_model(target(LogisticRegression().fit(x, y)))
    assert labels_only is False
    probs = model.scores(torch.from_numpy(x[:4])).numpy()
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert _query_model(target(LinearSVC().fit(x, y)))[1] is True  # no probabilities to give
