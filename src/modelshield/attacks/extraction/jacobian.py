"""Substitute training with Jacobian-based dataset augmentation (Papernot et al., 2017)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from modelshield._checks import check_choice, check_range
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.extraction._train import (
    Evaluator,
    OutputMode,
    build_thief,
    check_pool,
    check_training,
    check_victim_room,
    cpu_generator,
    extraction_params,
    fit_thief,
    query_in_chunks,
    resolve_seed,
)
from modelshield.attacks.extraction.results import CurvePoint, ExtractionResult
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, as_model

__all__ = ["JacobianAugmentation", "jacobian_step"]


def jacobian_step(
    thief: nn.Module, x: Tensor, labels: Tensor, step: float, bounds: tuple[float, float]
) -> Tensor:
    """``clip(x + step * sign(d thief(x)[label] / dx))``: Papernot's augmentation of each row.

    x: (N, *input_shape); labels: (N,) the victim's labels for x; returns a new (N, ...) tensor.
    The gradient is of the thief's logit for the victim's label (the attacker's own model).
    """
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        picked = thief(xr).gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, xr)
    return (x + step * grad.sign()).clamp(bounds[0], bounds[1]).detach()


@dataclass(frozen=True, kw_only=True, slots=True)
class JacobianAugmentation:
    """Papernot's substitute training: label a small seed set, then grow it along the thief's Jacobian.

    Round 0 queries ``seed_size`` pool rows and trains the thief on the answers. Each later
    round ρ creates, for every point x of the current set S with victim label c, the point
    ``x + λ_ρ · sign(∂F_c(x)/∂x)`` (F: the thief's logits), clipped to the bounds, queries the
    victim on the new points only, adds them to S and continues training the thief on all of S.
    S doubles each round. ``λ_ρ = λ · (-1)^⌊ρ/τ⌋`` (the paper's periodic step size; ``tau=None``
    keeps λ fixed). With ``reservoir=κ``, rounds from ``reservoir_after`` (σ) on augment only κ
    points drawn at random from S (the paper's reservoir sampling). The last round is cut (a
    random subset of the parents) so that the queries never exceed ``budget``.

    The curve has one point per round (after its training), at the queries spent so far.

    Args:
        budget: maximum victim queries.
        seed_size: size of the initial seed set (queries of round 0); at most ``budget``.
        lambda_: step size λ in input units.
        rounds: augmentation rounds after the seed round.
        tau: period of the step-size sign flip, or None.
        reservoir: κ, points augmented per round once reservoir sampling starts, or None.
        reservoir_after: σ, the first round that uses reservoir sampling.
        thief_factory: ``() -> nn.Module`` returning logits; None means the default thief.
        reinit: re-draw the factory thief's Linear/Conv weights from ``seed``.
        epochs: training epochs per round. batch_size, lr: Adam training settings.
        output: ``"labels"`` (the paper's setting) or ``"proba"`` (distil the probabilities).
        seed: seed for the seed set, initialisation and batch order; None: fresh entropy.

    Raises:
        ConfigError: ``seed_size`` above ``budget`` and other bad settings.
        InputError: a pool with fewer than ``seed_size`` rows or of a shape the victim rejects.
        ModelCapabilityError: output="proba" on a label-only victim.
        QueryBudgetExceeded: the victim's own budget is below the attack's.

    Reference: Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical Black-Box
    Attacks against Machine Learning", AsiaCCS 2017 (arXiv:1602.02697).

    Example:
        result = JacobianAugmentation(budget=1600, seed_size=100)(victim, x_seed_pool,
                                                                 eval_data=(x_test, y_test))
        [(p.queries, p.fidelity) for p in result.curve]
    """

    budget: int = 1000
    seed_size: int = 100
    lambda_: float = 0.1
    rounds: int = 6
    tau: int | None = 3
    reservoir: int | None = None
    reservoir_after: int = 3
    thief_factory: Callable[[], nn.Module] | None = None
    reinit: bool = True
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    output: OutputMode = "labels"
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = "JacobianAugmentation"
        check_range("budget", self.budget, owner=owner, low=1, integer=True)
        check_range("seed_size", self.seed_size, owner=owner, low=1, integer=True)
        if self.seed_size > self.budget:
            raise ConfigError(
                f"{owner}: 'seed_size' must be at most budget={self.budget} (the seed set alone "
                f"costs seed_size queries); got {self.seed_size}. Lower seed_size or raise the budget."
            )
        check_range("lambda_", self.lambda_, owner=owner, low=0.0, low_open=True,
                    fix="Give the step in input units, e.g. lambda_=0.1 for inputs in [0, 1].")
        check_range("rounds", self.rounds, owner=owner, low=0, integer=True)
        if self.tau is not None:
            check_range("tau", self.tau, owner=owner, low=1, integer=True,
                        fix="Use None for a fixed step sign.")
        if self.reservoir is not None:
            check_range("reservoir", self.reservoir, owner=owner, low=1, integer=True,
                        fix="Use None to augment every point each round.")
        check_range("reservoir_after", self.reservoir_after, owner=owner, low=0, integer=True)
        check_choice("output", self.output, ("proba", "labels"), owner=owner)
        check_training(owner, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                       thief_factory=self.thief_factory)

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
        """Steal ``victim`` starting from ``seed_size`` rows of ``x_pool``.

        Args:
            victim: anything ``as_model`` accepts; only ``scores``/``predict`` are used.
            x_pool: ``(N, *input_shape)`` inputs in the victim's bounds to draw the seed set
                from (N >= seed_size), e.g. a few real examples per class.
            y: unused (kept for the extraction call convention).
            eval_data, victim_labels, transfer_attack: as for :class:`KnockoffNets`.
        """
        owner = "JacobianAugmentation"
        started = time.perf_counter()
        m = as_model(victim)
        x_pool = check_pool(x_pool, m, owner=owner, need=self.seed_size,
                            what=f"seed_size={self.seed_size} seed points")
        check_victim_room(m, self.budget, owner=owner)
        evaluator = Evaluator(m, eval_data, victim_labels, transfer_attack,
                              input_shape=tuple(x_pool.shape[1:]), owner=owner)
        base = resolve_seed(self.seed)
        gen, train_gen = cpu_generator(base), cpu_generator(base + 1)
        start = m.queries.forward
        pick = torch.randperm(x_pool.shape[0], generator=gen)[: self.seed_size].to(x_pool.device)
        s = x_pool[pick]
        t = query_in_chunks(m, s, output=self.output, owner=owner)
        n_classes = m.n_classes
        evaluator.prepare()
        thief = build_thief(self.thief_factory, x_pool, n_classes, seed=base, reinit=self.reinit,
                            owner=owner)
        opt = fit_thief(thief, s, t, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                        generator=train_gen)
        curve: list[CurvePoint] = []
        point = evaluator.point(thief, m.queries.forward - start)
        if point is not None:
            curve.append(point)
        sizes = [int(s.shape[0])]
        for rho in range(self.rounds):
            left = self.budget - (m.queries.forward - start)
            if left <= 0:
                break
            sign = -1.0 if self.tau is not None and (rho // self.tau) % 2 == 1 else 1.0
            parents = torch.arange(s.shape[0], device=s.device)
            if self.reservoir is not None and rho >= self.reservoir_after:
                parents = parents[torch.randperm(s.shape[0], generator=gen)[: self.reservoir]
                                  .to(s.device)]
            if parents.numel() > left:
                parents = parents[torch.randperm(parents.numel(), generator=gen)[:left].to(s.device)]
            labels = t[parents] if t.dim() == 1 else t[parents].argmax(1)
            new = jacobian_step(thief, s[parents], labels, sign * self.lambda_, m.bounds)
            t_new = query_in_chunks(m, new, output=self.output, owner=owner)
            s, t = torch.cat([s, new]), torch.cat([t, t_new])
            sizes.append(int(new.shape[0]))
            opt = fit_thief(thief, s, t, epochs=self.epochs, batch_size=self.batch_size,
                            lr=self.lr, generator=train_gen, optimizer=opt)
            point = evaluator.point(thief, m.queries.forward - start)
            if point is not None:
                curve.append(point)
        return ExtractionResult(
            attack=type(self).__name__,
            params=extraction_params(self),
            copy=thief,
            queries=m.queries.forward - start,
            curve=tuple(curve),
            eval_queries=evaluator.eval_queries,
            time_s=time.perf_counter() - started,
            extra={"round_sizes": sizes},
        )
