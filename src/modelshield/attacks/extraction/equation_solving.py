"""Equation-solving extraction of logistic / softmax regression (Tramer et al., 2016)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._checks import check_inputs, check_range
from modelshield.attacks.extraction._train import Evaluator, extraction_params
from modelshield.attacks.extraction.results import CurvePoint, ExtractionResult
from modelshield.errors import (
    ConfigError,
    InputError,
    ModelCapabilityError,
    ModelShieldError,
    QueryBudgetExceeded,
)
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model

__all__ = ["EquationSolving", "LinearCopy"]

_MIN_PROBA = 1e-30
"""Probabilities below this are treated as lost to underflow: their log-ratio equations are dropped."""

_LABELS_FIX = (
    "Equation solving needs class probabilities (or logits); for a label-only victim use "
    "KnockoffNets(output='labels') or JacobianAugmentation(output='labels')."
)


class LinearCopy(nn.Module):
    """A stolen linear classifier: ``logits = flatten(x) @ W.T + b`` (class 0's logit is 0).

    A ``torch.nn.Module`` (so white-box attacks run on it) that also offers scikit-learn's
    ``predict_proba`` / ``predict`` on numpy arrays.

    Args:
        weight: ``(C, d)`` weights. bias: ``(C,)`` biases.
    """

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        n_classes, d = weight.shape
        # Built on meta (no random draws), then filled with the solved parameters.
        self.linear = nn.Linear(d, n_classes, device="meta").to_empty(device=weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    @property
    def coef_(self) -> np.ndarray:
        """(C, d) weights as numpy (scikit-learn's name)."""
        out: np.ndarray = self.linear.weight.detach().cpu().numpy()
        return out

    @property
    def intercept_(self) -> np.ndarray:
        out: np.ndarray = self.linear.bias.detach().cpu().numpy()
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(N, *input_shape) -> (N, C) logits."""
        out: Tensor = self.linear(x.flatten(1).to(self.linear.weight.dtype))
        return out

    def predict_proba(self, x: Any) -> np.ndarray:
        """(N, C) class probabilities for a numpy (or tensor) batch."""
        x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.linear.weight.device)
        with torch.no_grad():
            out: np.ndarray = self.forward(x_t).softmax(1).cpu().numpy()
        return out

    def predict(self, x: Any) -> np.ndarray:
        """(N,) labels for a numpy (or tensor) batch."""
        out: np.ndarray = self.predict_proba(x).argmax(1)
        return out


def solve_log_ratios(x: Tensor, log_ratio: Tensor) -> tuple[Tensor, Tensor, int]:
    """Least-squares (minimum-norm) solve of ``log_ratio = x @ W.T + b``; returns W, b, rank.

    x: (n, d) float64; log_ratio: (n, C - 1) float64. With n = d + 1 points in general position
    the system is square and the solution exact; with more points it is least squares; with
    collinear points (e.g. pixels that are always 0) the minimum-norm solution sets the
    unidentifiable directions to 0, which leaves decisions on such data unchanged.
    """
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    sol = torch.linalg.lstsq(a, log_ratio, driver="gelsd")
    theta = sol.solution  # (d + 1, C - 1)
    return theta[:-1].T.contiguous(), theta[-1].contiguous(), int(sol.rank)


@dataclass(frozen=True, kw_only=True, slots=True)
class EquationSolving:
    """Equation-solving extraction of a logistic (binary) or softmax (multinomial) regression.

    For a softmax model ``p_k(x) ∝ exp(w_k·x + b_k)``, each answer gives C - 1 equations that
    are *linear* in the unknowns: ``log p_k(x) - log p_0(x) = (w_k - w_0)·x + (b_k - b_0)``.
    The differences (w_k - w_0, b_k - b_0) determine the model's probabilities exactly, so
    ``d + 1`` queries in general position recover a d-feature model, binary or multinomial
    (each query gives C - 1 equations for (C - 1)(d + 1) unknowns); more queries give a least
    squares fit. A torch module's logits are used directly. One-vs-rest models (normalised
    sigmoids) are not linear in log-ratios and are only approximated.

    The query points are rows of ``x_pool`` (a random subset; topped up with uniform points in
    the bounds when the pool is too small). Uniform points far from the data can saturate the
    probabilities (rows with a probability below 1e-30 are dropped), so pool rows from the data
    distribution work best.

    Args:
        budget: victim queries; None means d + 1 (the minimum). Must be >= d + 1.
        seed: seed for choosing the query points; None draws fresh entropy.

    Raises:
        ConfigError: budget below d + 1 (checked at call time, when d is known).
        ModelCapabilityError: the victim returns labels only.
        InputError: x_pool rows do not have the shape the victim expects.

    Reference: Tramer, Zhang, Juels, Reiter and Ristenpart, "Stealing Machine Learning Models
    via Prediction APIs", USENIX Security 2016.

    Example:
        result = EquationSolving()(sklearn_logreg, x_pool, eval_data=(x_test, y_test))
        result.copy.predict_proba(x_new), result.fidelity
    """

    budget: int | None = None
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.budget is not None:
            check_range("budget", self.budget, owner="EquationSolving", low=1, integer=True,
                        fix="Use None for the minimum d + 1 queries.")

    def __call__(
        self,
        victim: ModelLike,
        x_pool: Tensor,
        y: Tensor | None = None,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        victim_labels: Tensor | None = None,
    ) -> ExtractionResult:
        """Steal ``victim`` with ``budget`` queries drawn from ``x_pool``.

        Args:
            victim: anything ``as_model`` accepts that returns probabilities (or logits).
            x_pool: ``(N, *input_shape)`` candidate query points within the victim's bounds.
            y: unused (kept for the extraction call convention).
            eval_data: ``(x_test, y_test)`` to measure fidelity and accuracy (not charged).
            victim_labels: the victim's labels on x_test, if already known.
        """
        owner = "EquationSolving"
        started = time.perf_counter()
        m = as_model(victim)
        x_pool = check_inputs(x_pool, bounds=m.bounds, owner=owner)
        d = math.prod(x_pool.shape[1:])
        budget = d + 1 if self.budget is None else self.budget
        if budget < d + 1:
            raise ConfigError(
                f"{owner}: 'budget' must be at least d + 1 = {d + 1} for inputs with d = {d} "
                f"features; got {budget}. Raise the budget (or pass budget=None for d + 1)."
            )
        if isinstance(m, CallableModel) and m.output == "labels":
            raise ModelCapabilityError(f"{owner}: the victim returns labels only. {_LABELS_FIX}")
        left = m.queries.remaining
        if left is not None and left < budget:
            raise QueryBudgetExceeded(
                f"{owner}: the victim's remaining query budget must be at least {budget} "
                f"(d + 1 = {d + 1} at minimum); got {left}. Raise the budget given to as_model()."
            )
        evaluator = Evaluator(m, eval_data, victim_labels, None, input_shape=tuple(x_pool.shape[1:]),
                              owner=owner)
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        order = torch.randperm(x_pool.shape[0], generator=gen)[:budget].to(x_pool.device)
        points = x_pool[order]
        if points.shape[0] < budget:
            lo, hi = m.bounds
            extra_shape = (budget - points.shape[0], *x_pool.shape[1:])
            fill = lo + (hi - lo) * torch.rand(extra_shape, generator=gen, dtype=x_pool.dtype)
            points = torch.cat([points, fill.to(x_pool.device)])
        start = m.queries.forward
        scores = self._ask(m, points, owner)
        queries = m.queries.forward - start
        log_ratio, kept = self._log_ratios(m, scores)
        if int(kept.sum()) == 0:
            raise InputError(
                f"{owner}: every answer had a probability below {_MIN_PROBA:g}, so no equation is "
                "usable. Query points closer to the decision boundary (rows of real data)."
            )
        x64 = points.flatten(1).double().cpu()[kept]
        w, b, rank = solve_log_ratios(x64, log_ratio[kept])
        n_classes = w.shape[0] + 1
        weight = torch.cat([torch.zeros(1, d, dtype=w.dtype), w]).float().to(x_pool.device)
        bias = torch.cat([torch.zeros(1, dtype=b.dtype), b]).float().to(x_pool.device)
        copy = LinearCopy(weight, bias)
        curve: tuple[CurvePoint, ...] = ()
        if evaluator.active:
            evaluator.prepare()
            point = evaluator.point(copy, queries)
            curve = (point,) if point is not None else ()
        return ExtractionResult(
            attack=type(self).__name__,
            params=extraction_params(self),
            copy=copy,
            queries=queries,
            curve=curve,
            eval_queries=evaluator.eval_queries,
            time_s=time.perf_counter() - started,
            extra={"n_features": d, "n_classes": n_classes, "equations_used": int(kept.sum()),
                   "rank": rank},
        )

    @staticmethod
    def _ask(m: TorchModel | CallableModel, points: Tensor, owner: str) -> Tensor:
        try:
            with torch.no_grad():
                scores = m.scores(points)
        except ModelCapabilityError as exc:
            if isinstance(m, CallableModel) and m.output == "labels":
                raise ModelCapabilityError(
                    f"{owner}: the victim returned labels only. {_LABELS_FIX}"
                ) from exc
            raise
        except ModelShieldError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise InputError(
                f"{owner}: the victim could not take inputs of shape {tuple(points.shape[1:])} "
                f"(x_pool rows): {exc}. Give x_pool rows exactly the shape the victim expects."
            ) from exc
        return scores

    @staticmethod
    def _log_ratios(m: TorchModel | CallableModel, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(n, C - 1) float64 log p_k - log p_0 (or logit differences) and the (n,) usable rows."""
        s = scores.double().cpu()
        is_proba = (
            isinstance(m, CallableModel)
            and bool(((s >= 0) & (s <= 1 + 1e-6)).all())
            and bool(((s.sum(1) - 1).abs() <= 1e-3).all())
        )
        if not is_proba:  # logits (or decision values) are already linear in x
            return s[:, 1:] - s[:, :1], torch.isfinite(s).all(1)
        kept = (s >= _MIN_PROBA).all(1)
        logp = s.clamp_min(_MIN_PROBA).log()
        return logp[:, 1:] - logp[:, :1], kept
