"""DeepFool: iterative linearisation to the nearest decision boundary, L2 and L-inf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.ops import clip_to_bounds, expand_as_batch, lp_norms
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, TorchModel, eval_mode

__all__ = ["DeepFool", "deepfool_points"]


def _gap_gradients(
    m: TorchModel, x: Tensor, y: Tensor, cand: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (N, C) at x, done (N,) = misclassified, and for the rows not done the gradients
    (M, K-1, d) of the gaps z_{cand[:, k]} - z_y, k = 1..K-1.

    One counted forward pass over the batch; then one backward pass per rival class, counted
    only for the M rows still correctly classified (broken rows need no gradient).
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = m.logits(xg)
        done = z.argmax(1) != y
        keep = ~done
        n_keep = int(keep.sum())
        grads = []
        if n_keep:
            zk = z[keep]
            ck = cand[keep]
            gaps = zk.gather(1, ck[:, 1:]) - zk.gather(1, ck[:, :1])
            for k in range(gaps.shape[1]):
                (g,) = torch.autograd.grad(gaps[:, k].sum(), xg, retain_graph=k + 1 < gaps.shape[1])
                m.queries.add_backward(n_keep)
                grads.append(g[keep].flatten(1))
    w = torch.stack(grads, dim=1) if grads else x.new_zeros((0, cand.shape[1] - 1, x[0].numel()))
    return z.detach(), done, w


def deepfool_points(m: TorchModel, x: Tensor, y: Tensor, clean: Tensor, cfg: DeepFool) -> Tensor:
    """(N, ...) DeepFool points from clean logits (N, C); unbroken rows end at their last iterate."""
    n_cand = min(cfg.candidates, m.n_classes)
    lo, hi = m.bounds
    # Candidate classes: y first, then the most likely other classes at the clean input.
    others = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, : n_cand - 1]
    cand = torch.cat([y[:, None], others], dim=1)
    x_adv = x.clone()
    idx = torch.arange(x.shape[0], device=x.device)
    xa, x0, ya, ca, ra = x, x, y, cand, torch.zeros_like(x)
    for _ in range(cfg.steps):
        logits, done, w_k = _gap_gradients(m, xa, ya, ca)
        if bool(done.any()):
            x_adv[idx[done]] = xa[done]
            keep = ~done
            idx, xa, x0, ya, ca, ra = idx[keep], xa[keep], x0[keep], ya[keep], ca[keep], ra[keep]
            logits = logits[keep]
            if idx.numel() == 0:
                return x_adv
        z = logits.gather(1, ca)
        f_k = z[:, 1:] - z[:, :1]  # (n, K-1) logit gaps to the true class (negative while correct)
        # Box constraint: a coordinate pinned at a bound cannot move further out, so it takes
        # no part in the step (without this, clipping at the bounds can stall DeepFool forever).
        flat = xa.flatten(1)[:, None, :]
        w_k = w_k.masked_fill(((flat <= lo) & (w_k < 0)) | ((flat >= hi) & (w_k > 0)), 0.0)
        dual = w_k.abs().sum(2) if cfg.norm == "inf" else w_k.norm(dim=2)
        dist = f_k.abs() / dual.clamp_min(1e-12)
        best = dist.argmin(1)
        w_l = w_k[torch.arange(best.shape[0], device=x.device), best]  # (n, d)
        d_l = dist.gather(1, best[:, None]).squeeze(1)
        if cfg.norm == "inf":
            r = d_l[:, None] * w_l.sign()
        else:
            r = d_l[:, None] * w_l / w_l.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ra = ra + r.view_as(xa)
        xa = clip_to_bounds(x0 + (1.0 + cfg.overshoot) * ra, m.bounds)
    x_adv[idx] = xa  # out of steps: the last iterate (verification decides whether it broke)
    return x_adv


@dataclass(frozen=True, kw_only=True, slots=True)
class DeepFool:
    """DeepFool: step to the nearest boundary of the locally linearised classifier, repeat.

    At each step the classifier is linearised around the current point; among the candidate
    classes k (the true class's top rivals at the clean input) the boundary with the smallest
    ``|f_k - f_y| / ||grad f_k - grad f_y||_*`` (dual norm: L2 for L2, L1 for L-inf) is
    chosen and the accumulated step is applied with ``(1 + overshoot)`` and clipped to the
    bounds; coordinates pinned at a bound and pushed outwards are left out of the linear
    step (so clipping cannot stall the search). A point leaves the batch once misclassified.

    It is a minimum-norm attack: with ``eps=None`` every point found is kept; with ``eps`` a
    point counts only within the budget, and larger ones are returned as x.

    Args:
        norm: ``"2"`` (the paper's main variant) or ``"inf"``.
        steps: maximum iterations.
        overshoot: relative overshoot past the linearised boundary.
        candidates: number of classes considered (true class included), capped at C.
        eps: optional budget in the norm; None keeps the minimal points of any size.

    Reference: Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method
    to fool deep neural networks", CVPR 2016 (arXiv:1511.04599).

    Example:
        result = DeepFool()(model, x, y)
        result.median_perturbation
    """

    norm: Norm = "2"
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    eps: float | None = None

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS, owner="DeepFool")
        check_range("steps", self.steps, owner="DeepFool", low=1, integer=True)
        check_range("overshoot", self.overshoot, owner="DeepFool", low=0.0, fix="The paper uses 0.02.")
        check_range("candidates", self.candidates, owner="DeepFool", low=2, integer=True)
        if self.eps is not None:
            check_range("eps", self.eps, owner="DeepFool", low=0.0,
                        fix="Give the budget in input units, or None for minimal perturbations.")

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="DeepFool", gradients=True)
        if call.target is not None:
            raise ConfigError(
                "DeepFool: 'target' must be None; got a target tensor. DeepFool is untargeted "
                "(nearest boundary); use APGD or CarliniWagnerL2 for targeted attacks."
            )
        m = call.gradient_model
        with eval_mode(m):
            clean = m.scores(call.x)
            clean_pred = clean.argmax(1)
            x_adv = call.x.clone()
            idx = (clean_pred == call.y).nonzero().squeeze(1)
            if idx.numel() > 0:
                found = deepfool_points(m, call.x[idx], call.y[idx], clean[idx], self)
                if self.eps is not None:  # over-budget points go back to x
                    over = lp_norms(found - call.x[idx], self.norm) > self.eps
                    found = torch.where(expand_as_batch(over, found), call.x[idx], found)
                x_adv[idx] = found
            return call.finish(x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean_pred)
