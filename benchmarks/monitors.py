"""Live monitors of query-based evasion and extraction, evaluated honestly (issue #18, item 4).

Three cases: the zoo models ``digits-cnn`` (8x8 digits), ``mnist-cnn`` (MNIST, trained and cached
by ``modelshield.zoo`` on first use) and ``phishing-gbm`` (UCI phishing websites, 30 discrete
features in {-1, 0, 1}). For each case, the parts below; every part is saved to the JSON file
(``--out``) as soon as it finishes, and a rerun with the same settings skips the parts already
there (``--fresh`` starts over).

- ``<case>/benign``: for each monitor, its threshold fitted on benign streams of the *training*
  split at the target per-query false-positive rate (``--fpr``), and the per-query
  false-positive rate measured on held-out benign streams of the *test* split (shuffled, and in
  its natural order), each stream a fresh client; microseconds per query.
- ``<case>/cached``: modelshield's Square, SimBA and HopSkipJump run against the model through a
  black-box API that feeds every query into every monitor as it is asked (one client per
  attacked image; the attacker answers exact repeats of its own queries from a local cache, so
  a monitor gets no free duplicate): queries until the first alert per image, the attack's
  success, microseconds per query of each monitor under attack. (digits also has ``uncached``.)
- ``<case>/adaptive_*``: the same with query blinding, the adaptive twist of the stateful-detection
  papers (Chen et al. 2020 section 6; Feng, Feng, Gupta, Carlini, Gabbai and Zhao 2023, "Stateful
  defenses for machine learning models are not yet secure against black-box attacks", OARS):
  each query is randomly transformed before it is sent (Gaussian noise of std sigma; images: also
  a random roll of up to ``--shift`` pixels; tabular: also ``--flips`` features re-drawn from
  {-1, 0, 1}), so near-duplicates look less alike. ``attack_success`` is re-checked on the model
  itself without blinding; ``attack_success_reported`` is what the attack believed.
- ``<case>/extraction``: PRADA (Juuti et al. 2019) on synthetic-query extraction: Papernot's
  Jacobian augmentation (real seed set, then synthetic points) and a Knockoff thief querying
  uniform noise, each one client through the same live API; queries until PRADA's first alert at
  its default delta 0.95 and at a delta calibrated on benign *training* streams; per-stream and
  per-query false-positive rates on held-out benign *test* streams.
- ``cost``: microseconds per query of one client against the length of its history, for the
  StatefulDetector (per-client ring buffer, one ``cdist`` row) and the ART prototype (see below).

Monitors: ``StatefulDetector`` (Chen, Carlini and Wagner 2020) with a random-projection encoder,
raw inputs, the model's penultimate features (torch models) and, on digits, an encoder trained
contrastively; ``Blacklight`` (Li et al. 2022) with one global table; and ``art_prototype``.

ART. ART 1.20.1 (installed) has no stateful detector: ``art.defences.detector.evasion`` holds
only per-input detectors (BinaryInputDetector, BinaryActivationDetector, BeyondDetector,
SubsetScanningDetector), none of which keeps a query history. Its one stateful detector is the
unmerged pull request Trusted-AI/adversarial-robustness-toolbox#1420 (closed, 2021),
``art/defences/detector/evasion/black_box/detector.py``. ``ArtPrototype`` below re-implements
that prototype's detection rule to compare with it on the same streams: one global memory for
every client (``deque(..., maxlen=max_memory_size)``, detector.py line 44 at commit d42f403),
and for each query the whole memory re-encoded and a scikit-learn ``NearestNeighbors`` index
re-fitted on it (``scan``, lines 61-64), then the mean distance to the k nearest neighbours
compared with a fixed threshold and the query appended (lines 66-70). At the PR's last commit
(e47faf1) the re-fit moved into ``NearestNeighborsWrapper.update_memory`` (knn_wrapper.py,
``self._knn.fit(self._memory_queue.get_memory())``) and ``MemoryQueue.extend`` copies the whole
memory with ``np.concatenate`` on each call, so keeping the index current still costs a re-fit
per query. It uses the same projection encoder, k and history length as ``stateful_projection``,
so the difference is the design (global memory, re-fit per query, no clear on alert).

Alerts only count here: nothing is blocked, so each attack runs to the end of its budget and the
numbers show every query a monitor would have let through before its first alert.

Usage: python benchmarks/monitors.py [--quick] [--cases digits,mnist,phishing] [--fresh]
Runtime on two shared CPU cores, one thread: 441 s measured (2026-12-02), plus about 3.5 minutes
the first time to train mnist-cnn; ``--quick`` about 80 s. A rerun resumes from the saved parts.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs
from torch import Tensor, nn

from modelshield import zoo
from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
from modelshield.attacks.extraction import JacobianAugmentation, KnockoffNets
from modelshield.data import load_dataset, load_tabular_dataset
from modelshield.defenses.extraction import PRADA
from modelshield.defenses.monitoring import Blacklight, StatefulDetector, train_contrastive_encoder
from modelshield.models import as_black_box

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("digits", "mnist", "phishing")


# -- the ART prototype, re-implemented -----------------------------------------------------------


@dataclass
class ArtPrototype:
    """The detection rule of ART's unmerged stateful detector (PR #1420, ``BlackBoxDetector.scan``).

    One global memory of raw queries (every client's), at most ``memory`` long; for each query the
    memory is encoded, a ``sklearn.neighbors.NearestNeighbors(n_neighbors=k)`` index is fitted on
    it, and the query is flagged when the mean distance to its k nearest neighbours is below
    ``threshold_``; the query is then appended. The memory is never cleared on an alert (the PR's
    ``scan`` does not call ``clear_memory``). While the memory holds fewer than k queries the PR
    raises; here the query scores +inf (no alert). ``fit`` sets the threshold from benign
    streams at the target rate, by the same rule as ``StatefulDetector``.
    """

    encode: Callable[[np.ndarray], np.ndarray]
    k: int = 10
    memory: int = 1000
    fpr: float = 0.005
    threshold_: float | None = None
    calibration_: dict[str, Any] | None = None
    queries_to_detection_: dict[Hashable, int] = field(default_factory=dict)
    _mem: collections.deque[np.ndarray] = field(init=False, repr=False)
    _counts: dict[Hashable, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._mem = collections.deque(maxlen=self.memory)

    def _scan(self, q: np.ndarray) -> float:
        score = math.inf
        if len(self._mem) >= self.k:
            encoded_memory = self.encode(np.array(self._mem))  # the whole memory, every query
            knn = NearestNeighbors(n_neighbors=self.k).fit(encoded_memory)  # re-fitted every query
            dist, _ = knn.kneighbors(self.encode(q[None]))
            score = float(np.mean(dist))
        self._mem.append(q)
        return score

    def fit(self, benign: Sequence[Tensor]) -> ArtPrototype:
        self.reset()
        scores = torch.tensor([self._scan(row) for s in benign for row in s.flatten(1).numpy()])
        self.threshold_ = low_threshold(scores, self.fpr)
        self.calibration_ = {"queries": int(scores.numel()), "streams": len(benign), "fpr_target": self.fpr,
                             "fpr_in_sample": float((scores < self.threshold_).float().mean()),
                             "threshold": self.threshold_}
        self.reset()
        return self

    def update(self, client_id: Hashable, x_batch: Tensor) -> list[float]:
        assert self.threshold_ is not None
        alerts = []
        for row in x_batch.detach().flatten(1).float().numpy():
            self._counts[client_id] = self._counts.get(client_id, 0) + 1
            score = self._scan(row)
            if score < self.threshold_:
                self.queries_to_detection_.setdefault(client_id, self._counts[client_id])
                alerts.append(score)
        return alerts

    def reset(self, client_id: Hashable | None = None) -> None:
        if client_id is None:
            self._mem.clear()
            self._counts.clear()
            self.queries_to_detection_.clear()
        else:
            self._counts.pop(client_id, None)
            self.queries_to_detection_.pop(client_id, None)


def art_prototype(p: np.ndarray, fpr: float, memory: int = 1000) -> ArtPrototype:
    """The ART prototype with the projection encoder p, k=10 and a 1,000-query memory."""
    return ArtPrototype(encode=lambda a: a.reshape(len(a), -1) @ p, k=10, memory=memory, fpr=fpr)


def low_threshold(scores: Tensor, fpr: float) -> float:
    """Largest t with at most floor(fpr * n) scores strictly below t (alert rule: score < t)."""
    s = scores[torch.isfinite(scores)].double().sort().values
    allowed = math.floor(fpr * scores.numel())
    return math.inf if allowed >= s.numel() else float(s[allowed])


def projection(d_in: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """The StatefulDetector's "projection" encoder matrix (same seed and scaling)."""
    gen = torch.Generator().manual_seed(seed)
    p: np.ndarray = (torch.randn(d_in, dim, generator=gen) / math.sqrt(dim)).numpy()
    return p


@dataclass
class Offset:
    """A monitor fed ``x + offset``: with ``offset = step / 2`` Blacklight rounds each value to the
    nearest multiple of its step instead of flooring it, so a discrete value (tabular -1, 0, 1)
    sits in the middle of its bin, not on a bin edge where any negative noise changes the bin."""

    inner: Blacklight
    offset: float

    @property
    def threshold_(self) -> Any:
        return self.inner.threshold_

    @property
    def calibration_(self) -> Any:
        return self.inner.calibration_

    @property
    def queries_to_detection_(self) -> dict[Hashable, int]:
        return self.inner.queries_to_detection_

    def fit(self, benign: Sequence[Tensor]) -> Offset:
        self.inner.fit([s + self.offset for s in benign])
        return self

    def update(self, client_id: Hashable, x_batch: Tensor) -> list[Any]:
        return list(self.inner.update(client_id, x_batch + self.offset))

    def reset(self, client_id: Hashable | None = None) -> None:
        self.inner.reset(client_id)


Monitor = Any  # StatefulDetector | Blacklight | ArtPrototype | Offset: fit, update, reset, ...


# -- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """One protected model with its data, monitors and attacks."""

    name: str
    model: str
    proba: Callable[[Tensor], Tensor]  # (N, *shape) -> (N, C) probabilities
    bounds: tuple[float, float]
    n_classes: int
    x_fit: list[Tensor]  # benign training-split streams for the thresholds
    held_out: dict[str, list[Tensor]]  # benign test-split streams
    x_attack: Tensor  # correctly classified test points to attack
    y_attack: Tensor
    monitors: dict[str, Monitor]
    attacks: dict[str, Any]
    image: bool
    x_train: Tensor
    x_test: Tensor
    notes: dict[str, Any]


def penultimate(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's penultimate features (the ReLU after the first linear layer of Cnn8x8 / LeNet28)."""
    feats, head = net.features, net.classifier
    assert isinstance(feats, nn.Module) and isinstance(head, nn.Sequential)

    def encode(x: Tensor) -> Tensor:
        out: Tensor = head[1](head[0](feats(x)))
        return out

    return encode


def image_monitors(net: nn.Module, d_in: int, fpr: float, window: int, *,
                   encoder: nn.Module | None = None) -> dict[str, Monitor]:
    p = projection(d_in)
    mons: dict[str, Monitor] = {
        "stateful_projection": StatefulDetector(k=10, fpr=fpr, encoder="projection"),
        "stateful_pixels": StatefulDetector(k=10, fpr=fpr, encoder="pixels"),
        "stateful_features": StatefulDetector(k=10, fpr=fpr, encoder=penultimate(net)),
    }
    if encoder is not None:
        mons["stateful_contrastive"] = StatefulDetector(k=10, fpr=fpr, encoder=encoder)
    mons["blacklight"] = Blacklight(step=0.2, window=window, top_n=50, fpr=fpr, scope="global")
    mons["art_prototype"] = art_prototype(p, fpr)
    return mons


def torch_case(name: str, model_name: str, args: argparse.Namespace, n_fit: int, n_held: int) -> Case:
    t0 = time.perf_counter()
    cached = zoo.is_cached(model_name)
    model = zoo.load(model_name)
    load_s = time.perf_counter() - t0
    net = model.module.eval()
    ds = load_dataset(model.spec.dataset)
    gen = torch.Generator().manual_seed(args.seed)
    train = ds.x_train[torch.randperm(ds.x_train.shape[0], generator=gen)]
    encoder = None
    notes: dict[str, Any] = {"zoo_cached_before": cached, "zoo_load_s": round(load_s, 1),
                             "test_accuracy": model.meta.get("test_accuracy")}
    if name == "digits":
        # the contrastive encoder learns on one half of the training split, thresholds on the other
        half = train.shape[0] // 2
        t0 = time.perf_counter()
        encoder = train_contrastive_encoder(train[:half], sigma=args.sigma, shift=args.shift, seed=args.seed)
        notes["contrastive_encoder_s"] = round(time.perf_counter() - t0, 1)
        train = train[half:]
    train = train[: 2 * n_fit]
    fit = [train[: train.shape[0] // 2], train[train.shape[0] // 2:]]
    test = ds.x_test
    shuffled = test[torch.randperm(test.shape[0], generator=gen)][:n_held]
    held = {"shuffled": [shuffled], "natural_order": [test[:n_held]]}
    x_all, y_all = ds.x_test, ds.y_test
    with torch.no_grad():
        correct = net(x_all[:500]).argmax(1) == y_all[:500]
    x, y = x_all[:500][correct][: args.points], y_all[:500][correct][: args.points]
    d_in = math.prod(x.shape[1:])
    eps = 0.1 if name == "digits" else 0.3  # Square's L-inf budget: 0.3 is MNIST's usual one
    attacks = {
        "square": Square(eps=eps, max_queries=args.max_queries, seed=args.seed),
        "simba": SimBA(max_queries=args.max_queries, seed=args.seed),
        "hopskipjump": HopSkipJump(max_queries=args.max_queries, seed=args.seed),
    }
    window = 8 if name == "digits" else 20

    def proba(q: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = net(q).softmax(1)
        return out

    notes.update({"square_eps": eps, "blacklight": {"step": 0.2, "window": window, "top_n": 50}})
    return Case(name, model_name, proba, (0.0, 1.0), 10, fit, held, x, y,
                image_monitors(net, d_in, args.fpr, window, encoder=encoder), attacks, True,
                ds.x_train, ds.x_test, notes)


def phishing_case(args: argparse.Namespace, n_fit: int) -> Case:
    """phishing-gbm: 30 features in {-1, 0, 1}, bounds [-1, 1].

    Blacklight's parameters are adapted: a window of 8 features (30 values give 23 windows, the
    paper's 20-value window only 11) and two quantisations: ``blacklight`` floors at step 0.2
    (the image default: each discrete value sits on a bin edge, so any negative noise moves it to
    the next bin) and ``blacklight_round`` rounds to the nearest integer (step 1, offset 0.5),
    which maps every query back onto the discrete grid.
    """
    model_name = "phishing-gbm"
    t0 = time.perf_counter()
    model = zoo.load(model_name)
    load_s = time.perf_counter() - t0
    est = model.module
    tab = load_tabular_dataset("phishing-websites", deduplicate=True)
    gen = torch.Generator().manual_seed(args.seed)
    train = tab.x_train[torch.randperm(tab.x_train.shape[0], generator=gen)][: 2 * n_fit]
    fit = [train[: train.shape[0] // 2], train[train.shape[0] // 2:]]
    test = tab.x_test
    held = {"shuffled": [test[torch.randperm(test.shape[0], generator=gen)]], "natural_order": [test]}

    def proba(q: Tensor) -> Tensor:
        return torch.as_tensor(est.predict_proba(q.detach().double().numpy()), dtype=torch.float32)

    correct = proba(test[:300]).argmax(1) == tab.y_test[:300]
    # attack phishing rows (label 1): the attacker wants its phishing site classified benign
    pick = correct & (tab.y_test[:300] == 1)
    x, y = test[:300][pick][: args.points], tab.y_test[:300][pick][: args.points]
    p = projection(30)
    mons: dict[str, Monitor] = {
        "stateful_projection": StatefulDetector(k=10, fpr=args.fpr, encoder="projection"),
        "stateful_pixels": StatefulDetector(k=10, fpr=args.fpr, encoder="pixels"),
        "blacklight": Blacklight(step=0.2, window=8, top_n=50, fpr=args.fpr, scope="global"),
        "blacklight_round": Offset(Blacklight(step=1.0, window=8, top_n=50, fpr=args.fpr, scope="global"),
                                   0.5),
        "art_prototype": art_prototype(p, args.fpr),
    }
    # A tree ensemble's thresholds sit at -0.5 and 0.5: a step must move a feature by more than
    # 0.5 to change the score, so the attacks get a 1.0 L-inf budget and SimBA a 1.0 step.
    attacks = {
        "square": Square(eps=1.0, max_queries=args.max_queries, seed=args.seed),
        "simba": SimBA(eps_step=1.0, max_queries=args.max_queries, seed=args.seed),
        "hopskipjump": HopSkipJump(max_queries=args.max_queries, seed=args.seed),
    }
    notes = {"zoo_load_s": round(load_s, 1), "test_accuracy": model.meta.get("test_accuracy"),
             "attacked": "phishing rows (label 1), the attacker wants 'legitimate'",
             "square_eps": 1.0, "simba_eps_step": 1.0,
             "blacklight": {"step": 0.2, "window": 8, "top_n": 50},
             "blacklight_round": {"step": 1.0, "offset": 0.5, "window": 8, "top_n": 50},
             "note": ("the evasion attacks search the continuous box [-1, 1]^30; their queries are "
                      "not valid discrete rows (a real form would only take -1, 0, 1)")}
    return Case("phishing", model_name, proba, (-1.0, 1.0), 2, fit, held, x, y, mons, attacks, False,
                tab.x_train, tab.x_test, notes)


# -- measurements --------------------------------------------------------------------------------


def benign_fpr(mon: Monitor, streams: list[Tensor], batch: int) -> dict[str, Any]:
    """Per-query false-positive rate over held-out benign streams (each a fresh client)."""
    flagged = queries = 0
    mon.reset()
    for i, s in enumerate(streams):
        for start in range(0, s.shape[0], batch):
            flagged += len(mon.update(f"benign-{i}", s[start:start + batch]))
        queries += s.shape[0]
    mon.reset()
    return {"queries": queries, "false_alerts": flagged, "fpr": flagged / queries}


def benign_part(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": case.notes, "fit_queries": sum(s.shape[0] for s in case.x_fit),
                           "monitors": {}}
    for name, mon in case.monitors.items():
        t0 = time.perf_counter()
        fprs = {k: benign_fpr(mon, v, args.batch) for k, v in case.held_out.items()}
        n = sum(r["queries"] for r in fprs.values())
        out["monitors"][name] = {
            "threshold": mon.threshold_, "calibration": mon.calibration_,
            "held_out": fprs, "within_0.5%": all(r["fpr"] <= 0.005 for r in fprs.values()),
            "us_per_query": round(1e6 * (time.perf_counter() - t0) / n, 1),
        }
    return out


def blind(x: Tensor, gen: torch.Generator, sigma: float, shift: int, flips: int,
          bounds: tuple[float, float]) -> Tensor:
    """Query blinding: Gaussian noise, then for images a random roll of up to ``shift`` pixels and for
    tabular rows ``flips`` random features set to a random value of {-1, 0, 1}; clipped to bounds."""
    out = x + sigma * torch.randn(x.shape, generator=gen)
    if shift:
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
        out = out.roll((dy, dx), dims=(-2, -1))
    if flips:
        idx = torch.randperm(out.shape[-1], generator=gen)[:flips]
        out[..., idx] = torch.randint(-1, 2, (flips,), generator=gen).float()
    return out.clamp(*bounds)


def attack_run(case: Case, attack: Any, *, cache: bool, sigma: float, shift: int, flips: int,
               seed: int) -> dict[str, Any]:
    """Attack each point as its own client through an API that feeds the monitors live.

    With ``cache`` the attacker answers exact repeats of its own earlier queries from a local
    cache (modelshield's attacks re-query the clean input, a free duplicate for the monitors);
    with ``sigma``, ``shift`` or ``flips`` each query sent is blinded (see ``blind``).
    """
    mons = case.monitors
    adaptive = sigma > 0 or shift > 0 or flips > 0
    for mon in mons.values():
        mon.reset()
    gen = torch.Generator().manual_seed(seed)
    first: dict[str, list[int | None]] = {name: [] for name in mons}
    alerts = dict.fromkeys(mons, 0)
    spent = dict.fromkeys(mons, 0.0)
    successes, reported, queries = [], [], []
    noted: set[str] = set()
    x, y = case.x_attack, case.y_attack
    for i in range(x.shape[0]):
        client = f"attacker-{i}"
        sent = [0]
        seen: dict[bytes, np.ndarray] = {}

        def ask(q: Tensor, client: str = client, sent: list[int] = sent) -> np.ndarray:
            if adaptive:
                q = torch.stack([blind(row, gen, sigma, shift, flips, case.bounds) for row in q])
            for name, mon in mons.items():
                t0 = time.perf_counter()
                alerts[name] += len(mon.update(client, q))
                spent[name] += time.perf_counter() - t0
            sent[0] += q.shape[0]
            out: np.ndarray = case.proba(q).double().numpy()
            return out

        def api(x_np: np.ndarray, seen: dict[bytes, np.ndarray] = seen) -> np.ndarray:
            q = torch.as_tensor(x_np, dtype=torch.float32)
            if not cache:
                return ask(q)
            keys = [row.numpy().tobytes() for row in q]
            new = [j for j, k in enumerate(keys) if k not in seen]
            if new:
                for j, row in zip(new, ask(q[new]), strict=True):
                    seen[keys[j]] = row
            return np.stack([seen[k] for k in keys])

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bb = as_black_box(api, bounds=case.bounds, n_classes=case.n_classes)
            result = attack(bb, x[i:i + 1], y[i:i + 1])
        noted.update(type(w.message).__name__ for w in caught)
        reported.append(bool(result.success[0]))
        # re-checked on the model itself: a blinded API can fool the attack
        successes.append(bool(case.proba(result.x_adv).argmax(1)[0] != y[i]))
        queries.append(sent[0])
        for name, mon in mons.items():
            first[name].append(mon.queries_to_detection_.get(client))
    total = max(1, sum(queries))
    out: dict[str, Any] = {"queries_sent_per_point": queries, "attack_success": successes,
                           "attack_success_reported": reported, "warnings": sorted(noted), "monitors": {}}
    for name in mons:
        got = [q for q in first[name] if q is not None]
        out["monitors"][name] = {
            "queries_to_first_alert": first[name],
            "detected": f"{len(got)}/{len(first[name])}",
            "median_queries_to_first_alert": statistics.median(got) if got else None,
            "max_queries_to_first_alert": max(got) if got else None,
            "within_50_queries": len(got) == len(first[name]) and max(got, default=0) <= 50,
            "alerts_total": alerts[name],
            "us_per_query": round(1e6 * spent[name] / total, 1),
        }
    return out


def modes(name: str, args: argparse.Namespace) -> dict[str, tuple[bool, float, int, int]]:
    """mode -> (cache, sigma, shift, flips). Tabular noise is in feature units (range 2)."""
    out: dict[str, tuple[bool, float, int, int]] = {}
    if name == "digits":
        out["uncached"] = (False, 0.0, 0, 0)
    out["cached"] = (True, 0.0, 0, 0)
    if name != "phishing":
        out["adaptive_noise"] = (True, args.sigma, 0, 0)
        out["adaptive_strong_noise"] = (True, args.strong_sigma, 0, 0)
        out["adaptive_noise_shift"] = (True, args.sigma, args.shift, 0)
    else:
        out["adaptive_noise"] = (True, 2 * args.sigma, 0, 0)
        out["adaptive_strong_noise"] = (True, 2 * args.strong_sigma, 0, 0)
        out["adaptive_noise_flips"] = (True, 2 * args.sigma, 0, args.flips)
    return out


def extraction_part(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """PRADA on Jacobian augmentation and a noise-query Knockoff thief, and on benign streams."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    size = args.prada_stream
    n = args.prada_streams

    def labelled(xs: Tensor) -> tuple[Tensor, Tensor]:
        return xs, case.proba(xs).argmax(1)

    train = case.x_train[torch.randperm(case.x_train.shape[0], generator=gen)][: n * size]
    test = case.x_test[torch.randperm(case.x_test.shape[0], generator=gen)][: n * size]
    calib = [labelled(s) for s in torch.split(train, size)]
    held = [labelled(s) for s in torch.split(test, size)]
    monitors = {"default_delta": PRADA(), "calibrated_delta": PRADA().calibrate(calib, max_fpr=0.0)}
    out: dict[str, Any] = {"stream_queries": size, "calibration_streams": len(calib),
                           "held_out_streams": len(held), "monitors": {}}
    for name, template in monitors.items():
        flagged, alerts, total = 0, 0, 0
        for j, (xs, lb) in enumerate(held):
            mon = PRADA(delta=template.delta)
            for r in range(xs.shape[0]):  # one query at a time: at most one alert per query
                alerts += len(mon.update(j, xs[r:r + 1], lb[r:r + 1]))
            flagged += j in mon.flagged_
            total += xs.shape[0]
        out["monitors"][name] = {"delta": round(template.delta, 6),
                                 "held_out_streams_flagged": f"{flagged}/{len(held)}",
                                 "held_out_per_query_fpr": alerts / total}
    budget = args.extraction_budget
    eval_x = case.x_test[-500:]
    eval_y = torch.zeros(eval_x.shape[0], dtype=torch.long)
    victim_labels = case.proba(eval_x).argmax(1)
    seed_pool = case.x_train[torch.randperm(case.x_train.shape[0], generator=gen)][:1000]
    lo, hi = case.bounds
    noise_pool = lo + (hi - lo) * torch.rand((budget, *case.x_train.shape[1:]), generator=gen)
    thieves: dict[str, tuple[Any, Tensor]] = {
        "jacobian": (JacobianAugmentation(budget=budget, seed_size=100, rounds=8, epochs=args.thief_epochs,
                                          lambda_=0.1 * (hi - lo), output="labels", seed=args.seed),
                     seed_pool),
        "knockoff_noise": (KnockoffNets(budget=budget, epochs=args.thief_epochs, seed=args.seed), noise_pool),
    }
    out["attacks"] = {}
    for tname, (thief, pool) in thieves.items():
        live = {name: PRADA(delta=m.delta) for name, m in monitors.items()}
        sent = [0]

        def api(x_np: np.ndarray, live: dict[str, PRADA] = live, sent: list[int] = sent) -> np.ndarray:
            q = torch.as_tensor(x_np, dtype=torch.float32)
            p = case.proba(q)
            for r in range(q.shape[0]):
                for mon in live.values():
                    mon.update("thief", q[r:r + 1], p[r:r + 1].argmax(1))
            sent[0] += q.shape[0]
            out_np: np.ndarray = p.double().numpy()
            return out_np

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = thief(as_black_box(api, bounds=case.bounds, n_classes=case.n_classes), pool,
                        eval_data=(eval_x, eval_y), victim_labels=victim_labels)
        last = res.curve[-1] if res.curve else None
        out["attacks"][tname] = {
            "queries": sent[0],
            "thief_fidelity": None if last is None else round(last.fidelity, 4),
            "time_s": round(time.perf_counter() - t0, 1),
            **{f"queries_to_alert_{name}": mon.queries_to_detection_.get("thief")
               for name, mon in live.items()},
            **{f"final_w_{name}": round(mon.shapiro_.get("thief", math.nan), 4)
               for name, mon in live.items()},
        }
    return out


def cost_part(args: argparse.Namespace) -> dict[str, Any]:
    """Microseconds per query of one client against history length, on MNIST-sized (784) and
    digits-sized (64) queries: the StatefulDetector's ring buffer vs the ART prototype's re-fit."""
    out: dict[str, Any] = {"history_lengths": list(args.cost_lengths), "timed_queries": args.cost_timed}
    gen = torch.Generator().manual_seed(args.seed)
    for d_in in (64, 784):
        p = projection(d_in)
        rows: dict[str, Any] = {}
        for m in args.cost_lengths:
            fill = torch.rand((m, d_in), generator=gen)
            timed = torch.rand((args.cost_timed, d_in), generator=gen)
            ours = StatefulDetector(k=10, history=m, fpr=0.005, encoder="projection").fit(fill[:20])
            ours.threshold_ = -1.0  # never alert: the history is never cleared, it stays full
            for chunk in torch.split(fill, 500):
                ours.update("c", chunk)
            art = art_prototype(p, 0.005, memory=m)
            art.threshold_ = -1.0
            art._mem.extend(fill.numpy())
            res = {}
            for name, mon in (("stateful_projection", ours), ("art_prototype", art)):
                n = args.cost_timed
                if name == "art_prototype":  # its cost grows with m: fewer timed queries at large m
                    n = max(10, min(n, n * 1000 // m))
                t0 = time.perf_counter()
                for i in range(n):
                    mon.update("c", timed[i:i + 1])
                res[name] = round(1e6 * (time.perf_counter() - t0) / n, 1)
            rows[str(m)] = res
        out[f"d{d_in}_us_per_query"] = rows
    # The prototype re-encodes its whole memory on every query: with a CNN encoder (the paper's
    # choice; here mnist-cnn's penultimate features) that is one forward pass per stored query.
    net = zoo.load("mnist-cnn").module.eval()
    feats = penultimate(net)

    def encode(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            e: np.ndarray = feats(torch.as_tensor(a).view(-1, 1, 28, 28)).numpy()
        return e

    rows = {}
    for m in (250, 1000):
        fill = torch.rand((m, 1, 28, 28), generator=gen)
        ours = StatefulDetector(k=10, history=m, fpr=0.005, encoder=feats).fit(fill[:20])
        ours.threshold_ = -1.0
        ours.update("c", fill)
        art = ArtPrototype(encode=encode, k=10, memory=m)
        art.threshold_ = -1.0
        art._mem.extend(fill.flatten(1).numpy())
        timed = torch.rand((10, 1, 28, 28), generator=gen)
        res = {}
        for name, mon in (("stateful_features", ours), ("art_prototype_features", art)):
            t0 = time.perf_counter()
            for i in range(timed.shape[0]):
                mon.update("c", timed[i:i + 1])
            res[name] = round(1e6 * (time.perf_counter() - t0) / timed.shape[0], 1)
        rows[str(m)] = res
    out["d784_cnn_features_us_per_query"] = rows
    return out


# -- driver --------------------------------------------------------------------------------------


def save(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=1, default=lambda v: None)
    os.replace(tmp, path)


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def benign_job(case: Case, args: argparse.Namespace, setup_s: float) -> dict[str, Any]:
    return {**benign_part(case, args), "setup_s": setup_s}


def mode_job(case: Case, args: argparse.Namespace, cache: bool, sigma: float, shift: int,
             flips: int) -> dict[str, Any]:
    return {"cache": cache, "sigma": sigma, "shift": shift, "flips": flips,
            **{a: attack_run(case, atk, cache=cache, sigma=sigma, shift=shift, flips=flips, seed=args.seed)
               for a, atk in case.attacks.items()}}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small run (2 points, 150 queries, short streams)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: digits, mnist, phishing")
    p.add_argument("--skip", default="", help="comma-separated parts to skip, e.g. cost,mnist/extraction")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default results/monitors[_quick].json)")
    p.add_argument("--fresh", action="store_true", help="ignore the parts already saved in --out")
    p.add_argument("--points", type=int, default=None, help="points attacked per attack (one client each)")
    p.add_argument("--max-queries", type=int, default=None, help="query budget per point")
    p.add_argument("--fpr", type=float, default=0.005, help="target per-query false-positive rate")
    p.add_argument("--sigma", type=float, default=0.05, help="adaptive twist: noise std (x2 on tabular)")
    p.add_argument("--strong-sigma", type=float, default=0.15, help="adaptive twist: larger noise std")
    p.add_argument("--shift", type=int, default=1, help="adaptive twist: max shift in pixels")
    p.add_argument("--flips", type=int, default=2, help="adaptive twist: tabular features re-drawn")
    p.add_argument("--batch", type=int, default=1, help="benign queries per update call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.points = args.points or (2 if q else 5)
    args.max_queries = args.max_queries or (150 if q else 500)
    args.n_fit = 300 if q else 1000  # per training stream (2 streams)
    args.n_held = 400 if q else 2000
    args.prada_stream = 200 if q else 300
    args.prada_streams = 3 if q else 6
    args.extraction_budget = 250 if q else 400
    args.thief_epochs = 3 if q else 5
    args.cost_lengths = (250, 1000, 4000) if q else (250, 1000, 4000, 16000)
    args.cost_timed = 30 if q else 100
    args.out = args.out or RESULTS / ("monitors_quick.json" if q else "monitors.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy / scikit-learn too: one thread, as torch
    started = time.perf_counter()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("cases", "skip", "out", "fresh", "threads")}
    report: dict[str, Any] = {}
    if args.out.exists() and not args.fresh:
        try:
            old = json.loads(args.out.read_text())
        except ValueError:
            old = {}
        if old.get("settings") == clean(settings):
            report = old
    if not report:
        report = {"benchmark": "monitors", "settings": clean(settings), "parts": {}}
    report.update({"python": platform.python_version(), "torch": torch.__version__})
    parts: dict[str, Any] = report["parts"]
    skip = set(filter(None, args.skip.split(",")))

    ran: list[str] = []

    def run(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        if key in parts or key in skip:
            return
        ran.append(key)
        t0 = time.perf_counter()
        result = fn()
        result["time_s"] = round(time.perf_counter() - t0, 1)
        parts[key] = clean(result)
        save(report, args.out)
        print(f"{key}: {result['time_s']} s", file=sys.stderr, flush=True)

    for name in filter(None, args.cases.split(",")):
        wanted = [f"{name}/benign", f"{name}/extraction", *(f"{name}/{m}" for m in modes(name, args))]
        if all(k in parts or k in skip for k in wanted):
            continue
        t0 = time.perf_counter()
        if name == "phishing":
            case = phishing_case(args, args.n_fit)
        else:
            case = torch_case(name, f"{name}-cnn", args, args.n_fit, args.n_held)
        for mon in case.monitors.values():
            mon.fit(case.x_fit)
        setup_s = round(time.perf_counter() - t0, 1)
        run(f"{name}/benign", partial(benign_job, case, args, setup_s))
        for mode, blinding in modes(name, args).items():
            run(f"{name}/{mode}", partial(mode_job, case, args, *blinding))
        run(f"{name}/extraction", partial(extraction_part, case, args))
    run("cost", partial(cost_part, args))
    if ran:  # each run that measured something: its wall time and the parts it added
        report.setdefault("runs", []).append({"time_s": round(time.perf_counter() - started, 1),
                                              "parts": ran, "threads": args.threads})
        save(report, args.out)
    print(json.dumps(report, indent=1, default=lambda v: None))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
