"""The attribution detectors of issue #19 on MNIST: two parts of ``benchmarks/explain.py``.

``patch(quick, seed)``: :class:`modelshield.explain.PatchTransplantDetector` (after SentiNet, Chou,
Tramèr and Pellegrino 2020) on a BadNets-backdoored ``lenet-28`` (the zoo's MNIST CNN
architecture and training loop via ``make_train_fn``; modelshield's ``BadNets``: 3x3 checkerboard,
bottom-right, 5% of the training images relabelled to class 0), trained for 2 epochs on the
first 30,000 training images (quick: 6,000). The threshold is the ``1 - fpr`` quantile (fpr
0.05) of the scores of clean calibration images (floored at 0, see the detector); TPR is
measured on triggered test images that the backdoor actually sends to the target (the raw ASR
is reported too) and FPR on other, held-out clean test images.
Then the ADAPTIVE attacker, who knows the detector: a low-contrast (+-``ADAPT_AMP``) sign-pattern
trigger spread over a ``ADAPT_SIDE`` x ``ADAPT_SIDE`` area, so no small window holds the
attribution mass and no small piece of it carries the decision, planted in a model retrained on
10% poisoned rows; the detector is re-fitted on that model and evaluated the same way. The
attacker picked the spread on the development split below (with an earlier version of the
decision, before the threshold floor): +-0.2 over 12x12 was still caught (TPR 0.74), +-0.15 over
24x24 half caught (0.44), +-0.1 over 26x26 (ASR 0.99) mostly evaded (0.18). ``auroc_fooled_rate``
is reported beside the score's AUROC: when no triggered region fools any canvas, the score's
AUROC only reflects the clean boundary's height at different inert confidences.

``disagreement(quick, seed)``: :class:`modelshield.explain.AttributionDisagreement` (default
``off-object`` statistic, saliency) on the clean zoo model ``mnist-cnn`` (cached by
``modelshield.zoo``), against L-inf PGD at eps 0.3 (the standard MNIST budget, Madry et al.
2018), only the examples that fool the model (re-verified here by querying it again); then a
detector-aware PGD that runs PGD at several budgets (0.05 to 0.3) and random starts and keeps, per
image, the successful candidate with the lowest detector score (the detector's statistic is not
usefully differentiable: saliency of a ReLU network is piecewise constant in the input, so this
attacker searches instead of descending on it), and a gradient-based adaptive PGD that descends on
the model's margin plus the squared z-score of the detector's statistic, computed through a
softplus copy of the network (Dombrowski et al. 2019), from the plain PGD examples.

Splits (MNIST test set, 10,000 images, in an order shuffled with ``seed``, because its first and
last 5,000 images come from different writers, NIST SD-3 and SD-1, and a threshold calibrated on
one half over-flags the other: measured in quick mode, FPR 0.11 at a calibration FPR of 0.05): the
defender's clean set is the first rows of the shuffled set (canvases first, then calibration);
every figure is measured on rows 5000 onwards (held-out clean images, and the triggered / attacked
versions of other held-out images), disjoint from it. The detector's hyperparameters were chosen
on a development split of TRAINING images not used for training (``x_train[-3000:]``, 100
canvases, 300 calibration, 300 clean and about 200 triggered images), never on the evaluation
images: SentiNet's boundary decision (the fooled-minus-inert decision gave TPR 0.28 there, because
uniform noise in the trigger's corner sets the backdoor off as well), a 3x3 window (TPR 1.0 at FPR
0.04; 5x5: 1.0 at 0.07); 50 canvases for runtime. The disagreement detector runs with its defaults
(chosen on sklearn digits, see its docstring).

Measured (seed 0, 2026-12-02; full / quick): BadNets ASR 0.999 / 0.991, TPR 1.0 / 1.0 at FPR
0.023 / 0.013 (AUROC 1.0); adaptive spread trigger ASR 0.999 / 0.940, TPR 0.0 / 0.0 at FPR 0.015
/ 0.033 (fooled-rate AUROC 0.48: evaded). PGD eps 0.3: AUROC 0.994, TPR 0.986 at FPR 0.068
(calibration FPR 0.049); detector-aware search AUROC 0.967 (TPR 0.936); gradient adaptive 0.991.

Runtime: ``patch`` full 37 s, quick 16 s, ``disagreement`` full 34 s, quick 7 s, measured on 2
CPU cores when they were nearly idle; under contention from other jobs (load 5) the full
``patch`` took 179 s.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield.attacks.backdoor import BadNets, attack_success_rate, clean_accuracy, make_train_fn
from modelshield.attacks.evasion.pgd import PGD
from modelshield.data import load_mnist
from modelshield.explain import AttributionDisagreement, PatchTransplantDetector
from modelshield.explain.detectors import auroc, median_filter

ROOT = Path(__file__).resolve().parent
EVAL_START = 5000  # every measured figure uses shuffled test rows EVAL_START onwards
FPR = 0.05
TPR_MIN = 0.96
ADAPT_AMP, ADAPT_SIDE, ADAPT_RATE = 0.10, 26, 0.10
PGD_EPS = 0.3


def data_root() -> Path:
    env = os.environ.get("MODELSHIELD_DATA", "").strip()
    return Path(env) if env else ROOT.parent.parent / "shared" / "data"


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"n_train": 6000, "epochs": 2, "n_canvases": 50, "n_calibration": 150, "n_eval": 150}
    return {"n_train": 30000, "epochs": 2, "n_canvases": 50, "n_calibration": 600, "n_eval": 600}


def _shuffled_test(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(int(x.shape[0]), generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[s:s + 1000]).argmax(1) for s in range(0, int(x.shape[0]), 1000)])


def spread_trigger(x: Tensor, *, amplitude: float = ADAPT_AMP, side: int = ADAPT_SIDE,
                   seed: int = 1) -> Tensor:
    """The adaptive attacker's trigger: a fixed +-amplitude sign pattern over a side x side area
    in the lower right of a 28x28 image (one pixel from the border), clipped to [0, 1]."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    key = torch.randint(0, 2, (1, 1, h, w), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1
    region = torch.zeros(1, 1, h, w)
    region[..., h - side - 1:h - 1, w - side - 1:w - 1] = 1.0
    return (x + amplitude * key * region).clamp(0.0, 1.0)


def _detect(model: nn.Module, x_def: Tensor, x_clean: Tensor, x_hit: Tensor, sz: dict[str, int],
            seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    det = PatchTransplantDetector(fpr=FPR, n_canvases=sz["n_canvases"], seed=seed).fit(model, x_def)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_clean = det.score(model, x_clean)
    f_clean = det.fooled_rate_
    s_bad = det.score(model, x_hit)
    f_bad, c_bad = det.fooled_rate_, det.avg_conf_
    eval_s = time.perf_counter() - t0
    thr, cal = det.threshold_, det.clean_scores_
    assert thr is not None and cal is not None and f_clean is not None and f_bad is not None
    assert c_bad is not None
    tpr = float((s_bad > thr).double().mean()) if s_bad.numel() else 0.0
    fpr = float((s_clean > thr).double().mean())
    return {
        "tpr": _r(tpr), "fpr": _r(fpr), "auroc": _r(auroc(s_clean, s_bad)), "threshold": _r(thr),
        # AUROC of the fooled rate alone: where the score's AUROC only reflects the boundary's
        # height at different inert confidences (no triggered region transplants anything)
        "auroc_fooled_rate": _r(auroc(f_clean, f_bad)),
        "calibration_fpr": _r(float((cal > thr).double().mean())),
        "n_clean": int(s_clean.numel()), "n_triggered": int(s_bad.numel()),
        "triggered_fooled_rate_mean": _r(float(f_bad.mean())) if f_bad.numel() else None,
        "clean_fooled_rate_mean": _r(float(f_clean.mean())),
        "triggered_inert_confidence_mean": _r(float(c_bad.mean())) if c_bad.numel() else None,
        "fit_s": _r(fit_s), "eval_s": _r(eval_s),
        "ms_per_image": _r(1e3 * eval_s / max(1, int(s_clean.numel() + s_bad.numel()))),
        "met": bool(tpr >= TPR_MIN and fpr <= FPR),
        "detector": det.config(),
    }


def patch(quick: bool, seed: int) -> dict[str, Any]:
    """BadNets and adaptive spread-trigger backdoors against the SentiNet-style patch detector."""
    started = time.perf_counter()
    sz = _sizes(quick)
    ds = load_mnist(data_root())
    n = sz["n_train"]
    xtr, ytr = ds.x_train[:n], ds.y_train[:n]
    n_def = sz["n_canvases"] + sz["n_calibration"]
    x_test, y_test = _shuffled_test(ds.x_test, ds.y_test, seed)
    x_def = x_test[:n_def]
    xe, ye = x_test[EVAL_START:], y_test[EVAL_START:]
    ne = sz["n_eval"]
    x_clean = xe[:ne]  # held-out clean images
    src = xe[ne:][ye[ne:] != 0][:ne]  # other held-out images, not of the target class, to trigger
    train: Callable[[Tensor, Tensor], nn.Module] = make_train_fn("lenet-28", epochs=sz["epochs"], seed=seed)
    out: dict[str, Any] = {
        "settings": {**sz, "seed": seed, "fpr": FPR, "arch": "lenet-28",
                     "defender_clean_set": f"shuffled x_test[:{n_def}]",
                     "evaluation": f"shuffled x_test[{EVAL_START}:]",
                     "hyperparameters_chosen_on": "x_train[-3000:]"},
    }

    # 1. BadNets
    t0 = time.perf_counter()
    res = BadNets(target=0, rate=0.05, seed=seed)(None, xtr, ytr)
    model = train(res.x_poisoned, res.y_poisoned).eval()
    train_s = time.perf_counter() - t0
    triggered = res.apply_trigger(src)
    hit = triggered[_predict(model, triggered) == 0]
    bad = {"attack": "BadNets 3x3 checkerboard bottom-right, 5% poison, target 0", "train_s": _r(train_s),
           "clean_accuracy": _r(clean_accuracy(model, xe, ye)),
           "asr": _r(attack_success_rate(model, res, xe, ye)),
           "asr_on_scored_sources": _r(hit.shape[0] / max(1, src.shape[0]))}
    bad.update(_detect(model, x_def, x_clean, hit, sz, seed))
    out["badnets"] = bad

    # 2. Adaptive: low-contrast trigger spread over a large area
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: int(ADAPT_RATE * n)]
    idx = idx[ytr[idx] != 0]
    xp, yp = xtr.clone(), ytr.clone()
    xp[idx], yp[idx] = spread_trigger(xtr[idx]), 0
    model_a = train(xp, yp).eval()
    train_s = time.perf_counter() - t0
    trig_all = spread_trigger(xe[ye != 0])
    triggered = spread_trigger(src)
    hit = triggered[_predict(model_a, triggered) == 0]
    ada = {"attack": f"spread sign-pattern trigger +-{ADAPT_AMP} over {ADAPT_SIDE}x{ADAPT_SIDE}, "
                     f"{int(100 * ADAPT_RATE)}% poison, target 0",
           "train_s": _r(train_s), "clean_accuracy": _r(clean_accuracy(model_a, xe, ye)),
           "asr": _r(float((_predict(model_a, trig_all) == 0).double().mean())),
           "asr_on_scored_sources": _r(hit.shape[0] / max(1, src.shape[0]))}
    ada.update(_detect(model_a, x_def, x_clean, hit, sz, seed))
    ada["evaded"] = bool(not ada["met"])
    out["adaptive"] = ada
    out["target"] = {"tpr_min": TPR_MIN, "fpr_max": FPR, "met": bad["met"], "tpr": bad["tpr"],
                     "fpr": bad["fpr"]}
    out["targets"] = {"tpr_at_least_96_at_fpr_at_most_5": out["target"],
                      "adaptive_tpr_at_least_96_at_fpr_at_most_5": {
                          "met": ada["met"], "tpr": ada["tpr"], "fpr": ada["fpr"], "auroc": ada["auroc"],
                          "auroc_fooled_rate": ada["auroc_fooled_rate"], "asr": ada["asr"],
                          "note": "expected to evade: the detector's limit"}}
    out["seconds"] = _r(time.perf_counter() - started)
    return out


def _verified(model: nn.Module, x_adv: Tensor, y: Tensor, success: Tensor) -> Tensor:
    """Rows that the attack reports as successful AND that the model misclassifies when asked again."""
    return success.cpu() & (_predict(model, x_adv) != y)


def detector_aware_pgd(det: AttributionDisagreement, model: nn.Module, x: Tensor, y: Tensor, *,
                       eps: tuple[float, ...], seeds: tuple[int, ...], steps: int) -> tuple[Tensor, Tensor]:
    """PGD at several budgets (all <= PGD_EPS) and random starts; per image, the verified
    successful candidate with the lowest detector score. Returns (x_adv, success)."""
    best = x.clone()
    best_score = torch.full((int(x.shape[0]),), float("inf"), dtype=torch.float64)
    for e in eps:
        for s in seeds:
            res = PGD(eps=e, steps=steps, seed=s)(model, x, y)
            ok = _verified(model, res.x_adv, y, res.success)
            score = det.score(model, res.x_adv)
            better = ok & (score < best_score)
            best[better], best_score[better] = res.x_adv[better], score[better]
    return best, torch.isfinite(best_score)


def _softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A copy of model with every ReLU replaced by Softplus(beta): its saliency has a usable
    gradient (a ReLU network's saliency is piecewise constant in the input), the trick of
    Dombrowski et al., "Explanations can be manipulated and geometry is to blame", NeurIPS 2019."""
    smooth = copy.deepcopy(model).eval()

    def swap(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.Softplus(beta=beta))
            else:
                swap(child)

    swap(smooth)
    for p in smooth.parameters():
        p.requires_grad_(False)
    return smooth


def gradient_adaptive_pgd(det: AttributionDisagreement, model: nn.Module, x: Tensor, y: Tensor,
                          start: Tensor, *, eps: float, steps: int, lam: float = 1.0,
                          step_size: float = 0.01) -> tuple[Tensor, Tensor]:
    """L-inf PGD (from ``start``, inside the eps-ball of x) on ``margin + lam * z**2``: the model's
    margin (clamped at -2, so it stops pulling once the point is well misclassified) plus the
    squared robust z-score of the off-object share, computed with the softplus copy's saliency and
    the detector's own background mask and clean median / MAD. Every 10 steps the real detector
    scores the points and each keeps its verified successful candidate with the lowest score."""
    smooth = _softplus_copy(model)
    assert det.center_ is not None and det.scale_ is not None
    center, scale = float(det.center_[1]), float(det.scale_[1])
    with torch.no_grad():
        n_cls = int(model(x[:1]).shape[1])
    best = x.clone()
    best_score = torch.full((int(x.shape[0]),), float("inf"), dtype=torch.float64)
    xa = start.detach().clone()
    own = F.one_hot(y, n_cls).bool()
    for t in range(steps):
        xa.requires_grad_(True)
        bg = (median_filter(xa.detach(), det.filter_size) <= det.background).to(xa.dtype)
        logits = model(xa)
        cls = logits.argmax(1)
        sal = torch.autograd.grad(smooth(xa).gather(1, cls[:, None]).sum(), xa, create_graph=True)[0].abs()
        off = (sal * bg).flatten(1).sum(1) / sal.flatten(1).sum(1).clamp_min(1e-12)
        z = (off - center) / scale
        margin = logits.gather(1, y[:, None])[:, 0] - logits.masked_fill(own, -1e9).max(1).values
        grad = torch.autograd.grad((margin.clamp_min(-2.0) + lam * z**2).sum(), xa)[0]
        with torch.no_grad():
            xa = xa - step_size * grad.sign()
            xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
        if t % 10 == 9 or t == steps - 1:
            ok = _predict(model, xa) != y
            score = det.score(model, xa)
            better = ok & (score < best_score)
            best[better], best_score[better] = xa[better], score[better]
    return best, torch.isfinite(best_score)


def disagreement(quick: bool, seed: int) -> dict[str, Any]:
    """Attribution disagreement on mnist-cnn against PGD (eps 0.3) and a detector-aware PGD."""
    from modelshield import zoo

    started = time.perf_counter()
    n_cal, n_eval = (150, 150) if quick else (1000, 500)
    steps = 20 if quick else 40
    aware_eps = (0.05, 0.1, 0.2, 0.3)
    aware_seeds = (seed, seed + 1) if quick else (seed, seed + 1, seed + 2)
    aware_steps = 20
    model = zoo.load("mnist-cnn", data_root=data_root()).module.eval()
    ds = load_mnist(data_root())
    x_test, y_test = _shuffled_test(ds.x_test, ds.y_test, seed)
    x_cal = x_test[:n_cal]
    xe, ye = x_test[EVAL_START:], y_test[EVAL_START:]
    x_clean = xe[:n_eval]
    xa, ya = xe[n_eval:2 * n_eval], ye[n_eval:2 * n_eval]  # other held-out images to attack
    t0 = time.perf_counter()
    det = AttributionDisagreement(fpr=FPR).fit(model, x_cal)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = PGD(eps=PGD_EPS, steps=steps, seed=seed)(model, xa, ya)
    pgd_s = time.perf_counter() - t0
    ok = _verified(model, res.x_adv, ya, res.success)
    r = det.evaluate(model, x_clean, res.x_adv[ok])
    plain = {"eps": PGD_EPS, "steps": steps, "attack_s": _r(pgd_s),
             "success_rate": _r(float(ok.double().mean())), "n_adversarial": int(ok.sum()),
             "auroc": _r(r.auroc), "tpr": _r(r.tpr), "fpr": _r(r.fpr), "threshold": _r(r.threshold),
             "ms_per_image": _r(1e3 * r.seconds / max(1, r.n_clean + r.n_manipulated))}
    t0 = time.perf_counter()
    adv, ok_a = detector_aware_pgd(det, model, xa, ya, eps=aware_eps, seeds=aware_seeds, steps=aware_steps)
    aware_s = time.perf_counter() - t0
    ra = det.evaluate(model, x_clean, adv[ok_a])
    aware = {"eps": list(aware_eps), "seeds": list(aware_seeds), "steps": aware_steps,
             "attack_s": _r(aware_s),
             "success_rate": _r(float(ok_a.double().mean())), "n_adversarial": int(ok_a.sum()),
             "auroc": _r(ra.auroc), "tpr": _r(ra.tpr), "fpr": _r(ra.fpr)}
    t0 = time.perf_counter()
    grad_steps = 30 if quick else 50
    adv_g, ok_g = gradient_adaptive_pgd(det, model, xa, ya, res.x_adv, eps=PGD_EPS, steps=grad_steps)
    grad_s = time.perf_counter() - t0
    rg = det.evaluate(model, x_clean, adv_g[ok_g])
    gradient = {"eps": PGD_EPS, "steps": grad_steps, "lam": 1.0, "start": "the plain PGD examples",
                "attack_s": _r(grad_s), "success_rate": _r(float(ok_g.double().mean())),
                "n_adversarial": int(ok_g.sum()), "auroc": _r(rg.auroc), "tpr": _r(rg.tpr), "fpr": _r(rg.fpr)}
    cal = det.clean_scores_
    assert cal is not None and det.threshold_ is not None
    out: dict[str, Any] = {
        "settings": {"model": "mnist-cnn", "seed": seed, "fpr": FPR, "n_calibration": n_cal,
                     "n_eval_clean": n_eval,
                     "n_attacked": int(xa.shape[0]), "calibration": f"shuffled x_test[:{n_cal}]",
                     "evaluation": f"shuffled x_test[{EVAL_START}:]", "detector": det.config(),
                     "fit_s": _r(fit_s),
                     "calibration_fpr": _r(float((cal > det.threshold_).double().mean()))},
        "pgd": plain,
        "detector_aware_pgd": aware,
        "gradient_adaptive_pgd": gradient,
    }
    # The issue asks for this detector's AUROC (no numeric target); the TPR/FPR entry is reported
    # against the same 96% / 5% bar as the patch detector for comparison.
    out["target"] = {"tpr_min": TPR_MIN, "fpr_max": FPR, "met": bool(r.tpr >= TPR_MIN and r.fpr <= FPR),
                     "auroc": plain["auroc"], "note": "the issue sets no numeric target for this detector"}
    out["targets"] = {"pgd_tpr_at_least_96_at_fpr_at_most_5": {
        "met": out["target"]["met"], "auroc": plain["auroc"], "tpr": plain["tpr"], "fpr": plain["fpr"],
        "detector_aware_auroc": aware["auroc"], "detector_aware_tpr": aware["tpr"],
        "gradient_adaptive_auroc": gradient["auroc"], "gradient_adaptive_tpr": gradient["tpr"]}}
    out["seconds"] = _r(time.perf_counter() - started)
    return out
