"""Evasion defences, evaluated honestly in one run (issue: adversarial training, distillation,
certified robustness, detectors).

Prints one JSON object:
- ``adversarial_training``: for each method (pgd, trades, fast) the training time, clean accuracy,
  robust accuracy under ``Ensemble.standard`` (APGD-CE + APGD-T), the worst case over all attacks
  of ``check_gradient_masking`` and its flags, and (peers installed) torchattacks' AutoAttack
  (standard version) on the same points;
- ``distillation``: defensive distillation's robust accuracy under plain cross-entropy PGD and
  margin-loss PGD, with the masking flags (the CE number is expected to be inflated);
- ``randomized_smoothing``: certified accuracy at L2 radii 0.5, 1.0, 1.5 for models trained with
  Gaussian noise of sigma 0.25 and 0.5 (Cohen et al., 2019), and (peers installed) ART's
  implementation of the same CERTIFY procedure on the same base models and points;
- ``feature_squeezing``: detection rate at 5% FPR of a plain PGD attack and of the adaptive
  attack that knows the detector, on the undefended zoo model.

Defaults follow the issue (MNIST, eps 0.3 L-inf) at a scale a 2-core CPU finishes in a few
hours: Madry et al.'s MNIST architecture (``lenet-28-wide``), 12 training epochs with 10 inner
steps and a 2-epoch eps warm-up for every method (Madry et al. trained ~83 epochs with 40 steps
on a GPU), 500 attack points with 100-step attacks, and smoothing with n = 10,000 samples on 300
points (Cohen et al. used 100,000 on 500). Every knob is a flag; the trained models can be saved
with --save and evaluated again without retraining with --load, and --sections runs a subset of
the four sections (the JSON then holds only those). A small run:
    python benchmarks/defenses.py --dataset digits --eps 0.1 --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from modelshield import zoo
from modelshield.assess.masking import check_gradient_masking
from modelshield.attacks.evasion import PGD, Ensemble
from modelshield.data import Dataset, load_dataset
from modelshield.defenses.certification.smoothing import RandomizedSmoothing, noise_augmented_training
from modelshield.defenses.detection.squeezing import FeatureSqueezing, adaptive_attack
from modelshield.defenses.training import METHODS, AdversarialTrainer, DefensiveDistillation
from modelshield.defenses.training.adversarial import Method

MODELS = {"digits": "digits-cnn", "mnist": "mnist-cnn"}
SECTIONS = ("adversarial_training", "distillation", "randomized_smoothing", "feature_squeezing")


def log(done: int, total: int, message: str) -> None:
    """Progress on stderr (stdout carries the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {done}/{total} {message}", file=sys.stderr, flush=True)


def accuracy(module: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return round(float((module(x).argmax(1) == y).double().mean()), 4)


def autoattack(module: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, Any]:
    """torchattacks' AutoAttack (standard) on the same points, re-checked here."""
    try:
        import torchattacks
    except ImportError as exc:
        return {"skipped": str(exc)}
    aa = torchattacks.AutoAttack(module, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    t0 = time.perf_counter()
    xa = aa(x, y)
    inside = bool(((xa - x).abs().amax() <= eps + 1e-6) and xa.min() >= 0 and xa.max() <= 1)
    return {"robust_accuracy": accuracy(module, xa, y), "time_s": round(time.perf_counter() - t0, 2),
            "within_eps_and_bounds": inside}


def art_certify(module: nn.Module, x: Tensor, y: Tensor, *, sigma: float, n: int,
                radii: tuple[float, ...]) -> dict[str, Any]:
    """ART's randomized smoothing (Cohen et al.'s CERTIFY: n0 = 100 selection draws, n estimation
    draws, alpha 0.001) on the same base model and points; its noise comes from numpy's global
    RNG, seeded here."""
    try:
        import numpy as np
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    except ImportError as exc:
        return {"skipped": str(exc)}
    np.random.seed(0)
    rs = PyTorchRandomizedSmoothing(model=module, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                    nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
                                    sample_size=100, scale=sigma, alpha=0.001)
    t0 = time.perf_counter()
    pred, radius = rs.certify(x.numpy(), n=n, batch_size=1000)
    elapsed = time.perf_counter() - t0
    correct = torch.as_tensor(pred) == y
    rad = torch.as_tensor(radius)
    return {"certify_time_s": round(elapsed, 2), "abstain_rate": round(float((torch.as_tensor(pred) < 0)
                                                                             .double().mean()), 4),
            "smoothed_accuracy": round(float(correct.double().mean()), 4),
            "certified_accuracy": {f"{r:g}": round(float((correct & (rad >= r)).double().mean()), 4)
                                   for r in radii}}


def evaluate(module: nn.Module, x: Tensor, y: Tensor, eps: float, cfg: argparse.Namespace,
             *, peers: bool) -> dict[str, Any]:
    module.eval()
    rep = check_gradient_masking(module, x, y, eps=eps,
                                 attack=PGD(eps=eps, steps=cfg.eval_steps, loss="ce"),
                                 ensemble=Ensemble.standard(eps, steps=cfg.eval_steps),
                                 square_queries=cfg.square_queries)
    out = {"clean_accuracy": round(rep.clean_accuracy, 4),
           "pgd_ce_robust_accuracy": round(rep.attack_robust_accuracy, 4),
           "ensemble_standard_robust_accuracy": round(rep.ensemble_robust_accuracy, 4),
           "worst_case_robust_accuracy": round(rep.robust_accuracy, 4),
           "masking_flags": list(rep.flag_names), "robust_claim_allowed": rep.robust_claim_allowed,
           "masking_time_s": round(rep.time_s, 2)}
    if peers:
        out["torchattacks_autoattack"] = autoattack(module, x, y, eps)
    return out


def loaded_record(folder: Path | None, method: str, module: nn.Module) -> dict[str, Any] | None:
    """Load ``folder/METHOD.pt`` into ``module`` and return its training record (``METHOD.json``,
    marked ``loaded_from``), or None when there is nothing saved for this method."""
    if folder is None or not (folder / f"{method}.pt").exists():
        return None
    sidecar = folder / f"{method}.json"
    if not sidecar.exists():
        raise SystemExit(f"{folder / f'{method}.pt'} has no training record {sidecar}: save models "
                         "with --save (which writes both), or remove the .pt to retrain")
    module.load_state_dict(torch.load(folder / f"{method}.pt", weights_only=True))
    log(0, 0, f"{method}: loaded the trained model from {folder}")
    return {**json.loads(sidecar.read_text()), "loaded_from": str(folder / f"{method}.pt")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(MODELS), default="mnist")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="few steps, points and samples (smoke run)")
    p.add_argument("--epochs", type=int, default=None, help="adversarial-training epochs (12; quick 20)")
    p.add_argument("--plain-epochs", type=int, default=None,
                   help="epochs of distillation and noise training (10; quick 20)")
    p.add_argument("--train-steps", type=int, default=None, help="inner PGD/TRADES steps (10; quick 7)")
    p.add_argument("--warmup", type=int, default=None, help="eps warm-up epochs (2; quick 0)")
    p.add_argument("--n", type=int, default=None, help="test points for the attacks (500; quick 100)")
    p.add_argument("--smooth-n", type=int, default=None, help="smoothing samples per point (10,000)")
    p.add_argument("--cert-points", type=int, default=None, help="points certified (300)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", default=None, help="folder to save the trained models' state dicts in")
    p.add_argument("--load", default=None,
                   help="folder of adversarially trained models saved by an earlier --save run of the "
                        "same configuration: METHOD.pt is evaluated instead of retrained and its "
                        "training record read from METHOD.json")
    p.add_argument("--arch", default=None,
                   help="architecture of every trained model (mnist: lenet-28-wide, Madry et al.'s "
                        "model; digits: the zoo model's)")
    p.add_argument("--methods", default=",".join(METHODS), help="adversarial-training methods to run")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"report sections to run (default all: {','.join(SECTIONS)})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    args.epochs = args.epochs or (20 if q else 12)
    plain_epochs = args.plain_epochs or (20 if q else 10)
    args.n = args.n or (100 if q else 500)
    args.eval_steps = 20 if q else 100
    args.square_queries = 200 if q else 5000
    steps = args.train_steps or (7 if q else 10)
    warmup = args.warmup if args.warmup is not None else (0 if q else 2)
    smooth_n = args.smooth_n or (500 if q else 10_000)
    cert_points = args.cert_points or (50 if q else 300)
    save = Path(args.save) if args.save else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)

    name = MODELS[args.dataset]
    spec = zoo.spec(name)
    arch = args.arch or ("lenet-28-wide" if args.dataset == "mnist" else spec.arch)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown section or method {', '.join(unknown)}: sections are {', '.join(SECTIONS)}; "
                f"methods are {', '.join(METHODS)}")
    ds = load_dataset(spec.dataset, root=args.data_dir)
    xtr, ytr = ds.x_train.float(), ds.y_train.long()
    x, y = ds.x_test[:args.n].float(), ds.y_test[:args.n].long()
    # The per-epoch overfitting check reads the last 256 test images, never the attacked ones.
    xval, yval = ds.x_test[-256:].float(), ds.y_test[-256:].long()
    report: dict[str, Any] = {
        "benchmark": "defenses", "dataset": spec.dataset, "arch": arch, "eps": args.eps,
        "norm": "inf", "epochs": args.epochs, "plain_epochs": plain_epochs, "eps_warmup_epochs": warmup,
        "n": int(x.shape[0]), "quick": q, "train_steps": steps,
        "eval_steps": args.eval_steps, "square_queries": args.square_queries,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "sections": sections,
    }
    if "adversarial_training" in sections:
        report["adversarial_training"] = adversarial_training(
            arch, cast(list[Method], methods), ds, (xtr, ytr), (xval, yval), x, y, steps=steps, warmup=warmup,
            load=Path(args.load) if args.load else None, save=save, args=args)
    if "distillation" in sections:
        report["distillation"] = distillation(arch, (xtr, ytr), x, y, ds.bounds, plain_epochs, args)
    if "randomized_smoothing" in sections:
        report["randomized_smoothing"] = smoothing(arch, (xtr, ytr), x, y, ds.bounds, plain_epochs,
                                                   smooth_n, cert_points, args)
    if "feature_squeezing" in sections:
        report["feature_squeezing"] = squeezing(name, ds, x, y, args)
    print(json.dumps(report, indent=2, default=lambda o: o.tolist() if isinstance(o, Tensor) else str(o)))
    return report


def adversarial_training(arch: str, methods: list[Method], ds: Dataset, train: tuple[Tensor, Tensor],
                         val: tuple[Tensor, Tensor], x: Tensor, y: Tensor, *, steps: int, warmup: int,
                         load: Path | None, save: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """Each method's training record (trained here, or read back from ``load``) and evaluation."""
    out: dict[str, Any] = {}
    for method in methods:
        module = zoo.build(arch, seed=0)
        record = loaded_record(load, method, module)
        if record is None:
            trainer = AdversarialTrainer(method=method, eps=args.eps, steps=steps, epochs=args.epochs,
                                         eps_warmup_epochs=warmup,
                                         bounds=ds.bounds, eval_steps=min(args.eval_steps, 20))
            log(0, args.epochs, f"{method}: adversarial training of {arch}")
            tr = trainer.fit(module, train, val_data=val, progress=log)
            record = {"train_time_s": round(tr.train_time_s, 2),
                      "catastrophic_overfitting": tr.catastrophic_overfitting,
                      "epochs": [{k: v for k, v in asdict(e).items() if v is not None} for e in tr.epochs]}
            if save is not None:
                torch.save(module.state_dict(), save / f"{method}.pt")
                (save / f"{method}.json").write_text(json.dumps(record, indent=2))
        log(0, 0, f"{method}: trained in {record['train_time_s']:.0f} s; evaluating (masking checks"
                  f"{', AutoAttack' if not args.no_peers else ''})")
        out[method] = {**record, **evaluate(module, x, y, args.eps, args, peers=not args.no_peers)}
    return out


def distillation(arch: str, train: tuple[Tensor, Tensor], x: Tensor, y: Tensor,
                 bounds: tuple[float, float], plain_epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Defensive distillation at T = 100, evaluated with CE PGD, margin PGD and the masking checks."""
    log(0, 0, "defensive distillation")
    student = zoo.build(arch, seed=0)
    dist = DefensiveDistillation(temperature=100.0, epochs=plain_epochs, bounds=bounds)
    res = dist.fit(zoo.build(arch, seed=1), student, train)
    model = res.model.eval()
    ev = evaluate(model, x, y, args.eps, args, peers=False)
    margin = PGD(eps=args.eps, steps=args.eval_steps, loss="margin")(model, x, y)
    ev["pgd_margin_robust_accuracy"] = round(margin.robust_accuracy, 4)
    ev["holds"] = bool(ev["robust_claim_allowed"]
                       and margin.robust_accuracy >= ev["pgd_ce_robust_accuracy"] - 0.05)
    return {"temperature": 100.0, "train_time_s": round(
        res.teacher_report.train_time_s + res.student_report.train_time_s, 2), **ev}


def smoothing(arch: str, train: tuple[Tensor, Tensor], x: Tensor, y: Tensor, bounds: tuple[float, float],
              plain_epochs: int, smooth_n: int, cert_points: int, args: argparse.Namespace) -> dict[str, Any]:
    """Randomized smoothing's certified accuracy at L2 0.5 / 1.0 / 1.5 for sigma 0.25 and 0.5."""
    radii = (0.5, 1.0, 1.5)
    out: dict[str, Any] = {"n": smooth_n, "n0": 100, "alpha": 0.001, "points": cert_points}
    for sigma in (0.25, 0.5):
        log(0, 0, f"randomized smoothing, sigma {sigma:g}")
        module = zoo.build(arch, seed=0)
        tr = noise_augmented_training(module, train, sigma=sigma, epochs=plain_epochs, bounds=bounds)
        module.eval()
        with torch.no_grad():
            cert = RandomizedSmoothing(sigma=sigma, n=smooth_n, n0=100, alpha=0.001).certify(
                module, x[:cert_points], y[:cert_points])
        accs = cert.certified_accuracy(radii)
        row: dict[str, Any] = {
            "train_time_s": round(tr.train_time_s, 2), "certify_time_s": round(cert.time_s, 2),
            "abstain_rate": round(float(cert.abstain.double().mean()), 4),
            "smoothed_accuracy": round(cert.certified_accuracy([0.0])[0], 4),
            "certified_accuracy": {f"{r:g}": round(a, 4) for r, a in zip(radii, accs, strict=True)}}
        if not args.no_peers:
            row["art"] = art_certify(module, x[:cert_points], y[:cert_points], sigma=sigma, n=smooth_n,
                                     radii=radii)
        out[f"sigma_{sigma:g}"] = row
    return out


def squeezing(name: str, ds: Dataset, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Feature squeezing's detection rate at 5% FPR for plain PGD and the adaptive (BPDA) attack."""
    log(0, 0, "feature squeezing")
    base = zoo.load(name, data_root=args.data_dir).module.eval()
    fit_x = ds.x_test[args.n:args.n + 500].float()
    det = FeatureSqueezing(fpr=0.05, bounds=ds.bounds).fit(base, fit_x)
    plain = det.evaluate(base, x, y, PGD(eps=args.eps, steps=args.eval_steps)(base, x, y))
    adaptive = adaptive_attack(det, base, x, y, eps=args.eps, steps=args.eval_steps * 2)
    return {"model": name, "fit_points": int(fit_x.shape[0]), "threshold": det.threshold_,
            "plain_pgd": plain.to_dict(), "adaptive": adaptive.to_dict()}


if __name__ == "__main__":
    main()
