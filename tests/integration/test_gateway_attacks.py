"""Attacks over HTTP against a real gateway on loopback, and the HttpModel client they go through.

Two gateways serve a small digits CNN (``cnn-8x8``, trained for a second) with uvicorn in a thread:
``plain`` (no monitors) checks ``modelshield.models.HttpModel`` itself (answers, batching, refusals);
``guarded`` has the live monitors on with ``action: block``: modelshield's own Square, HopSkipJump
and SimBA (untargeted, a few images) and a Knockoff Nets thief query it through HttpModel, and
each must be alerted and then refused with 403 well before its budget is spent, while benign
clients replaying held-out test-set streams are never blocked; the audit chain verifies at the end.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from testkit import gateway as support

from modelshield.errors import ModelCapabilityError, QueryRefused
from modelshield.models import HttpModel
from modelshield.serve import GatewayConfig, KeyStore, Policy, create_app
from modelshield.targets import Target, load_target

MAX_BATCH = 16


@dataclass
class Running:
    """A gateway served by uvicorn in a thread on a free loopback port."""

    url: str
    state: Path
    target: Target
    keys: dict[str, str]
    app: Any
    run: Any  # testkit.gateway.Uvicorn

    def get(self, path: str, key: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10.0)

    def stop(self) -> None:
        self.run.stop()


@contextlib.contextmanager
def serve(target: Target, config: GatewayConfig,
          keys: dict[str, tuple[str, Policy | None]]) -> Iterator[Running]:
    """Create the keys (name -> (role, policy)), start the gateway, yield it, stop it."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with KeyStore.open(config.key_store) as store:
        made = {name: store.create(name=name, role=role, policy=policy)[1]
                for name, (role, policy) in keys.items()}
    app = create_app(target, config)
    run = support.start_uvicorn(app)
    running = Running(url=run.url, state=config.state_dir, target=target, keys=made, app=app, run=run)
    try:
        yield running
    finally:
        run.stop()


@pytest.fixture(scope="module")
def digits_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    root = tmp_path_factory.mktemp("digits-model")
    support.train_digits_cnn(root / "digits-cnn.pt")
    # every test point of the digits split (540): the guarded gateway's benign streams replay them
    # (its monitors calibrate on the training split's rows, never on these)
    return load_target(str(root / "digits-cnn.pt"), data="digits", data_dir=None, arch=None, n=None)


@pytest.fixture(scope="module")
def plain(digits_target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("plain") / "state"
    config = GatewayConfig(state_dir=state, max_batch=MAX_BATCH, max_body_bytes=64 * 1024)
    fast = dict(rate_per_s=1e6, burst=10**6, budget=None)
    keys = {
        "proba": ("client", Policy(output="probabilities", **fast)),  # type: ignore[arg-type]
        "topk": ("client", Policy(output="top-k", top_k=3, **fast)),  # type: ignore[arg-type]
        "label": ("client", Policy(output="label", **fast)),  # type: ignore[arg-type]
        "small": ("client", Policy(output="probabilities", rate_per_s=1e6, burst=10**6, budget=20)),
        "slow": ("client", Policy(output="probabilities", rate_per_s=2.0, burst=2, budget=None)),
    }
    with serve(digits_target, config, keys) as running:
        yield running


# --- HttpModel against the plain gateway ------------------------------------------------------


def test_http_model_answers_probabilities_split_to_max_batch(plain: Running) -> None:
    x = plain.target.x[: 2 * MAX_BATCH + 3]
    with torch.no_grad():
        expected = torch.softmax(plain.target.module(x), dim=1).double().numpy()
    with HttpModel(plain.url, api_key=plain.keys["proba"]) as remote:
        assert remote.input_shape == (1, 8, 8) and remote.bounds == (0.0, 1.0)
        assert remote.max_batch == MAX_BATCH
        got = remote(x.numpy())
        assert got.shape == (len(x), 10)
        np.testing.assert_allclose(got, expected, atol=6e-5)  # rounded to 4 digits by the gateway
        assert remote.requests == 3 and remote.queries == len(x) == remote.rows_sent
        model = remote.as_model()
        assert model.score_kind == "probabilities" or model.output == "auto"
        labels = model.predict(x[:5])
        assert labels.tolist() == expected[:5].argmax(1).tolist()
        assert model.queries.forward == 5 and remote.queries == len(x) + 5


def test_http_model_splits_bodies_above_its_byte_limit(plain: Running) -> None:
    x = plain.target.x[:MAX_BATCH].numpy()
    with HttpModel(plain.url, api_key=plain.keys["proba"], max_body_bytes=4096) as remote:
        got = remote(x)
    assert got.shape == (MAX_BATCH, 10) and remote.requests > 1 and remote.queries == MAX_BATCH


def test_http_model_label_only_key_gives_labels_and_refuses_scores(plain: Running) -> None:
    x = plain.target.x[:6]
    expected = plain.target.module(x).argmax(1).tolist()
    with HttpModel(plain.url, api_key=plain.keys["label"]) as remote:
        model = remote.as_model()
        assert model.n_classes == 10
        assert model.predict(x).tolist() == expected
        assert model.output == "labels"
        with pytest.raises(ModelCapabilityError, match="labels only"):
            model.scores(x)


def test_http_model_completes_top_k_answers(plain: Running) -> None:
    x = plain.target.x[:6]
    with HttpModel(plain.url, api_key=plain.keys["topk"]) as remote:
        got = remote(x.numpy())
    assert got.shape == (6, 10)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-3)
    assert got.argmax(1).tolist() == plain.target.module(x).argmax(1).tolist()
    for row in got:  # the 7 classes outside the top 3 share the rest of the mass evenly
        rest = np.sort(row)[:7]
        assert np.ptp(rest) < 1e-12 and rest[0] <= np.sort(row)[7]


def test_http_model_refusals_raise_query_refused(plain: Running) -> None:
    row = plain.target.x[:1].numpy()
    with HttpModel(plain.url, api_key="msk_0000000000000000_" + "A" * 43) as remote, \
            pytest.raises(QueryRefused) as info:
        remote(row)
    assert info.value.status == 401 and info.value.decision == "unauthenticated"
    assert "401" in str(info.value) and "API key" in str(info.value)
    with HttpModel(plain.url, api_key=plain.keys["small"], max_wait_s=60) as remote:
        remote(plain.target.x[:16].numpy())
        with pytest.raises(QueryRefused) as info:  # a spent budget is never waited for
            remote(plain.target.x[:8].numpy())
        assert info.value.status == 429 and info.value.decision == "budget-exhausted"
        assert info.value.retry_after_s == 3600 and remote.refusal is info.value
        assert remote.queries == 16 and remote.rows_sent == 24


def test_http_model_waits_out_rate_limits_only_when_allowed(plain: Running) -> None:
    row = plain.target.x[:1].numpy()
    with HttpModel(plain.url, api_key=plain.keys["slow"]) as remote:  # 2/s, burst 2
        remote(row)  # GET /v1/model and this request: the burst
        with pytest.raises(QueryRefused) as info:
            remote(row)
        assert info.value.status == 429 and info.value.decision == "rate-limited"
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
    time.sleep(1.1)
    with HttpModel(plain.url, api_key=plain.keys["slow"], max_wait_s=5) as remote:
        start = time.monotonic()
        for _ in range(3):
            remote(row)
        assert remote.queries == 3 and time.monotonic() - start >= 0.5  # it waited for tokens


def test_http_model_unreachable_gateway_raises_query_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with HttpModel(f"http://127.0.0.1:{port}", api_key="k", timeout=2) as remote, \
            pytest.raises(QueryRefused) as info:
        remote(np.zeros((1, 1, 8, 8), dtype=np.float32))
    assert info.value.status is None and info.value.decision == "unreachable"


def test_square_runs_through_http_model(plain: Running) -> None:
    from modelshield.attacks.evasion import Square

    x, y = plain.target.x[:2], plain.target.y[:2]
    with HttpModel(plain.url, api_key=plain.keys["proba"]) as remote:
        model = remote.as_model()
        result = Square(eps=0.3, max_queries=60, seed=0)(model, x, y)
    assert remote.queries == model.queries.forward == result.queries_forward
    assert result.queries_forward <= 2 * 60 + 2


# --- attacks against the guarded gateway ------------------------------------------------------

MONITORS: dict[str, Any] = {"fpr": 0.005, "stateful": {"action": "block"}, "blacklight": {"action": "block"},
                            "prada": {"action": "block"}, "coverage": {"action": "block"}}
EVASION_LIMIT = 50  # queries a query-based evasion attack may get answered before its key is blocked
EXTRACTION_LIMIT = 200


@pytest.fixture(scope="module")
def guarded(digits_target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("guarded")
    target = digits_target
    config = GatewayConfig.from_mapping({"state_dir": str(root / "state"), "max_batch": 64,
                                         "monitors": MONITORS})
    fast: dict[str, Any] = {"rate_per_s": 1e6, "burst": 10**6, "budget": None}
    keys: dict[str, tuple[str, Policy | None]] = {"admin": ("admin", None)}
    for name in ("square", "hopskipjump", "simba"):
        for i in range(2):
            keys[f"{name}-{i}"] = ("client", Policy(output="probabilities", **fast))
    keys["knockoff"] = ("client", Policy(output="probabilities", **fast))
    for s in range(4):
        keys[f"benign-{s}"] = ("client", Policy(output="top-k", **fast))
    with serve(target, config, keys) as running:
        yield running


def _key_id(secret: str) -> str:
    return secret.split("_")[1]  # msk_<id>_<secret>


def _alerts(gw: Running, key_id: str) -> list[dict[str, Any]]:
    r = gw.get(f"/v1/admin/alerts?key_id={key_id}&limit=1000", gw.keys["admin"])
    assert r.status_code == 200, r.text
    return list(r.json()["alerts"])


def _points(target: Target, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n test points the model classifies correctly (an attack on a misclassified one has won already)."""
    with torch.no_grad():
        ok = (target.module(target.x).argmax(1) == target.y).nonzero().squeeze(1)[:n]
    return target.x[ok], target.y[ok]


@pytest.mark.parametrize("name", ["square", "hopskipjump", "simba"])
def test_query_attack_over_http_is_alerted_then_blocked(guarded: Running, name: str) -> None:
    from modelshield.attacks.evasion import HopSkipJump, SimBA, Square

    attack = {"square": Square(eps=0.3, max_queries=500, seed=0),
              "hopskipjump": HopSkipJump(max_queries=500, seed=0),
              "simba": SimBA(eps_step=0.2, max_queries=500, seed=0)}[name]
    x, y = _points(guarded.target, 2)
    for i in range(2):
        secret = guarded.keys[f"{name}-{i}"]
        with HttpModel(guarded.url, api_key=secret) as remote:
            with pytest.raises(QueryRefused) as info:
                attack(remote.as_model(), x[i:i + 1], y[i:i + 1])
            assert info.value.status == 403 and info.value.decision == "blocked", info.value
            assert "DELETE /v1/admin/blocks/" in info.value.detail
            answered = remote.queries
            assert 0 < answered <= EVASION_LIMIT, (name, i, answered)  # of a 500-query budget
            with pytest.raises(QueryRefused):  # the key stays blocked
                remote(x[i:i + 1].numpy())
        alerts = _alerts(guarded, _key_id(secret))
        assert alerts and alerts[0]["key_id"] == _key_id(secret)
        assert alerts[0]["monitor"] in MONITORS and alerts[0]["queries"] <= answered + 1


def test_knockoff_thief_over_http_is_alerted_then_blocked(guarded: Running) -> None:
    from modelshield.attacks.extraction import KnockoffNets

    secret = guarded.keys["knockoff"]
    pool = torch.rand((1000, 1, 8, 8), generator=torch.Generator().manual_seed(0))  # synthetic queries
    with HttpModel(guarded.url, api_key=secret, batch_size=16) as remote:
        with pytest.raises(QueryRefused) as info:
            KnockoffNets(budget=1000, epochs=1, seed=0)(remote.as_model(), pool)
        assert info.value.status == 403 and info.value.decision == "blocked"
        assert remote.queries <= EXTRACTION_LIMIT
    alerts = _alerts(guarded, _key_id(secret))
    assert alerts and alerts[0]["queries"] <= EXTRACTION_LIMIT


def test_benign_test_set_streams_are_never_blocked(guarded: Running) -> None:
    x = guarded.target.x
    per = len(x) // 4  # the whole test split: 4 streams of 135
    for s in range(4):  # disjoint held-out streams, one row per request as an application sends them
        secret = guarded.keys[f"benign-{s}"]
        with HttpModel(guarded.url, api_key=secret, batch_size=1) as remote:
            answers = remote(x[s * per:(s + 1) * per].numpy())  # raises QueryRefused if blocked
            assert remote.queries == per and remote.refusal is None
        expected = guarded.target.module(x[s * per:(s + 1) * per]).argmax(1)
        assert answers.argmax(1).tolist() == expected.tolist()
        assert not any(a.get("acted") for a in _alerts(guarded, _key_id(secret)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["square", "hopskipjump", "simba"])
def test_blinded_query_attacks_are_still_blocked(guarded: Running, name: str) -> None:
    """The adaptive twist: each query gets Gaussian noise (std 0.05) and a random one-pixel roll.

    Either the key is blocked, or the attack ends on its own (a one-pixel roll of an 8x8 digit can
    change the label, so a blinded attack may stop early believing it has won); either way no more
    than EVASION_LIMIT of its 500 queries are answered.
    """
    from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
    from modelshield.models import CallableModel

    attack = {"square": Square(eps=0.3, max_queries=500, seed=0),
              "hopskipjump": HopSkipJump(max_queries=500, seed=0),
              "simba": SimBA(eps_step=0.2, max_queries=500, seed=0)}[name]
    x, y = _points(guarded.target, 5)
    rng = np.random.default_rng(0)

    def blind(q: np.ndarray) -> np.ndarray:
        out = q + rng.normal(0.0, 0.05, size=q.shape).astype(np.float32)
        for i in range(len(out)):
            out[i] = np.roll(out[i], tuple(int(v) for v in rng.integers(-1, 2, size=2)), axis=(-2, -1))
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    admin = guarded.keys["admin"]
    for i in range(len(x)):
        made = httpx.post(guarded.url + "/v1/admin/keys", headers={"Authorization": f"Bearer {admin}"},
                          json={"name": f"blind-{name}-{i}", "role": "client", "policy": {
                              "output": "probabilities", "rate_per_s": 1e6, "burst": 10**6, "budget": None}},
                          timeout=10)
        assert made.status_code == 201, made.text
        with HttpModel(guarded.url, api_key=made.json()["key"]) as remote:
            model = CallableModel(lambda q, r=remote: r(blind(q)), bounds=(0.0, 1.0), n_classes=10)
            try:
                attack(model, x[i:i + 1], y[i:i + 1])
            except QueryRefused as exc:
                assert exc.decision == "blocked", exc
            assert remote.queries <= EVASION_LIMIT, (name, i, remote.queries)


def test_zz_audit_chain_verifies_after_the_attacks(guarded: Running) -> None:
    from modelshield.secure.audit import AuditLog

    guarded.stop()
    with AuditLog.open(guarded.state / "audit.db") as log:
        report = log.verify()
        records = log.records()
    assert report.ok, report.to_dict()
    decisions = Counter(r.details["decision"] for r in records)
    assert decisions["blocked"] >= 7  # every attack key's refusals were audited
    assert decisions["answered"] > 400

