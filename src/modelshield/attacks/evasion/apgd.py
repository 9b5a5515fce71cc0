"""Auto-PGD (APGD) and its targeted sweep APGD-T, L-inf and L2 (Croce & Hein, 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.losses import LOSSES, Loss, loss_fn_for
from modelshield.attacks.ops import (
    clip_to_bounds,
    expand_as_batch,
    is_adversarial,
    normalize_grad,
    point_keys,
    point_random_start,
    project,
)
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import ModelLike, TorchModel, eval_mode

__all__ = ["APGD", "APGDT", "apgd_checkpoints"]

MOMENTUM = 0.75
"""Weight of the new gradient step; 1 - MOMENTUM goes to the previous displacement (the paper's alpha)."""

_EPS_FIX = "Give eps in input units, e.g. eps=8/255 for images in [0, 1]."

_START = 0x4150  # stream id of the random starts: (_START, target rank, restart)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) at which APGD may halve its step size.

    p_0 = 0, p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), kept while
    p_j <= 1. Exact fractions avoid ``ceil(0.41 * 100) == 42`` float surprises; repeated
    values (possible for very small ``steps``) are dropped. For steps=100 this gives
    [0, 22, 41, 57, 70, 80, 87, 93, 99].
    """
    prev, cur = Fraction(0), Fraction(22, 100)
    out = [0]
    while cur <= 1:
        w = math.ceil(cur * steps)
        if w > out[-1]:
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - Fraction(3, 100), Fraction(6, 100))
    return out


def apgd_run(
    m: TorchModel,
    x: Tensor,
    y: Tensor,
    loss_target: Tensor | None,
    hit_target: Tensor | None,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    loss: Loss,
    rho: float,
    keys: Tensor,
    stream: int | tuple[int, ...],
) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run; returns (x_out (N, ...), broken (N,) bool, best loss (N,)).

    Row i's random start comes from ``keys[i]`` (see ``point_keys``) in ``stream``, so it
    does not depend on the other rows.

    ``loss_target`` selects the targeted loss (None: untargeted loss of y); ``hit_target``
    selects the success criterion (None: misclassified, else predicted == hit_target), so the
    APGD-T sweep can climb a targeted loss while counting any misclassification.
    A broken row keeps its first misclassified iterate and leaves the active batch, so later
    forward/backward passes only touch unbroken rows; the others return their best-loss iterate.
    """
    lo_hi = m.bounds
    n_classes = m.n_classes
    checks = apgd_checkpoints(steps)
    check_at = {w: w - checks[j - 1] for j, w in enumerate(checks) if j > 0 and w < steps}

    def to_ball(x0: Tensor, v: Tensor) -> Tensor:
        return clip_to_bounds(x0 + project(v - x0, eps, norm), lo_hi)

    def sel(t: Tensor | None, keep: Tensor) -> Tensor | None:
        return t[keep] if t is not None else None

    x_cur = clip_to_bounds(x + point_random_start(x, eps, norm, keys, stream), lo_hi)
    x_out = x_cur.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_out = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)

    idx = torch.arange(x.shape[0], device=x.device)
    xo, ya, lta, hta = x, y, loss_target, hit_target
    fn = loss_fn_for(loss, ya, lta, n_classes)
    logits, grad = m.value_and_grad(x_cur, fn)
    f_prev = fn(logits)
    xa, x_prev = x_cur, x_cur
    eta = torch.full_like(f_prev, 2.0 * eps)
    x_best, g_best, f_best = xa.clone(), grad.clone(), f_prev.clone()
    f_best_check = f_best.clone()
    reduced_last = torch.zeros_like(f_best, dtype=torch.bool)
    n_incr = torch.zeros_like(f_best)

    def drop(done: Tensor) -> None:
        nonlocal idx, xo, ya, lta, hta, fn, xa, x_prev, grad, f_prev, eta
        nonlocal x_best, g_best, f_best, f_best_check, reduced_last, n_incr
        x_out[idx[done]] = xa[done]
        broken[idx[done]] = True
        keep = ~done
        idx, xo, ya, xa, x_prev, grad = idx[keep], xo[keep], ya[keep], xa[keep], x_prev[keep], grad[keep]
        lta, hta = sel(lta, keep), sel(hta, keep)
        f_prev, eta, x_best, g_best = f_prev[keep], eta[keep], x_best[keep], g_best[keep]
        f_best, f_best_check = f_best[keep], f_best_check[keep]
        reduced_last, n_incr = reduced_last[keep], n_incr[keep]
        fn = loss_fn_for(loss, ya, lta, n_classes)

    done = is_adversarial(logits, ya, hta)
    if bool(done.any()):
        drop(done)
    for i in range(steps):
        if idx.numel() == 0:
            break
        z = to_ball(xo, xa + expand_as_batch(eta, xa) * normalize_grad(grad, norm))
        a = MOMENTUM if i > 0 else 1.0
        x_new = to_ball(xo, xa + a * (z - xa) + (1.0 - a) * (xa - x_prev))
        x_prev, xa = xa, x_new
        if i + 1 < steps:
            logits, grad = m.value_and_grad(xa, fn)
        else:  # the last iterate needs no gradient
            logits = m.scores(xa)
        f = fn(logits)
        n_incr += (f > f_prev).to(n_incr.dtype)
        f_prev = f
        better = f > f_best
        f_best = torch.where(better, f, f_best)
        mask = expand_as_batch(better, xa)
        x_best = torch.where(mask, xa, x_best)
        g_best = torch.where(mask, grad, g_best)
        done = is_adversarial(logits, ya, hta)
        if bool(done.any()):
            drop(done)
            if idx.numel() == 0:
                break
        span = check_at.get(i + 1)
        if span is not None:
            # Condition 1: too few loss increases since the last checkpoint. Condition 2: the
            # step size and the best loss have both stayed the same since the last checkpoint.
            reduce = (n_incr < rho * span) | (~reduced_last & (f_best <= f_best_check))
            eta = torch.where(reduce, eta / 2.0, eta)
            rmask = expand_as_batch(reduce, xa)
            xa = torch.where(rmask, x_best, xa)
            grad = torch.where(rmask, g_best, grad)
            f_prev = torch.where(reduce, f_best, f_prev)
            reduced_last, f_best_check = reduce, f_best.clone()
            n_incr = torch.zeros_like(n_incr)
    x_out[idx] = x_best
    best_out[idx] = f_best
    return x_out, broken, best_out


def _check_common(owner: str, eps: float, norm: str, steps: int, restarts: int, loss: str,
                  rho: float) -> None:
    check_range("eps", eps, owner=owner, low=0.0, fix=_EPS_FIX)
    check_choice("norm", norm, NORMS, owner=owner)
    check_range("steps", steps, owner=owner, low=1, integer=True)
    check_range("restarts", restarts, owner=owner, low=1, integer=True)
    check_choice("loss", loss, LOSSES, owner=owner)
    check_range("rho", rho, owner=owner, low=0.0, high=1.0, fix="The paper uses rho=0.75.")


def _attack_rounds(
    m: TorchModel,
    x: Tensor,
    y: Tensor,
    todo: Tensor,
    x_adv: Tensor,
    best: Tensor,
    loss_target: Tensor | None,
    hit_target: Tensor | None,
    *,
    attack: APGD | APGDT,
    keys: Tensor,
    rank: int = 0,
) -> None:
    """Run ``attack.restarts`` APGD runs on the rows still in todo; update x_adv/todo/best in place.

    ``keys`` (N,) are the rows' random-number keys; ``rank`` numbers the APGD-T target class, so
    every (target rank, restart) pair draws fresh random starts.

    All three tensors are the attack's own working copies, never the caller's inputs.
    """
    for r in range(attack.restarts):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        lt = loss_target[idx] if loss_target is not None else None
        ht = hit_target[idx] if hit_target is not None else None
        out, broken, f_best = apgd_run(
            m, x[idx], y[idx], lt, ht, eps=attack.eps, norm=attack.norm, steps=attack.steps,
            loss=attack.loss, rho=attack.rho, keys=keys[idx], stream=(_START, rank, r),
        )
        # Broken rows take their adversarial iterate; unbroken rows keep the best-loss point.
        take = broken | (f_best > best[idx])
        x_adv[idx[take]] = out[take]
        best[idx[take]] = f_best[take]
        todo[idx[broken]] = False


@dataclass(frozen=True, kw_only=True, slots=True)
class APGD:
    """Auto-PGD: step-size-free PGD with momentum and checkpointed step halving.

    Starts from a random point of the eps-ball with step size 2 * eps, takes momentum steps
    (alpha = 0.75) and, at the checkpoints w_j of ``apgd_checkpoints(steps)``, halves a point's
    step size and restarts it from its best-loss iterate when either (1) fewer than
    ``rho`` of the steps since the last checkpoint increased the loss, or (2) neither its step
    size nor its best loss changed since the last checkpoint. A point that breaks keeps its
    first adversarial iterate and leaves the batch; later restarts only attack unbroken points.
    Passing ``target=`` at call time makes it targeted (APGD with the targeted loss; success =
    predicted target). ``loss="dlr"`` falls back to the margin loss when the model has fewer
    than 3 classes (targeted: 4), so binary models work.

    Args:
        eps: perturbation budget in input units.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations per restart (AutoAttack uses 100).
        restarts: runs from fresh random starts, each on the points still unbroken.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"margin"``.
        rho: the fraction of loss-increasing steps below which the step size is halved.
        seed: seed for the random starts; None draws fresh entropy (not reproducible). A
            point's draws depend only on the seed and the point, not on the batch.

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).

    Example:
        result = APGD(eps=8 / 255, loss="dlr")(model, x, y)
        result.robust_accuracy
    """

    eps: float
    norm: Norm = "inf"
    steps: int = 100
    restarts: int = 1
    loss: Loss = "ce"
    rho: float = 0.75
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_common("APGD", self.eps, self.norm, self.steps, self.restarts, self.loss, self.rho)

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="APGD", gradients=True)
        m = call.gradient_model
        keys = point_keys(call.x, call.y, self.seed)
        with eval_mode(m):
            clean_pred = m.predict(call.x)
            todo = (clean_pred != call.target) if call.target is not None else (clean_pred == call.y)
            x_adv = call.x.clone()
            best = torch.full(call.y.shape, -math.inf, dtype=call.x.dtype, device=call.x.device)
            _attack_rounds(m, call.x, call.y, todo, x_adv, best, call.target, call.target,
                           attack=self, keys=keys)
            return call.finish(x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean_pred)


@dataclass(frozen=True, kw_only=True, slots=True)
class APGDT:
    """APGD-T: targeted APGD swept over the most likely wrong classes (AutoAttack's APGD-T).

    Without ``target=`` the result is *untargeted*: for k = 1..n_target_classes (capped at
    C - 1) it runs APGD with the targeted loss towards each point's k-th most likely non-true
    class (ranked by the clean logits), only on points still correctly classified, and a point
    counts as broken as soon as it is misclassified (into any class). With ``target=`` it runs
    the targeted loss towards the given classes and success means predicting the target.
    A separate class (rather than an ``APGD`` flag) because its untargeted-result/targeted-loss
    semantics and its extra knob differ from APGD's.

    Args:
        eps: perturbation budget in input units.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations per run (AutoAttack uses 100).
        n_target_classes: how many wrong classes to try per point (AutoAttack: 9).
        restarts: runs per target class.
        loss: targeted loss: ``"dlr"`` (targeted DLR, default; margin for C < 4), ``"ce"``
            or ``"margin"``.
        rho: the step-halving threshold of APGD.
        seed: seed for the random starts; None draws fresh entropy (not reproducible). A
            point's draws depend only on the seed and the point, not on the batch.

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).

    Example:
        result = APGDT(eps=8 / 255)(model, x, y)
        result.robust_accuracy
    """

    eps: float
    norm: Norm = "inf"
    steps: int = 100
    n_target_classes: int = 9
    restarts: int = 1
    loss: Loss = "dlr"
    rho: float = 0.75
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_common("APGDT", self.eps, self.norm, self.steps, self.restarts, self.loss, self.rho)
        check_range("n_target_classes", self.n_target_classes, owner="APGDT", low=1, integer=True)

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="APGDT", gradients=True)
        m = call.gradient_model
        keys = point_keys(call.x, call.y, self.seed)
        with eval_mode(m):
            logits = m.scores(call.x)
            clean_pred = logits.argmax(1)
            x_adv = call.x.clone()
            best = torch.full(call.y.shape, -math.inf, dtype=call.x.dtype, device=call.x.device)
            if call.target is not None:
                todo = clean_pred != call.target
                _attack_rounds(m, call.x, call.y, todo, x_adv, best, call.target, call.target,
                               attack=self, keys=keys)
            else:
                todo = clean_pred == call.y
                ranked = logits.scatter(1, call.y[:, None], -math.inf).argsort(1, descending=True)
                for k in range(min(self.n_target_classes, m.n_classes - 1)):
                    best.fill_(-math.inf)  # losses towards different targets are not comparable
                    _attack_rounds(m, call.x, call.y, todo, x_adv, best, ranked[:, k].contiguous(),
                                   None, attack=self, keys=keys, rank=k + 1)
            return call.finish(x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean_pred)
