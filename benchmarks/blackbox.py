"""Query-only evasion, measured in one run (issue: black-box and constraint-respecting attacks).

Prints one JSON object:

- ``mnist``: on ``mnist-cnn`` (L-inf eps 0.3, the first ``--n`` test points), modelshield's
  ``Square`` at each query budget (robust accuracy, time, median queries per success), and with
  the peers installed torchattacks' ``Square`` (same eps, p_init 0.8, seed, n_queries) and ART's
  ``HopSkipJump`` (L-inf, ``max_iter`` chosen so its queries per point are about the budget,
  counted with a counting wrapper). Every returned input is re-checked here: a point counts as
  broken only if it is misclassified, inside the 0.3 L-inf ball and inside [0, 1].
- ``phishing``: for each phishing zoo model, on the detected malicious rows of its (deduplicated)
  test split, modelshield's ``TabularSearch`` at 1, 2, 3 and 5 changed features (success rate,
  rows valid under the shipped constraint spec, queries per row, time) and, with ART installed,
  ART's ``HopSkipJump`` and ``ZooAttack`` (``SklearnClassifier``, clip_values (-1, 1)) on the
  first ``--peer-rows`` of those rows, with how many of their "adversarial" rows leave the
  feature domain or break the spec, and their query counts. modelshield is also reported on
  the same peer rows.

ART's HopSkipJump attacks one point at a time, so on MNIST it runs on the first ``--art-n``
points (50); modelshield's robust accuracy on those points is reported beside it.

Usage: python benchmarks/blackbox.py [--n 500] [--art-n 50] [--peer-rows 50] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelshield.attacks.evasion import Square
from modelshield.attacks.evasion.tabular import ConstraintSpec, TabularSearch, count_changes
from modelshield.data.phishing import PHISHING_CONSTRAINTS
from modelshield.models import as_model, zoo

EPS = 0.3


def _r(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), digits)


def recheck_linf(
    module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, eps: float
) -> tuple[dict[str, Any], Tensor]:
    """Robust accuracy re-checked here: a point is broken only if misclassified inside the ball."""
    with torch.no_grad():
        clean_ok = module(x).argmax(1) == y
        adv_ok = module(x_adv).argmax(1) == y
    flat = x_adv.flatten(1)
    inside = ((x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6) & (flat.amin(1) >= -1e-6) & (
        flat.amax(1) <= 1 + 1e-6)
    broken = clean_ok & ~adv_ok & inside
    return {
        "clean_accuracy": _r(float(clean_ok.float().mean())),
        "robust_accuracy": _r(float((clean_ok & ~broken).float().mean())),
        "broken": int(broken.sum()),
        "misclassified_outside_eps": int((clean_ok & ~adv_ok & ~inside).sum()),
    }, broken


class Counter:
    """Counts rows passed to a predict function (the peers' query count)."""

    def __init__(self, fn: Callable[..., np.ndarray]) -> None:
        self.fn, self.rows = fn, 0

    def __call__(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        self.rows += int(x.shape[0])
        return self.fn(x, **kwargs)


def _log(msg: str) -> None:
    print(f"[blackbox] {msg}", file=sys.stderr, flush=True)


def mnist_part(n: int, budgets: tuple[int, ...], peers: bool, art_n: int) -> dict[str, Any]:
    zm = zoo.load("mnist-cnn")
    module = zm.module.eval()
    x, y = zoo.test_split("mnist-cnn", n=n)
    out: dict[str, Any] = {"model": "mnist-cnn", "test_accuracy": zm.meta.get("test_accuracy"), "n": n,
                           "eps": EPS, "norm": "inf", "budgets": {}}
    for b in budgets:
        _log(f"mnist: budget {b}")
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        res = Square(eps=EPS, max_queries=b, p_init=0.8, seed=0)(module, x, y)
        dt = time.perf_counter() - t0
        check, broken = recheck_linf(module, x, res.x_adv, y, EPS)
        head = slice(0, min(art_n, n))
        with torch.no_grad():
            ok_head = module(x[head]).argmax(1) == y[head]
        check["robust_accuracy_first_art_n"] = _r(float((ok_head & ~broken[head]).float().mean()))
        med, mean = res.queries_per_success
        row["modelshield_square"] = {**check, "time_s": round(dt, 2),
                                     "median_queries_per_success": _r(med),
                                     "mean_queries_per_success": _r(mean),
                                     "queries_total": res.queries_forward}
        if peers:
            row.update(_mnist_peers(module, x, y, b, art_n))
        out["budgets"][str(b)] = row
    return out


def _hsj_iters(budget: int, init_eval: int = 100, per_iter_overhead: int = 25) -> int:
    """max_iter so that sum_i min(init_eval*sqrt(i), max_eval) + overhead per iteration ~ budget."""
    total, it = init_eval, 0  # init_size draws
    while True:
        nxt = total + int(init_eval * math.sqrt(it + 1)) + per_iter_overhead
        if nxt > budget and it > 0:
            return it
        total, it = nxt, it + 1


def _mnist_peers(module: nn.Module, x: Tensor, y: Tensor, budget: int, art_n: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        import torchattacks

        ta = torchattacks.Square(module, norm="Linf", eps=EPS, n_queries=budget, n_restarts=1, p_init=0.8,
                                 loss="margin", resc_schedule=True, seed=0)
        t0 = time.perf_counter()
        xa = ta(x, y)
        dt = time.perf_counter() - t0
        check, _ = recheck_linf(module, x, xa, y, EPS)
        row["torchattacks_square"] = {**check, "time_s": round(dt, 2),
                                      "queries": "not reported by torchattacks"}
    except ImportError as exc:
        row["torchattacks_square"] = {"skipped": str(exc)}
    try:
        from art.attacks.evasion import HopSkipJump
        from art.estimators.classification import BlackBoxClassifier

        def proba(a: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(module(torch.from_numpy(a.astype(np.float32))), 1).numpy()

        # ART's HopSkipJump attacks one point at a time: run it on the first art_n points only.
        x, y = x[:art_n], y[:art_n]
        counter = Counter(proba)
        clf = BlackBoxClassifier(counter, input_shape=tuple(x.shape[1:]), nb_classes=10,
                                 clip_values=(0.0, 1.0))
        iters = _hsj_iters(budget)
        hsj = HopSkipJump(clf, norm=np.inf, max_iter=iters, max_eval=10_000, init_eval=100, init_size=100,
                          batch_size=256, verbose=False)
        t0 = time.perf_counter()
        xa = torch.from_numpy(hsj.generate(x.numpy()).astype(np.float32))
        dt = time.perf_counter() - t0
        check, _ = recheck_linf(module, x, xa, y, EPS)
        row["art_hopskipjump"] = {**check, "n": int(x.shape[0]), "time_s": round(dt, 2), "max_iter": iters,
                                  "queries_per_point": round(counter.rows / x.shape[0], 1)}
    except ImportError as exc:
        row["art_hopskipjump"] = {"skipped": str(exc)}
    return row


# ---------------------------------------------------------------------------------------------
# phishing
# ---------------------------------------------------------------------------------------------


def _ours_tabular(est: Any, x: Tensor, y: Tensor, spec: ConstraintSpec, k: int) -> dict[str, Any]:
    model = as_model(est, bounds=(-1.0, 1.0))
    t0 = time.perf_counter()
    res = TabularSearch(max_changes=k)(model, x, y, constraints=spec)
    dt = time.perf_counter() - t0
    attacked = res.extra["attacked_rows"]
    pred = torch.as_tensor(est.predict(res.x_adv.numpy()))  # re-checked here
    l0 = count_changes(x, res.x_adv)
    valid = spec.check(x, res.x_adv) & (l0 <= k)
    mal_detected = (y == 1) & (torch.as_tensor(est.predict(x.numpy())) == 1)
    broken = mal_detected & (pred == 0) & valid
    q = res.point_queries[mal_detected].double() if res.point_queries is not None else torch.zeros(0)
    return {
        "attacked_rows": attacked,
        "success_rate": _r(int(broken.sum()) / max(int(mal_detected.sum()), 1)),
        "valid_rows": _r(float(valid.float().mean())),
        "invalid_rows": int((~valid).sum()),
        "queries_per_row_mean": _r(float(q.mean()) if q.numel() else None, 1),
        "queries_per_row_median": _r(float(q.median()) if q.numel() else None, 1),
        "time_s": round(dt, 3),
    }


def _domain_report(spec: ConstraintSpec, x: Tensor, xa: Tensor, pred_adv: np.ndarray) -> dict[str, Any]:
    allowed = [set(f.values) if f.values is not None else None for f in spec.features]
    off_domain = torch.zeros(x.shape[0], dtype=torch.bool)
    for j, vals in enumerate(allowed):
        if vals is None:
            continue
        col = xa[:, j].double()
        ok = torch.zeros_like(off_domain)
        for v in vals:
            ok |= (col - v).abs() <= 1e-6
        off_domain |= ~ok
    valid = spec.check(x, xa)
    evades = torch.as_tensor(pred_adv) == 0
    changed = count_changes(x, xa) > 0
    return {
        "rows": int(x.shape[0]),
        "evading_rows": int(evades.sum()),
        "rows_outside_feature_domain": int(off_domain.sum()),
        "rows_violating_spec": int((~valid).sum()),
        "immutable_feature_changed_rows": int(_immutable_changed(spec, x, xa).sum()),
        "valid_evading_rows": int((evades & valid & changed).sum()),
        "success_rate_valid": _r(float((evades & valid & changed).float().mean())),
        "success_rate_ignoring_constraints": _r(float(evades.float().mean())),
    }


def _immutable_changed(spec: ConstraintSpec, x: Tensor, xa: Tensor) -> Tensor:
    idx = [j for j, f in enumerate(spec.features) if not f.mutable]
    return ((xa[:, idx] - x[:, idx]).abs() > 1e-6).any(1)


def _art_tabular(est: Any, x: Tensor, spec: ConstraintSpec, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        from art.attacks.evasion import HopSkipJump, ZooAttack
        from art.estimators.classification import SklearnClassifier
    except ImportError as exc:
        return {"skipped": str(exc)}
    xn = x.numpy().astype(np.float32)
    for name in ("art_hopskipjump", "art_zoo"):
        clf = SklearnClassifier(est, clip_values=(-1.0, 1.0))
        counter = Counter(clf.predict)
        clf.predict = counter  # count every query ART makes
        if name == "art_hopskipjump":
            atk: Any = HopSkipJump(clf, norm=2, max_iter=10 if quick else 30, max_eval=1000, init_eval=100,
                                   init_size=100, batch_size=512, verbose=False)
        else:
            atk = ZooAttack(clf, confidence=0.0, learning_rate=0.1, max_iter=20 if quick else 50,
                            binary_search_steps=3, initial_const=1.0, abort_early=True, use_resize=False,
                            use_importance=False, nb_parallel=30, batch_size=1, variable_h=0.2, verbose=False)
        t0 = time.perf_counter()
        xa_np = atk.generate(xn, y=np.zeros((xn.shape[0], 2), dtype=np.float32) + np.array([[0.0, 1.0]],
                                                                                          dtype=np.float32))
        dt = time.perf_counter() - t0
        xa = torch.from_numpy(xa_np.astype(np.float32))
        rep = _domain_report(spec, x, xa, est.predict(xa_np))
        out[name] = {**rep, "time_s": round(dt, 2), "queries_per_row": round(counter.rows / x.shape[0], 1)}
    return out


def phishing_part(ks: tuple[int, ...], peer_rows: int, peers: bool, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("phishing-logreg", "phishing-rf", "phishing-gbm"):
        _log(f"phishing: {name}")
        zm = zoo.load(name)
        est = zm.module
        x, y = zoo.test_split(name)
        spec = ConstraintSpec.from_yaml(PHISHING_CONSTRAINTS)
        entry: dict[str, Any] = {"test_accuracy": _r(zm.meta["test_accuracy"]),
                                 "malicious_recall": _r(zm.meta["malicious_recall"]),
                                 "test_rows": int(x.shape[0]), "malicious_rows": int((y == 1).sum()),
                                 "modelshield_tabular_search": {}}
        for k in ks:
            entry["modelshield_tabular_search"][f"max_changes={k}"] = _ours_tabular(est, x, y, spec, k)
        detected = ((y == 1) & (torch.as_tensor(est.predict(x.numpy())) == 1)).nonzero().flatten()
        sub = detected[:peer_rows]
        xs, ys = x[sub], y[sub]
        peer: dict[str, Any] = {"rows": int(sub.numel()),
                                "modelshield_max_changes=3": _ours_tabular(est, xs, ys, spec, 3)}
        if peers:
            peer.update(_art_tabular(est, xs, spec, quick))
        entry["same_rows_as_peers"] = peer
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=500, help="MNIST test points")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--peer-rows", type=int, default=50, help="phishing rows given to the ART attacks")
    ap.add_argument("--art-n", type=int, default=50, help="MNIST points given to ART's HopSkipJump")
    ap.add_argument("--quick", action="store_true", help="100 MNIST points, budget 1000 only, lighter peers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--skip-mnist", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = min(args.n, 100) if args.quick else args.n
    budgets = (1000,) if args.quick else (1000, 5000)
    peers = not args.no_peers
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "blackbox",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "quick": args.quick,
    }
    try:
        import art
        import sklearn
        import torchattacks

        report["versions"] = {"art": art.__version__, "torchattacks": torchattacks.__version__,
                              "sklearn": sklearn.__version__}
    except ImportError:
        pass
    t0 = time.perf_counter()
    report["phishing"] = phishing_part((1, 2, 3, 5), args.peer_rows, peers, args.quick)
    report["phishing_time_s"] = round(time.perf_counter() - t0, 1)
    if not args.skip_mnist:
        t0 = time.perf_counter()
        report["mnist"] = mnist_part(n, budgets, peers, min(args.art_n, n))
        report["mnist_time_s"] = round(time.perf_counter() - t0, 1)
    report["total_time_s"] = round(time.perf_counter() - started, 1)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
