"""Backdoor attacks and defences on MNIST (issue: backdoors), measured in one run.

Prints one JSON object with, per dataset (MNIST by default; ``--datasets mnist,fashion-mnist``):

- a clean ``lenet-28`` model and, for BadNets (3x3 checkerboard), blended (alpha 0.2),
  clean-label (Turner et al.; PGD eps 0.3 on the clean model) and WaNet poisoning at 5% to
  target 0 (``--quick``: BadNets and blended only), the backdoored model's clean accuracy (vs
  the clean model) and attack success rate (ASR);
- activation clustering and spectral signatures with their DEFAULT settings: precision, recall
  and F1 against the poisoned rows, and runtime (features extracted once, timed separately);
  ART 1.20.1's ActivationDefence and SpectralSignatureDefense with their defaults on the same
  model and data (skipped with ``--no-art``);
- Neural Cleanse's flagged classes and anomaly indices on the backdoored and the clean model;
- STRIP's false-acceptance rate (triggered inputs not flagged) at 5% false rejection;
- ASR and clean accuracy after each removal method: retraining without the rows either
  detector flagged, fine-pruning (defaults, and with 20 epochs of fine-tuning at lr 1e-2), and
  unlearning with Neural Cleanse's reversed trigger (and
  with the true trigger, for stamp triggers, as the ceiling of that method).

The defender's clean set is the first 1,000 test images; everything is evaluated on the other
9,000. Needs ``MODELSHIELD_DATA``.
Usage: python benchmarks/backdoor.py [--quick] [--datasets mnist,fashion-mnist] [--threads 2]
``--quick`` trains on 15,000 images and runs fewer Neural Cleanse steps.
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

from modelshield.attacks.backdoor import (
    BackdoorResult,
    BadNets,
    Blend,
    CleanLabel,
    WaNet,
    attack_success_rate,
    clean_accuracy,
    make_train_fn,
)
from modelshield.attacks.backdoor.triggers import StampTrigger
from modelshield.data import load_fashion_mnist, load_mnist
from modelshield.defenses.backdoor import (
    STRIP,
    ActivationClustering,
    FinePruning,
    NeuralCleanse,
    SpectralSignatures,
    Unlearning,
    detection_metrics,
    extract_features,
    retrain_without,
)

N_CLEAN = 1000


def r(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


def metrics(flagged: Any, res: BackdoorResult) -> dict[str, Any]:
    return {k: r(v) for k, v in detection_metrics(flagged, res.indices, res.n).items()}


def art_detectors(model: nn.Module, res: BackdoorResult) -> dict[str, Any]:
    """ART's ActivationDefence and SpectralSignatureDefense with their defaults."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    model.eval()
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    x = res.x_poisoned.numpy()
    y = np.eye(10, dtype=np.float32)[res.y_poisoned.numpy()]
    out: dict[str, Any] = {}
    for name, make in (("ActivationDefence", lambda: ActivationDefence(clf, x, y)),
                       ("SpectralSignatureDefense", lambda: SpectralSignatureDefense(clf, x, y))):
        t0 = time.perf_counter()
        try:
            _, is_clean = make().detect_poison()
            flagged = np.flatnonzero(np.asarray(is_clean) == 0)
            out[name] = {**metrics(flagged, res), "time_s": r(time.perf_counter() - t0)}
        except Exception as e:  # report, do not abort the benchmark
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def nc_summary(model: nn.Module, xc: Tensor, steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rep = NeuralCleanse(steps=steps)(model, xc[:500])
    return {"flagged": list(rep.flagged), "anomaly_index": [r(float(a)) for a in rep.anomaly_index],
            "norms": [r(float(n)) for n in rep.norms], "max_anomaly_index": r(rep.max_anomaly_index),
            "time_s": r(time.perf_counter() - t0), "_report": rep}


def run_dataset(name: str, *, quick: bool, art: bool, dump: str | None) -> dict[str, Any]:
    ds = (load_mnist if name == "mnist" else load_fashion_mnist)(None)  # $MODELSHIELD_DATA
    n_train = 15000 if quick else int(ds.x_train.shape[0])
    xtr, ytr = ds.x_train[:n_train], ds.y_train[:n_train]
    xc, yc = ds.x_test[:N_CLEAN], ds.y_test[:N_CLEAN]
    xe, ye = ds.x_test[N_CLEAN:], ds.y_test[N_CLEAN:]
    epochs = 3
    train: Callable[[Tensor, Tensor], nn.Module] = make_train_fn("lenet-28", epochs=epochs)
    nc_steps = 100 if quick else 300
    out: dict[str, Any] = {"n_train": n_train, "n_clean_set": N_CLEAN, "n_eval": int(xe.shape[0]),
                           "arch": "lenet-28", "epochs": epochs}
    t0 = time.perf_counter()
    clean = train(xtr, ytr)
    acc_clean = clean_accuracy(clean, xe, ye)
    out["clean_model"] = {"clean_accuracy": r(acc_clean), "train_s": r(time.perf_counter() - t0)}
    nc_clean = nc_summary(clean, xc, nc_steps)
    nc_clean.pop("_report")
    out["clean_model"]["neural_cleanse"] = nc_clean
    out["attacks"] = {}
    attacks: list[Any] = [BadNets(target=0, rate=0.05), Blend(target=0, rate=0.05, alpha=0.2)]
    if not quick:
        # Clean-label: target-class images made hard by L-inf PGD (eps 0.3, MNIST scale) on the
        # clean model as the surrogate; WaNet: warping trigger with noise-mode rows.
        attacks += [CleanLabel(target=0, rate=0.05, eps=0.3), WaNet(target=0, rate=0.05)]
    for attack in attacks:
        res = attack(clean if type(attack).needs_model else None, xtr, ytr)
        a: dict[str, Any] = {}
        t0 = time.perf_counter()
        model = train(res.x_poisoned, res.y_poisoned)
        acc = clean_accuracy(model, xe, ye)
        asr = attack_success_rate(model, res, xe, ye)
        a["train_s"] = r(time.perf_counter() - t0)
        a["clean_accuracy"] = r(acc)
        a["clean_model_accuracy"] = r(acc_clean)
        a["accuracy_drop_points"] = r(100 * (acc_clean - acc))
        a["asr"] = r(asr)
        a["clean_model_asr"] = r(attack_success_rate(clean, res, xe, ye))
        # Training-set detectors (defaults), features extracted once.
        t0 = time.perf_counter()
        feats = extract_features(model, res.x_poisoned)
        a["feature_s"] = r(time.perf_counter() - t0)
        if dump:
            np.savez(f"{dump}/{name}-{res.attack}.npz", feats=feats.numpy(), y=res.y_poisoned.numpy(),
                     poisoned=res.indices.numpy())
        t0 = time.perf_counter()
        ac = ActivationClustering().fit(model, res.x_poisoned, res.y_poisoned, features=feats)
        a["activation_clustering"] = {**metrics(ac.flagged_indices_, res),
                                      "flagged_classes": ac.flagged_classes,
                                      "time_s": r(time.perf_counter() - t0)}
        t0 = time.perf_counter()
        ss = SpectralSignatures().fit(model, res.x_poisoned, res.y_poisoned, features=feats)
        flagged_ss = ss.flagged_indices_
        assert flagged_ss is not None
        a["spectral_signatures"] = {
            **metrics(flagged_ss, res),
            "flagged_classes": sorted({int(c) for c in res.y_poisoned[flagged_ss].tolist()}),
            "time_s": r(time.perf_counter() - t0)}
        if art:
            a["art"] = art_detectors(model, res)
        # Model inspection.
        nc = nc_summary(model, xc, nc_steps)
        rep = nc.pop("_report")
        a["neural_cleanse"] = nc
        # Run-time detection.
        strip = STRIP(frr=0.05).fit(model, xc)
        src = ye != res.target
        a["strip"] = {"false_rejection_eval": r(float(strip.predict(xe[:2000]).float().mean())),
                      "false_acceptance": r(1 - float(strip.predict(res.apply_trigger(xe[src][:2000]))
                                                      .float().mean()))}
        # Removal.
        rem: dict[str, Any] = {}
        # A defender drops every row either training-set detector flagged.
        t0 = time.perf_counter()
        assert ac.is_poison_ is not None and ss.is_poison_ is not None
        either = ac.is_poison_ | ss.is_poison_
        re_m = retrain_without(train, res.x_poisoned, res.y_poisoned, either)
        rem["retrain_without_flagged"] = {**metrics(either.nonzero().squeeze(1), res),
                                          "asr": r(attack_success_rate(re_m, res, xe, ye)),
                                          "clean_accuracy": r(clean_accuracy(re_m, xe, ye)),
                                          "time_s": r(time.perf_counter() - t0)}
        # Defaults, then a stronger fine-tuning (20 epochs at 10x the learning rate) to show the
        # trade-off between removing the backdoor and keeping clean accuracy on 1,000 images.
        for key, fine_pruning in (("fine_pruning", FinePruning()),
                                  ("fine_pruning_strong", FinePruning(fine_tune_epochs=20, lr=1e-2))):
            fp = fine_pruning(model, xc, yc)
            rem[key] = {"asr": r(attack_success_rate(fp.model, res, xe, ye)),
                        "clean_accuracy": r(clean_accuracy(fp.model, xe, ye)),
                        "pruned_channels": len(fp.extra.get("pruned_channels", [])),
                        "params": fp.params, "time_s": r(fp.time_s)}
        if rep.flagged:
            ul = Unlearning()(model, xc, yc, trigger=rep)
            rem["unlearning_nc_trigger"] = {"asr": r(attack_success_rate(ul.model, res, xe, ye)),
                                            "clean_accuracy": r(clean_accuracy(ul.model, xe, ye)),
                                            "time_s": r(ul.time_s)}
        else:
            rem["unlearning_nc_trigger"] = {"skipped": "Neural Cleanse flagged no class"}
        if isinstance(res.trigger, StampTrigger):
            ul = Unlearning()(model, xc, yc, trigger=res.trigger)
            rem["unlearning_true_trigger"] = {"asr": r(attack_success_rate(ul.model, res, xe, ye)),
                                              "clean_accuracy": r(clean_accuracy(ul.model, xe, ye)),
                                              "time_s": r(ul.time_s)}
        else:
            rem["unlearning_true_trigger"] = {"skipped": "the trigger is a warp, not a stamp"}
        a["removal"] = rem
        out["attacks"][res.attack] = a
        print(f"[{name}] {res.attack} done", file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--datasets", default="mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-art", action="store_true")
    p.add_argument("--dump", default=None, help="folder to save each model's features (npz)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "backdoor", "quick": args.quick, "threads": args.threads,
        "python": platform.python_version(), "torch": torch.__version__, "datasets": {},
    }
    for name in args.datasets.split(","):
        result["datasets"][name] = run_dataset(name.strip(), quick=args.quick, art=not args.no_art,
                                                   dump=args.dump)
    result["total_s"] = r(time.perf_counter() - started)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
