"""Model extraction on the mnist-cnn zoo model, measured in one run (issue: model extraction).

Prints one JSON object:
- fidelity (label agreement with the victim) and test accuracy of each attack's copy at each
  query budget (default 500, 2,000, 5,000), with probability and label-only answers:
  modelshield's KnockoffNets (random), JacobianAugmentation and EquationSolving, side by side
  with ART 1.20.1's CopycatCNN and KnockoffNets (random) on the same victim, pool, budgets,
  thief architecture, optimiser (Adam, lr 1e-3), batch size (64) and epochs;
- every victim query counted outside the attacks (modelshield: the API wrapper's own count;
  ART: a counting subclass of PyTorchClassifier), and the final copies' fidelity and accuracy
  re-computed here on the evaluation points (``rechecked``);
- the transfer rate of PGD (L-inf eps 0.3) examples crafted on each final copy to the victim
  (a PGD that runs every step, and the library's early-freezing PGD through ``transferability``);
- the seed-to-seed spread of the Knockoff/ART head-to-head at the middle budget;
- each output-hardening defence's effect on Knockoff's fidelity and its cost to honest users;
- PRADA's queries-to-detection on each attack's query stream and its false-positive rate over
  benign streams of MNIST test queries.

The pool defaults to Fashion-MNIST's training images (the attacker holds other public data of
the same format); ``--pool mnist`` gives the same-distribution case (MNIST training images).
Fidelity and accuracy are measured on the first ``--n-eval`` MNIST test images; the benign
PRADA streams use the rest of the test split. ART draws its queries from numpy's global RNG and
its thief's batches from torch's: both are seeded here, per run, for reproducibility (the
library itself never touches them).

Usage: python benchmarks/extraction.py [--quick] [--pool fashion-mnist] [--threads 1]
Runtime: about 11 minutes on two shared CPU cores, one torch thread (``--quick``: about 2).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelshield import zoo
from modelshield.attacks.evasion import PGD
from modelshield.attacks.extraction import (
    EquationSolving,
    JacobianAugmentation,
    KnockoffNets,
    transferability,
)
from modelshield.data import load_dataset
from modelshield.defenses.extraction import PRADA, harden, honest_cost
from modelshield.experiments.extraction import (
    ExtractionRun,
    Pool,
    load_pool,
    prada_verdict,
    run_extraction,
)

BATCH, LR = 64, 1e-3


def thief_factory(n_classes: int = 10) -> Callable[[], nn.Module]:
    """The one thief architecture every attack trains (the library's default image thief)."""

    def make() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, n_classes),
        )

    return make


def predict(net: nn.Module, x: Tensor) -> Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(c).argmax(1) for c in torch.split(x, 1000)])


def quality(copy: nn.Module, x: Tensor, y: Tensor, victim_labels: Tensor) -> dict[str, float]:
    """Fidelity and accuracy re-computed here, independently of the attack's own curve."""
    pred = predict(copy, x)
    return {"fidelity": round(float((pred == victim_labels).float().mean()), 4),
            "accuracy": round(float((pred == y).float().mean()), 4)}


def curve_at(run: ExtractionRun, budgets: list[int]) -> dict[str, Any]:
    pts = {p.queries: p for p in run.result.curve}
    return {str(b): ({"fidelity": round(pts[b].fidelity, 4), "accuracy": round(pts[b].accuracy, 4)}
                     if b in pts else None) for b in budgets}


def transfer(copy: nn.Module, victim: nn.Module, x: Tensor, y: Tensor, steps: int) -> dict[str, float | None]:
    """Share of PGD (L-inf 0.3) examples made on the copy that fool the victim.

    Over points the victim gets right and the attack broke on the copy, both through
    ``transferability``. ``full_pgd``: ``PGD(early_stop=False)``, every point runs all steps
    (loss-maximising examples, the usual transfer setting). ``modelshield_pgd``: the default PGD,
    which freezes each point at its first misclassified iterate (barely adversarial, so it
    transfers much less: the default is for measuring robustness, not for crafting transfers).
    """
    full = transferability(copy, victim, x, y, PGD(eps=0.3, steps=steps, early_stop=False))
    first = transferability(copy, victim, x, y, PGD(eps=0.3, steps=steps))
    with torch.no_grad():
        eligible = victim(x).argmax(1) == y
    return {"full_pgd": None if math.isnan(full) else round(full, 4),
            "modelshield_pgd": None if math.isnan(first) else round(first, 4),
            "victim_correct_points": int(eligible.sum())}


def ours(name: str, run: ExtractionRun, budgets: list[int], ev: dict[str, Any], t0: float) -> dict[str, Any]:
    """One modelshield row: curve, queries (two counts), re-check of the final copy, PRADA, transfer."""
    final = quality(run.result.copy, ev["x"], ev["y"], ev["victim_labels"])
    own = run.result.curve[-1] if run.result.curve else None
    return {
        "curve": curve_at(run, budgets),
        "queries_attack": run.result.queries,
        "queries_counted_by_api": run.stream_queries,
        "final_rechecked": final,
        "rechecked_matches_curve": own is not None and abs(own.fidelity - final["fidelity"]) < 1e-4
        and abs(own.accuracy - final["accuracy"]) < 1e-4,
        "transfer_pgd_linf_0.3": transfer(run.result.copy, ev["victim"], ev["xt"], ev["yt"],
                                             ev["pgd_steps"]),
        "time_s": round(time.perf_counter() - t0, 1),
        "name": name,
    }


def recipe(budget: int, checkpoints: tuple[int, ...], output: Literal["proba", "labels"], epochs: int,
           min_steps: int, make: Callable[[], nn.Module], seed: int) -> KnockoffNets:
    """modelshield's stronger Knockoff recipe: balanced selection, at least min_steps steps."""
    return KnockoffNets(budget=budget, checkpoints=checkpoints, output=output, epochs=epochs,
                        min_steps=min_steps, strategy="balanced", batch_size=BATCH, lr=LR,
                        thief_factory=make, seed=seed)


def matched_epochs(budget: int, epochs: int, min_steps: int) -> int:
    """The epochs that give ART's thief as many gradient steps as the recipe's at this budget."""
    return max(epochs, math.ceil(min_steps / math.ceil(budget / BATCH)))


def art_rows(victim: nn.Module, pool: Pool, budgets: list[int], epochs: int, ev: dict[str, Any],
             seed: int, streams: dict[str, tuple[Tensor, Tensor]], min_steps: int = 0) -> dict[str, Any]:
    """ART's CopycatCNN and KnockoffNets (random) at each budget, probabilities and labels."""
    from art.attacks.extraction import CopycatCNN
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier

    class Counting(PyTorchClassifier):  # type: ignore[misc]  # ART is untyped
        """Counts (and records) every row the victim is asked about."""

        rows: ClassVar[int] = 0
        xs: ClassVar[list[np.ndarray]] = []

        def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False,
                    **kwargs: Any) -> np.ndarray:
            Counting.rows += int(x.shape[0])
            Counting.xs.append(np.array(x))
            out: np.ndarray = super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)
            return out

    # A prediction API answers probabilities: ART's victim is the victim followed by a softmax.
    api = nn.Sequential(victim, nn.Softmax(dim=1)).eval()
    victim_clf = Counting(model=api, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                          clip_values=(0.0, 1.0))
    x_np = pool.x.numpy()
    make = thief_factory()
    out: dict[str, Any] = {}
    plan: list[tuple[str, Any, bool]] = [("art_copycat_cnn", CopycatCNN, False),
                                         ("art_knockoff_nets", ArtKnockoff, False)]
    if min_steps:
        plan.append(("art_copycat_cnn_matched_steps", CopycatCNN, True))
    for cls_name, cls, matched in plan:
        for use_proba in (True, False):
            key = f"{cls_name}_{'proba' if use_proba else 'labels'}"
            t0 = time.perf_counter()
            row: dict[str, Any] = {"curve": {}, "queries_counted": {}}
            last: nn.Module | None = None
            stream: np.ndarray | None = None
            for b in budgets:
                np.random.seed(seed)
                torch.manual_seed(seed)
                thief = make()
                thief_clf = PyTorchClassifier(model=thief, loss=nn.CrossEntropyLoss(),
                                              optimizer=torch.optim.Adam(thief.parameters(), lr=LR),
                                              input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
                n_ep = matched_epochs(b, epochs, min_steps) if matched else epochs
                kwargs: dict[str, Any] = {"batch_size_fit": BATCH, "batch_size_query": 512,
                                          "nb_epochs": n_ep, "nb_stolen": b, "use_probability": use_proba}
                row.setdefault("epochs", {})[str(b)] = n_ep
                if cls is ArtKnockoff:
                    kwargs.update(sampling_strategy="random", verbose=False)
                Counting.rows, Counting.xs = 0, []
                cls(classifier=victim_clf, **kwargs).extract(x_np, thieved_classifier=thief_clf)
                row["queries_counted"][str(b)] = Counting.rows
                row["curve"][str(b)] = quality(thief, ev["x"], ev["y"], ev["victim_labels"])
                last, stream = thief, np.concatenate(Counting.xs)
            assert last is not None and stream is not None
            if not matched:
                xs = torch.from_numpy(stream)
                streams[key] = (xs, predict(victim, xs))
                row["transfer_pgd_linf_0.3"] = transfer(last, victim, ev["xt"], ev["yt"], ev["pgd_steps"])
            row["time_s"] = round(time.perf_counter() - t0, 1)
            out[key] = row
    return out


def art_copycat_once(victim: nn.Module, pool: Pool, budget: int, epochs: int, ev: dict[str, Any],
                     seed: int, use_proba: bool = True) -> float:
    """Fidelity of one ART CopycatCNN copy for a given seed."""
    from art.attacks.extraction import CopycatCNN
    from art.estimators.classification import PyTorchClassifier

    api = nn.Sequential(victim, nn.Softmax(dim=1)).eval()
    victim_clf = PyTorchClassifier(model=api, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    np.random.seed(seed)
    torch.manual_seed(seed)
    thief = thief_factory()()
    thief_clf = PyTorchClassifier(model=thief, loss=nn.CrossEntropyLoss(),
                                  optimizer=torch.optim.Adam(thief.parameters(), lr=LR),
                                  input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    CopycatCNN(classifier=victim_clf, batch_size_fit=BATCH, batch_size_query=512, nb_epochs=epochs,
               nb_stolen=budget, use_probability=use_proba).extract(pool.x.numpy(),
                                                                    thieved_classifier=thief_clf)
    return quality(thief, ev["x"], ev["y"], ev["victim_labels"])["fidelity"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victim", default="mnist-cnn")
    p.add_argument("--pool", default="fashion-mnist", help="fashion-mnist (other data) or mnist (same data)")
    p.add_argument("--budgets", default="500,2000,5000")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--min-steps", type=int, default=1500, help="the recipe's least gradient steps")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--n-transfer", type=int, default=500)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--defence-budget", type=int, default=2000)
    p.add_argument("--benign-streams", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--spread-seeds", type=int, default=2, help="extra seeds for the head-to-head spread")
    p.add_argument("--quick", action="store_true", help="budgets 500,2000; 5 epochs; 1000 eval points")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.epochs, args.n_eval, args.n_transfer = "500,2000", 5, 1000, 200
        args.defence_budget, args.benign_streams, args.spread_seeds = 500, 10, 1
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    top = budgets[-1]
    if args.defence_budget not in budgets:
        p.error(f"--defence-budget must be one of --budgets {budgets}; got {args.defence_budget}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    zm = zoo.load(args.victim)
    victim = zm.module.eval()
    for prm in victim.parameters():
        prm.requires_grad_(False)
    ds = load_dataset(zm.spec.dataset)
    x_eval, y_eval = ds.x_test[: args.n_eval], ds.y_test[: args.n_eval]
    victim_labels = predict(victim, x_eval)
    ev = {"x": x_eval, "y": y_eval, "victim_labels": victim_labels, "victim": victim,
          "xt": x_eval[: args.n_transfer], "yt": y_eval[: args.n_transfer], "pgd_steps": args.pgd_steps}
    pool = load_pool(args.pool, input_shape=zm.spec.input_shape, victim_dataset=zm.spec.dataset)
    seed, epochs = args.seed, args.epochs
    make = thief_factory()
    report: dict[str, Any] = {
        "benchmark": "extraction", "victim": args.victim,
        "victim_test_accuracy": zm.meta.get("test_accuracy"),
        "victim_weights_sha256": zm.meta.get("weights_sha256"),
        "pool": pool.info(), "n_eval": int(x_eval.shape[0]), "budgets": budgets,
        "thief": "Conv(32)-Pool-Conv(64)-AvgPool(4)-FC(128)-FC(10), Adam lr 1e-3, batch 64",
        "epochs": epochs, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "seed": seed, "attacks": {},
    }
    try:
        report["art"] = metadata.version("adversarial-robustness-toolbox")
    except metadata.PackageNotFoundError:
        report["art"] = None
    rows: dict[str, Any] = {}
    streams: dict[str, tuple[Tensor, Tensor]] = {}
    runs: dict[str, ExtractionRun] = {}
    ko_outputs: tuple[Literal["proba", "labels"], ...] = ("proba", "labels")
    for output in ko_outputs:
        t0 = time.perf_counter()
        ko = KnockoffNets(budget=top, checkpoints=tuple(budgets[:-1]), output=output, epochs=epochs,
                          batch_size=BATCH, lr=LR, thief_factory=make, seed=seed)
        runs[f"knockoff_{output}"] = run = run_extraction(victim, pool, ko, eval_data=(x_eval, y_eval),
                                                          seed=seed, keep_stream=True)
        rows[f"modelshield_knockoff_{output}"] = ours("KnockoffNets", run, budgets, ev, t0)
        streams[f"modelshield_knockoff_{output}"] = run.stream  # type: ignore[assignment]  # kept
    # The stronger recipe: thief-guided class-balancing selection + at least --min-steps steps.
    for output in ko_outputs:
        t0 = time.perf_counter()
        ko = recipe(top, tuple(budgets[:-1]), output, epochs, args.min_steps, make, seed)
        runs[f"balanced_{output}"] = run = run_extraction(victim, pool, ko, eval_data=(x_eval, y_eval),
                                                          seed=seed, keep_stream=True)
        row_b = ours("KnockoffNets(balanced)", run, budgets, ev, t0)
        row_b["answer_counts"] = run.result.extra.get("answer_counts")
        rows[f"modelshield_knockoff_balanced_{output}"] = row_b
        streams[f"modelshield_knockoff_balanced_{output}"] = run.stream  # type: ignore[assignment]  # kept
    jac_outputs: tuple[Literal["labels", "proba"], ...] = ("labels", "proba")
    for output in jac_outputs:
        t0 = time.perf_counter()
        # A seed set of budgets[0] / 4 doubles to 500 and 2,000 exactly; the last round is cut at top.
        seed_size = max(1, budgets[0] // 4)
        rounds = max(0, math.ceil(math.log2(top / seed_size)))
        jac = JacobianAugmentation(budget=top, seed_size=seed_size, rounds=rounds, output=output,
                                   epochs=epochs, batch_size=BATCH, lr=LR, thief_factory=make, seed=seed)
        run = run_extraction(victim, pool, jac, eval_data=(x_eval, y_eval), seed=seed, keep_stream=True)
        rows[f"modelshield_jacobian_{output}"] = ours("JacobianAugmentation", run, budgets, ev, t0)
        streams[f"modelshield_jacobian_{output}"] = run.stream  # type: ignore[assignment]  # kept
    d = math.prod(zm.spec.input_shape)
    eq_curve: dict[str, Any] = {}
    eq_run: ExtractionRun | None = None
    t0 = time.perf_counter()
    for b in budgets:
        if b < d + 1:
            eq_curve[str(b)] = {"skipped": f"equation solving needs >= d + 1 = {d + 1} queries"}
            continue
        eq_run = run_extraction(victim, pool, EquationSolving(budget=b, seed=seed),
                                eval_data=(x_eval, y_eval), seed=seed, keep_stream=True)
        eq_curve[str(b)] = curve_at(eq_run, [b])[str(b)]
    if eq_run is not None:
        row = ours("EquationSolving", eq_run, [top], ev, t0)
        row["curve"] = eq_curve
        row["note"] = "probabilities only; a linear copy of a CNN (exact only for linear victims)"
        rows["modelshield_equation_proba"] = row
        streams["modelshield_equation_proba"] = eq_run.stream  # type: ignore[assignment]  # kept
    if not args.no_peers:
        try:
            rows.update(art_rows(victim, pool, budgets, epochs, ev, seed, streams, args.min_steps))
        except ImportError as exc:
            rows["art"] = {"skipped": str(exc)}
    report["attacks"] = rows

    # Head to head: Knockoff (ours) against ART at every budget; positive = ours more faithful.
    head: dict[str, Any] = {}
    for output in ("proba", "labels"):
        for variant in ("knockoff", "knockoff_balanced"):
            mine = rows[f"modelshield_{variant}_{output}"]["curve"]
            for peer in ("art_copycat_cnn", "art_knockoff_nets", "art_copycat_cnn_matched_steps"):
                theirs = rows.get(f"{peer}_{output}", {}).get("curve")
                if theirs:
                    head[f"{variant}_{output}_vs_{peer}"] = {
                        b: round(mine[b]["fidelity"] - theirs[b]["fidelity"], 4) for b in mine if mine[b]}
    report["fidelity_advantage_over_art"] = head

    # Seed spread: the same head-to-head at the middle budget with other seeds (RNG noise scale).
    if not args.no_peers and len(budgets) > 1 and args.spread_seeds:
        mid = budgets[len(budgets) // 2 - (1 if len(budgets) % 2 == 0 else 0)]
        spread: dict[str, list[float]] = {}
        seeds = range(seed + 1, seed + 1 + args.spread_seeds)
        for s in seeds:
            for output in ko_outputs:
                ko = recipe(mid, (), output, epochs, args.min_steps, make, s)
                fid = run_extraction(victim, pool, ko, eval_data=(x_eval, y_eval), seed=s).result.fidelity
                spread.setdefault(f"modelshield_knockoff_balanced_{output}", []).append(round(fid, 4))
                spread.setdefault(f"art_copycat_cnn_{output}", []).append(
                    art_copycat_once(victim, pool, mid, epochs, ev, s, use_proba=output == "proba"))
                spread.setdefault(f"art_copycat_cnn_matched_steps_{output}", []).append(
                    art_copycat_once(victim, pool, mid, matched_epochs(mid, epochs, args.min_steps), ev, s,
                                     use_proba=output == "proba"))
        report["seed_spread"] = {"budget": mid, "seeds": list(range(seed + 1, seed + 1 + args.spread_seeds)),
                                 "fidelity": spread}

    # Defences: Knockoff (probabilities, or labels behind top1) at --defence-budget queries.
    t0 = time.perf_counter()
    db = args.defence_budget
    defences: dict[str, Any] = {}
    top1_same = False
    ko_base = runs["knockoff_proba"].result.curve
    base_fid = next((p.fidelity for p in ko_base if p.queries == db), None)
    for method in ("top1", "round", "noise", "reverse_sigmoid"):
        answers: Literal["proba", "labels"] = "labels" if method == "top1" else "proba"
        ko = KnockoffNets(budget=db, output=answers, epochs=epochs, batch_size=BATCH, lr=LR,
                          thief_factory=make, seed=seed)
        run = run_extraction(victim, pool, ko, eval_data=(x_eval, y_eval), defence=method, seed=seed)
        fid = run.result.fidelity
        if method == "top1":  # a label-only API gives the labels-only run's answers: same copy
            labels_run = next((q for q in runs["knockoff_labels"].result.curve if q.queries == db), None)
            top1_same = labels_run is not None and abs(labels_run.fidelity - fid) < 1e-9
        defences[method] = {
            "thief_fidelity": round(fid, 4), "thief_accuracy": round(run.result.accuracy, 4),
            "fidelity_change_vs_undefended_proba": None if base_fid is None else round(fid - base_fid, 4),
            "honest_cost": honest_cost(victim, harden(victim, method=method, seed=seed), x_eval, y_eval),
        }
    report["defences"] = {"budget": db, "undefended_proba_fidelity": base_fid, "methods": defences,
                          "top1_copy_equals_labels_only_copy": top1_same,
                          "time_s": round(time.perf_counter() - t0, 1)}

    # PRADA on benign clients: disjoint streams of MNIST test images, in test-set order. The
    # paper tunes delta per data set; besides its 0.95 default we report the largest delta of a
    # grid with no false positive on these streams, and each attack's detection at both.
    t0 = time.perf_counter()
    rest = ds.x_test[args.n_eval:]
    size = rest.shape[0] // args.benign_streams
    benign = [(s, predict(victim, s)) for s in torch.split(rest[: size * args.benign_streams], size)]
    grid = (0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.85)
    fpr = {}
    for delta in grid:
        verdicts = [prada_verdict(s, lb, monitor=PRADA(delta=delta)) for s, lb in benign]
        fpr[str(delta)] = round(sum(v["flagged"] for v in verdicts) / len(verdicts), 4)
    # Calibration on other benign traffic (MNIST *training* images, streams of the same size),
    # then the false-positive rate measured out of sample on the test-image streams above.
    train_x = ds.x_train[: size * args.benign_streams]
    calib_streams = [(s, predict(victim, s)) for s in torch.split(train_x, size)]
    calibrated: dict[str, Any] = {}
    for max_fpr in (0.0, 0.05):
        mon = PRADA().calibrate(calib_streams, max_fpr=max_fpr)
        held = [prada_verdict(s, lb, monitor=mon) for s, lb in benign]
        det = {name: prada_verdict(xs, lb, monitor=mon)["queries_to_detection"]
               for name, (xs, lb) in streams.items()}
        calibrated[str(max_fpr)] = {
            "delta": round(mon.delta, 6),
            "in_sample_fpr": mon.calibration_["in_sample_fpr"] if mon.calibration_ else None,
            "held_out_fpr": round(sum(v["flagged"] for v in held) / len(held), 4),
            "queries_to_detection": det,
        }
    detection: dict[str, Any] = {}
    for name, (xs, lb) in streams.items():
        detection[name] = {"queries": int(xs.shape[0]),
                           "default_delta": prada_verdict(xs, lb, monitor=PRADA())["queries_to_detection"]}
    report["prada"] = {
        "default_delta": 0.95, "min_queries": 100,
        "benign_streams": len(benign), "benign_stream_queries": size,
        "false_positive_rate_by_delta": fpr,
        "calibrated_on_mnist_train_streams": calibrated,
        "queries_to_detection": detection,
        "time_s": round(time.perf_counter() - t0, 1),
    }
    report["total_time_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
