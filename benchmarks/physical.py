"""Physical-world evasion against ART, and PatchCleanser (issue #21).

Parts (each saved to the JSON file, ``--out``, as soon as it finishes; a rerun with the same
settings skips the parts already there, ``--fresh`` starts over; ``--parts`` picks some), for
each of the zoo models ``mnist-cnn`` and ``fashion-cnn``:

- ``patch-<model>``: an untargeted adversarial patch at 3%, 5% and 10% of the image, trained on
  ``--n-train`` training images for ``--steps`` steps of ``--batch-size`` images with Adam at
  ``--lr`` (``--seeds`` patches per size and attack, from consecutive seeds; means and each
  run are recorded), by ``modelshield.attacks.physical.AdversarialPatch`` and by ART's
  ``AdversarialPatchPyTorch`` (square patch) with the same size, steps, batch, learning rate and
  transformations: uniform location, rotation within +-20 degrees, scale 0.9-1.1 of the size (ART:
  ``scale_min``/``scale_max`` as the share of the image side; ART has no lighting or noise, so
  neither side uses them). Both patches are then tested the same way: on ``--n-test`` held-out
  test images, each under 4 freshly drawn transformations (``evaluate_pattern``, a seed
  neither attack used), re-verified on the model. Target: higher success in less time.
- ``universal-<model>``: a universal perturbation within L-inf ``--eps`` from ``--n-uap``
  training images: ours by SGD (Shafahi et al., ``--sgd-passes`` epochs) and ART's
  ``UniversalPerturbation`` with its FGSM attacker (``--uap-passes`` passes); and, on the first
  ``--n-uap-deepfool`` images for one pass (the algorithm is sequential, one image at a time, on
  both sides), ours and ART's by DeepFool (Moosavi-Dezfooli et al.'s Algorithm 1). Fooling rate
  on the held-out images (the same evaluation for all).
- ``patchcleanser-<model>``: PatchCleanser (6x6 masks) at a 5% patch on ``--n-cert`` test images:
  clean, defended and certified accuracy, and the accuracy with and without the defence on those
  images carrying a 5% patch (trained as in ``patch-<model>``), for the zoo model as it is and
  for a copy fine-tuned with ``masked_training`` (``--n-masked`` images, ``--masked-epochs``; the
  patch is then trained against the fine-tuned model). ``certified_points_broken`` counts
  certified points the defended prediction gets wrong under the patch: it must be 0.

ART's PyTorch patch imports torchvision, whose compiled operators are missing with the CPU
build of torch; they are never used by the patch, so the script stubs torchvision's operator
registrations before importing it.

Usage: python benchmarks/physical.py [--quick] [--parts patch-mnist-cnn,...] [--fresh]
Needs ``pip install -c constraints.txt -e '.[peers]'`` for the ART columns (recorded as skipped
without it) and the MNIST / Fashion-MNIST files (``MODELSHIELD_DATA``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _parts import run_parts, unknown_parts  # benchmarks/ is on sys.path when a script runs

from modelshield import zoo
from modelshield.attacks.physical import (
    AdversarialPatch,
    PhysicalPattern,
    Transforms,
    UniversalPerturbation,
    evaluate_pattern,
    patch_side,
)
from modelshield.data import load_dataset
from modelshield.defenses.certification import PatchCleanser, masked_training

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"mnist-cnn": "mnist", "fashion-cnn": "fashion-mnist"}
SIZES = (0.03, 0.05, 0.10)
# The transformations both attacks can express: location, rotation, scale (no light, no noise).
SHARED = Transforms(rotation=20.0, scale=(0.9, 1.1), brightness=0.0, contrast=(1.0, 1.0), noise=0.0)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _data(model: str) -> tuple[torch.nn.Module, Any]:
    module = zoo.load(model).module
    return module, load_dataset(MODELS[model])


def _art_classifier(module: torch.nn.Module, shape: tuple[int, int, int], n_classes: int) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                             nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="cpu")


def _have_art() -> bool:
    try:
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))
        import art  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def _r(v: float) -> float:
    return round(float(v), 4)


def patch_part(model: str, args: argparse.Namespace) -> dict[str, Any]:
    module, ds = _data(model)
    xtr, ytr = ds.x_train[: args.n_train], ds.y_train[: args.n_train]
    xte, yte = ds.x_test[: args.n_test], ds.y_test[: args.n_test]
    c, h, w = xtr.shape[1:]
    # ART's max_iter counts passes over the training images (ceil(n / batch) Adam steps each):
    # both attacks take the same number of Adam steps.
    per_pass = -(-len(xtr) // args.batch_size)
    art_iters = max(1, round(args.steps / per_pass))
    steps = art_iters * per_pass
    rows = []
    seeds = list(range(args.seed, args.seed + args.seeds))
    for size in SIZES:
        side = patch_side(size, h, w)
        row: dict[str, Any] = {"size": size, "side_px": side, "seeds": seeds, "load_before": load()}
        ours_runs, art_runs = [], []
        template = None
        for seed in seeds:
            attack = AdversarialPatch(size=size, steps=steps, batch_size=args.batch_size, lr=args.lr,
                                      transforms=SHARED, seed=seed)
            t0 = time.perf_counter()
            ours = attack(module, xtr, ytr)
            ours_s = time.perf_counter() - t0
            ev = evaluate_pattern(module, ours, xte, yte)
            ours_runs.append({"time_s": _r(ours_s), "held_out_success": _r(ev.success_rate)})
            template = ours
            if not _have_art():
                continue
            import numpy as np
            from art.attacks.evasion import AdversarialPatchPyTorch

            torch.manual_seed(seed)  # ART draws from the global generators
            np.random.seed(seed)
            clf = _art_classifier(module, (c, h, w), 10)
            art_attack = AdversarialPatchPyTorch(
                clf, rotation_max=SHARED.rotation, scale_min=SHARED.scale[0] * side / min(h, w),
                scale_max=SHARED.scale[1] * side / min(h, w), learning_rate=args.lr, max_iter=art_iters,
                batch_size=args.batch_size, patch_shape=(c, side, side), patch_type="square",
                optimizer="Adam", targeted=False, verbose=False,
            )
            onehot = torch.nn.functional.one_hot(ytr, 10).numpy().astype("float32")
            t0 = time.perf_counter()
            art_patch, _ = art_attack.generate(x=xtr.numpy(), y=onehot)
            art_s = time.perf_counter() - t0
            theirs = dataclasses.replace(ours, attack="ART AdversarialPatchPyTorch",
                                         pattern=torch.as_tensor(art_patch, dtype=torch.float32))
            ev_art = evaluate_pattern(module, theirs, xte, yte)
            art_runs.append({"time_s": _r(art_s), "held_out_success": _r(ev_art.success_rate)})
        assert template is not None

        def mean(runs: list[dict[str, float]], key: str) -> float:
            return _r(sum(r[key] for r in runs) / len(runs))

        row["ours"] = {"runs": ours_runs, "time_s": mean(ours_runs, "time_s"),
                       "held_out_success": mean(ours_runs, "held_out_success"), "views": ev.evasion.n,
                       "eligible": ev.n_eligible}
        if art_runs:
            row["art"] = {"runs": art_runs, "time_s": mean(art_runs, "time_s"),
                          "held_out_success": mean(art_runs, "held_out_success")}
            ratio = row["ours"]["held_out_success"] / max(row["art"]["held_out_success"], 1e-9)
            row["success_ratio"] = _r(ratio)
            row["speedup"] = _r(row["art"]["time_s"] / row["ours"]["time_s"])
        else:
            row["art"] = "skipped: pip install -c constraints.txt -e '.[peers]'"
        row["load_after"] = load()
        rows.append(row)
        print(f"  {model} patch {size:.0%}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return {"model": model, "n_train": len(xtr), "n_test": len(xte), "adam_steps": steps,
            "art_max_iter": art_iters,
            "batch_size": args.batch_size, "lr": args.lr, "transforms": SHARED.to_dict(), "rows": rows}


def universal_part(model: str, args: argparse.Namespace) -> dict[str, Any]:
    module, ds = _data(model)
    xtr, ytr = ds.x_train[: args.n_uap], ds.y_train[: args.n_uap]
    xte, yte = ds.x_test[: args.n_test], ds.y_test[: args.n_test]
    out: dict[str, Any] = {"model": model, "eps": args.eps, "norm": "inf", "n_train": len(xtr),
                           "sgd_passes": args.sgd_passes, "art_fgsm_passes": args.uap_passes,
                           "n_test": len(xte)}
    template = None
    # DeepFool's algorithm is sequential (one image at a time) on both sides: it runs on the
    # first --n-uap-deepfool images, one pass; the SGD and FGSM variants on --n-uap images.
    small = args.n_uap_deepfool
    out["deepfool_n_train"], out["deepfool_passes"] = small, 1
    for method in ("sgd", "deepfool"):
        xs, ys = (xtr, ytr) if method == "sgd" else (xtr[:small], ytr[:small])
        passes = args.sgd_passes if method == "sgd" else 1
        t0 = time.perf_counter()
        uap = UniversalPerturbation(eps=args.eps, method=method, max_passes=passes,
                                    delta=0.0, seed=args.seed)(module, xs, ys)
        dt = time.perf_counter() - t0
        ev = evaluate_pattern(module, uap, xte, yte)
        out[f"ours_{method}"] = {"time_s": _r(dt), "fooling_rate": _r(ev.fooling_rate),
                                 "train_fooling_rate": _r(uap.train_success), "passes_run": uap.steps}
        template = uap
        print(f"  {model} ours {method}: {out[f'ours_{method}']}", file=sys.stderr, flush=True)
    if _have_art() and template is not None:
        import numpy as np
        from art.attacks.evasion import UniversalPerturbation as ArtUAP

        clf = _art_classifier(module, tuple(xtr.shape[1:]), 10)  # type: ignore[arg-type]
        for attacker, params in (("fgsm", {"eps": args.eps}), ("deepfool", {"verbose": False})):
            np.random.seed(args.seed)
            xs = xtr if attacker == "fgsm" else xtr[:small]
            passes = args.uap_passes if attacker == "fgsm" else 1
            art = ArtUAP(clf, attacker=attacker, attacker_params=params, delta=0.0,
                         max_iter=passes, eps=args.eps, norm=np.inf, batch_size=64, verbose=False)
            t0 = time.perf_counter()
            art.generate(xs.numpy())
            dt = time.perf_counter() - t0
            noise = torch.as_tensor(art.noise[0], dtype=torch.float32)
            theirs = dataclasses.replace(template, attack=f"ART UniversalPerturbation({attacker})",
                                         pattern=noise)
            ev = evaluate_pattern(module, theirs, xte, yte)
            out[f"art_{attacker}"] = {"time_s": _r(dt), "fooling_rate": _r(ev.fooling_rate),
                                      "linf": _r(noise.abs().max())}
            print(f"  {model} ART {attacker}: {out[f'art_{attacker}']}", file=sys.stderr, flush=True)
    else:
        out["art"] = "skipped: pip install -c constraints.txt -e '.[peers]'"
    return out


def patchcleanser_part(model: str, args: argparse.Namespace) -> dict[str, Any]:
    module, ds = _data(model)
    x, y = ds.x_test[: args.n_cert], ds.y_test[: args.n_cert]
    pc = PatchCleanser(patch_size=0.05, masks_per_axis=6)
    t0 = time.perf_counter()
    cert = pc.certify(module, x, y)
    dt = time.perf_counter() - t0
    attack = AdversarialPatch(size=0.05, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              transforms=SHARED, seed=args.seed)
    patch: PhysicalPattern = attack(module, ds.x_train[: args.n_train], ds.y_train[: args.n_train])
    ev = evaluate_pattern(module, patch, x, y, draws=1)
    defended = pc.predict(module, ev.evasion.x_adv).labels
    undefended = ev.evasion.adv_pred
    keys = ("clean_accuracy", "accuracy", "certified_accuracy", "n_masks", "mask_size", "patch")
    out: dict[str, Any] = {
        "model": model, "n": len(x), "patch_share": 0.05,
        "vanilla": {**{k: v for k, v in cert.to_dict().items() if k in keys}, "certify_time_s": _r(dt),
                    "patched_accuracy_undefended": _r((undefended == y).double().mean()),
                    "patched_accuracy_defended": _r((defended == y).double().mean()),
                    "certified_points_broken": int(((defended != y) & cert.certified).sum())},
    }
    # The paper's base model: fine-tuned on images with two random masks of the mask set.
    tuned = copy.deepcopy(module)
    t0 = time.perf_counter()
    masked_training(tuned, (ds.x_train[: args.n_masked], ds.y_train[: args.n_masked]), cleanser=pc,
                    epochs=args.masked_epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    tuned.eval()
    cert = pc.certify(tuned, x, y)
    patch = attack(tuned, ds.x_train[: args.n_train], ds.y_train[: args.n_train])  # adaptive: on it
    ev = evaluate_pattern(tuned, patch, x, y, draws=1)
    defended = pc.predict(tuned, ev.evasion.x_adv).labels
    out["masked_training"] = {
        **{k: v for k, v in cert.to_dict().items() if k in keys}, "train_time_s": _r(train_s),
        "n_train": min(args.n_masked, len(ds.x_train)), "epochs": args.masked_epochs,
        "patched_accuracy_undefended": _r((ev.evasion.adv_pred == y).double().mean()),
        "patched_accuracy_defended": _r((defended == y).double().mean()),
        "certified_points_broken": int(((defended != y) & cert.certified).sum()),
    }
    return out


def _parts() -> dict[str, Callable[[argparse.Namespace], dict[str, Any]]]:
    parts: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}
    for model in MODELS:
        parts[f"patch-{model}"] = lambda a, m=model: patch_part(m, a)  # type: ignore[misc]
        parts[f"universal-{model}"] = lambda a, m=model: universal_part(m, a)  # type: ignore[misc]
        parts[f"patchcleanser-{model}"] = lambda a, m=model: patchcleanser_part(m, a)  # type: ignore[misc]
    return parts


PARTS = _parts()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=RESULTS / "physical.json")
    p.add_argument("--fresh", action="store_true", help="ignore the parts already saved in --out")
    p.add_argument("--quick", action="store_true", help="tiny settings, to check the script")
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-uap", type=int, default=1000)
    p.add_argument("--n-uap-deepfool", type=int, default=20)
    p.add_argument("--n-cert", type=int, default=200)
    p.add_argument("--n-masked", type=int, default=10000, help="images for masked fine-tuning")
    p.add_argument("--masked-epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--uap-passes", type=int, default=2, help="ART's FGSM universal perturbation")
    p.add_argument("--sgd-passes", type=int, default=10, help="our SGD universal perturbation")
    p.add_argument("--seeds", type=int, default=3, help="patches trained per size and attack")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.n_uap, args.n_cert = 128, 100, 50, 20
        args.steps, args.uap_passes, args.sgd_passes, args.seeds = 4, 1, 1, 1
        args.n_uap_deepfool, args.n_masked, args.masked_epochs = 5, 256, 1
        args.out = RESULTS / "physical_quick.json" if args.out == RESULTS / "physical.json" else args.out
    unknown = unknown_parts(args.parts, PARTS)
    if unknown:
        p.error(f"--parts must be among {', '.join(PARTS)}; got {unknown}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    settings = {k: getattr(args, k) for k in ("quick", "n_train", "n_test", "n_uap", "n_uap_deepfool",
                                              "n_cert", "n_masked", "masked_epochs", "steps",
                                              "batch_size", "lr", "eps", "uap_passes", "sgd_passes", "seeds",
                                              "seed")}
    environment = {"python": platform.python_version(),
                   "torch": torch.__version__,
                   "threads": torch.get_num_threads(),
                   "cpus": os.cpu_count(),
                   "machine": platform.machine()}
    return run_parts("physical", PARTS, args, settings=settings, environment=environment)


if __name__ == "__main__":
    main()
