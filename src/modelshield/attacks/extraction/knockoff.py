"""Knockoff Nets: steal a classifier by querying it on a surrogate pool (Orekondy et al., 2019)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_choice, check_range
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.extraction._train import (
    Evaluator,
    OutputMode,
    build_thief,
    check_checkpoints,
    check_pool,
    check_training,
    check_victim_room,
    cpu_generator,
    extraction_params,
    fit_thief,
    query_in_chunks,
    query_victim,
    resolve_seed,
)
from modelshield.attacks.extraction.results import CurvePoint, ExtractionResult
from modelshield.errors import InputError
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model

__all__ = ["KnockoffNets"]

Strategy = Literal["random", "adaptive", "balanced"]
Reward = Literal["cert", "div", "loss", "all"]


class _Running:
    """Welford running mean / variance of a vector of rewards."""

    def __init__(self, size: int) -> None:
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64)
        self.m2 = torch.zeros(size, dtype=torch.float64)

    def standardise(self, r: Tensor) -> Tensor:
        """Update with r; return r standardised by the running statistics (clipped to [0, 1] at first)."""
        self.n += 1
        delta = r - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (r - self.mean)
        if self.n < 2:
            return r.clamp(0.0, 1.0)
        std = (self.m2 / (self.n - 1)).sqrt().clamp_min(1e-8)
        out: Tensor = (r - self.mean) / std
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class KnockoffNets:
    """Knockoff Nets: label a surrogate pool with the victim and train a thief on the answers.

    ``strategy="random"`` queries ``budget`` pool rows drawn uniformly without replacement.
    ``strategy="adaptive"`` treats the pool's groups (the call's ``y``: the surrogate data set's
    own labels or cluster ids) as the arms of a gradient bandit, and learns which groups to
    query from rewards computed on each answer: certainty (top-1 minus top-2 probability),
    diversity (how far the answer is above the running mean answer) and the thief's loss on
    it; ``reward="all"`` averages the three after standardising each with running statistics (as
    in ART). The paper updates the thief after every query; here the policy draws a batch of
    ``batch_size`` queries, is updated on each answer in turn, and the online thief then trains
    one epoch on all answers so far.

    ``strategy="balanced"`` (no group labels needed) selects queries in rounds guided by the
    thief, in the spirit of ActiveThief (Pal et al., 2020): ``min(100, budget)`` random pool
    rows first; then, each round, a thief trained on the answers so far (``max(1, epochs //
    2)`` epochs) scores up to 10,000 unqueried rows and the next round (as many queries as so
    far, so the answered set doubles) takes, 32 at a time, the rows whose thief-predicted
    classes are rarest among the victim's answers so far (score ``sum_c p_thief(c | x) / (n_c +
    1)``, with n_c the answers' (soft) class counts, updated with each pick's predicted
    probabilities). A surrogate pool from another distribution makes the victim answer a few
    classes most of the time (Fashion-MNIST through an MNIST model: class 9 for 0.4% of
    rows); balancing the answers covers every class's decision region sooner. Only the thief is
    run on the candidates: every victim query is counted and at most ``budget`` are made.

    ``min_steps`` raises the epochs at a checkpoint so that the thief takes at least that many
    gradient steps: with few answers (500 answers, batch 64, 10 epochs = 80 steps) a thief is
    far from converged, and training longer on the same answers costs no queries.

    With ``output="proba"`` the thief is distilled from the victim's probabilities (soft
    cross-entropy); with ``output="labels"`` it learns from the top-1 labels only.

    Curve: the queries form one sequence; the copy at checkpoint ``c`` is a thief trained from
    its seeded initialisation on the first ``c`` answers only, so a run with checkpoints
    (500, 2000, 5000) and budget 5000 gives the same curve point at 500 as a run with budget 500
    (random strategy). Curve points need ``eval_data``; the final copy is the one at ``budget``.

    Args:
        budget: victim queries (distinct pool rows).
        strategy: ``"random"``, ``"adaptive"`` or ``"balanced"``.
        thief_factory: ``() -> nn.Module`` returning logits for the victim's classes; None
            means a small CNN for images (C, H, W), an MLP otherwise.
        reinit: re-draw the factory thief's Linear/Conv weights from ``seed`` (reproducible);
            set False to keep the factory's weights (e.g. a pretrained backbone).
        epochs: training epochs over the answers at each checkpoint.
        min_steps: the least number of gradient steps at each checkpoint (epochs are raised to
            reach it); 0 keeps ``epochs`` as is.
        batch_size: thief training batch size (and the adaptive policy's batch).
        lr: Adam learning rate.
        output: ``"proba"`` (victim probabilities) or ``"labels"`` (label-only victim).
        checkpoints: query counts in [1, budget] at which to record the curve.
        reward: the adaptive strategy's reward: ``"cert"``, ``"div"``, ``"loss"`` or ``"all"``.
        seed: seed for the query order, the thief's initialisation and batch order; None draws
            fresh entropy (not reproducible).

    Raises:
        ConfigError: bad settings, e.g. a checkpoint above the budget.
        InputError: a pool smaller than the budget or of a shape the victim/thief rejects;
            the adaptive strategy without group labels ``y``.
        ModelCapabilityError: output="proba" on a label-only victim.
        QueryBudgetExceeded: the victim's own budget is below the attack's.

    Reference: Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing Functionality of
    Black-Box Models", CVPR 2019; Pal, Gupta, Shukla, Kanade, Shevade and Ganapathy,
    "ActiveThief: Model Extraction Using Active Learning and Unannotated Public Data", AAAI
    2020 (thief-guided selection in rounds).

    Example:
        result = KnockoffNets(budget=2000, checkpoints=(500,))(victim, x_pool,
                                                               eval_data=(x_test, y_test))
        result.at(500).fidelity, result.copy
    """

    budget: int = 2000
    strategy: Strategy = "random"
    thief_factory: Callable[[], nn.Module] | None = None
    reinit: bool = True
    epochs: int = 30
    min_steps: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    output: OutputMode = "proba"
    checkpoints: tuple[int, ...] = ()
    reward: Reward = "all"
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = "KnockoffNets"
        check_range("budget", self.budget, owner=owner, low=1, integer=True)
        check_choice("strategy", self.strategy, ("random", "adaptive", "balanced"), owner=owner)
        check_range("min_steps", self.min_steps, owner=owner, low=0, integer=True)
        check_choice("output", self.output, ("proba", "labels"), owner=owner)
        check_choice("reward", self.reward, ("cert", "div", "loss", "all"), owner=owner)
        check_training(owner, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                       thief_factory=self.thief_factory)
        check_checkpoints(self.checkpoints, self.budget, owner=owner)

    def __call__(
        self,
        victim: ModelLike,
        x_pool: Tensor,
        y: Tensor | None = None,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        victim_labels: Tensor | None = None,
        transfer_attack: EvasionAttack | None = None,
    ) -> ExtractionResult:
        """Steal ``victim`` by querying rows of ``x_pool``.

        Args:
            victim: anything ``as_model`` accepts; only ``scores``/``predict`` are used.
            x_pool: ``(N, *input_shape)`` surrogate inputs in the victim's bounds, N >= budget.
            y: ``(N,)`` integer group labels of the pool (needed by ``strategy="adaptive"``).
            eval_data: ``(x_test, y_test)`` held-out data for the curve (not charged).
            victim_labels: the victim's labels on x_test, if already known (saves queries).
            transfer_attack: a white-box evasion attack (e.g. ``PGD(eps=0.1)``) run on each
                checkpoint's copy to measure transferability to the victim (not charged).
        """
        owner = "KnockoffNets"
        started = time.perf_counter()
        m = as_model(victim)
        x_pool = check_pool(x_pool, m, owner=owner, need=self.budget,
                            what=f"budget={self.budget} distinct queries")
        groups = self._groups(y, x_pool) if self.strategy == "adaptive" else None
        check_victim_room(m, self.budget, owner=owner)
        checkpoints = check_checkpoints(self.checkpoints, self.budget, owner=owner)
        evaluator = Evaluator(m, eval_data, victim_labels, transfer_attack,
                              input_shape=tuple(x_pool.shape[1:]), owner=owner)
        base = resolve_seed(self.seed)
        start = m.queries.forward
        extra: dict[str, Any]
        if self.strategy == "balanced":
            order, targets, extra = self._balanced(m, x_pool, base)
        elif groups is None:
            order = torch.randperm(x_pool.shape[0], generator=cpu_generator(base))[: self.budget]
            order = order.to(x_pool.device)
            targets = query_in_chunks(m, x_pool[order], output=self.output, owner=owner)
            extra = {}
        else:
            order, targets, extra = self._adaptive(m, x_pool, groups, base)
        queries = m.queries.forward - start
        n_classes = m.n_classes
        evaluator.prepare()
        curve: list[CurvePoint] = []
        copy: nn.Module | None = None
        for c in checkpoints if evaluator.active else (self.budget,):
            copy = build_thief(self.thief_factory, x_pool, n_classes, seed=base,
                               reinit=self.reinit, owner=owner)
            fit_thief(copy, x_pool[order[:c]], targets[:c], epochs=self._epochs_for(c),
                      batch_size=self.batch_size, lr=self.lr, generator=cpu_generator(base + 1))
            point = evaluator.point(copy, c)
            if point is not None:
                curve.append(point)
        if copy is None:  # unreachable: the loop always runs at least once
            raise RuntimeError("internal: no copy was trained")
        return ExtractionResult(
            attack=type(self).__name__,
            params=extraction_params(self),
            copy=copy,
            queries=queries,
            curve=tuple(curve),
            eval_queries=evaluator.eval_queries,
            time_s=time.perf_counter() - started,
            extra=extra,
        )

    def _epochs_for(self, n: int) -> int:
        """``epochs``, raised so that training on n answers takes at least ``min_steps`` steps."""
        return max(self.epochs, math.ceil(self.min_steps / max(1, math.ceil(n / self.batch_size))))

    def _balanced(
        self, m: TorchModel | CallableModel, x_pool: Tensor, base: int
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Thief-guided, class-balancing selection in doubling rounds; returns (order, answers, extra)."""
        owner = "KnockoffNets"
        gen = cpu_generator(base + 3)
        n = int(x_pool.shape[0])
        perm = torch.randperm(n, generator=gen)
        first = min(self.budget, 100)
        order = perm[:first]
        rest = perm[first:]
        answers = [query_in_chunks(m, x_pool[order.to(x_pool.device)], output=self.output, owner=owner)]
        n_classes = m.n_classes
        rounds = 0
        while order.numel() < self.budget:
            k = min(int(order.numel()), self.budget - int(order.numel()))
            targets = torch.cat(answers)
            thief = build_thief(self.thief_factory, x_pool, n_classes, seed=base, reinit=self.reinit,
                                owner=owner)
            fit_thief(thief, x_pool[order.to(x_pool.device)], targets, epochs=max(1, self.epochs // 2),
                      batch_size=self.batch_size, lr=self.lr, generator=cpu_generator(base + 4 + rounds))
            cand = rest[: min(int(rest.numel()), max(10_000, k))]
            with torch.no_grad():
                p = torch.cat([thief(part).softmax(1).double().cpu()
                               for part in torch.split(x_pool[cand.to(x_pool.device)], 1024)])
            counts = (targets.double().cpu().sum(0) if targets.dim() == 2
                      else torch.bincount(targets.cpu(), minlength=n_classes).double())
            picked = _balanced_picks(p, counts, k)
            new = cand[picked]
            answers.append(query_in_chunks(m, x_pool[new.to(x_pool.device)], output=self.output,
                                           owner=owner))
            order = torch.cat([order, new])
            keep = torch.ones(rest.numel(), dtype=torch.bool)
            keep[picked] = False
            rest = rest[keep]
            rest = rest[torch.randperm(rest.numel(), generator=gen)]
            rounds += 1
        targets = torch.cat(answers)
        top1 = targets.argmax(1) if targets.dim() == 2 else targets
        extra = {"rounds": rounds + 1,
                 "answer_counts": torch.bincount(top1.cpu(), minlength=n_classes).tolist()}
        return order.to(x_pool.device), targets, extra

    @staticmethod
    def _groups(y: object, x_pool: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x_pool.shape[0] or (
            y.is_floating_point() or y.dtype == torch.bool
        ):
            got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if isinstance(y, Tensor) else repr(y)
            raise InputError(
                f"KnockoffNets: strategy='adaptive' needs y, an ({x_pool.shape[0]},) integer tensor "
                f"of pool group labels; got {got}. Pass the surrogate data's own labels (or "
                "cluster ids) as y, or use strategy='random'."
            )
        inverse: Tensor = torch.unique(y.cpu(), return_inverse=True)[1]
        return inverse

    def _adaptive(
        self, m: TorchModel | CallableModel, x_pool: Tensor, groups: Tensor, base: int
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Gradient-bandit query selection; returns (order, answers, extra)."""
        owner = "KnockoffNets"
        gen = cpu_generator(base)
        k = int(groups.max()) + 1
        queues = [
            members[torch.randperm(members.numel(), generator=gen)].tolist()
            for members in (torch.nonzero(groups == a).squeeze(1) for a in range(k))
        ]
        h = torch.zeros(k, dtype=torch.float64)
        pulls = torch.zeros(k, dtype=torch.float64)
        avg_reward, t = 0.0, 0
        stats = _Running(3)
        order: list[int] = []
        answers: list[Tensor] = []
        thief: nn.Module | None = None
        opt: torch.optim.Optimizer | None = None
        train_gen = cpu_generator(base + 2)
        y_mean: Tensor | None = None
        while len(order) < self.budget:
            want = min(self.batch_size, self.budget - len(order))
            acts: list[int] = []
            for _ in range(want):
                open_arms = torch.tensor([len(q) > 0 for q in queues])
                logits = h.masked_fill(~open_arms, -math.inf)
                a = int(torch.multinomial(logits.softmax(0), 1, generator=gen))
                acts.append(a)
                order.append(queues[a].pop())
            idx = torch.tensor(order[-want:], device=x_pool.device)
            x_b = x_pool[idx]
            ans = query_victim(m, x_b, output=self.output, owner=owner)
            answers.append(ans)
            n_classes = m.n_classes
            probs = ans.double().cpu() if ans.dim() == 2 else F.one_hot(ans.cpu(), n_classes).double()
            if thief is None:
                thief = build_thief(self.thief_factory, x_pool, n_classes, seed=base,
                                    reinit=self.reinit, owner=owner)
            with torch.no_grad():
                logp = F.log_softmax(thief(x_b), dim=1).double().cpu()
            top2 = probs.topk(min(2, n_classes), dim=1).values
            cert = top2[:, 0] - (top2[:, 1] if n_classes > 1 else 0.0)
            loss = -(probs * logp).sum(1)
            for i, a in enumerate(acts):
                y_mean = probs[i].clone() if y_mean is None else y_mean + (probs[i] - y_mean) / (t + 1)
                div = (probs[i] - y_mean).clamp_min(0.0).sum()
                parts = torch.stack([cert[i], div, loss[i]])
                r = self._combine(parts, stats)
                t += 1
                avg_reward += (r - avg_reward) / t
                pulls[a] += 1
                step = (r - avg_reward) / float(pulls[a])
                pi = h.softmax(0)
                h -= step * pi
                h[a] += step
            # One epoch on everything answered so far keeps the reward model current.
            x_seen = x_pool[torch.tensor(order, device=x_pool.device)]
            opt = fit_thief(thief, x_seen, torch.cat(answers), epochs=1, batch_size=self.batch_size,
                            lr=self.lr, generator=train_gen, optimizer=opt)
        final = h.softmax(0)
        extra = {"group_policy": [round(float(p), 6) for p in final],
                 "group_counts": torch.bincount(groups[torch.tensor(order)], minlength=k).tolist()}
        return torch.tensor(order, device=x_pool.device), torch.cat(answers), extra

    def _combine(self, parts: Tensor, stats: _Running) -> float:
        """The scalar reward of one answer from its (cert, div, loss) parts."""
        if self.reward == "all":
            return float(stats.standardise(parts).mean())
        return float(parts[("cert", "div", "loss").index(self.reward)])


def _balanced_picks(p: Tensor, counts: Tensor, k: int, *, chunk: int = 32) -> Tensor:
    """Indices of k rows of p (thief probabilities) that balance the class counts, chunk at a time.

    Each pick maximises ``sum_c p[i, c] / (counts[c] + 1)``; after each chunk the counts grow
    by the chunk's predicted probabilities (the answers the thief expects).
    """
    counts = counts.clone()
    taken = torch.zeros(p.shape[0], dtype=torch.bool)
    out: list[Tensor] = []
    left = min(k, int(p.shape[0]))
    while left > 0:
        score = (p / (counts + 1.0)).sum(1).masked_fill(taken, -math.inf)
        top = score.topk(min(chunk, left)).indices
        taken[top] = True
        counts += p[top].sum(0)
        out.append(top)
        left -= int(top.numel())
    return torch.cat(out)
