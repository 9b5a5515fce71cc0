"""The evasion and adversarial-training figures on a CUDA GPU (issue #20, item 5).

Parts (each saved to ``benchmarks/results/gpu.json`` as it finishes; a rerun skips finished parts
unless ``--fresh``):

- ``evasion``: ``benchmarks/evasion_speed.py`` with ``--device cuda`` on ``digits-cnn`` and, when
  MNIST is found, ``mnist-cnn`` (PGD-10/40 against bare forward+backward passes on the GPU, the
  peers' PGD on the same GPU when the ``peers`` extra is installed, timers read after
  ``torch.cuda.synchronize()``).
- ``adversarial-training``: the setting of ``benchmarks/scale_ddp.py`` (PGD adversarial training of
  ``lenet-28`` on the first 12,800 MNIST images, eps 0.1, 5 inner steps, 3 epochs of batch 128)
  with the model and data on the GPU, against the same training on the CPU with every core
  (``--no-cpu`` skips that reference), each with its clean and PGD-20 accuracy, so that the
  speed-up is read at equal accuracy.
- ``ddp-nccl`` (only with 2 or more GPUs): the same training on 2 GPUs with DistributedDataParallel
  over NCCL, against 1 GPU.

Usage: ``python benchmarks/gpu.py [--parts evasion,adversarial-training,ddp-nccl] [--fresh]
[--no-cpu]``. Without a CUDA GPU it exits 2 with one line (the tests never need a GPU). MNIST is
read from ``$MODELSHIELD_DATA``, else ``../shared/data``. Zoo models are trained (on the CPU, then
moved) if not cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu.json"
PARTS = ("evasion", "adversarial-training", "ddp-nccl")
SHARED_DATA = str(HERE.parents[1] / "shared" / "data")


def _mnist() -> Any:
    from modelshield.data import load_dataset
    from modelshield.errors import MissingDataError

    try:
        return load_dataset("mnist", os.environ.get("MODELSHIELD_DATA") or SHARED_DATA)
    except MissingDataError:
        return None


def evasion() -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import evasion_speed

    out: dict[str, Any] = {}
    models = ["digits-cnn"] + (["mnist-cnn"] if _mnist() is not None else [])
    for model in models:
        out[model] = evasion_speed.main(["--device", "cuda", "--model", model, "--repeats", "5"])
    return out


def _at_run(device: torch.device, seed: int, ds: Any) -> dict[str, Any]:
    from modelshield import zoo
    from modelshield.attacks.evasion import PGD
    from modelshield.defenses.training import AdversarialTrainer

    trainer = AdversarialTrainer(method="pgd", eps=0.1, steps=5, epochs=3, lr=1e-3, batch_size=128, seed=seed,
                                 eval_steps=5, check_size=128)
    model = zoo.build("lenet-28", seed=seed).to(device)
    x, y = ds.x_train[:12800].float().to(device), ds.y_train[:12800].long().to(device)
    xt, yt = ds.x_test.float().to(device), ds.y_test.long().to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    report = trainer.fit(model, (x, y))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        clean = float((model(xt).argmax(1) == yt).double().mean())
    robust = PGD(eps=0.1, steps=20, seed=seed)(model, xt[:500], yt[:500]).robust_accuracy
    return {"device": str(device), "threads": torch.get_num_threads(), "wall_s": round(wall, 3),
            "train_s": round(report.train_time_s, 3), "clean_accuracy": clean,
            "pgd20_robust_accuracy": robust}


def adversarial_training(seed: int, cpu: bool) -> dict[str, Any]:
    ds = _mnist()
    if ds is None:
        return {"skipped": "MNIST not found (set MODELSHIELD_DATA)"}
    out: dict[str, Any] = {"setting": {"dataset": "mnist", "arch": "lenet-28", "rows": 12800, "eps": 0.1,
                                       "inner_steps": 5, "epochs": 3, "batch": 128, "seed": seed},
                           "cuda": _at_run(torch.device("cuda"), seed, ds)}
    if cpu:
        torch.set_num_threads(os.cpu_count() or 1)
        out["cpu"] = _at_run(torch.device("cpu"), seed, ds)
        out["speedup_over_cpu"] = round(out["cpu"]["wall_s"] / out["cuda"]["wall_s"], 2)
    return out


def ddp_nccl(seed: int) -> dict[str, Any]:
    from modelshield import zoo
    from modelshield.defenses.training import AdversarialTrainer
    from modelshield.defenses.training.launch import fit_distributed

    if torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs; found {torch.cuda.device_count()}"}
    ds = _mnist()
    if ds is None:
        return {"skipped": "MNIST not found (set MODELSHIELD_DATA)"}
    trainer = AdversarialTrainer(method="pgd", eps=0.1, steps=5, epochs=3, lr=1e-3, batch_size=128, seed=seed,
                                 eval_steps=5, check_size=128)
    out: dict[str, Any] = {}
    for nproc in (1, 2):
        model = zoo.build("lenet-28", seed=seed).to("cuda:0")
        start = time.perf_counter()
        report = fit_distributed(trainer, model, (ds.x_train[:12800].float(), ds.y_train[:12800].long()),
                                 nproc=nproc, backend="nccl")
        out[f"{nproc}_gpu"] = {"wall_s": round(time.perf_counter() - start, 3),
                               "train_s": round(report.train_time_s, 3)}
    out["speedup_train"] = round(out["1_gpu"]["train_s"] / out["2_gpu"]["train_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--fresh", action="store_true", help="recompute parts already saved")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU reference of adversarial training")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: benchmarks/gpu.py: '--parts' must be among {', '.join(PARTS)}; got {unknown}.",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py: a CUDA GPU must be visible to torch; got none "
              "(torch.cuda.is_available() is False). Run it on a machine with a GPU and a CUDA build of "
              "torch.",
              file=sys.stderr)
        return 2
    saved: dict[str, Any] = {}
    if RESULTS.is_file() and not args.fresh:
        saved = json.loads(RESULTS.read_text(encoding="utf-8"))
    saved.update({"benchmark": "gpu", "torch": torch.__version__, "python": platform.python_version(),
                  "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                  "cpus": os.cpu_count()})
    done = saved.setdefault("parts", {})
    for part in parts:
        if part in done and not args.fresh:
            continue
        if part == "evasion":
            done[part] = evasion()
        elif part == "adversarial-training":
            done[part] = adversarial_training(args.seed, not args.no_cpu)
        else:
            done[part] = ddp_nccl(args.seed)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")  # each part as it finishes
    print(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
