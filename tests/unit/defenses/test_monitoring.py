"""Live monitors of query-based evasion: StatefulDetector (Chen et al.) and Blacklight (Li et al.)."""

from __future__ import annotations

import math
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

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
from modelshield.errors import ConfigError, EvaluationWarning, InputError, NotFittedError
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


def test_fingerprint_is_keyed_and_batch_independent() -> None:
    x = torch.rand(6, 64, generator=gen(3))
    def fp(t: Tensor, key: int) -> list[tuple[int, ...]]:
        return fingerprint(t, step=0.2, window=8, stride=1, top_n=20, key=key)

    assert fp(x, 7) == fp(x.clone(), 7)  # deterministic for a given key
    assert fp(x, 7) == [fp(x[i:i + 1], 7)[0] for i in range(6)]  # a row's print ignores its batch
    assert fp(x, 0) == fingerprint(x, step=0.2, window=8, stride=1, top_n=20)  # key 0 is the default
    for a, b in zip(fp(x, 7), fp(x, 2**100 + 7), strict=True):  # another key: other hashes
        assert len(set(a) & set(b)) <= 1
    det = Blacklight(window=8, top_n=20, key=7)
    assert det.fingerprints(x.view(6, 8, 8)) == fp(x, 7)
    assert "key" not in repr(det)  # a secret stays out of logs


def test_fingerprint_keeps_the_largest_hashes_of_distinct_windows() -> None:
    # rows built from few distinct values, so windows repeat within and across rows
    x = torch.randint(0, 3, (5, 40), generator=gen(4)).float() * 0.25 + 0.01
    window, stride = 6, 2
    every = fingerprint(x, step=0.2, window=window, stride=stride, top_n=1000)
    for row, hashes in zip(x, every, strict=True):
        q = torch.floor(row / 0.2).long().tolist()
        windows = {tuple(q[i:i + window]) for i in range(0, 40 - window + 1, stride)}
        assert len(hashes) == len(windows)  # equal windows hash alike, different ones do not collide
        assert list(hashes) == sorted(hashes, reverse=True) and all(0 < h < 2**64 for h in hashes)
    top = fingerprint(x, step=0.2, window=window, stride=stride, top_n=5)
    assert [t for t in top] == [h[:5] for h in every]
    # the windows' hashes depend on their content only: a row's windows shared with another row
    # (the same quantised values) give the same hashes
    a = torch.zeros(1, 40)
    a[0, 20:] = 0.9
    b = torch.zeros(1, 40)
    b[0, 10:30] = 0.9
    (ha,), (hb,) = fingerprint(a, step=0.2, window=4, stride=1, top_n=1000), fingerprint(
        b, step=0.2, window=4, stride=1, top_n=1000)
    assert len(ha) == 5 and len(hb) == 8  # 0000, 0004, 0044, 0444, 4444; b also 4440, 4400, 4000
    assert set(ha) < set(hb)


def test_offset_centres_discrete_values_in_their_bins() -> None:
    g = gen(8)
    x = torch.randint(-1, 2, (20, 30), generator=g).float()  # tabular values in {-1, 0, 1}
    noise = 0.3 * (2 * torch.rand(20, 30, generator=g) - 1)  # |noise| < 0.5
    kw: dict[str, Any] = {"step": 1.0, "window": 4, "stride": 1, "top_n": 50}
    assert fingerprint(x, offset=0.5, **kw) == fingerprint(x + noise, offset=0.5, **kw)
    clean, noisy = fingerprint(x, **kw), fingerprint(x + noise, **kw)
    shared = sum(len(set(a) & set(b)) for a, b in zip(clean, noisy, strict=True))
    # without the offset, any negative noise moves a value to the bin below
    assert shared < 0.5 * sum(len(a) for a in clean)
    with pytest.raises(ConfigError, match="'offset'"):
        Blacklight(offset=math.nan)


def test_blacklight_warns_when_a_query_has_fewer_windows_than_top_n() -> None:
    x = torch.randint(-1, 2, (200, 30), generator=gen(9)).float()
    with pytest.warns(EvaluationWarning, match=r"27 windows .* fewer than top_n=50"):
        Blacklight(step=1.0, window=4, offset=0.5).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Blacklight(step=1.0, window=4, top_n=27, offset=0.5).fit(x)  # every window fits: no warning


@pytest.mark.parametrize("key", [-1, "s3cret-value", 1.5, True])
def test_blacklight_key_errors_do_not_echo_the_key(key: object) -> None:
    with pytest.raises(ConfigError, match="'key' must be a non-negative int") as info:
        Blacklight(key=key)  # type: ignore[arg-type]  # the invalid value under test
    assert "s3cret" not in str(info.value) and "1.5" not in str(info.value)


def stored_hashes(det: Blacklight) -> tuple[list[set[int]], dict[int, tuple[int, ...]], int]:
    table = det._global
    prints = [{int(h) for h in row if h} for row in table.prints]
    return prints, table.index, table.added


@pytest.mark.parametrize("bucket", [1, 3, 1000])
def test_blacklight_eviction_keeps_the_index_consistent(bucket: int) -> None:
    history = 40
    det = Blacklight(window=8, top_n=20, history=history, bucket=bucket).fit(
        torch.rand(20, 64, generator=gen()))
    # near-duplicates of a few base images: many hashes are held by several stored queries
    bases = torch.rand(4, 64, generator=gen(1))
    x = (bases[torch.arange(130) % 4] + 0.03 * torch.randn(130, 64, generator=gen(2))).clamp(0, 1)
    every = [set(fp) for fp in det.fingerprints(x)]
    for start, stop in ((0, 25), (25, 40), (40, 41), (41, 97), (97, 130)):  # history + 90 queries in all
        det.update("c", x[start:stop])
        prints, index, added = stored_hashes(det)
        last = list(range(max(0, stop - history), stop))  # the queries stored, oldest first
        assert added == stop and prints == [every[t] for t in last]
        # the index holds exactly the hashes of the stored queries, each with the ring slots of
        # its most recent holders (at most bucket of them, oldest first)
        assert set(index) == set().union(*prints)
        for h, slots in index.items():
            holders = [t % history for t in last if h in every[t]]
            assert slots == tuple(holders[-bucket:])


def test_blacklight_match_is_the_most_hashes_shared_with_one_stored_query() -> None:
    det = Blacklight(window=8, top_n=30, history=25, bucket=1000, fpr=0.01).fit(
        torch.rand(20, 64, generator=gen()))
    base = torch.rand(64, generator=gen(1))
    x = probe_stream(base, 60, 0.01, seed=3)
    every = [set(fp) for fp in det.fingerprints(x)]
    scores = det.score_stream(x).tolist()
    for t in range(60):
        expected = max((len(every[t] & every[s]) for s in range(max(0, t - 25), t)), default=0)
        assert scores[t] == expected
    assert max(scores) > 10  # the near-duplicates do share hashes


def test_blacklight_memory_per_stored_query_is_small() -> None:
    for history, n in ((500, 500), (200, 700)):  # filling, then at steady state with evictions
        det = Blacklight(step=0.05, window=8, top_n=50, history=history).fit(
            torch.rand(20, 64, generator=gen()))
        x = torch.rand(n, 64, generator=gen(1))  # 57 windows per query: 50 hashes stored each, hardly shared
        det.reset()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(0, n, 50):
                det.update("c", x[i:i + 50])
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        prints, index, _ = stored_hashes(det)
        assert len(prints) == history and len(index) > 0.99 * 50 * history  # it did store them all
        assert used / history < 8_000, used / history  # bytes per stored query (was about 37 KB)


def test_blacklight_flags_near_duplicate_digits(digits: tuple[Tensor, Tensor, Tensor]) -> None:
    train, test, _ = digits
    for key in (0, 12345):
        det = Blacklight(window=8, fpr=0.005, key=key, scope="client").fit([train[:700], train[700:]])
        assert len(det.update("benign", test)) / test.shape[0] <= 0.005
        for i in range(5):  # probes: 20 near-duplicates of a test digit each
            alerts = det.update(f"probe-{i}", probe_stream(test[i], 20, 0.01, seed=i))
            assert len(alerts) >= 15 and det.queries_to_detection_[f"probe-{i}"] <= 5


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
