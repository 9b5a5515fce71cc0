"""Square Attack: score-based random search with square-shaped updates, L-inf and L2."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion._query import (
    QueryLedger,
    black_box_mode,
    check_room_for_call,
    is_probability_output,
    log_scores,
    scores_or_raise,
    spatial_shape,
)
from modelshield.attacks.ops import is_adversarial, lp_norms, point_keys, point_randint, point_signs
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import CallableModel, ModelLike, TorchModel

__all__ = ["Square", "p_selection"]

SquareLoss = Literal["margin", "ce"]

P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (on the paper's 10,000-query scale) after which the square size fraction p halves."""

_RESAMPLES = 16
"""Redraws of an L-inf window's values that would not change x_best (the reference's while loop)."""

# Stream ids of the random draws: each is (purpose, iteration, part), drawn per point from the
# point's key (``point_keys``), so a point's search does not depend on the rest of its batch.
_INIT, _POS, _VAL, _FLIP = 1, 2, 3, 4


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of the input changed at iteration it: p_init halved at each of P_HALVINGS.

    The iteration is first rescaled to the 10,000-query schedule, ``int(it / n_iters * 10000)``,
    as in the reference code, so the schedule stretches over any query budget.
    """
    scaled = int(it / n_iters * 10000)
    return float(p_init / 2 ** sum(scaled > b for b in P_HALVINGS))


def _rect_bump(hh: int, ww: int) -> Tensor:
    """(hh, ww) float64 unit-norm 'pseudo-Gaussian' bump: nested rectangles weighted 1/(k+1)^2."""
    delta = torch.zeros(hh, ww, dtype=torch.float64)
    r0, c0 = hh // 2, ww // 2
    for k in range(max(hh // 2 + 1, ww // 2 + 1)):
        delta[max(r0, 0):min(r0 + 2 * k + 1, hh), max(c0, 0):min(c0 + 2 * k + 1, ww)] += 1.0 / (k + 1) ** 2
        r0, c0 = r0 - 1, c0 - 1
    size = delta.norm()
    return delta / size if size > 0 else delta


@functools.lru_cache(maxsize=128)
def _bump(sh: int, sw: int) -> Tensor:
    """(sh, sw) unit-norm L2 update pattern: a positive bump next to a negative one.

    Squares (sh > 1) split top/bottom as in the paper's Figure/Algorithm 3; 1-D windows
    (sh == 1) split left/right. Read-only: the cached tensor must not be modified.
    """
    if sh > 1:
        top = sh // 2
        d = torch.cat([_rect_bump(top, sw), -_rect_bump(sh - top, sw)], dim=0)
    else:
        left = sw // 2
        d = torch.cat([_rect_bump(1, left), -_rect_bump(1, sw - left)], dim=1)
    size = d.norm()
    return d / size if size > 0 else d


def _window_index(
    vh: Tensor, vw: Tensor, sh: int, sw: int, c: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Advanced indices selecting, for each row k, the (c, sh, sw) window at (vh[k], vw[k])."""
    dev = vh.device
    k = vh.shape[0]
    return (
        torch.arange(k, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        (vh[:, None] + torch.arange(sh, device=dev))[:, None, :, None],
        (vw[:, None] + torch.arange(sw, device=dev))[:, None, None, :],
    )


def _positions(keys: Tensor, stream: tuple[int, ...], h: int, w: int, sh: int,
               sw: int) -> tuple[Tensor, Tensor]:
    """Uniform top-left corners (k,), (k,) of sh x sw windows inside an h x w grid, one per key.

    Per point, as in the paper's Algorithm 2 (each image gets its own window position).
    """
    vh = point_randint(keys, (*stream, 0), h - sh + 1)
    vw = point_randint(keys, (*stream, 1), w - sw + 1)
    return vh, vw


def _linf_window(p: float, h: int, w: int) -> tuple[int, int]:
    """Window (sh, sw) covering a fraction p of an h x w grid, at least 1, at most side - 1."""
    if h > 1:
        s = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
        return s, s
    return 1, min(max(round(p * w), 1), max(w - 1, 1))


def _l2_window(p: float, h: int, w: int) -> tuple[int, int]:
    """Odd window side >= 3 covering a fraction p of an h x w grid (capped by the grid)."""
    if h > 1:
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 - s % 2, min(h, w))
        return s, s
    s = max(round(p * w), 3)
    return 1, min(s + 1 - s % 2, w)


def _linf_init(x: Tensor, eps: float, bounds: tuple[float, float], keys: Tensor) -> Tensor:
    """x plus vertical stripes of +-eps (one sign per channel and column), clipped to bounds."""
    _, c, _, w = x.shape
    return (x + eps * point_signs(keys, _INIT, (c, 1, w), dtype=x.dtype)).clamp(bounds[0], bounds[1])


def _l2_init(x: Tensor, eps: float, bounds: tuple[float, float], keys: Tensor) -> Tensor:
    """x plus a grid of +-bump tiles (the paper's L2 init), rescaled to L2 norm eps, clipped.

    The reference code draws each tile's orientation once for the whole batch; here each point
    draws its own (the same distribution for every point, and independent of the batch).
    """
    n, c, h, w = x.shape
    delta = torch.zeros_like(x)
    if h > 1:
        s = max(h // 5, 1)
        tile_h, tile_w = s, s
        starts_h = [(h - 5 * s) // 2 + s * i for i in range(h // s)]
        starts_w = [(w - 5 * s) // 2 + s * j for j in range(w // s)]
    else:
        s = max(w // 5, 1)
        tile_h, tile_w = 1, s
        starts_h = [0]
        starts_w = [(w - 5 * s) // 2 + s * j for j in range(w // s)]
    tiles = len(starts_h) * len(starts_w)
    flips = point_randint(keys, (_INIT, 1), 2, (tiles,)).bool()
    signs = point_signs(keys, (_INIT, 2), (c, tiles), dtype=x.dtype)
    pat = _bump(tile_h, tile_w).to(dtype=x.dtype, device=x.device)
    # A Python loop over the (few, e.g. 25) tiles, never over the batch.
    for t, (r, q) in enumerate((r, q) for r in starts_h for q in starts_w):
        r0, q0 = max(r, 0), max(q, 0)
        r1, q1 = min(r + tile_h, h), min(q + tile_w, w)
        if r1 <= r0 or q1 <= q0:
            continue
        pats = torch.where(flips[:, t, None, None], pat.T, pat) if tile_h > 1 else pat.expand(n, -1, -1)
        piece = pats[:, r0 - r:r1 - r, q0 - q:q1 - q]
        delta[:, :, r0:r1, q0:q1] += piece[:, None] * signs[:, :, t, None, None]
    size = lp_norms(delta, "2").clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x + delta / size * eps).clamp(bounds[0], bounds[1])


def _linf_candidates(
    xc: Tensor, xb: Tensor, eps: float, p: float, bounds: tuple[float, float], keys: Tensor, it: int
) -> Tensor:
    """Each row of xb with one random window set to x +- eps (one sign per channel), clipped.

    As in the reference code, a draw that would leave x_best unchanged is redrawn. Row i's
    draws depend only on keys[i] and the iteration it.
    """
    _, c, h, w = xc.shape
    sh, sw = _linf_window(p, h, w)
    vh, vw = _positions(keys, (_POS, it), h, w, sh, sw)
    win = _window_index(vh, vw, sh, sw, c)
    x_win, b_win = xc[win], xb[win]
    new_win = (x_win + eps * point_signs(keys, (_VAL, it, 0), (c, 1, 1), dtype=xc.dtype)).clamp(
        bounds[0], bounds[1])
    same = ((new_win - b_win).abs() < 1e-7).flatten(1).all(1)
    for attempt in range(1, _RESAMPLES + 1):
        redo = same.nonzero().squeeze(1)
        if redo.numel() == 0:
            break
        vals = eps * point_signs(keys[redo], (_VAL, it, attempt), (c, 1, 1), dtype=xc.dtype)
        new_win[redo] = (x_win[redo] + vals).clamp(bounds[0], bounds[1])
        same[redo] = ((new_win[redo] - b_win[redo]).abs() < 1e-7).flatten(1).all(1)
    x_new = xb.clone()
    x_new[win] = new_win
    return x_new


def _l2_candidates(
    xc: Tensor, xb: Tensor, eps: float, p: float, bounds: tuple[float, float], keys: Tensor, it: int
) -> Tensor:
    """The paper's L2 update: move mass into window 1 (a +- bump), empty window 2, keep ||.|| = eps.

    Row i's draws depend only on keys[i] and the iteration it.
    """
    k, c, h, w = xc.shape
    sh, sw = _l2_window(p, h, w)
    delta = xb - xc
    win1 = _window_index(*_positions(keys, (_POS, it, 0), h, w, sh, sw), sh, sw, c)
    win2 = _window_index(*_positions(keys, (_POS, it, 1), h, w, sh, sw), sh, sw, c)
    mask = torch.zeros_like(delta, dtype=torch.bool)
    mask[win1] = True
    mask[win2] = True
    old = delta[win1]
    norm_win1 = old.square().sum((2, 3), keepdim=True).sqrt()
    norm_img = delta.square().sum((1, 2, 3), keepdim=True).sqrt()
    norm_both = (delta * mask).square().sum((2, 3), keepdim=True).sqrt()
    pat = _bump(sh, sw).to(dtype=xc.dtype, device=xc.device).expand(k, sh, sw)
    if sh > 1:  # random orientation of the +/- pair, per point
        flip = point_randint(keys, (_FLIP, it), 2, (1, 1)).bool()
        pat = torch.where(flip, pat.transpose(1, 2), pat)
    new = pat[:, None] * point_signs(keys, (_VAL, it), (c, 1, 1), dtype=xc.dtype) + old / (1e-10 + norm_win1)
    budget = ((eps**2 - norm_img.square()).clamp_min(0) / c + norm_both.square()).sqrt()
    new = new / new.square().sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * budget
    delta[win2] = 0.0
    delta[win1] = new
    size = lp_norms(delta, "2").clamp_min(1e-12).view(-1, 1, 1, 1)
    return (xc + delta / size * eps).clamp(bounds[0], bounds[1])


def _losses(z: Tensor, y: Tensor, target: Tensor | None, loss: SquareLoss) -> tuple[Tensor, Tensor]:
    """(loss to minimise (k,), broken (k,) bool) from logit-like scores z (k, C)."""
    lab = target if target is not None else y
    z_lab = z.gather(1, lab[:, None]).squeeze(1)
    other = z.scatter(1, lab[:, None], float("-inf")).amax(1)
    broken = is_adversarial(z, y, target)
    if loss == "ce":
        ce = torch.logsumexp(z, dim=1) - z_lab
        return (ce if target is not None else -ce), broken
    margin = z_lab - other  # untargeted: > 0 while still correct
    return (-margin if target is not None else margin), broken


@dataclass(frozen=True, kw_only=True, slots=True)
class Square:
    """Square Attack: random search over square-shaped updates at the corners of the eps-ball.

    L-inf: starts from vertical stripes of +-eps; each step sets a random square window
    (one value +-eps per channel) and keeps it when the loss drops. L2: starts from a grid of
    +-bumps and moves perturbation mass between two random windows, staying on the eps-sphere.
    The window covers a fraction p of the input, halved on the schedule of the paper
    (``p_selection``), rescaled to ``max_queries`` as in the reference code. Only the points
    not yet broken are queried. Flat inputs (N, D) use 1-D windows (segments) of p * D
    features; (N, H, W) inputs are one-channel images.

    Scores: logits for a torch model; for a black-box model returning probabilities, their
    logarithm (the same margins as the logits). The loss is the margin
    ``z_y - max_{j != y} z_j`` untargeted and the cross-entropy of the target when
    targeted (``loss=None``, the reference code's choice). A candidate that already breaks
    the point is always kept.

    Queries: ``point_queries`` counts every forward query spent on a point before the
    verification: one clean query, one for the initialisation, one per iteration; it never
    exceeds ``max_queries``. ``finish`` then queries each x_adv once more, so the model's
    counter grows by ``point_queries.sum() + N``. Under a model budget
    (``as_model(..., budget=B)``) the attack keeps N queries free for that verification and
    stops early when the rest is spent (``extra["budget_exhausted"]``); it needs B >= 2N.

    Args:
        eps: perturbation budget in input units.
        norm: ``"inf"`` or ``"2"``.
        max_queries: forward queries per point, clean query included (>= 1).
        p_init: initial fraction of the input a window covers (0.8, as in AutoAttack).
        loss: ``"margin"`` or ``"ce"``; None: margin untargeted, cross-entropy targeted.
        seed: seed of the random search; None draws fresh entropy (not reproducible). Every
            draw (window positions, signs) is made per point from the seed and the point
            itself, so results do not depend on the batch size or the other points.

    Raises:
        ModelCapabilityError: the model returns labels only (use HopSkipJump).
        QueryBudgetExceeded: the model's budget is below 2 queries per point.

    Reference: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
    black-box adversarial attack via random search", ECCV 2020 (arXiv:1912.00049).

    Example:
        result = Square(eps=0.05, max_queries=1000)(as_model(predict_proba), x, y)
        result.robust_accuracy, result.queries_per_success
    """

    eps: float
    norm: Norm = "inf"
    max_queries: int = 5000
    p_init: float = 0.8
    loss: SquareLoss | None = None
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_range("eps", self.eps, owner="Square", low=0.0,
                    fix="Give eps in input units, e.g. eps=8/255 for images in [0, 1].")
        check_choice("norm", self.norm, NORMS, owner="Square")
        check_range("max_queries", self.max_queries, owner="Square", low=1, integer=True,
                    fix="Give the forward queries allowed per point, e.g. max_queries=1000.")
        check_range("p_init", self.p_init, owner="Square", low=0.0, high=1.0, low_open=True,
                    fix="Use a fraction of the input, e.g. p_init=0.8 (AutoAttack) or 0.05.")
        if self.loss is not None:
            check_choice("loss", self.loss, ("margin", "ce"), owner="Square")

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="Square", gradients=False)
        m, n = call.model, call.x.shape[0]
        check_room_for_call(m, n, owner="Square")
        keys = point_keys(call.x, call.y, self.seed)
        ledger = QueryLedger(m, n, max_queries=self.max_queries, reserve=n, device=call.x.device)
        with black_box_mode(m):
            clean = scores_or_raise(m, call.x, owner="Square")
            ledger.charge(torch.arange(n, device=call.x.device))
            clean_pred = clean.argmax(1)
            x_adv = self._search(m, call.x, call.y, call.target, clean_pred,
                                 proba=is_probability_output(m, clean), ledger=ledger, keys=keys)
            return call.finish(
                x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean_pred,
                point_queries=ledger.used.clone(), extra={"budget_exhausted": ledger.exhausted},
            )

    def _search(
        self,
        m: TorchModel | CallableModel,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        clean_pred: Tensor,
        *,
        proba: bool,
        ledger: QueryLedger,
        keys: Tensor,
    ) -> Tensor:
        """(N, ...) best inputs found: x itself for points never attacked."""
        n, shape = x.shape[0], x.shape[1:]
        c, h, w = spatial_shape(tuple(shape))
        xs = x.reshape(n, c, h, w)
        x_best = xs.clone()
        todo = clean_pred != target if target is not None else clean_pred == y
        idx = todo.nonzero().squeeze(1)
        if self.eps == 0 or idx.numel() == 0 or self.max_queries < 2:
            return x_best.view_as(x)
        loss_kind: SquareLoss = self.loss or ("ce" if target is not None else "margin")
        bounds = m.bounds

        def query(rows: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
            z = log_scores(m.scores(cand.reshape(-1, *shape)), proba=proba)
            ledger.charge(rows)
            t = target[rows] if target is not None else None
            return _losses(z, y[rows], t, loss_kind)

        init = _linf_init if self.norm == "inf" else _l2_init
        step = _linf_candidates if self.norm == "inf" else _l2_candidates
        idx = idx[ledger.allow(idx, 1) > 0]
        if idx.numel() == 0:
            return x_best.view_as(x)
        cand = init(xs[idx], self.eps, bounds, keys[idx])
        loss_best = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        alive = torch.zeros_like(broken)
        loss_best[idx], broken[idx] = query(idx, cand)
        x_best[idx] = cand
        alive[idx] = True
        for it in range(self.max_queries - 2):
            idx = (alive & ~broken).nonzero().squeeze(1)
            grant = ledger.allow(idx, 1)
            if not bool(grant.all()):
                alive[idx[grant == 0]] = False
                idx = idx[grant > 0]
            if idx.numel() == 0:
                break
            p = p_selection(self.p_init, it, self.max_queries)
            cand = step(xs[idx], x_best[idx], self.eps, p, bounds, keys[idx], it)
            loss, hit = query(idx, cand)
            keep = (loss < loss_best[idx]) | hit
            upd = idx[keep]
            x_best[upd] = cand[keep]
            loss_best[upd] = loss[keep]
            broken[upd] = hit[keep]
        return x_best.view_as(x)
