"""Live monitors of query-based evasion: StatefulDetector (Chen et al.) and Blacklight (Li et al.)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
from modelshield.data import load_dataset
from modelshield.defenses.monitoring import (
    Blacklight,
    StatefulDetector,
    fingerprint,
    knn_scores,
    train_contrastive_encoder,
)
from modelshield.errors import ConfigError, InputError, NotFittedError
from modelshield.models import as_black_box


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor]:
    ds = load_dataset("digits")
    train = ds.x_train[torch.randperm(ds.x_train.shape[0], generator=gen())]
    return train, ds.x_test, ds.y_test


def probe_stream(base: Tensor, n: int, scale: float, seed: int = 1) -> Tensor:
    """n queries that are base plus small random perturbations: an attack's query pattern."""
    noise = scale * torch.randn((n, *base.shape), generator=gen(seed))
    return (base + noise).clamp(0, 1)


# --- the k-NN statistic -------------------------------------------------------------------------


def test_knn_scores_hand_computed() -> None:
    history = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    e = torch.tensor([[0.0, 0.0]])
    every = torch.ones(1, 3, dtype=torch.bool)
    assert knn_scores(history, every, e, 1).item() == pytest.approx(0.0)
    assert knn_scores(history, every, e, 2).item() == pytest.approx(2.5)
    assert knn_scores(history, every, e, 3).item() == pytest.approx(5.0)
    # fewer valid rows than k: the mean of those there are; none: +inf
    only_far = torch.tensor([[False, True, True]])
    assert knn_scores(history, only_far, e, 5).item() == pytest.approx(7.5)
    assert math.isinf(knn_scores(history, torch.zeros(1, 3, dtype=torch.bool), e, 2).item())


def reference_scores(
    x: Tensor, k: int, history: int, threshold: float, clear: bool
) -> tuple[list[float], list[int]]:
    """Brute-force replay: each query against the last `history` queries since the last clear."""
    kept: list[Tensor] = []
    scores, hits = [], []
    for t, row in enumerate(x.flatten(1)):
        window = kept[-history:]
        if window:
            d = torch.stack(window).sub(row).norm(dim=1).sort().values[:k]
            s = float(d.mean())
        else:
            s = math.inf
        scores.append(s)
        if s < threshold:
            hits.append(t + 1)
            if clear:
                kept = []
                continue
        kept.append(row)
    return scores, hits


@pytest.mark.parametrize("clear", [True, False])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_stateful_batches_match_brute_force_replay(clear: bool, batch: int) -> None:
    g = gen(3)
    benign = torch.rand(200, 16, generator=g)
    det = StatefulDetector(k=3, history=5, encoder="pixels", fpr=0.02, clear_on_alert=clear).fit(benign)
    assert det.threshold_ is not None
    # a stream mixing benign queries and near-duplicate runs, so alerts and clears both happen
    stream = torch.cat([torch.rand(20, 16, generator=g), probe_stream(torch.rand(16, generator=g), 30, 0.02),
                        torch.rand(15, 16, generator=g)])
    _, expected_hits = reference_scores(stream, 3, 5, det.threshold_, clear)
    got = [a.queries for start in range(0, 65, batch) for a in det.update("c", stream[start:start + batch])]
    assert got == expected_hits
    assert len(expected_hits) > 2
    assert det.queries("c") == 65
    assert det.detections("c") == len(expected_hits)
    assert det.queries_to_detection_["c"] == expected_hits[0]


def test_stateful_benign_fpr_held_out_and_attack_detected() -> None:
    g = gen(4)
    det = StatefulDetector(k=5, fpr=0.01).fit([torch.rand(400, 1, 8, 8, generator=g) for _ in range(2)])
    cal = det.calibration_
    assert cal is not None and cal["fpr_in_sample"] <= 0.01 and cal["queries"] == 800
    held_out = torch.rand(600, 1, 8, 8, generator=g)
    false = sum(len(det.update("benign", held_out[i:i + 10])) for i in range(0, 600, 10))
    assert false / 600 <= 0.03  # an inverted comparison would flag nearly all
    alerts = det.update("attacker", probe_stream(torch.rand(1, 8, 8, generator=g), 40, 0.01))
    assert alerts and alerts[0].queries <= 5 and alerts[0].detector == "StatefulDetector"
    assert alerts[0].score < alerts[0].threshold == det.threshold_
    assert "attacker" in alerts[0].message


def test_stateful_memory_is_bounded() -> None:
    det = StatefulDetector(k=2, history=8, max_clients=3, encoder="pixels")
    det.fit(torch.rand(50, 4, generator=gen()))
    for c in range(5):
        det.update(c, torch.rand(30, 4, generator=gen(c)))
    assert det.n_clients == 3
    assert det.queries(0) == 0 and det.queries(1) == 0 and det.queries(4) == 30  # LRU: 0 and 1 evicted
    det.update(2, torch.rand(1, 4, generator=gen()))  # 2 becomes most recent; 3 is now the oldest
    det.update(5, torch.rand(1, 4, generator=gen()))
    assert det.queries(3) == 0 and det.queries(2) == 31
    for c in (2, 4, 5):
        state = det._clients.get(c)
        assert state is not None and state.buf.shape[0] <= 8
    det.reset(2)
    assert det.queries(2) == 0
    det.reset()
    assert det.n_clients == 0 and det.threshold_ is not None


def test_stateful_encoders_and_errors() -> None:
    x = torch.rand(100, 1, 8, 8, generator=gen())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        StatefulDetector().update("c", x[:2])
    with pytest.raises(ConfigError, match="'k'"):
        StatefulDetector(k=0)
    with pytest.raises(ConfigError, match="'fpr'"):
        StatefulDetector(fpr=0.0)
    with pytest.raises(ConfigError, match="'encoder'"):
        StatefulDetector(encoder="resnet")
    det = StatefulDetector().fit(x)
    with pytest.raises(InputError, match="shape"):
        det.update("c", torch.rand(2, 1, 4, 4))
    with pytest.raises(InputError, match="float tensor"):
        det.update("c", torch.ones(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="NaN"):
        det.update("c", torch.full((1, 1, 8, 8), math.nan))
    with pytest.raises(InputError, match="benign"):
        StatefulDetector().fit([])
    feats = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    fitted = StatefulDetector(encoder=feats).fit(x)
    assert fitted.update("c", x[:1]) == []
    with pytest.raises(InputError, match="encoder must return"):
        StatefulDetector(encoder=lambda t: t[:1].flatten(1)).fit(x)


def test_contrastive_encoder_pulls_perturbations_close(digits: tuple[Tensor, Tensor, Tensor]) -> None:
    train, test, _ = digits
    state = torch.get_rng_state()
    enc = train_contrastive_encoder(train[:400], dim=16, epochs=8, sigma=0.05, shift=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    with torch.no_grad():
        e = enc(test[:200])
        e_pos = enc((test[:200] + 0.05 * torch.randn(test[:200].shape, generator=gen(9))).clamp(0, 1))
    pos = (e - e_pos).norm(dim=1).median()
    neg = (e - e.roll(1, 0)).norm(dim=1).median()
    assert e.shape == (200, 16) and pos < 0.5 * neg
    with pytest.raises(ConfigError, match="'epochs'"):
        train_contrastive_encoder(train[:10], epochs=0)


# --- Blacklight ---------------------------------------------------------------------------------


def test_fingerprint_properties() -> None:
    x = torch.rand(1, 64, generator=gen())
    def fp(t: Tensor) -> list[tuple[int, ...]]:
        return fingerprint(t, step=0.2, window=8, stride=1, top_n=20)

    (a,) = fp(x)
    (b,) = fp(x.clone())
    assert a == b and len(a) == 20 and list(a) == sorted(a, reverse=True)
    # noise that moves no value across a quantisation boundary keeps the whole fingerprint
    centred = (torch.floor(x / 0.2) + 0.5) * 0.2
    (c,) = fp(centred)
    (d,) = fp(centred + 0.05 * (torch.rand(1, 64, generator=gen(2)) - 0.5))
    assert c == d
    (other,) = fp(torch.rand(1, 64, generator=gen(5)))
    assert len(set(a) & set(other)) <= 2
    (short,) = fingerprint(torch.zeros(1, 10), step=0.2, window=8, stride=1, top_n=50)
    assert len(short) == 1  # three identical windows of zeros hash to one value


def test_blacklight_fpr_and_detection_global_and_per_client() -> None:
    g = gen(6)
    benign = [torch.rand(300, 64, generator=g) for _ in range(2)]
    det = Blacklight(window=8, fpr=0.01).fit(benign)
    assert det.threshold_ is not None and det.calibration_ is not None
    assert det.calibration_["fpr_in_sample"] <= 0.01
    held_out = torch.rand(400, 64, generator=g)
    assert len(det.update("benign", held_out)) / 400 <= 0.03
    base = torch.rand(64, generator=g)
    probe = probe_stream(base, 30, 0.01)
    # global scope: an attacker alternating two accounts is still caught (Sybil queries)
    first = det.update("sybil-a", probe[:1])
    second = det.update("sybil-b", probe[1:2])
    assert first == [] and len(second) == 1 and second[0].client_id == "sybil-b"
    assert second[0].score > second[0].threshold == det.threshold_
    per_client = Blacklight(window=8, fpr=0.01, scope="client").fit(benign)
    assert per_client.update("a", probe[:1]) == [] and per_client.update("b", probe[1:2]) == []
    assert len(per_client.update("a", probe[2:12])) >= 9
    assert per_client.queries("a") == 11 and per_client.queries_to_detection_["a"] == 2


def test_blacklight_memory_is_bounded() -> None:
    det = Blacklight(window=8, history=10, bucket=4, max_clients=2, scope="client").fit(
        torch.rand(50, 64, generator=gen()))
    x = torch.rand(40, 64, generator=gen(1))
    det.update("a", x)
    table = det._clients.get("a")
    assert table is not None and len(table.prints) == 10
    assert all(len(ids) <= 4 for ids in table.index.values())
    assert len(table.index) <= 10 * det.top_n
    det.update("b", x[:1])
    det.update("c", x[:1])
    assert det.queries("a") == 0 and det.queries("c") == 1  # "a" evicted (least recent)
    with pytest.raises(ConfigError, match="'scope'"):
        Blacklight(scope="everyone")  # type: ignore[arg-type]  # the invalid value under test
    with pytest.raises(NotFittedError):
        Blacklight().update("a", x[:1])
    with pytest.raises(InputError, match="window"):
        Blacklight(window=100).fit(x)


# --- attacks through a monitored API ----------------------------------------------------------


def monitored_api(net: nn.Module, monitors: list[StatefulDetector | Blacklight], client: str
                  ) -> Callable[[np.ndarray], np.ndarray]:
    def api(x_np: np.ndarray) -> np.ndarray:
        q = torch.as_tensor(x_np, dtype=torch.float32)
        for m in monitors:
            m.update(client, q)
        with torch.no_grad():
            out: np.ndarray = net(q).softmax(1).double().numpy()
        return out

    return api


def small_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def test_simba_through_monitored_api_is_flagged_quickly(digits: tuple[Tensor, Tensor, Tensor]) -> None:
    train, test, _ = digits
    net = small_net()
    fit = [train[:700], train[700:]]
    monitors: list[StatefulDetector | Blacklight] = [StatefulDetector(fpr=0.005).fit(fit),
                                                     Blacklight(window=8, fpr=0.005).fit(fit)]
    for m in monitors:  # benign test stream: at most 0.5% of queries flagged
        assert len(m.update("benign", test)) / test.shape[0] <= 0.005
        m.reset()
    x = test[:2]
    with torch.no_grad():
        y = net(x).argmax(1)
    for i in range(2):
        api = as_black_box(monitored_api(net, monitors, f"attacker-{i}"), bounds=(0.0, 1.0), n_classes=10)
        SimBA(max_queries=100)(api, x[i:i + 1], y[i:i + 1])
        for m in monitors:
            assert m.queries(f"attacker-{i}") > 20
            first = m.queries_to_detection_.get(f"attacker-{i}")
            assert first is not None and first <= 50


@pytest.mark.slow
def test_zoo_attacks_flagged_within_50_queries(digits: tuple[Tensor, Tensor, Tensor]) -> None:
    from modelshield import zoo

    train, test, y_test = digits
    net = zoo.load("digits-cnn").module.eval()
    fit = [train[:700], train[700:]]
    attacks: list[Square | SimBA | HopSkipJump] = [
        Square(eps=0.1, max_queries=200), SimBA(max_queries=200), HopSkipJump(max_queries=200)]
    for attack in attacks:
        monitors: list[StatefulDetector | Blacklight] = [StatefulDetector(fpr=0.005).fit(fit),
                                                         Blacklight(window=8, fpr=0.005).fit(fit)]
        for m in monitors:
            assert len(m.update("benign", test)) / test.shape[0] <= 0.005
            m.reset()
        client = type(attack).__name__
        api = as_black_box(monitored_api(net, monitors, client), bounds=(0.0, 1.0), n_classes=10)
        attack(api, test[:1], y_test[:1])
        for m in monitors:
            first = m.queries_to_detection_.get(client)
            assert first is not None and first <= 50, (client, type(m).__name__, first)
