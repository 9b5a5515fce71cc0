"""Explainability benchmark (issue #19, "Must show"): speed, accuracy and memory of ``modelshield.explain``.

Prints one JSON report and saves every finished part to ``benchmarks/results/explain.json``
(``--out``) as soon as it finishes. A rerun skips the parts already saved with the same settings
(``--quick``, ``--seed``); ``--fresh`` re-measures the parts asked for; ``--parts a,b`` runs a subset.
Parts not asked for are never dropped from the file: each save re-reads it and merges.

Parts:

- ``kernelshap``: Kernel SHAP on a 100-feature tabular model, 100 rows explained against 100
  background rows (``--quick``: 20 rows), in probability space for each row's predicted class.
  The model is a torch MLP 100-16-2 (ReLU) trained on a seeded ``make_classification`` problem
  (30 informative features, 10 redundant, 3 clusters per class): non-additive (so Kernel SHAP has
  a real sampling error to measure) and cheap to evaluate (so the time is the explainer's, not
  the model's; a 50-tree scikit-learn GBM spends about 3 s per 2.2 million rows in its own
  ``predict_proba``, and Kernel SHAP's default budget scores 22 million rows). One hidden layer
  also allows an exact, cheap value function for the reference below.
  Reference: permutation-sampling Shapley values (Castro, Gomez and Tejada 2009; Strumbelj and
  Kononenko 2014) with antithetic permutation pairs (each permutation and its reverse; Mitchell et
  al. 2022), ``--ref-perms`` permutations per row, every coalition's value averaged exactly over
  the 100 background rows. It shares no code with either Kernel SHAP: the first layer is linear,
  so walking a permutation is a cumulative sum of ``W1[:, j] (x_j - b_j)`` per background row.
  Its own noise is reported (``reference_noise_mae``: half the mean |difference| of the estimates
  from the two halves of the permutations, which is distributed as the full estimate's error).
  Compared: modelshield ``KernelShap()`` at its defaults (``2 D + 2048 = 2248`` coalitions, paired);
  ``shap.KernelExplainer`` at the same budget (its default ``nsamples="auto"`` = 2248) with
  ``l1_reg=False`` (plain Kernel SHAP, the comparable estimator), and at all its defaults
  (``l1_reg="num_features(10)"``: it keeps 10 features per row, the rest get 0) on the first 20 rows
  (time scaled to 100 rows). Reported: seconds, MAE against the reference, the ratios.
- ``gradients``: saliency, gradient x input, Integrated Gradients (50 and 200 steps, zero
  baseline, Gauss-Legendre) and SmoothGrad (50 samples, sigma 0.15) on the zoo model
  ``mnist-cnn``, the first 500 MNIST test images (``--quick``: 50), each image's predicted class.
  modelshield (``modelshield.explain``, memory planned automatically) against Captum used directly
  with its defaults (``Saliency``, ``InputXGradient``, ``IntegratedGradients(...).attribute(x,
  target=t, n_steps=k)`` without ``internal_batch_size``, ``NoiseTunnel(Saliency)`` with
  ``nt_type="smoothgrad"``, 50 samples, std 0.15, no ``nt_samples_batch_size``). Each tool and
  method runs in a fresh subprocess (saliency and gradient x input: 3 calls, medians reported).
  Peak memory is the resident set's high-water mark during the call (``VmHWM`` after resetting
  it through ``/proc/self/clear_refs``) minus the resident set just before it, with the model and
  images loaded and ``malloc_trim(0)`` having returned the heap pages freed while loading (else a
  tool could reuse them unseen); tracemalloc would not see torch's allocations and ``ru_maxrss``
  would include the loading peak. The workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc's
  initial threshold, fixed rather than adaptive), so every large buffer goes back to the system
  when freed and the high-water mark is the peak of live memory: with the adaptive default,
  identical saliency calls peaked anywhere between 110 and 165 MiB (freed blocks the allocator
  kept), with it within 0.1 MiB. It costs both tools some speed (fresh pages for large buffers).
  Captum runs all ``N x steps`` rows in one pass: where that is estimated (modelshield's row-cost
  probe, ``explain.memory``) to need more than ``--captum-mb`` (default 3000 MiB, the machine is
  shared) it runs on the largest number of images that fits, and the estimate for all images is
  reported (it is conservative: Captum's measured peak per row was about a third of it, so
  ``targets`` also gives its measured peak scaled to all images). Values are compared on the
  images both ran (max |difference|); SmoothGrad's noise differs by design (Captum draws it from
  the global generator), so its values are checked against Captum's ``Saliency`` on
  modelshield's own noisy copies of the first 20 images.
- ``patch``, ``disagreement`` (``benchmarks/explain_detect.py``) and ``treeshap``
  (``benchmarks/explain_trees.py``): written separately, imported only when their part runs.

``targets`` summarises each target of the issue (met, measured value) for the parts present; a
part may add its own under its ``"targets"`` key.

Usage: python benchmarks/explain.py [--quick] [--parts kernelshap,gradients] [--fresh] [--threads 2]
Needs ``$MODELSHIELD_DATA`` (default ``../shared/data``) for MNIST; ``shap`` and ``captum``.
Runtime measured 2026-12-02 on 2 quiet CPU cores with ``--threads 2 --fresh``: 385 s for all five
parts (``kernelshap`` 75 s, ``gradients`` 103 s, ``patch`` 53 s, ``disagreement`` 40 s, ``treeshap``
113 s); ``--quick`` about 70 s for the first two under load. A rerun resumes from the saved parts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PARTS_ORDER = ("kernelshap", "gradients", "patch", "disagreement", "treeshap")
GRAD_METHODS = ("saliency", "gradient_x_input", "ig50", "ig200", "smoothgrad")
SG_SAMPLES, SG_SIGMA = 50, 0.15
REPEATS = 3  # saliency and gradient x input are short: the median of 3 calls in one process
MMAP_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold, fixed in the workers (see the docstring)


def data_root() -> Path:
    env = os.environ.get("MODELSHIELD_DATA", "").strip()
    return Path(env) if env else ROOT.parent.parent / "shared" / "data"


def clean(value: Any) -> Any:
    """JSON-able copy (floats rounded to 6 significant digits)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if not math.isfinite(v) or v == 0 else float(f"{v:.6g}")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


# -- kernelshap --------------------------------------------------------------------------------


def tabular_problem(seed: int) -> tuple[nn.Sequential, Tensor, Tensor, float]:
    """(trained MLP 100-16-2, 1000 held-out rows, 100 background rows, held-out accuracy)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=100, n_informative=30, n_redundant=10,
                               n_clusters_per_class=3, flip_y=0.02, random_state=seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    xt = (xt - xt[:2000].mean(0)) / xt[:2000].std(0)
    yt = torch.as_tensor(y)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(100, 16), nn.ReLU(), nn.Linear(16, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(300):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[:2000]), yt[:2000])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xt[2000:]).argmax(1) == yt[2000:]).float().mean())
    return net, xt[2000:], xt[:100], acc


def permutation_reference(net: nn.Sequential, x: Tensor, bg: Tensor, target: Tensor, *, perms: int,
                          seed: int, chunk: int = 16) -> tuple[Tensor, Tensor]:
    """Permutation-sampling Shapley values ``(N, D)`` of ``v(S) = mean_b p_t(x_S, b_~S)`` for the
    one-hidden-layer ReLU MLP ``net`` (two classes), from ``perms`` permutations per row (antithetic
    pairs), as two half estimates (first and second half of the pairs); the mean is the estimate."""
    lin1, lin2 = net[0], net[2]
    assert isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)
    w1t, b1 = lin1.weight.detach().T.contiguous(), lin1.bias.detach()  # (D, H), (H,)
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    pre_bg = bg @ w1t + b1  # (B, H)
    halves = torch.zeros(2, n, d, dtype=torch.float64)
    pairs = perms // 2
    for i in range(n):
        t = int(target[i])
        w = (lin2.weight[t] - lin2.weight[1 - t]).detach()  # (H,)
        c = float((lin2.bias[t] - lin2.bias[1 - t]).detach())
        p0 = torch.sigmoid(torch.relu(pre_bg) @ w + c).double().mean()
        delta = x[i][None, :] - bg  # (B, D)
        base = torch.stack([torch.randperm(d, generator=gen) for _ in range(pairs)])
        order = torch.stack([base, base.flip(1)], 1).reshape(-1, d)  # each permutation, then its reverse
        for lo in range(0, order.shape[0], chunk):
            pi = order[lo:lo + chunk]  # (P, D)
            contrib = delta[:, pi].permute(1, 0, 2)[..., None] * w1t[pi][:, None]  # (P, B, D, H)
            states = contrib.cumsum(2).add_(pre_bg[None, :, None, :]).relu_()
            p = torch.sigmoid(states @ w + c).double().mean(1)  # (P, D): after adding pi[:k+1]
            marg = torch.diff(torch.cat([p0.expand(pi.shape[0], 1), p], 1), dim=1)
            half = 0 if lo < order.shape[0] // 2 else 1
            halves[half, i].index_add_(0, pi.reshape(-1), marg.reshape(-1))
    halves /= order.shape[0] / 2
    return halves[0], halves[1]


def kernelshap_part(quick: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import shap  # type: ignore[import-untyped]  # benchmark-only peer, no stubs

    from modelshield.explain import KernelShap

    rows = 20 if quick else 100
    shap_default_rows = 5 if quick else 20
    ref_perms = args.ref_perms or (256 if quick else 1024)
    net, held, bg, acc = tabular_problem(seed)
    x = held[:rows]
    with torch.no_grad():
        probs = net(x).softmax(1)
    target = probs.argmax(1)

    t0 = time.perf_counter()
    ref_a, ref_b = permutation_reference(net, x, bg, target, perms=ref_perms, seed=seed + 1)
    ref_s = time.perf_counter() - t0
    ref = (ref_a + ref_b) / 2
    with torch.no_grad():
        f_null = net(bg).softmax(1)[:, target].double().mean(0)
    ref_gap = float((ref.sum(1) - (probs[torch.arange(rows), target].double() - f_null)).abs().max())

    def mae(v: Tensor | np.ndarray, n: int | None = None) -> float:
        vt = torch.as_tensor(np.asarray(v), dtype=torch.float64)
        return float((vt - ref[: vt.shape[0]]).abs().mean())

    threads = torch.get_num_threads()
    by_threads: dict[str, float] = {}
    for th in sorted({1, 2, threads}):
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        att = KernelShap(seed=seed)(net, x, background=bg)
        by_threads[str(th)] = time.perf_counter() - t0
    torch.set_num_threads(threads)
    ours_s = by_threads[str(threads)]
    ours_mae = mae(att.values)

    def f(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = net(torch.as_tensor(a, dtype=torch.float32)).softmax(1).numpy()
        return out

    tgt = target.numpy()
    explainer = shap.KernelExplainer(f, bg.numpy().astype(np.float64))
    xs = x.numpy().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        sv = np.asarray(explainer.shap_values(xs, l1_reg=False, silent=True))  # (N, D, C)
        shap_s = time.perf_counter() - t0
        shap_vals = sv[np.arange(rows), :, tgt]
        t0 = time.perf_counter()
        sv_d = np.asarray(explainer.shap_values(xs[:shap_default_rows], silent=True))
        shap_d_s = time.perf_counter() - t0
    shap_d_vals = sv_d[np.arange(shap_default_rows), :, tgt[:shap_default_rows]]
    shap_mae = mae(shap_vals)
    mean_abs = float(ref.abs().mean())
    return {
        "model": "torch MLP 100-16-2 (ReLU), make_classification(3000, 100 features, 30 informative)",
        "held_out_accuracy": acc, "rows": rows, "background_rows": int(bg.shape[0]), "features": 100,
        "output": "probability of the predicted class",
        "reference": {"method": "permutation sampling, antithetic pairs, exact background average",
                      "permutations_per_row": ref_perms, "seconds": ref_s,
                      "reference_noise_mae": float((ref_a - ref_b).abs().mean() / 2),
                      "efficiency_gap_max": ref_gap, "mean_abs_shapley": mean_abs},
        "modelshield": {"seconds": ours_s, "mae": ours_mae, "coalitions": att.details["samples"],
                        "relative_mae": ours_mae / mean_abs, "seconds_by_torch_threads": by_threads,
                        "completeness_gap_max": float(att.completeness_gap.max())  # type: ignore[union-attr]
                        },
        "shap": {"version": shap.__version__, "nsamples": "auto (2 D + 2048 = 2248)", "l1_reg": False,
                 "seconds": shap_s, "mae": shap_mae, "relative_mae": shap_mae / mean_abs},
        "shap_defaults": {"nsamples": "auto", "l1_reg": "num_features(10) (its default)",
                          "rows": shap_default_rows, "seconds": shap_d_s,
                          "seconds_per_100_rows": shap_d_s * 100 / shap_default_rows,
                          "mae": mae(shap_d_vals),
                          "modelshield_mae_same_rows": mae(att.values[:shap_default_rows])},
        "speedup_vs_shap": shap_s / ours_s,
        "mae_ratio_modelshield_over_shap": ours_mae / shap_mae,
        "threads": threads,
    }


# -- gradients ---------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _load_mnist(n: int) -> tuple[nn.Module, Tensor, Tensor]:
    from modelshield import zoo
    from modelshield.data import load_dataset

    model = zoo.load("mnist-cnn", data_root=data_root())
    net = model.module.eval()
    x = load_dataset("mnist", data_root()).x_test[:n].clone()
    with torch.no_grad():
        target = torch.cat([net(x[i:i + 250]).argmax(1) for i in range(0, n, 250)])
    return net, x, target


def worker(tool: str, method: str, n: int, threads: int, out: Path) -> None:
    """One measurement in this (fresh) process: time, peak memory, values saved to out."""
    torch.set_num_threads(threads)
    net, x, target = _load_mnist(n)
    warnings.filterwarnings("ignore")
    if tool == "captum":
        import captum.attr as ca  # type: ignore[import-untyped]

        steps = {"ig50": 50, "ig200": 200}.get(method)
        fn: Callable[[], Tensor]
        if method == "saliency":
            def fn() -> Tensor:
                return ca.Saliency(net).attribute(x, target=target)  # type: ignore[no-any-return]
        elif method == "gradient_x_input":
            def fn() -> Tensor:
                return ca.InputXGradient(net).attribute(x, target=target)  # type: ignore[no-any-return]
        elif steps is not None:
            def fn() -> Tensor:
                return ca.IntegratedGradients(net).attribute(  # type: ignore[no-any-return]
                    x, target=target, n_steps=steps)
        else:
            def fn() -> Tensor:
                return ca.NoiseTunnel(ca.Saliency(net)).attribute(  # type: ignore[no-any-return]
                    x, nt_type="smoothgrad", nt_samples=SG_SAMPLES, stdevs=SG_SIGMA, target=target)
    else:
        from modelshield import explain as ex

        explainer: Any = {
            "saliency": ex.Saliency(), "gradient_x_input": ex.GradientTimesInput(),
            "ig50": ex.IntegratedGradients(steps=50), "ig200": ex.IntegratedGradients(steps=200),
            "smoothgrad": ex.SmoothGrad(samples=SG_SAMPLES, sigma=SG_SIGMA),
        }[method]
        details: dict[str, Any] = {}

        def fn() -> Tensor:
            att = explainer(net, x, target)
            details.update(att.details)
            return att.values  # type: ignore[no-any-return]
    peaks, times, befores = [], [], []
    how = "VmHWM after clear_refs, minus VmRSS before"
    values = torch.zeros(0)
    for _ in range(REPEATS if method in ("saliency", "gradient_x_input") else 1):
        values = torch.zeros(0)
        gc.collect()
        _malloc_trim()  # hand freed heap pages (model loading, scoring) back: the peak counts new pages
        before = _rss_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        except OSError:
            how = "ru_maxrss minus VmRSS before (clear_refs refused: includes the loading peak)"
        t0 = time.perf_counter()
        values = fn().detach()
        times.append(time.perf_counter() - t0)
        peak = (_rss_kb("VmHWM") if how.startswith("VmHWM")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        peaks.append((peak - before) / 1024)
        befores.append(before / 1024)
    seconds, peak_mb = statistics.median(times), statistics.median(peaks)
    result: dict[str, Any] = {"tool": tool, "method": method, "images": n, "seconds": seconds,
                              "seconds_per_image": seconds / n, "peak_mb": peak_mb, "peak_mb_runs": peaks,
                              "seconds_runs": times, "rss_before_mb": befores[0], "memory_how": how}
    if tool == "modelshield":
        result["plan"] = details.get("memory")
        if "completeness_gap_relative_max" in details:
            result["completeness_gap_relative_max"] = details["completeness_gap_relative_max"]
    torch.save({"values": values, "result": result}, out)


def _captum_need_mb(n: int) -> dict[str, float]:
    """Estimated MiB of Captum's one pass per method for n images (modelshield's row-cost probe)."""
    from modelshield.explain.memory import probe_row_cost

    net, x, target = _load_mnist(4)
    cost = probe_row_cost(net, net, x[:1], target[:1], backward=True)
    row = cost.row_bytes + 5 * x[0].numel() * x.element_size()  # plus Captum's input-sized copies
    rows = {"saliency": 1, "gradient_x_input": 1, "ig50": 50, "ig200": 200, "smoothgrad": SG_SAMPLES}
    return {m: n * r * row / 2**20 for m, r in rows.items()}


def _spawn(tool: str, method: str, n: int, threads: int, tmp: Path) -> tuple[dict[str, Any], Tensor]:
    out = tmp / f"{tool}_{method}.pt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{tool},{method},{n}",
           "--threads", str(threads), "--worker-out", str(out)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {tool} {method} failed: {proc.stderr[-2000:]}")
    saved = torch.load(out)
    return saved["result"], saved["values"]


def _smoothgrad_check(n: int) -> float:
    """max |modelshield SmoothGrad - mean of Captum Saliency over modelshield's own noisy copies|."""
    import captum.attr as ca

    from modelshield.explain import SmoothGrad
    from modelshield.explain.gradients import smoothing_noise

    net, x, target = _load_mnist(n)
    ours = SmoothGrad(samples=SG_SAMPLES, sigma=SG_SIGMA, seed=0)(net, x, target).values
    noisy = x.repeat_interleave(SG_SAMPLES, 0) + smoothing_noise(x, samples=SG_SAMPLES, std=SG_SIGMA, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sal = ca.Saliency(net).attribute(noisy, target=target.repeat_interleave(SG_SAMPLES))
    ref = sal.reshape(n, SG_SAMPLES, *x.shape[1:]).mean(1)
    return float((ours - ref).abs().max())


def gradients_part(quick: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    del seed  # deterministic: no sampling except SmoothGrad's (seed 0 for modelshield)
    n = 50 if quick else 500
    need = _captum_need_mb(n)
    per_image = {m: v / n for m, v in need.items()}
    out: dict[str, Any] = {"model": "mnist-cnn (zoo, LeNet28)", "images": n, "threads": args.threads,
                           "captum_budget_mb": args.captum_mb, "methods": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for method in GRAD_METHODS:
            n_captum = min(n, max(1, int(args.captum_mb / per_image[method])))
            ours, v_ours = _spawn("modelshield", method, n, args.threads, tmp)
            theirs, v_theirs = _spawn("captum", method, n_captum, args.threads, tmp)
            row: dict[str, Any] = {
                "modelshield": ours, "captum": theirs,
                "captum_estimated_need_mb_all_images": need[method],
                "captum_ran_on_fewer_images": n_captum < n,
                "memory_ratio_modelshield_over_captum": ours["peak_mb"] / max(theirs["peak_mb"], 1e-9),
                "time_ratio_modelshield_over_captum": ours["seconds_per_image"] / theirs["seconds_per_image"],
            }
            if method != "smoothgrad":
                row["max_abs_diff"] = float((v_ours[:n_captum] - v_theirs).abs().max())
            out["methods"][method] = row
            print(f"gradients/{method}: ours {ours['seconds_per_image'] * 1e3:.2f} ms/img "
                  f"{ours['peak_mb']:.0f} MB; captum ({n_captum} img) "
                  f"{theirs['seconds_per_image'] * 1e3:.2f} ms/img {theirs['peak_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    out["methods"]["smoothgrad"]["max_abs_diff_same_noise_20_images"] = _smoothgrad_check(20)
    out["methods"]["smoothgrad"]["note"] = ("values differ by the noise (Captum draws it from the global "
                                            "generator); max_abs_diff_same_noise_20_images compares with "
                                            "Captum's Saliency on modelshield's own noisy copies")
    return out


# -- parts written elsewhere -------------------------------------------------------------------


def _external(module: str, name: str) -> Callable[[bool, int, argparse.Namespace], dict[str, Any]]:
    def run(quick: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        del args
        fn = getattr(importlib.import_module(module), name)
        result: dict[str, Any] = fn(quick, seed)
        return result

    return run


PARTS: dict[str, Callable[[bool, int, argparse.Namespace], dict[str, Any]]] = {
    "kernelshap": kernelshap_part,
    "gradients": gradients_part,
    "patch": _external("explain_detect", "patch"),
    "disagreement": _external("explain_detect", "disagreement"),
    "treeshap": _external("explain_trees", "treeshap"),
}


# -- targets -----------------------------------------------------------------------------------


def targets(parts: dict[str, Any]) -> dict[str, Any]:
    """Each issue target with met true/false and the measured number, for the parts present."""
    out: dict[str, Any] = {}
    ks = parts.get("kernelshap")
    if ks:
        out["kernelshap_time_at_most_10s"] = {"met": ks["modelshield"]["seconds"] <= 10,
                                              "value_s": ks["modelshield"]["seconds"],
                                              "rows": ks["rows"], "threads": ks.get("threads")}
        out["kernelshap_error_no_larger_than_shap"] = {
            "met": ks["modelshield"]["mae"] <= ks["shap"]["mae"], "modelshield_mae": ks["modelshield"]["mae"],
            "shap_mae": ks["shap"]["mae"]}
    gr = parts.get("gradients")
    if gr:
        meth = gr["methods"]
        diffs = {m: r["max_abs_diff"] for m, r in meth.items() if "max_abs_diff" in r}
        if "smoothgrad" in meth:
            diffs["smoothgrad_same_noise"] = meth["smoothgrad"]["max_abs_diff_same_noise_20_images"]
        worst = max(diffs.values()) if diffs else math.nan
        out["gradients_same_values_within_1e-4"] = {"met": worst <= 1e-4, "max_abs_diff": worst,
                                                    "per_method": diffs}
        mem = {m: {"modelshield_mb": r["modelshield"]["peak_mb"], "captum_mb": r["captum"]["peak_mb"],
                   "captum_images": r["captum"]["images"], "modelshield_images": r["modelshield"]["images"]}
               for m, r in meth.items()}
        excess = max(v["modelshield_mb"] - v["captum_mb"] for v in mem.values())
        out["gradients_never_more_memory"] = {
            "met": excess <= 0, "max_excess_mb": excess,
            "max_excess_percent": max(100 * (v["modelshield_mb"] / v["captum_mb"] - 1) for v in mem.values()),
            "per_method": mem}
        ig = meth.get("ig200")
        if ig:
            out["gradients_no_oom_ig200"] = {
                "met": ig["modelshield"]["images"] == gr["images"], "images": ig["modelshield"]["images"],
                "peak_mb": ig["modelshield"]["peak_mb"],
                "captum_estimated_need_mb": ig["captum_estimated_need_mb_all_images"],
                # Captum's measured peak scaled from the images it ran to all of them (one pass)
                "captum_extrapolated_need_mb":
                    ig["captum"]["peak_mb"] * gr["images"] / ig["captum"]["images"]}
    for name in ("patch", "disagreement", "treeshap"):
        own = (parts.get(name) or {}).get("targets")
        if isinstance(own, dict):
            out.update({f"{name}_{k}": v for k, v in own.items()})
    return out


# -- driver ------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, key: str | None, value: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Merge one part into the file as it is now (other runs may have added parts), atomically."""
    report = _read(path)
    report.setdefault("benchmark", "explain")
    parts = report.setdefault("parts", {})
    if key is not None and value is not None:
        parts[key] = value
    report.update(extra)
    report["targets"] = clean(targets(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
    return report


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small run (20 rows, 50 images)")
    p.add_argument("--parts", default=",".join(PARTS_ORDER),
                   help=f"comma-separated: {', '.join(PARTS_ORDER)}")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default results/explain[_quick].json)")
    p.add_argument("--fresh", action="store_true", help="re-measure the parts asked for even if saved")
    p.add_argument("--threads", type=int, default=1,
                   help="torch (and BLAS) threads (1: two threads on two busy shared cores spin and crawl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-perms", type=int, default=None, help="kernelshap reference permutations per row")
    p.add_argument("--captum-mb", type=float, default=3000.0,
                   help="largest estimated pass Captum is run on (else fewer images)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / ("explain_quick.json" if args.quick else "explain.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.worker:
        tool, method, n = args.worker.split(",")
        worker(tool, method, int(n), args.threads, args.worker_out)
        return {}
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    wanted = [p for p in filter(None, args.parts.split(","))]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise SystemExit(f"explain.py: unknown part(s) {unknown}; choose from {', '.join(PARTS_ORDER)}")
    settings = {"quick": args.quick, "seed": args.seed}
    extra = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    started = time.perf_counter()
    ran: list[str] = []
    for key in wanted:
        old = _read(args.out).get("parts", {}).get(key)
        if not args.fresh and isinstance(old, dict) and old.get("settings") == settings:
            print(f"{key}: saved, skipped (--fresh re-measures)", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        result = PARTS[key](args.quick, args.seed, args)
        result = {**clean(result), "settings": settings, "time_s": round(time.perf_counter() - t0, 1)}
        _save(args.out, key, result, extra)
        ran.append(key)
        print(f"{key}: {result['time_s']} s", file=sys.stderr, flush=True)
    report = _read(args.out)
    if ran:
        runs = [*report.get("runs", []), {"time_s": round(time.perf_counter() - started, 1), "parts": ran,
                                          "threads": args.threads, "quick": args.quick}]
        report = _save(args.out, None, None, {**extra, "runs": runs})
    elif report and report.get("targets") != clean(targets(report.get("parts", {}))):
        report = _save(args.out, None, None, {})  # targets summarised by a newer version of this file
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
