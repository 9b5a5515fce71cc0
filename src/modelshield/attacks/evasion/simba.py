"""SimBA: Simple Black-box Attack, a greedy walk along random pixel or low-frequency DCT directions."""

from __future__ import annotations

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
    probabilities,
    scores_or_raise,
    spatial_shape,
)
from modelshield.attacks.ops import is_adversarial, lp_norms, point_keys, point_uniform
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import CallableModel, ModelLike, TorchModel

__all__ = ["SimBA", "dct_matrix"]

Basis = Literal["pixel", "dct"]

_ORDER = 0x5349  # stream id of the direction orders: (_ORDER, pass)


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | None = None) -> Tensor:
    """(n, n) orthonormal DCT-II matrix M; row k is the k-th cosine basis vector (x = M.T @ c)."""
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    mat = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat.to(dtype=dtype, device=device)


def _dct_block_keys(c: int, h: int, w: int, device: torch.device) -> Tensor:
    """(c*h*w,) frequency block of each DCT coordinate: low frequencies get small keys.

    The reference's "strided" order: the lowest ``init x init`` frequencies form block 0, then
    each band of ``stride`` more frequencies a further block. ``init`` and ``stride`` scale with
    the side as the reference's ImageNet settings do (38 and 9 for 224 pixels).
    """
    side = max(h, w)
    init = max(1, math.ceil(side / 6))
    stride = max(1, round(side / 25))
    u = torch.arange(h, device=device)[:, None].expand(h, w)
    v = torch.arange(w, device=device)[None, :].expand(h, w)
    freq = torch.maximum(u, v)
    block = torch.where(freq < init, 0, 1 + (freq - init) // stride)
    return block.expand(c, h, w).reshape(-1).to(torch.float32)


@dataclass(frozen=True, kw_only=True, slots=True)
class SimBA:
    """SimBA: step eps_step along one random orthonormal direction at a time, greedily.

    For each direction q (taken without replacement in random order), the attack tries
    ``x - eps_step * q``; if the model's probability of the true class drops (targeted: the
    target's rises) the step is kept, else it tries ``x + eps_step * q`` and keeps that if it
    helps. ``basis="pixel"`` uses the standard basis (SimBA-pixel); ``basis="dct"`` uses the
    orthonormal 2-D DCT basis over (H, W) (1-D over the features for flat inputs), low
    frequencies first in random order within each band (SimBA-DCT). When every direction has
    been tried, a fresh random order starts another pass (the paper's single pass suffices for
    images; small tabular inputs need more). Candidates are clipped to the bounds; a candidate
    equal to the current point is skipped without a query.

    With ``eps`` the result stays in the ball: ``norm="2"`` skips any step whose candidate
    would leave it; ``norm="inf"`` clips the candidate into the box. Each accepted step
    lowers the true-class probability (raises the target's) strictly. A torch model's logits
    are turned into probabilities with softmax.

    Queries: ``point_queries`` (clean query included, at most ``max_queries``) plus one
    verification query per point; under a model budget the attack keeps N queries free for
    the verification and needs B >= 2N (see ``Square``).

    Args:
        eps_step: step along each direction, in input units (L2 length of the step).
        max_queries: forward queries per point, clean query included (>= 1).
        basis: ``"pixel"`` or ``"dct"``.
        eps: optional budget in ``norm``; None leaves the perturbation unbounded.
        norm: the norm of eps and of the reported perturbation sizes (``"2"`` by default).
        seed: seed of the direction orders; None draws fresh entropy (not reproducible). Each
            point draws its own orders from the seed and the point itself, so results do not
            depend on the batch size or the other points.

    Raises:
        ModelCapabilityError: the model returns labels only (use HopSkipJump).
        QueryBudgetExceeded: the model's budget is below 2 queries per point.

    Reference: Guo, Gardner, You, Wilson and Weinberger, "Simple Black-box Adversarial
    Attacks", ICML 2019 (arXiv:1905.07121).

    Example:
        result = SimBA(eps_step=0.2, max_queries=1000)(as_model(predict_proba), x, y)
        result.attack_success_rate, result.median_perturbation
    """

    eps_step: float = 0.2
    max_queries: int = 5000
    basis: Basis = "pixel"
    eps: float | None = None
    norm: Norm = "2"
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_range("eps_step", self.eps_step, owner="SimBA", low=0.0, low_open=True,
                    fix="Give the step in input units, e.g. eps_step=0.2 for inputs in [0, 1].")
        check_range("max_queries", self.max_queries, owner="SimBA", low=1, integer=True,
                    fix="Give the forward queries allowed per point, e.g. max_queries=1000.")
        check_choice("basis", self.basis, ("pixel", "dct"), owner="SimBA")
        if self.eps is not None:
            check_range("eps", self.eps, owner="SimBA", low=0.0,
                        fix="Give the budget in input units, or None for an unbounded attack.")
        check_choice("norm", self.norm, NORMS, owner="SimBA")

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="SimBA", gradients=False)
        m, n = call.model, call.x.shape[0]
        check_room_for_call(m, n, owner="SimBA")
        keys = point_keys(call.x, call.y, self.seed)
        ledger = QueryLedger(m, n, max_queries=self.max_queries, reserve=n, device=call.x.device)
        with black_box_mode(m):
            clean = scores_or_raise(m, call.x, owner="SimBA")
            ledger.charge(torch.arange(n, device=call.x.device))
            proba = is_probability_output(m, clean)
            x_adv = self._walk(m, call.x, call.y, call.target, clean, proba=proba,
                               ledger=ledger, rkeys=keys)
            return call.finish(
                x_adv, attack=self, eps=self.eps, norm=self.norm, clean_pred=clean.argmax(1),
                point_queries=ledger.used.clone(), extra={"budget_exhausted": ledger.exhausted},
            )

    def _directions(self, q: Tensor, shape: tuple[int, ...], mats: tuple[Tensor, Tensor] | None,
                    like: Tensor) -> Tensor:
        """(k, D) unit directions for coordinates q (k,): one-hot pixels or DCT basis images."""
        k, d = q.shape[0], like.shape[1]
        rows = torch.arange(k, device=like.device)
        if mats is None:
            out = torch.zeros(k, d, dtype=like.dtype, device=like.device)
            out[rows, q] = 1.0
            return out
        c, h, w = spatial_shape(shape)
        ch, u, v = q // (h * w), (q % (h * w)) // w, q % w
        img = mats[0][u][:, :, None] * mats[1][v][:, None, :]
        out4 = torch.zeros(k, c, h, w, dtype=like.dtype, device=like.device)
        out4[rows, ch] = img
        return out4.reshape(k, d)

    def _walk(
        self,
        m: TorchModel | CallableModel,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        clean: Tensor,
        *,
        proba: bool,
        ledger: QueryLedger,
        rkeys: Tensor,
    ) -> Tensor:
        """(N, ...) final points of the greedy walk (x itself for points never attacked).

        ``rkeys`` (N,) are the points' random-number keys (``point_keys``).
        """
        n, shape = x.shape[0], tuple(x.shape[1:])
        dev, lo, hi = x.device, *m.bounds
        xs = x.reshape(n, -1)
        d = xs.shape[1]
        x_cur = xs.clone()
        lab = target if target is not None else y
        prev = probabilities(clean, proba=proba).gather(1, lab[:, None]).squeeze(1)
        broken = is_adversarial(clean, y, target)
        alive = ~broken.clone()
        if self.eps == 0:
            return x_cur.view_as(x)
        mats: tuple[Tensor, Tensor] | None = None
        keys = torch.zeros(d, dtype=torch.float64, device=dev)
        if self.basis == "dct":
            c, h, w = spatial_shape(shape)
            mats = (dct_matrix(h, dtype=x.dtype, device=dev), dct_matrix(w, dtype=x.dtype, device=dev))
            keys = _dct_block_keys(c, h, w, dev).double()
        stale = torch.zeros(n, dtype=torch.long, device=dev)  # trials since the last query
        order = torch.empty(0, dtype=torch.long, device=dev)

        def candidate(base: Tensor, x0: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
            cand = base + step
            if self.eps is not None and self.norm == "inf":
                cand = x0 + (cand - x0).clamp(-self.eps, self.eps)
            cand = cand.clamp(lo, hi)
            ok = (cand != base).any(1)
            if self.eps is not None and self.norm == "2":
                ok &= lp_norms(cand - x0, "2") <= self.eps
            return cand, ok

        def attempt(idx: Tensor, cand: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """(improved, new prob, broken) for rows of idx; only rows with ok are queried."""
            k = idx.numel()
            improved = torch.zeros(k, dtype=torch.bool, device=dev)
            p_new = prev[idx].clone()
            hit = torch.zeros_like(improved)
            pos = ok.nonzero().squeeze(1)
            pos = pos[ledger.allow(idx[pos], 1) > 0]
            if pos.numel() == 0:
                return improved, p_new, hit
            rows = idx[pos]
            s = m.scores(cand[pos].reshape(-1, *shape))
            ledger.charge(rows)
            stale[rows] = 0
            p = probabilities(s, proba=proba).gather(1, lab[rows, None]).squeeze(1)
            improved[pos] = p > prev[rows] if target is not None else p < prev[rows]
            p_new[pos] = p
            pr = s.argmax(1)
            hit[pos] = pr == target[rows] if target is not None else pr != y[rows]
            return improved, p_new, hit

        for trial in range(self.max_queries):
            alive &= (ledger.used < self.max_queries) & (stale < d)
            idx = (alive & ~broken).nonzero().squeeze(1)
            if idx.numel() == 0 or ledger.out_of_room():
                break
            j = trial % d
            if j == 0:  # a fresh random order (within frequency bands for DCT) per point
                # 53-bit noise: ties (which a stable sort would break by index) are negligible.
                noise = point_uniform(rkeys, (_ORDER, trial // d), (d,), dtype=torch.float64)
                order = (keys[None, :] + noise).argsort(dim=1, stable=True)
            stale[idx] += 1
            step = self.eps_step * self._directions(order[idx, j], shape, mats, xs)
            base, x0 = x_cur[idx], xs[idx]
            left, ok_left = candidate(base, x0, -step)
            imp_l, p_l, hit_l = attempt(idx, left, ok_left)
            right, ok_right = candidate(base, x0, step)
            imp_r, p_r, hit_r = attempt(idx, right, ok_right & ~imp_l)
            for imp, cand, p, hit in ((imp_l, left, p_l, hit_l), (imp_r, right, p_r, hit_r)):
                rows = idx[imp]
                x_cur[rows] = cand[imp]
                prev[rows] = p[imp]
                broken[rows] = hit[imp]
        return x_cur.view_as(x)
