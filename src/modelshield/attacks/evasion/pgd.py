"""Projected Gradient Descent in L-inf and L2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.losses import LOSSES, Loss, loss_fn_for
from modelshield.attacks.ops import (
    clip_to_bounds,
    is_adversarial,
    normalize_grad,
    point_keys,
    point_random_start,
    project,
)
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import ModelLike, TorchModel, eval_mode

__all__ = ["PGD", "pgd_iterates"]

_START = 0x5067  # stream id of PGD's random starts: (_START, restart)


def pgd_iterates(
    m: TorchModel,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    loss: Loss,
    random_init: bool,
    keys: Tensor,
    stream: int | tuple[int, ...] = 0,
    early_stop: bool = True,
) -> Tensor:
    """One PGD run over the batch; returns (N, ...) candidate adversarial inputs.

    The random start of row i is drawn from its key ``keys[i]`` (see ``point_keys``) in the
    given stream, so it does not depend on the other rows of the batch.

    With ``early_stop`` a row is frozen at the first iterate that the model (in that step's own
    forward pass) already misclassifies, and is dropped from later steps, so no forward or
    backward pass is spent on points that are already broken. Without it every row takes every
    step and ends at its last iterate (Madry et al.'s final iterate: higher-confidence examples,
    which transfer better to other models).
    """
    lo, hi = m.bounds
    x_adv = x.clone()
    if random_init:
        x_adv = clip_to_bounds(x + point_random_start(x, eps, norm, keys, stream), (lo, hi))
    active = torch.arange(x.shape[0], device=x.device)
    xa, x0, ya = x_adv, x, y
    ta = target
    for _ in range(steps):
        logits, grad = m.value_and_grad(xa, loss_fn_for(loss, ya, ta, m.n_classes))
        done = is_adversarial(logits, ya, ta) if early_stop else None
        if done is not None and bool(done.any()):
            x_adv[active[done]] = xa[done]
            keep = ~done
            active, xa, x0, ya, grad = active[keep], xa[keep], x0[keep], ya[keep], grad[keep]
            ta = ta[keep] if ta is not None else None
            if active.numel() == 0:
                return x_adv
        step = xa + step_size * normalize_grad(grad, norm)
        xa = clip_to_bounds(x0 + project(step - x0, eps, norm), (lo, hi))
    x_adv[active] = xa
    return x_adv


@dataclass(frozen=True, kw_only=True, slots=True)
class PGD:
    """Projected gradient descent with random start and restarts, L-inf or L2.

    Each step moves by ``step_size`` along the steepest-ascent direction of the loss for the
    norm (gradient sign for L-inf, normalised gradient for L2), then projects back onto the
    eps-ball around x and into the bounds. With restarts, later runs only attack the points
    earlier runs left unbroken (the per-point worst case over restarts).

    Args:
        eps: perturbation budget in input units.
        steps: gradient steps per restart.
        step_size: absolute step; None means 2.5 * eps / steps (Madry et al.).
        norm: ``"inf"`` or ``"2"``.
        restarts: number of random restarts.
        random_init: start from a uniform random point in the eps-ball (Madry et al.).
        loss: ``"ce"`` (default), ``"dlr"`` or ``"margin"``.
        seed: seed for the random starts; None draws fresh entropy (not reproducible). Each
            point's draws depend only on the seed and the point itself, so results do not
            depend on the batch size or on the other points in the batch.
        early_stop: stop each point at its first adversarial iterate (default; the cheapest
            way to measure robustness). False runs every step on every point and returns the
            final iterates: use it to craft high-confidence examples for transfer attacks.

    Reference: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", ICLR 2018 (arXiv:1706.06083).

    Example:
        result = PGD(eps=0.1, steps=40)(model, x, y)
        result.robust_accuracy
    """

    eps: float
    steps: int = 40
    step_size: float | None = None
    norm: Norm = "inf"
    restarts: int = 1
    random_init: bool = True
    loss: Loss = "ce"
    seed: int | None = 0
    early_stop: bool = True

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("eps", self.eps, owner="PGD", low=0.0,
                    fix="Give eps in input units, e.g. eps=8/255 for images in [0, 1].")
        check_range("steps", self.steps, owner="PGD", low=1, integer=True)
        if self.step_size is not None:
            check_range("step_size", self.step_size, owner="PGD", low=0.0, low_open=True,
                        fix="Use None for the default 2.5 * eps / steps.")
        check_choice("norm", self.norm, NORMS, owner="PGD")
        check_range("restarts", self.restarts, owner="PGD", low=1, integer=True)
        check_choice("loss", self.loss, LOSSES, owner="PGD")

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="PGD", gradients=True)
        m = call.gradient_model
        keys = point_keys(call.x, call.y, self.seed)
        step_size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        with eval_mode(m):
            clean_pred = m.predict(call.x)
            x_adv = call.x.clone()
            todo = torch.ones_like(call.y, dtype=torch.bool)
            todo &= (clean_pred != call.target) if call.target is not None else (clean_pred == call.y)
            for r in range(self.restarts):
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                t_idx = call.target[idx] if call.target is not None else None
                cand = pgd_iterates(
                    m, call.x[idx], call.y[idx], t_idx, eps=self.eps, norm=self.norm,
                    steps=self.steps, step_size=step_size, loss=self.loss,
                    random_init=self.random_init or r > 0, keys=keys[idx], stream=(_START, r),
                    early_stop=self.early_stop,
                )
                x_adv[idx] = cand
                if r + 1 < self.restarts:
                    todo[idx] = ~is_adversarial(m.scores(cand), call.y[idx], t_idx)
            return call.finish(x_adv, attack=self, eps=self.eps, norm=self.norm,
                               clean_pred=clean_pred)
