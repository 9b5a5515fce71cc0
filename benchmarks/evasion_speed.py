"""Speed of modelshield's white-box evasion attacks, measured in one run (issue #3).

Prints one JSON object:
- PGD-10 and PGD-40 time divided by the time of the same number of bare forward+backward
  passes (forward, cross-entropy, ``torch.autograd.grad`` w.r.t. the input) on the same batch;
- with the ``peers`` extra installed: ART, torchattacks and foolbox running the same PGD
  (same eps, steps, step size, random start) on the same model and points, with their robust
  accuracy re-checked here on the returned inputs;
- ``Ensemble`` against torchattacks' ``AutoAttack`` (standard version) on the same points.

Usage: python benchmarks/evasion_speed.py [--model digits-cnn] [--n 500] [--eps 0.1] [--repeats 3]
[--device cpu|cuda|auto]
Timings are the minimum of ``--repeats`` round-robin runs after a warm-up; every ratio is taken within
this one process. With ``--device cuda`` the model and points live on the GPU and every timer is read
after ``torch.cuda.synchronize()`` (CUDA kernels run asynchronously).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from modelshield.attacks.evasion import PGD
from modelshield.models import resolve_device, zoo
from modelshield.models.device import synchronize


def bare_passes(module: nn.Module, x: Tensor, y: Tensor, k: int) -> None:
    """k forward+backward passes w.r.t. the input: the least work any k-step attack needs."""
    for _ in range(k):
        xr = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(module(xr), y)
        torch.autograd.grad(loss, xr)


def robust_acc(module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, eps: float) -> dict[str, float]:
    """Robust accuracy re-checked here, with the eps-ball and bounds verified."""
    x_adv = x_adv.to(x.device)  # a peer may answer on the CPU
    with torch.no_grad():
        clean_ok = module(x).argmax(1) == y
        adv_ok = module(x_adv).argmax(1) == y
    linf = (x_adv - x).flatten(1).abs().amax(1)
    flat = x_adv.flatten(1)
    inside = (linf <= eps + 1e-6) & (flat.amin(1) >= -1e-6) & (flat.amax(1) <= 1 + 1e-6)
    return {
        "robust_accuracy": float((clean_ok & (adv_ok | ~inside)).float().mean()),
        "points_outside_budget": int((~inside).sum()),
    }


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int,
                device: torch.device | None = None) -> dict[str, tuple[float, Any]]:
    """Best (minimum) wall time and last output of each contender, timed round-robin after a warm-up.

    Timing every contender once per round, in turn, means a slow spell on a shared machine
    hits them all alike instead of skewing one ratio; the minimum over rounds is the least
    disturbed measurement of each (the ``timeit`` convention), since interference only adds time.
    On a GPU the device is synchronised before each timer is read.
    """
    dev = device or torch.device("cpu")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outs: dict[str, Any] = {}
    for k, fn in contenders.items():
        outs[k] = fn()  # warm-up (allocator, lazy imports, first-call kernels)
    synchronize(dev)
    for _ in range(repeats):
        for k, fn in contenders.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            synchronize(dev)
            times[k].append(time.perf_counter() - t0)
    return {k: (min(v), outs[k]) for k, v in times.items()}


def peer_pgd_contenders(module: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int,
                        alpha: float) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    """Callables running each installed peer's PGD (same eps, steps, step size, random start)."""
    runs: dict[str, Callable[[], Tensor]] = {}
    skipped: dict[str, str] = {}
    try:
        import torchattacks

        ta = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=steps, random_start=True)
        runs["torchattacks"] = lambda: ta(x, y)
    except ImportError as exc:
        skipped["torchattacks"] = str(exc)
    try:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(module, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.is_cuda else "cpu")
        art_pgd = ProjectedGradientDescentPyTorch(clf, norm="inf", eps=eps, eps_step=alpha, max_iter=steps,
                                                  num_random_init=1, batch_size=x.shape[0], verbose=False)
        xn = x.cpu().numpy()
        runs["art"] = lambda: torch.as_tensor(art_pgd.generate(xn))
    except ImportError as exc:
        skipped["art"] = str(exc)
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(module, bounds=(0.0, 1.0))
        fpgd = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        runs["foolbox"] = lambda: fpgd(fmodel, x, y, epsilons=eps)[1]
    except ImportError as exc:
        skipped["foolbox"] = str(exc)
    return runs, skipped


def ensemble_vs_autoattack(module: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, Any]:
    from modelshield.attacks.evasion import Ensemble

    ens = Ensemble.standard(eps=eps)
    synchronize(x.device)
    t0 = time.perf_counter()
    res = ens(module, x, y)
    synchronize(x.device)
    ours = {"time_s": round(time.perf_counter() - t0, 3), **robust_acc(module, x, res.x_adv, y, eps)}
    out: dict[str, Any] = {"modelshield_ensemble": ours}
    try:
        import torchattacks

        aa = torchattacks.AutoAttack(module, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        t0 = time.perf_counter()
        xa = aa(x, y)
        synchronize(x.device)
        out["torchattacks_autoattack"] = {"time_s": round(time.perf_counter() - t0, 3),
                                          **robust_acc(module, x, xa, y, eps)}
    except ImportError as exc:
        out["torchattacks_autoattack"] = {"skipped": str(exc)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits-cnn")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N or auto: where the model and the points live")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a 2-core machine this keeps the ratios "
                        "steady when anything else runs on the other core)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, owner="evasion_speed")

    zm = zoo.load(args.model)
    module = zm.module.eval().to(device)
    for prm in module.parameters():
        prm.requires_grad_(False)
    x, y = zoo.test_split(args.model, n=args.n)
    x, y = x.to(device), y.to(device)
    report: dict[str, Any] = {
        "benchmark": "evasion_speed", "model": args.model, "n": int(x.shape[0]), "eps": args.eps,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "pgd": {},
    }
    for steps in (10, 40):
        alpha = 2.5 * args.eps / steps
        ours = PGD(eps=args.eps, steps=steps, step_size=alpha)
        # The same attack at a tiny eps, where almost no point breaks, shows the pure overhead
        # (every point runs every step).
        tiny = PGD(eps=0.01, steps=steps)
        contenders: dict[str, Callable[[], Any]] = {
            "bare": lambda steps=steps: bare_passes(module, x, y, steps),
            "modelshield": lambda ours=ours: ours(module, x, y),
            "modelshield_eps_0.01": lambda tiny=tiny: tiny(module, x, y),
        }
        skipped: dict[str, str] = {}
        if not args.no_peers:
            peer_runs, skipped = peer_pgd_contenders(module, x, y, args.eps, steps, alpha)
            contenders.update(peer_runs)
        timed = interleaved(contenders, args.repeats, device)
        t_bare = timed["bare"][0]
        t_ours, res = timed["modelshield"]
        t_tiny, res_tiny = timed["modelshield_eps_0.01"]
        entry: dict[str, Any] = {
            "bare_fwd_bwd_time_s": round(t_bare, 4),
            "modelshield": {"time_s": round(t_ours, 4), "ratio_to_bare": round(t_ours / t_bare, 3),
                            **robust_acc(module, x, res.x_adv, y, args.eps),
                            "queries_forward": res.queries_forward, "queries_backward": res.queries_backward},
            "modelshield_eps_0.01": {"time_s": round(t_tiny, 4), "ratio_to_bare": round(t_tiny / t_bare, 3),
                                     "robust_accuracy": round(res_tiny.robust_accuracy, 4),
                                     "queries_backward": res_tiny.queries_backward},
            "peers": {name: {"skipped": why} for name, why in skipped.items()},
        }
        for name in contenders:
            if name in ("bare", "modelshield", "modelshield_eps_0.01"):
                continue
            t_peer, x_adv = timed[name]
            entry["peers"][name] = {"time_s": round(t_peer, 4), "ratio_to_bare": round(t_peer / t_bare, 3),
                                    "modelshield_speedup": round(t_peer / t_ours, 2),
                                    **robust_acc(module, x, x_adv, y, args.eps)}
        report["pgd"][f"pgd{steps}"] = entry
    if not args.no_peers:
        report["ensemble_vs_autoattack"] = ensemble_vs_autoattack(module, x, y, args.eps)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
