"""HopSkipJump: a decision-based (label-only) minimum-norm attack, L2 and L-inf."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_inputs, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion._query import QueryLedger, black_box_mode, check_room_for_call
from modelshield.attacks.ops import expand_as_batch, lp_norms, point_keys, point_normal, point_uniform
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.errors import InputError
from modelshield.models import CallableModel, ModelLike, TorchModel

__all__ = ["HopSkipJump"]

_MAX_HALVINGS = 25
"""Geometric step-size search gives up after this many halvings (the point keeps its place)."""

_BLEND_TOL = 1e-3
"""Tolerance of the binary search that blends a random starting point towards x (reference)."""

_MAX_ELEMS = 2**24
"""Elements per gradient-estimation chunk (points x samples x features), bounding memory."""

# Stream ids of the per-point random draws: (_NOISE, try) for starting points, (_PROBE, step)
# for the direction estimate's samples. A point's draws depend only on its key (``point_keys``).
_NOISE, _PROBE = 0x4853, 0x484A


class _Run:
    """One HopSkipJump call's state: the model, the ledger, the per-point labels and keys."""

    def __init__(self, m: TorchModel | CallableModel, ledger: QueryLedger, y: Tensor,
                 target: Tensor | None, norm: Norm, theta: float, keys: Tensor) -> None:
        self.m, self.ledger, self.y, self.target = m, ledger, y, target
        self.norm, self.theta, self.keys = norm, theta, keys
        self.lo, self.hi = m.bounds

    def decide(self, owners: Tensor, images: Tensor) -> Tensor:
        """(r,) bool: images (r, ...) of points owners (r,) are adversarial. Labels only."""
        pred = self.m.predict(images)
        self.ledger.charge(owners)
        if self.target is not None:
            return pred == self.target[owners]
        return pred != self.y[owners]

    def grant(self, idx: Tensor, want: int | Tensor = 1) -> Tensor:
        return self.ledger.allow(idx, want)

    def project(self, x0: Tensor, xp: Tensor, alpha: Tensor) -> Tensor:
        """Points between x0 and xp: the blend (L2) or xp clipped to the alpha-box of x0 (L-inf)."""
        a = expand_as_batch(alpha, x0)
        if self.norm == "2":
            return ((1 - a) * x0 + a * xp).clamp(self.lo, self.hi)
        return torch.maximum(torch.minimum(xp, x0 + a), x0 - a).clamp(self.lo, self.hi)

    def binary_search(self, idx: Tensor, x0: Tensor, xp: Tensor) -> tuple[Tensor, Tensor]:
        """(adversarial points near the boundary, distances of xp to x0) for rows idx.

        Bisects between x0 (clean side) and the adversarial xp until the bracket is below the
        threshold theta (L-inf: theta relative to the distance); returns the adversarial end.
        """
        k = idx.numel()
        d_post = lp_norms(xp - x0, self.norm)
        if self.norm == "2":
            highs = torch.ones(k, dtype=x0.dtype, device=x0.device)
            thr = torch.full_like(highs, self.theta)
        else:
            highs = d_post.clone()
            thr = torch.clamp(d_post * self.theta, max=self.theta).clamp_min(1e-12)
        lows = torch.zeros_like(highs)
        out = xp.clone()
        live = torch.ones(k, dtype=torch.bool, device=x0.device)
        while True:
            pos = (live & ((highs - lows) / thr > 1)).nonzero().squeeze(1)
            ok = self.grant(idx[pos])
            live[pos[ok == 0]] = False
            pos = pos[ok > 0]
            if pos.numel() == 0:
                return out, d_post
            mids = (highs[pos] + lows[pos]) / 2
            imgs = self.project(x0[pos], xp[pos], mids)
            adv = self.decide(idx[pos], imgs)
            lows[pos] = torch.where(adv, lows[pos], mids)
            highs[pos] = torch.where(adv, mids, highs[pos])
            out[pos[adv]] = imgs[adv]

    def estimate_direction(self, idx: Tensor, xb: Tensor, delta: Tensor, evals: Tensor,
                           t: int) -> Tensor:
        """(k, ...) unit estimate of the boundary normal at xb from evals[i] label queries each.

        Monte-Carlo estimate with baseline subtraction (the paper's eq. 16); random vectors
        are Gaussian (L2) or uniform (L-inf), normalised, and clipped to the bounds. Sample j
        of point idx[i] at step t depends only on that point's key, t and j.
        """
        k, feat = xb.shape[0], xb[0].numel()
        b = int(evals.max()) if k else 0
        grads = torch.zeros_like(xb)
        if b == 0:
            return grads
        per_chunk = max(1, _MAX_ELEMS // (b * feat))
        for s in range(0, k, per_chunk):  # a loop over memory-sized chunks, not over points
            sl = slice(s, s + per_chunk)
            base, dl, ev, own = xb[sl], expand_as_batch(delta[sl], xb[sl]), evals[sl], idx[sl]
            kc = base.shape[0]
            shape = (b, *xb.shape[1:])
            if self.norm == "2":
                rv = point_normal(self.keys[own], (_PROBE, t), shape, dtype=xb.dtype)
            else:
                rv = 2 * point_uniform(self.keys[own], (_PROBE, t), shape, dtype=xb.dtype) - 1
            rv = rv / lp_norms(rv.flatten(0, 1), "2").clamp_min(1e-12).view(kc, b, *([1] * (xb.dim() - 1)))
            pert = (base[:, None] + dl[:, None] * rv).clamp(self.lo, self.hi)
            rv = (pert - base[:, None]) / dl[:, None]
            valid = torch.arange(b, device=xb.device)[None, :] < ev[:, None]
            adv = self.decide(own[:, None].expand(kc, b)[valid], pert[valid])
            fval = torch.zeros(kc, b, dtype=xb.dtype, device=xb.device)
            fval[valid] = 2 * adv.to(xb.dtype) - 1
            count = ev.clamp_min(1).to(xb.dtype)
            mean = fval.sum(1) / count
            # All samples on one side: the mean direction (sign-flipped) as in the reference.
            coef = torch.where(mean.abs()[:, None] == 1, fval, (fval - mean[:, None]) * valid)
            g = (coef.view(kc, b, *([1] * (xb.dim() - 1))) * rv).sum(1) / expand_as_batch(count, base)
            grads[sl] = g / expand_as_batch(lp_norms(g, "2").clamp_min(1e-12), g)
        return grads


@dataclass(frozen=True, kw_only=True, slots=True)
class HopSkipJump:
    """HopSkipJump: walk along the decision boundary using predicted labels only.

    Starts from an adversarial point (``x_init=`` rows that are adversarial, else uniform
    random noise, blended towards x by binary search), bisects to the boundary, then repeats:
    estimate the boundary's normal from ``init_evals * sqrt(t)`` label queries (at most
    ``max_evals``), step along it (its sign for L-inf) with a geometric step-size search
    starting at ``dist / sqrt(t)``, and bisect back to the boundary. Only ``model.predict``
    is used, so it works on label-only models; all points run batched.

    It is a minimum-norm attack: x_adv is the closest adversarial point found. With ``eps``
    a point counts only within eps (in ``norm``): the attack stops a point once it is inside
    and returns x for the points it could not bring inside. Targeted attacks need
    ``x_init`` rows classified as the target (random noise rarely is).

    Queries: ``point_queries`` (clean query included, at most ``max_queries``) plus one
    verification query per point; under a model budget the attack keeps N queries free for
    the verification and needs B >= 2N (see ``Square``). When a point's remaining budget is
    small, the direction estimate uses fewer samples so that the step search and the
    bisection still fit.

    Args:
        norm: ``"2"`` or ``"inf"``.
        max_queries: label queries per point, clean query included (>= 1).
        eps: optional budget in ``norm``; None returns the minimal points of any size.
        steps: maximum number of gradient-estimation iterations; None: until the budget is spent.
        gamma: bisection threshold scale: theta = gamma / d^1.5 (L2) or gamma / d^2 (L-inf).
        init_evals: samples of the first direction estimate (100 in the paper).
        max_evals: cap on samples per direction estimate (10,000 in the paper).
        init_tries: random-noise draws per point when looking for a starting point.
        seed: seed of the random draws; None draws fresh entropy (not reproducible). Each point
            draws from the seed and the point itself, so results do not depend on the batch.

    Raises:
        QueryBudgetExceeded: the model's budget is below 2 queries per point.

    Reference: Chen, Jordan and Wainwright, "HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack", IEEE S&P 2020 (arXiv:1904.02144).

    Example:
        result = HopSkipJump(max_queries=1000)(as_model(predict, output="labels", n_classes=10), x, y)
        result.median_perturbation
    """

    norm: Norm = "2"
    max_queries: int = 5000
    eps: float | None = None
    steps: int | None = None
    gamma: float = 1.0
    init_evals: int = 100
    max_evals: int = 10_000
    init_tries: int = 100
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        own = "HopSkipJump"
        check_choice("norm", self.norm, NORMS, owner=own)
        check_range("max_queries", self.max_queries, owner=own, low=1, integer=True,
                    fix="Give the label queries allowed per point, e.g. max_queries=1000.")
        if self.eps is not None:
            check_range("eps", self.eps, owner=own, low=0.0,
                        fix="Give the budget in input units, or None for minimal perturbations.")
        if self.steps is not None:
            check_range("steps", self.steps, owner=own, low=1, integer=True,
                        fix="Use None to iterate until max_queries is spent.")
        check_range("gamma", self.gamma, owner=own, low=0.0, low_open=True)
        check_range("init_evals", self.init_evals, owner=own, low=1, integer=True)
        check_range("max_evals", self.max_evals, owner=own, low=1, integer=True)
        check_range("init_tries", self.init_tries, owner=own, low=0, integer=True)

    def __call__(
        self,
        model: ModelLike,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        x_init: Tensor | None = None,
    ) -> EvasionResult:
        """Attack (x, y); ``x_init`` (N, ...) optionally gives adversarial starting points."""
        call = start_call(model, x, y, target, owner="HopSkipJump", gradients=False)
        m, n, dev = call.model, call.x.shape[0], call.x.device
        if x_init is not None:
            x_init = check_inputs(x_init, bounds=m.bounds, owner="HopSkipJump")
            if x_init.shape != call.x.shape:
                raise InputError(
                    f"HopSkipJump: x_init must have the shape of x {tuple(call.x.shape)}; got "
                    f"{tuple(x_init.shape)}. Pass one starting point per input row."
                )
            x_init = x_init.to(device=dev, dtype=call.x.dtype)
        check_room_for_call(m, n, owner="HopSkipJump")
        d = call.x[0].numel()
        theta = self.gamma / (d**1.5 if self.norm == "2" else d**2)
        ledger = QueryLedger(m, n, max_queries=self.max_queries, reserve=n, device=dev)
        run = _Run(m, ledger, call.y, call.target, self.norm, theta, point_keys(call.x, call.y, self.seed))
        with black_box_mode(m):
            clean_pred = m.predict(call.x)
            ledger.charge(torch.arange(n, device=dev))
            todo = (clean_pred != call.target) if call.target is not None else clean_pred == call.y
            x_adv, found, dist = self._attack(run, call.x, todo, x_init)
            if self.eps is not None:  # over-budget points go back to x
                over = dist > self.eps + 1e-7
                x_adv[over] = call.x[over]
            return call.finish(
                x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean_pred,
                point_queries=ledger.used.clone(),
                extra={"budget_exhausted": ledger.exhausted,
                       "no_starting_point": int((todo & ~found).sum())},
            )

    def _starting_points(self, run: _Run, x: Tensor, todo: Tensor,
                         x_init: Tensor | None) -> tuple[Tensor, Tensor]:
        """(starting points (N, ...), found (N,) bool): adversarial x_init rows, else noise."""
        n, dev = x.shape[0], x.device
        start = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        if x_init is not None:
            idx = todo.nonzero().squeeze(1)
            idx = idx[run.grant(idx) > 0]
            if idx.numel():
                adv = run.decide(idx, x_init[idx])
                found[idx[adv]] = True
                start[idx[adv]] = x_init[idx[adv]]
        given = found.clone()
        for attempt in range(self.init_tries):
            idx = (todo & ~found).nonzero().squeeze(1)
            idx = idx[run.grant(idx) > 0]
            if idx.numel() == 0:
                break
            u = point_uniform(run.keys[idx], (_NOISE, attempt), tuple(x.shape[1:]), dtype=x.dtype)
            noise = run.lo + (run.hi - run.lo) * u
            adv = run.decide(idx, noise)
            found[idx[adv]] = True
            start[idx[adv]] = noise[adv]
        # Blend random starting points towards x by bisection (the reference's initialisation).
        idx = (found & ~given).nonzero().squeeze(1)
        lows = torch.zeros(idx.numel(), dtype=x.dtype, device=dev)
        highs = torch.ones_like(lows)
        noise, x0 = start[idx], x[idx]
        live = torch.ones(idx.numel(), dtype=torch.bool, device=dev)
        while True:
            pos = (live & (highs - lows > _BLEND_TOL)).nonzero().squeeze(1)
            ok = run.grant(idx[pos])
            live[pos[ok == 0]] = False
            pos = pos[ok > 0]
            if pos.numel() == 0:
                break
            mids = (highs[pos] + lows[pos]) / 2
            a = expand_as_batch(mids, x0[pos])
            blend = (1 - a) * x0[pos] + a * noise[pos]
            adv = run.decide(idx[pos], blend)
            highs[pos] = torch.where(adv, mids, highs[pos])
            lows[pos] = torch.where(adv, lows[pos], mids)
            start[idx[pos[adv]]] = blend[adv]
        return start, found

    def _attack(
        self, run: _Run, x: Tensor, todo: Tensor, x_init: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(best adversarial points (N, ...), found (N,), their distances (N,), inf if none)."""
        n, dev, ledger = x.shape[0], x.device, run.ledger
        start, found = self._starting_points(run, x, todo, x_init)
        best = x.clone()
        best_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=dev)
        idx = found.nonzero().squeeze(1)
        if idx.numel() == 0:
            return best, found, best_dist
        cur, d_post = run.binary_search(idx, x[idx], start[idx])
        best[idx] = cur
        best_dist[idx] = lp_norms(cur - x[idx], self.norm)
        cur_all, dist = best.clone(), best_dist.clone()
        post = torch.zeros_like(dist)
        post[idx] = d_post
        d = x[0].numel()
        # Queries a bisection needs after the step search; kept back from the direction estimate.
        tail = math.ceil(math.log2(1.0 / run.theta)) + 3
        alive = found.clone()
        t = 0
        while self.steps is None or t < self.steps:
            t += 1
            alive &= ledger.used < self.max_queries
            if self.eps is not None:
                alive &= best_dist > self.eps
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0 or ledger.out_of_room():
                break
            if t == 1:
                delta = torch.full((idx.numel(),), 0.1 * (run.hi - run.lo), dtype=x.dtype, device=dev)
            else:
                scale = math.sqrt(d) if self.norm == "2" else d
                delta = (scale * run.theta * post[idx]).clamp_min(1e-12)
            n_evals = int(min(self.init_evals * math.sqrt(t), self.max_evals))
            left = self.max_queries - ledger.used[idx]
            evals = run.grant(idx, (left - tail).clamp(min=0, max=n_evals))
            alive[idx[evals == 0]] = False
            keep = evals > 0
            idx, delta, evals = idx[keep], delta[keep], evals[keep]
            if idx.numel() == 0:
                break
            grad = run.estimate_direction(idx, cur_all[idx], delta, evals, t)
            update = grad.sign() if self.norm == "inf" else grad
            # Geometric progression: halve the step until the moved point is adversarial.
            step = dist[idx] / math.sqrt(t)
            moved = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            live = torch.ones_like(moved)
            for _ in range(_MAX_HALVINGS):
                pos = (live & ~moved).nonzero().squeeze(1)
                ok = run.grant(idx[pos])
                live[pos[ok == 0]] = False
                pos = pos[ok > 0]
                if pos.numel() == 0:
                    break
                cand = (cur_all[idx[pos]] + expand_as_batch(step[pos], update) * update[pos])
                adv = run.decide(idx[pos], cand.clamp(run.lo, run.hi))
                moved[pos[adv]] = True
                step[pos[~adv]] /= 2
            rows = idx[moved]
            if rows.numel() == 0:
                continue
            stepped = (cur_all[rows] + expand_as_batch(step[moved], update) * update[moved])
            out, d_post = run.binary_search(rows, x[rows], stepped.clamp(run.lo, run.hi))
            cur_all[rows] = out
            dist[rows] = lp_norms(out - x[rows], self.norm)
            post[rows] = d_post
            better = dist[rows] < best_dist[rows]
            best[rows[better]] = out[better]
            best_dist[rows[better]] = dist[rows[better]]
        return best, found, best_dist
