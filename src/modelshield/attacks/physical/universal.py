"""Universal adversarial perturbations: one small perturbation that fools most inputs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm, Progress
from modelshield.attacks.evasion.deepfool import DeepFool, deepfool_points
from modelshield.attacks.ops import make_generator, normalize_grad, project
from modelshield.attacks.physical.optimise import CE_CLIP, start_physical
from modelshield.attacks.physical.results import PhysicalPattern
from modelshield.attacks.physical.transforms import Transforms
from modelshield.attacks.verify import attack_params
from modelshield.errors import InputError
from modelshield.models import ModelLike, TorchModel, eval_mode

__all__ = ["UniversalPerturbation"]

Method = Literal["sgd", "deepfool"]
METHODS: tuple[Method, ...] = ("sgd", "deepfool")


def _labels(m: TorchModel, x: Tensor, batch: int) -> Tensor:
    return torch.cat([m.predict(x[s:s + batch]) for s in range(0, x.shape[0], batch)])


def _fooling_rate(m: TorchModel, x: Tensor, clean: Tensor, v: Tensor, batch: int) -> float:
    lo, hi = m.bounds
    adv = torch.cat([m.predict((x[s:s + batch] + v).clamp(lo, hi)) for s in range(0, x.shape[0], batch)])
    return float((adv != clean).double().mean())


@dataclass(frozen=True, kw_only=True, slots=True)
class UniversalPerturbation:
    """One perturbation v with ||v|| <= eps that changes the model's label on most inputs.

    ``method="deepfool"`` is Moosavi-Dezfooli et al.'s Algorithm 1: go through the images in
    a random order; for each one that ``x + v`` does not yet fool, find the minimal DeepFool
    step that takes ``x + v`` across its decision boundary and set ``v = P(v + step)``
    (projection onto the eps-ball); repeat passes until the fooling rate on the data reaches
    ``1 - delta`` or ``max_passes`` is spent. Sequential by definition, so slower.

    ``method="sgd"`` (default) is the stochastic-gradient variant of Shafahi, Najibi, Xu,
    Dickerson, Davis and Goldstein: over ``max_passes`` epochs of mini-batches, step v along
    the sign (L-inf) or the normalised direction (L2) of the gradient of the mean clipped
    cross-entropy ``min(CE(f(x + v), y), 10)`` and project; clipping keeps fooled inputs from
    dominating. Much faster on batches.

    Args:
        eps: the budget in input units, in ``norm``.
        norm: ``"inf"`` or ``"2"``.
        method: ``"sgd"`` or ``"deepfool"``.
        max_passes: passes over the data.
        delta: stop once the fooling rate on the data is at least ``1 - delta`` (paper: 0.2).
        batch_size: mini-batch (sgd) or look-ahead batch (deepfool).
        step_size: sgd step; None means eps / 10 (L-inf) or eps / 5 (L2).
        overshoot, deepfool_steps: DeepFool's settings (deepfool method).
        seed: the order of the images.

    References: Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial
    perturbations", CVPR 2017 (arXiv:1610.08401); Shafahi et al., "Universal Adversarial
    Training", AAAI 2020 (arXiv:1811.11304).

    Example:
        uap = UniversalPerturbation(eps=0.15)(model, x_train, y_train)
        evaluate_pattern(model, uap, x_test, y_test).fooling_rate
    """

    eps: float
    norm: Norm = "inf"
    method: Method = "sgd"
    max_passes: int = 10
    delta: float = 0.2
    batch_size: int = 64
    step_size: float | None = None
    overshoot: float = 0.02
    deepfool_steps: int = 50
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = True

    def __post_init__(self) -> None:
        owner = "UniversalPerturbation"
        check_range("eps", self.eps, owner=owner, low=0.0, low_open=True,
                    fix="Give the budget in input units, e.g. eps=0.1 for images in [0, 1].")
        check_choice("norm", self.norm, NORMS, owner=owner)
        check_choice("method", self.method, METHODS, owner=owner)
        check_range("max_passes", self.max_passes, owner=owner, low=1, integer=True)
        check_range("delta", self.delta, owner=owner, low=0.0, high=1.0)
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)
        if self.step_size is not None:
            check_range("step_size", self.step_size, owner=owner, low=0.0, low_open=True)
        check_range("overshoot", self.overshoot, owner=owner, low=0.0)
        check_range("deepfool_steps", self.deepfool_steps, owner=owner, low=1, integer=True)

    def __call__(self, model: ModelLike, x: Tensor, y: Tensor, *,
                 progress: Progress | None = None) -> PhysicalPattern:
        owner = "UniversalPerturbation"
        call, (c, h, w) = start_physical(model, x, y, owner=owner)
        m = call.gradient_model
        gen = make_generator(self.seed, call.x.device)
        v = torch.zeros((1, c, h, w), device=call.x.device, dtype=call.x.dtype)
        history: list[float] = []
        with eval_mode(m):
            clean = _labels(m, call.x, self.batch_size * 4)
            passes = 0
            for passes in range(1, self.max_passes + 1):
                order = torch.randperm(call.x.shape[0], generator=gen, device=call.x.device)
                if self.method == "sgd":
                    v = self._sgd_pass(m, call.x[order], call.y[order], v)
                else:
                    v = self._deepfool_pass(m, call.x[order], clean[order], v)
                rate = _fooling_rate(m, call.x, clean, v, self.batch_size * 4)
                history.append(rate)
                if progress is not None:
                    progress(passes, self.max_passes, f"{owner}: pass {passes}, fooling rate {rate:.3f}")
                if rate >= 1.0 - self.delta:
                    break
        if not torch.isfinite(v).all():
            raise InputError(f"{owner}: the perturbation became NaN or inf (the model's gradients "
                             "are not finite). Check the model on inputs in its bounds.")
        fwd, bwd = m.queries.snapshot()
        return PhysicalPattern(
            kind="universal", attack="UniversalPerturbation", params=attack_params(self),
            pattern=v[0], mask=None, target=None, share=1.0, eps=self.eps, norm=self.norm,
            transforms=Transforms.none(), bounds=m.bounds, image_shape=(c, h, w),
            train_success=history[-1] if history else math.nan, history=history, steps=passes,
            queries_forward=fwd - call.queries_start[0], queries_backward=bwd - call.queries_start[1],
            time_s=time.perf_counter() - call.started,
        )

    def _sgd_pass(self, m: TorchModel, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        lo, hi = m.bounds
        step = self.step_size or (self.eps / 10 if self.norm == "inf" else self.eps / 5)
        for s in range(0, x.shape[0], self.batch_size):
            xb, yb = x[s:s + self.batch_size], y[s:s + self.batch_size]
            vv = v.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(m.logits((xb + vv).clamp(lo, hi)), yb,
                                       reduction="none").clamp(max=CE_CLIP).mean()
                (g,) = torch.autograd.grad(loss, vv)
            m.queries.add_backward(xb.shape[0])
            v = project(v + step * normalize_grad(g, self.norm), self.eps, self.norm)
        return v

    def _deepfool_pass(self, m: TorchModel, x: Tensor, clean: Tensor, v: Tensor) -> Tensor:
        lo, hi = m.bounds
        cfg = DeepFool(norm=self.norm, steps=self.deepfool_steps, overshoot=self.overshoot)
        i, n = 0, x.shape[0]
        while i < n:
            # Look ahead for the next image x + v does not fool (same order as one at a time).
            xb = (x[i:i + self.batch_size] + v).clamp(lo, hi)
            scores = m.scores(xb)
            fooled = scores.argmax(1) != clean[i:i + self.batch_size]
            todo = (~fooled).nonzero()
            if todo.numel() == 0:
                i += xb.shape[0]
                continue
            j = int(todo[0, 0])
            k = i + j
            found = deepfool_points(m, xb[j:j + 1], clean[k:k + 1], scores[j:j + 1], cfg)
            v = project(v + (found - xb[j:j + 1]), self.eps, self.norm)
            i = k + 1
        return v
