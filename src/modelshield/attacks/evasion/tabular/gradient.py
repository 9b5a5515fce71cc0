"""Gradient attack for differentiable tabular models: masked PGD, then repair to the spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.evasion.tabular.constraints import ConstraintSpec, count_changes
from modelshield.attacks.evasion.tabular.search import finish_tabular, margin_to, start_tabular
from modelshield.attacks.results import EvasionResult
from modelshield.models import ModelLike, eval_mode

__all__ = ["TabularPGD"]


def _margin_loss(target: Tensor) -> Callable[[Tensor], Tensor]:
    """Per-point loss to maximise: the target's logit margin over the best other class."""
    return lambda logits: margin_to(logits, target)


@dataclass(frozen=True, kw_only=True, slots=True)
class TabularPGD:
    """Constrained evasion of a differentiable (PyTorch) tabular model: PGD, then repair.

    Each step moves the continuous relaxation of the row by ``step_size`` along the sign of
    the gradient of the target-class logit margin, only on mutable features and only in each
    feature's allowed direction, clamped to the features' bounds. The iterate is then repaired
    to the spec (``ConstraintSpec.repair``: rounding to allowed values, immutables restored,
    and at most ``max_changes`` changed features, those with the largest accumulated gradient
    magnitude, the rest reverted) and the repaired row is scored; the first repaired row the
    model gives the target class is kept. Only detected malicious rows are attacked, toward
    the benign class, as in :class:`TabularSearch`; results are verified the same way.

    Args:
        max_changes: L0 budget: most features changed per row (>= 1).
        steps: gradient steps.
        step_size: step in feature units (features in [-1, 1] need a few steps of 0.25 to
            cross a rounding midpoint).
        malicious_class: the label of the rows to attack.
        batch_size: most rows per clean-scoring call.

    Reference: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018 (arXiv:1706.06083), with projection/repair to a constrained feature space as in
    Simonetto, Dyrmishi, Ghamizi, Cordy and Le Traon, IJCAI 2022 (arXiv:2112.01156).

    Example:
        res = TabularPGD(max_changes=3)(as_model(mlp, bounds=(-1, 1)), x, y, constraints=spec)
    """

    max_changes: int = 3
    steps: int = 30
    step_size: float = 0.25
    malicious_class: int = 1
    batch_size: int = 65536

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        owner = "TabularPGD"
        check_range("max_changes", self.max_changes, owner=owner, low=1, integer=True,
                    fix="Give the most features the attacker may change per row, e.g. max_changes=3.")
        check_range("steps", self.steps, owner=owner, low=1, integer=True)
        check_range("step_size", self.step_size, owner=owner, low=0.0, low_open=True,
                    fix="Give the step in feature units, e.g. step_size=0.25 for features in [-1, 1].")
        check_range("malicious_class", self.malicious_class, owner=owner, low=0, integer=True)
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)

    def __call__(
        self,
        model: ModelLike,
        x: Tensor,
        y: Tensor,
        *,
        constraints: ConstraintSpec,
        target: Tensor | None = None,
    ) -> EvasionResult:
        """Attack the detected malicious rows of x; see the class docstring.

        Raises:
            ModelCapabilityError: the model is not a torch.nn.Module (no gradients).
            ConfigError, DataError, InputError: as for TabularSearch.
        """
        tc = start_tabular(
            model, x, y, target, constraints=constraints, malicious_class=self.malicious_class,
            owner="TabularPGD", gradients=True, batch_size=self.batch_size,
        )
        call = tc.call
        m = call.gradient_model
        spec = tc.spec
        n = call.x.shape[0]
        dev = call.x.device
        idx = tc.attacked.nonzero().squeeze(1)
        x_adv = call.x.clone()
        point_queries = torch.ones(n, dtype=torch.int64, device=dev)
        if call.target is None or idx.numel() == 0:
            return finish_tabular(tc, x_adv, attack=self, max_changes=self.max_changes,
                                  malicious_class=self.malicious_class, point_queries=point_queries)
        feats = spec.features
        mutable = torch.tensor([f.mutable for f in feats], device=dev)
        lo, hi = spec.bound_tensors(x_adv)
        inc = torch.tensor([f.direction == "increase" for f in feats], device=dev)
        dec = torch.tensor([f.direction == "decrease" for f in feats], device=dev)
        active = idx
        x0 = call.x[idx]
        xa = x0.clone()
        t = call.target[idx]
        g_acc = torch.zeros_like(x0)
        with eval_mode(m):
            for _ in range(self.steps):
                _, grad = m.value_and_grad(xa, _margin_loss(t))
                point_queries[active] += 1
                g_acc = g_acc + grad.abs()
                xa = xa + self.step_size * grad.sign() * mutable
                xa = torch.maximum(torch.minimum(xa, hi), lo)
                xa = torch.where(inc, torch.maximum(xa, x0), xa)
                xa = torch.where(dec, torch.minimum(xa, x0), xa)
                cand = spec.repair(x0, xa, max_changes=self.max_changes, priority=g_acc)
                moved = count_changes(x0, cand) > 0
                hit = torch.zeros_like(moved)
                if bool(moved.any()):
                    pred = m.scores(cand[moved]).argmax(1)
                    point_queries[active[moved]] += 1
                    hit[moved] = pred == t[moved]
                if bool(hit.any()):
                    x_adv[active[hit]] = cand[hit]
                    keep = ~hit
                    active, x0, xa, t, g_acc = active[keep], x0[keep], xa[keep], t[keep], g_acc[keep]
                    if active.numel() == 0:
                        break
        return finish_tabular(
            tc, x_adv, attack=self, max_changes=self.max_changes, malicious_class=self.malicious_class,
            point_queries=point_queries,
        )
