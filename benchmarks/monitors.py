"""Live monitors of query-based evasion, evaluated honestly (issue #18, item 4).

Prints one JSON object:
- ``benign``: for each monitor, its threshold fitted on benign streams of the digits *training*
  split at the target per-query false-positive rate, and the per-query false-positive rate
  measured on held-out benign streams (the digits *test* split, shuffled, and the same split in
  its natural order), each stream a fresh client;
- ``attacks``: modelshield's Square (L-inf), SimBA and HopSkipJump run against the zoo model
  ``digits-cnn`` through a black-box API that feeds every query the attack makes into every
  monitor as it is asked (one client per attacked image): queries until the first alert per
  image, total alerts, queries and the attack's success;
- ``attacks_cached``: the same, the attacker answering exact repeats of its own queries from a
  local cache (modelshield's attacks re-query the clean input, a free duplicate for a monitor);
- ``adaptive_*``: the same attacks (cached) with query blinding, the adaptive twist the
  stateful-detection papers evaluate: each query is randomly transformed before it is sent
  (Gaussian noise of std ``--sigma`` or ``--strong-sigma``; with ``_shift`` also a random roll of
  up to ``--shift`` pixels), so near-duplicates look less alike; how many queries pass before
  the first alert, and whether the attack still succeeds. ``attack_success`` is re-checked on
  the model itself (no blinding); ``attack_success_reported`` is what the attack believed
  through the blinded API (a one-pixel roll of an 8x8 digit already changes the label, so the
  attack stops at once believing it has won);
- ``cost``: microseconds per single-query ``update`` early and late in a long stream of one
  client (the stateful history fills at 1,000 queries): bounded memory, bounded cost per query;
- ``mnist`` (only with ``--mnist`` and MNIST data present under MODELSHIELD_DATA): the benign
  false-positive rate of the same monitors on MNIST test streams.

The monitors: ``StatefulDetector`` (Chen, Carlini and Wagner, 2020) with a random-projection
encoder, with raw pixels and with the protected model's penultimate features, and Blacklight
(Li et al., 2022) with a global hash table. Alerts only count here: nothing is blocked, so each
attack runs to the end of its budget and the numbers show every query a monitor would have let
through before its first alert.

Usage: python benchmarks/monitors.py [--points 5] [--max-queries 500] [--fpr 0.005] [--mnist]
Runtime: about a minute on two shared CPU cores, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelshield import zoo
from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
from modelshield.data import load_dataset
from modelshield.defenses.monitoring import Blacklight, StatefulDetector, train_contrastive_encoder
from modelshield.errors import MissingDataError
from modelshield.models import as_black_box

Monitor = StatefulDetector | Blacklight


def penultimate(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """digits-cnn's penultimate features (the ReLU after the first linear layer)."""
    feats, head = net.features, net.classifier  # Cnn8x8's two stages
    assert isinstance(feats, nn.Module) and isinstance(head, nn.Sequential)

    def encode(x: Tensor) -> Tensor:
        out: Tensor = head[1](head[0](feats(x)))
        return out

    return encode


def monitors(net: nn.Module, encoder: nn.Module, fpr: float) -> dict[str, Monitor]:
    """The monitors compared, unfitted."""
    return {
        "stateful_projection": StatefulDetector(k=10, fpr=fpr, encoder="projection"),
        "stateful_pixels": StatefulDetector(k=10, fpr=fpr, encoder="pixels"),
        "stateful_features": StatefulDetector(k=10, fpr=fpr, encoder=penultimate(net)),
        "stateful_contrastive": StatefulDetector(k=10, fpr=fpr, encoder=encoder),
        "blacklight": Blacklight(step=0.2, window=8, top_n=50, fpr=fpr, scope="global"),
    }


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


def cost(mons: dict[str, Monitor], x: Tensor, n: int, seed: int) -> dict[str, Any]:
    """Microseconds per single-query update over queries 1-1,000, 1,001-2,000 and the last 1,000 of
    n queries of one client: flat once the history is full when the cost per query is bounded.
    The queries are uniform noise images, which raise (almost) no alert, so the stateful
    detector's history fills up (1,000) and is not cleared."""
    gen = torch.Generator().manual_seed(seed)
    stream = torch.rand((n, *x.shape[1:]), generator=gen)
    out: dict[str, Any] = {}
    for name, mon in mons.items():
        mon.reset()
        times, alerts = [], 0
        for i in range(n):
            t0 = time.perf_counter()
            alerts += len(mon.update("load", stream[i:i + 1]))
            times.append(time.perf_counter() - t0)
        mon.reset()
        out[name] = {"queries": n, "alerts": alerts,
                     "us_queries_1_1000": round(1e6 * statistics.mean(times[:1000]), 1),
                     "us_queries_1001_2000": round(1e6 * statistics.mean(times[1000:2000]), 1),
                     "us_last_1000": round(1e6 * statistics.mean(times[-1000:]), 1)}
    return out


def blind(x: Tensor, gen: torch.Generator, sigma: float, shift: int) -> Tensor:
    """Query blinding: Gaussian noise and a random roll of up to ``shift`` pixels, clipped to [0, 1]."""
    out = x + sigma * torch.randn(x.shape, generator=gen)
    if shift:
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
        out = out.roll((dy, dx), dims=(-2, -1))
    return out.clamp(0.0, 1.0)


def attack_run(net: nn.Module, mons: dict[str, Monitor], attack: Any, x: Tensor, y: Tensor, *,
               cache: bool, sigma: float, shift: int, seed: int) -> dict[str, Any]:
    """Attack each image as its own client through an API that feeds the monitors live.

    With ``cache`` the attacker answers exact repeats of its own earlier queries from a local
    cache (modelshield's attacks re-query the clean input, a free near-duplicate for the
    monitors); with ``sigma`` or ``shift`` each query sent is blinded (see ``blind``).
    """
    adaptive = sigma > 0 or shift > 0
    for mon in mons.values():
        mon.reset()
    gen = torch.Generator().manual_seed(seed)
    first: dict[str, list[int | None]] = {name: [] for name in mons}
    alerts = dict.fromkeys(mons, 0)
    successes, reported, queries = [], [], []
    noted: set[str] = set()
    for i in range(x.shape[0]):
        client = f"attacker-{i}"
        sent = [0]
        seen: dict[bytes, np.ndarray] = {}

        def ask(q: Tensor, client: str = client, sent: list[int] = sent) -> np.ndarray:
            if adaptive:
                q = torch.stack([blind(row, gen, sigma, shift) for row in q])
            for name, mon in mons.items():
                alerts[name] += len(mon.update(client, q))
            sent[0] += q.shape[0]
            with torch.no_grad():
                out: np.ndarray = net(q).softmax(1).double().numpy()
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
            result = attack(as_black_box(api, bounds=(0.0, 1.0), n_classes=10), x[i:i + 1], y[i:i + 1])
        noted.update(type(w.message).__name__ for w in caught)
        reported.append(bool(result.success[0]))
        with torch.no_grad():  # re-checked on the model itself: a blinded API can fool the attack
            successes.append(bool(net(result.x_adv).argmax(1)[0] != y[i]))
        queries.append(sent[0])
        for name, mon in mons.items():
            first[name].append(mon.queries_to_detection_.get(client))
    out: dict[str, Any] = {"queries_sent_per_image": queries, "attack_success": successes,
                           "attack_success_reported": reported,
                           "warnings": sorted(noted), "monitors": {}}
    for name in mons:
        got = [q for q in first[name] if q is not None]
        out["monitors"][name] = {
            "queries_to_first_alert": first[name],
            "detected_images": f"{len(got)}/{len(first[name])}",
            "median_queries_to_first_alert": statistics.median(got) if got else None,
            "max_queries_to_first_alert": max(got) if got else None,
            "within_50_queries": len(got) == len(first[name]) and max(got, default=0) <= 50,
            "alerts_total": alerts[name],
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--points", type=int, default=5, help="images attacked per attack (one client each)")
    p.add_argument("--max-queries", type=int, default=500, help="query budget per image")
    p.add_argument("--fpr", type=float, default=0.005, help="target per-query false-positive rate")
    p.add_argument("--eps", type=float, default=0.1, help="Square's L-inf budget")
    p.add_argument("--sigma", type=float, default=0.05, help="adaptive twist: noise std")
    p.add_argument("--strong-sigma", type=float, default=0.15, help="adaptive twist: larger noise std")
    p.add_argument("--shift", type=int, default=1, help="adaptive twist: max shift in pixels")
    p.add_argument("--batch", type=int, default=1, help="benign queries per update call")
    p.add_argument("--cost-queries", type=int, default=4000, help="queries of the per-query cost run")
    p.add_argument("--mnist", action="store_true", help="also measure benign FPR on MNIST")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    ds = load_dataset("digits")
    gen = torch.Generator().manual_seed(args.seed)
    train = ds.x_train[torch.randperm(ds.x_train.shape[0], generator=gen)]
    # the contrastive encoder learns on one half of the training split, thresholds on the other
    half = train.shape[0] // 2
    encoder = train_contrastive_encoder(train[:half], sigma=args.sigma, shift=args.shift, seed=args.seed)
    rest = train[half:]
    fit_streams = [rest[: rest.shape[0] // 2], rest[rest.shape[0] // 2:]]
    test = ds.x_test
    held_out = {"shuffled": [test[torch.randperm(test.shape[0], generator=gen)]], "natural_order": [test]}

    model = zoo.load("digits-cnn")
    net = model.module.eval()
    mons = monitors(net, encoder, args.fpr)
    report: dict[str, Any] = {
        "benchmark": "monitors", "model": "digits-cnn", "data": "digits",
        "config": vars(args), "python": platform.python_version(), "torch": torch.__version__,
        "benign": {},
    }
    for name, mon in mons.items():
        t0 = time.perf_counter()
        mon.fit(fit_streams)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fprs = {k: benign_fpr(mon, v, args.batch) for k, v in held_out.items()}
        n = sum(r["queries"] for r in fprs.values())
        report["benign"][name] = {
            "threshold": mon.threshold_, "calibration": mon.calibration_, "fit_s": round(fit_s, 3),
            "held_out": fprs, "within_0.5%": all(r["fpr"] <= 0.005 for r in fprs.values()),
            "us_per_query": round(1e6 * (time.perf_counter() - t0) / n, 1),
        }

    report["cost"] = cost(mons, test, args.cost_queries, args.seed)

    x_all, y_all = zoo.test_split("digits-cnn")
    with torch.no_grad():
        correct = net(x_all).argmax(1) == y_all
    x, y = x_all[correct][: args.points], y_all[correct][: args.points]
    attacks = {
        "square": Square(eps=args.eps, max_queries=args.max_queries, seed=args.seed),
        "simba": SimBA(max_queries=args.max_queries, seed=args.seed),
        "hopskipjump": HopSkipJump(max_queries=args.max_queries, seed=args.seed),
    }
    modes = {  # (cache, sigma, shift)
        "attacks": (False, 0.0, 0),
        "attacks_cached": (True, 0.0, 0),
        "adaptive_noise": (True, args.sigma, 0),
        "adaptive_strong_noise": (True, args.strong_sigma, 0),
        "adaptive_noise_shift": (True, args.sigma, args.shift),
    }
    for mode, (cache, sigma, shift) in modes.items():
        report[mode] = {"cache": cache, "sigma": sigma, "shift": shift}
        for name, attack in attacks.items():
            report[mode][name] = attack_run(net, mons, attack, x, y, cache=cache, sigma=sigma,
                                            shift=shift, seed=args.seed)
    if args.mnist:
        report["mnist"] = mnist_fpr(args)
    report["time_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return report


def mnist_fpr(args: argparse.Namespace) -> dict[str, Any]:
    """Benign FPR on MNIST test streams, thresholds fitted on MNIST training streams."""
    try:
        ds = load_dataset("mnist")
    except MissingDataError as exc:
        return {"skipped": str(exc).split(".")[0]}
    gen = torch.Generator().manual_seed(args.seed)
    train = ds.x_train[torch.randperm(ds.x_train.shape[0], generator=gen)[:4000]]
    test = ds.x_test[torch.randperm(ds.x_test.shape[0], generator=gen)[:2000]]
    out: dict[str, Any] = {}
    mnist_monitors: dict[str, Monitor] = {
        "stateful_projection": StatefulDetector(k=10, fpr=args.fpr),
        "blacklight": Blacklight(step=0.2, window=20, top_n=50, fpr=args.fpr),
    }
    for name, mon in mnist_monitors.items():
        mon.fit([train[i:i + 1000] for i in range(0, train.shape[0], 1000)])
        streams = [test[i:i + 1000] for i in range(0, test.shape[0], 1000)]
        out[name] = {"threshold": mon.threshold_, **benign_fpr(mon, streams, 50)}
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
