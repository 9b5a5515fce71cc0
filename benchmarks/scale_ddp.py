"""Data-parallel adversarial training (issue #20, item 4): 2 processes (DDP, gloo) against 1.

``ddp(quick, seed)`` is the ``ddp`` part of ``benchmarks/scale.py``: PGD adversarial training of
the zoo architecture ``cnn-8x8`` on the 8x8 digits (1257 training images; ``quick``: 4 epochs, 3
inner steps, else 12 epochs, 7 inner steps), or, when MNIST is found (``$MODELSHIELD_DATA``,
else ``../shared/data``) and not ``quick``, ``lenet-28`` on the first 12800 MNIST images for 3
epochs (300 steps of 128, 5 inner steps, Adam lr 1e-3; at eps 0.3 and lr 1e-2 both runs
collapsed to chance), all at eps 0.1, with ``modelshield.defenses.training.launch.fit_distributed``
on 1 process (in this process, one torch thread) and on 2 spawned processes (one thread each, per-rank batch
64). Reported per run: wall time (the 2-process one includes spawning the processes, importing
torch and modelshield in each and joining the gloo group), the summed epoch times of rank 0
(training only), the final clean accuracy on the test set and PGD-20 robust accuracy on its first
500 points at the training eps, plus both speed-ups. Each 2-process rank generates its own
adversarial examples, so the inner attack, most of the cost, splits evenly; the all-reduce of a
few thousand (digits) to 60 thousand (MNIST) gradients per step is small.

Runtime: quick ~20 s, full ~1 min on digits (several minutes on MNIST) on 2 free cores. Timings
mean something only with 2 otherwise idle cores. Standalone: ``python benchmarks/scale_ddp.py
[--quick] [--seed 0]`` prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from modelshield import zoo
from modelshield.attacks.evasion import PGD
from modelshield.data import load_dataset
from modelshield.defenses.training import AdversarialTrainer
from modelshield.defenses.training.launch import available_cores, fit_distributed
from modelshield.errors import MissingDataError
from modelshield.models.load import weights_sha256

__all__ = ["ddp"]

SHARED_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")
"""Where MNIST is read when ``$MODELSHIELD_DATA`` is unset (the project's ``../shared/data``)."""


def _setup(quick: bool) -> dict[str, Any]:
    if not quick:
        try:
            ds = load_dataset("mnist", os.environ.get("MODELSHIELD_DATA") or SHARED_DATA)
        except MissingDataError:
            pass
        else:
            return {"dataset": "mnist", "arch": "lenet-28", "eps": 0.1, "epochs": 3, "steps": 5, "lr": 1e-3,
                    "x": ds.x_train[:12800].float(), "y": ds.y_train[:12800].long(),
                    "xt": ds.x_test.float(), "yt": ds.y_test.long()}
    ds = load_dataset("digits")
    return {"dataset": "digits", "arch": "cnn-8x8", "eps": 0.1, "epochs": 4 if quick else 12, "lr": 1e-2,
            "steps": 3 if quick else 7, "x": ds.x_train.float(), "y": ds.y_train.long(),
            "xt": ds.x_test.float(), "yt": ds.y_test.long()}


def _accuracy(model: torch.nn.Module, xt: torch.Tensor, yt: torch.Tensor, eps: float,
              seed: int) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        clean = float((model(xt).argmax(1) == yt).double().mean())
    robust = PGD(eps=eps, steps=20, seed=seed)(model, xt[:500], yt[:500]).robust_accuracy
    return clean, robust


def ddp(quick: bool, seed: int) -> dict[str, Any]:
    """Time 1-process and 2-process (DDP, gloo) PGD adversarial training; JSON-safe results."""
    s = _setup(quick)
    trainer = AdversarialTrainer(method="pgd", eps=s["eps"], steps=s["steps"], epochs=s["epochs"],
                                 lr=s["lr"], batch_size=128, seed=seed, eval_steps=5, check_size=128)
    threads_before = torch.get_num_threads()
    runs: dict[str, dict[str, Any]] = {}
    try:
        torch.set_num_threads(1)
        for nproc in (1, 2):
            model = zoo.build(s["arch"], seed=seed)
            start = time.perf_counter()
            report = fit_distributed(trainer, model, (s["x"], s["y"]), nproc=nproc, threads=1)
            wall = time.perf_counter() - start
            clean, robust = _accuracy(model, s["xt"], s["yt"], s["eps"], seed)
            runs[f"{nproc}_process"] = {
                "wall_s": round(wall, 3), "train_s": round(report.train_time_s, 3),
                "clean_accuracy": clean, "pgd20_robust_accuracy": robust,
                "final_train_loss": report.epochs[-1].loss, "epochs": len(report.epochs),
                "weights_sha256": weights_sha256(model),
                "rank_weights_equal": len(set(report.params.get("rank_weights_sha256", ["-"]))) == 1,
            }
    finally:
        torch.set_num_threads(threads_before)
    one, two = runs["1_process"], runs["2_process"]
    steps = -(-int(s["x"].shape[0]) // 128) * s["epochs"]
    return {
        "setting": {"dataset": s["dataset"], "arch": s["arch"], "method": "pgd", "eps": s["eps"],
                    "lr": s["lr"],
                    "inner_steps": s["steps"], "epochs": s["epochs"], "global_batch": 128,
                    "optimizer_steps": steps, "train_rows": int(s["x"].shape[0]), "seed": seed,
                    "threads_per_process": 1, "cores_available": available_cores(), "backend": "gloo"},
        **runs,
        "speedup_wall": round(one["wall_s"] / two["wall_s"], 3),
        "speedup_train": round(one["train_s"] / two["train_s"], 3),
        "clean_accuracy_gap": round(two["clean_accuracy"] - one["clean_accuracy"], 4),
        "robust_accuracy_gap": round(two["pgd20_robust_accuracy"] - one["pgd20_robust_accuracy"], 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(ddp(args.quick, args.seed), indent=2))
