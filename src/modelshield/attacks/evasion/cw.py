"""Carlini & Wagner L2: a minimum-norm attack with a tanh box and a binary search over c."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield._typing import Norm
from modelshield.attacks.ops import expand_as_batch, is_adversarial, lp_norms
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import ModelLike, TorchModel, eval_mode

__all__ = ["CarliniWagnerL2", "cw_f6"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_NO_UPPER = 1e10
"""'No successful c yet' marker for the binary search (as in the original code)."""


def cw_f6(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float) -> Tensor:
    """(N,) C&W objective f6, to minimise: max(z_y - max_{j!=y} z_j, -kappa) (targeted: toward t).

    Untargeted it is zero-or-less exactly when some wrong class beats y by at least kappa;
    targeted: ``max(max_{j!=t} z_j - z_t, -kappa)``.
    """
    cls = target if target is not None else y
    z_c = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], -math.inf).amax(1)
    gap = (z_c - other) if target is None else (other - z_c)
    return gap.clamp_min(-kappa)


def _confident(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float) -> Tensor:
    """(N,) bool: adversarial with margin kappa, and adversarial by argmax (ties count as not)."""
    return is_adversarial(logits, y, target) & (cw_f6(logits, y, target, kappa) <= -kappa)


def _to_x(w: Tensor, lo: float, hi: float) -> Tensor:
    return ((torch.tanh(w) + 1.0) * 0.5 * (hi - lo) + lo).clamp(lo, hi)


def _to_w(x: Tensor, lo: float, hi: float) -> Tensor:
    # Shrink slightly so atanh stays finite at the bounds.
    u = ((x - lo) / (hi - lo) * 2.0 - 1.0) * (1.0 - 1e-6)
    return torch.atanh(u)


def _cw_search(m: TorchModel, x: Tensor, y: Tensor, target: Tensor | None, cfg: CarliniWagnerL2) -> Tensor:
    """(N, ...) the smallest-L2 adversarial point found per row (rows never broken: x itself)."""
    lo, hi = m.bounds
    n = x.shape[0]
    w0 = _to_w(x, lo, hi)
    best_l2 = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    best_x = x.clone()
    const = torch.full((n,), cfg.initial_const, dtype=x.dtype, device=x.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _NO_UPPER)
    b1, b2 = _ADAM_BETAS
    check_every = max(cfg.steps // 10, 1)
    for _ in range(cfg.binary_search_steps):
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        idx = torch.arange(n, device=x.device)
        w, x0, ya = w0.clone(), x, y
        ta = target
        c = const
        m1, m2 = torch.zeros_like(w), torch.zeros_like(w)
        prev = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        for it in range(cfg.steps):
            xn = _to_x(w, lo, hi)

            def weighted_f6(z: Tensor, c: Tensor = c, ya: Tensor = ya, ta: Tensor | None = ta) -> Tensor:
                return c * cw_f6(z, ya, ta, cfg.kappa)

            logits, g_f = m.value_and_grad(xn, weighted_f6)
            diff = xn - x0
            l2sq = diff.flatten(1).pow(2).sum(1)
            total = l2sq + weighted_f6(logits)
            # Record before the update: these logits belong to xn.
            ok = _confident(logits, ya, ta, cfg.kappa)
            l2 = l2sq.sqrt()
            better = ok & (l2 < best_l2[idx])
            best_l2[idx[better]] = l2[better]
            best_x[idx[better]] = xn[better]
            found[idx[ok]] = True
            # Adam on w; d x / d w = (1 - tanh(w)^2) * (hi - lo) / 2.
            g_w = (2.0 * diff + g_f) * (1.0 - torch.tanh(w).pow(2)) * (0.5 * (hi - lo))
            t = it + 1
            m1 = b1 * m1 + (1.0 - b1) * g_w
            m2 = b2 * m2 + (1.0 - b2) * g_w.pow(2)
            m_hat = m1 / (1.0 - b1**t)
            v_hat = m2 / (1.0 - b2**t)
            w = w - cfg.learning_rate * m_hat / (v_hat.sqrt() + _ADAM_EPS)
            if cfg.abort_early and t % check_every == 0:
                # Drop rows whose objective no longer falls (by 0.01 %) since the last check.
                stalled = total > prev * 0.9999
                prev = total
                if bool(stalled.any()):
                    keep = ~stalled
                    idx, w, x0, ya, c = idx[keep], w[keep], x0[keep], ya[keep], c[keep]
                    m1, m2, prev = m1[keep], m2[keep], prev[keep]
                    ta = ta[keep] if ta is not None else None
                    if idx.numel() == 0:
                        break
        # Binary search on c: shrink it after a success, grow it (x10 until bracketed) otherwise.
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        bracketed = upper < _NO_UPPER * 0.1
        const = torch.where(bracketed, (lower + upper) / 2.0, const * 10.0)
    return best_x


@dataclass(frozen=True, kw_only=True, slots=True)
class CarliniWagnerL2:
    """Carlini & Wagner's L2 attack: the smallest L2 perturbation that flips the label.

    Optimises ``||x' - x||_2^2 + c * f6(x')`` over ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``
    (which keeps x' in the model's bounds) with Adam, where ``f6 = max(z_y - max_{j!=y} z_j,
    -kappa)``. A per-point binary search over c (starting at ``initial_const``, x10 until a
    success brackets it) keeps the smallest-L2 successful point per input. With
    ``abort_early``, rows whose objective stops falling leave the batch.

    It is a minimum-norm attack: with ``eps=None`` every point found is kept; with ``eps`` a
    point counts only when its L2 norm is at most eps, and larger ones are returned as x.

    Args:
        eps: optional L2 budget in input units; None keeps the minimal points of any size.
        kappa: confidence margin (0: just across the decision boundary).
        steps: Adam steps per binary-search step (the paper: up to 10,000). With lr 1e-2,
            100 steps is a quick but under-converged run.
        binary_search_steps: number of values of c tried per point.
        initial_const: first c.
        learning_rate: Adam step size on w.
        abort_early: drop a row when its objective falls by under 0.01 % in steps/10 iterations.

    Reference: Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks",
    IEEE S&P 2017 (arXiv:1608.04644).

    Example:
        result = CarliniWagnerL2(steps=200)(model, x, y)
        result.median_perturbation
    """

    eps: float | None = None
    kappa: float = 0.0
    steps: int = 1000
    binary_search_steps: int = 9
    initial_const: float = 1e-2
    learning_rate: float = 1e-2
    abort_early: bool = True

    needs_gradients: ClassVar[bool] = True
    norm: ClassVar[Norm] = "2"

    def __post_init__(self) -> None:
        owner = "CarliniWagnerL2"
        if self.eps is not None:
            check_range("eps", self.eps, owner=owner, low=0.0,
                        fix="Give the L2 budget in input units, or None for minimal perturbations.")
        check_range("kappa", self.kappa, owner=owner, low=0.0)
        check_range("steps", self.steps, owner=owner, low=1, integer=True)
        check_range("binary_search_steps", self.binary_search_steps, owner=owner, low=1, integer=True)
        check_range("initial_const", self.initial_const, owner=owner, low=0.0, low_open=True,
                    fix="The paper starts at 1e-3 or 1e-2.")
        check_range("learning_rate", self.learning_rate, owner=owner, low=0.0, low_open=True)

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="CarliniWagnerL2", gradients=True)
        m = call.gradient_model
        with eval_mode(m):
            clean_pred = m.predict(call.x)
            todo = (clean_pred != call.target) if call.target is not None else (clean_pred == call.y)
            x_adv = call.x.clone()
            idx = todo.nonzero().squeeze(1)
            if idx.numel() > 0:
                t_idx = call.target[idx] if call.target is not None else None
                found = _cw_search(m, call.x[idx], call.y[idx], t_idx, self)
                if self.eps is not None:  # over-budget points go back to x
                    over = lp_norms(found - call.x[idx], "2") > self.eps
                    found = torch.where(expand_as_batch(over, found), call.x[idx], found)
                x_adv[idx] = found
            return call.finish(x_adv, attack=self, eps=self.eps, norm="2", clean_pred=clean_pred)
