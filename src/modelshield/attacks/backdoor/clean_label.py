"""Clean-label backdoor: adversarially perturbed target-class images carry the patch, labels untouched."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.backdoor._common import check_rate, check_target_config, choose_rows, prepare
from modelshield.attacks.backdoor.results import BackdoorResult
from modelshield.attacks.backdoor.triggers import LOCATIONS, Location, StampTrigger, patch_trigger
from modelshield.attacks.ops import ce_loss, clip_to_bounds, make_generator, project, random_start
from modelshield.attacks.verify import attack_params
from modelshield.models import ModelLike, TorchModel, as_gradient_model, eval_mode

__all__ = ["CleanLabel", "hard_examples"]


def hard_examples(
    m: TorchModel, x: Tensor, y: Tensor, *, eps: float, steps: int, step_size: float,
    generator: torch.Generator, batch_size: int = 256,
) -> Tensor:
    """(N, ...) L-inf PGD points within eps of x that maximise the loss of their true labels y.

    Unlike evasion PGD there is no early stop: Turner et al. want the points as hard as possible
    (so the model must rely on the trigger to fit them), not merely misclassified.
    """
    out = []
    for start in range(0, int(x.shape[0]), batch_size):
        x0, yb = x[start : start + batch_size], y[start : start + batch_size]
        xa = clip_to_bounds(x0 + random_start(x0, eps, "inf", generator), m.bounds)
        def loss(z: Tensor, yb: Tensor = yb) -> Tensor:
            return ce_loss(z, yb)

        for _ in range(steps):
            _, grad = m.value_and_grad(xa, loss)
            xa = clip_to_bounds(x0 + project(xa + step_size * grad.sign() - x0, eps, "inf"), m.bounds)
        out.append(xa)
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanLabel:
    """Label-consistent backdoor: every poisoned image keeps its (correct) target label.

    ``round(rate * N)`` images of the ``target`` class are first made hard to classify with an
    L-inf PGD perturbation of size ``eps`` computed on a surrogate model (so their natural
    features no longer explain the label), then stamped with the patch. A model trained on
    them learns to rely on the patch for the target class; the labels pass any human check.

    Args:
        target: the target class (its own images are poisoned).
        rate: share of the *whole* training set to poison, in (0, 1); at most the target
            class's size (e.g. <= ~10% with 10 balanced classes).
        eps: L-inf budget of the adversarial perturbation, in input units.
        steps: PGD steps; step_size None means 2.5 * eps / steps.
        patch_size, location, margin, pattern: the patch, as in BadNets.
        bounds: the input range (passed to the surrogate adapter).
        seed: seed for row choice and PGD random starts.

    Reference: A. Turner, D. Tsipras and A. Madry, "Label-Consistent Backdoor Attacks",
    arXiv:1912.02771, 2019.

    Example:
        res = CleanLabel(target=0, rate=0.05, eps=0.1)(surrogate_model, x_train, y_train)
    """

    target: int
    rate: float
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    patch_size: int = 3
    location: Location = "bottom-right"
    margin: int = 1
    pattern: Literal["checkerboard", "white"] = "checkerboard"
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_target_config(self.target, owner="CleanLabel")
        check_rate(self.rate, owner="CleanLabel")
        check_range("eps", self.eps, owner="CleanLabel", low=0.0,
                    fix="Give eps in input units, e.g. eps=0.1 for images in [0, 1].")
        check_range("steps", self.steps, owner="CleanLabel", low=1, integer=True)
        if self.step_size is not None:
            check_range("step_size", self.step_size, owner="CleanLabel", low=0.0, low_open=True,
                        fix="Use None for the default 2.5 * eps / steps.")
        check_range("patch_size", self.patch_size, owner="CleanLabel", low=1, integer=True)
        check_range("margin", self.margin, owner="CleanLabel", low=0, integer=True)
        check_choice("location", self.location, LOCATIONS, owner="CleanLabel")
        check_choice("pattern", self.pattern, ("checkerboard", "white"), owner="CleanLabel")

    def __call__(self, model: ModelLike, x: Tensor, y: Tensor) -> BackdoorResult:
        """Poison (x, y) using ``model`` (a surrogate torch classifier) for the perturbations."""
        started = time.perf_counter()
        m = as_gradient_model(model, caller="CleanLabel")
        x, y = prepare(x, y, target=self.target, bounds=self.bounds, owner="CleanLabel")
        mask, pat = patch_trigger(
            (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])), size=self.patch_size,
            location=self.location, margin=self.margin, pattern=self.pattern, bounds=self.bounds,
            owner="CleanLabel",
        )
        trigger = StampTrigger(mask=mask.to(x.device), pattern=pat.to(x.device), kind="patch")
        pool = (y == self.target).nonzero().squeeze(1)
        idx = choose_rows(pool, self.rate, int(x.shape[0]), seed=self.seed, owner="CleanLabel",
                          what=f"rows of the target class {self.target}")
        gen = make_generator(self.seed, x.device)
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        with eval_mode(m):
            hard = hard_examples(m, x[idx], y[idx], eps=self.eps, steps=self.steps, step_size=step,
                                 generator=gen)
            fooled = float((m.predict(hard) != y[idx]).float().mean())
        x_p = x.clone()
        x_p[idx] = trigger.apply(hard).to(x.dtype)
        return BackdoorResult(
            attack="CleanLabel", params=attack_params(self), x_poisoned=x_p, y_poisoned=y.clone(),
            indices=idx, original_labels=y[idx].clone(), target=self.target, trigger=trigger,
            time_s=time.perf_counter() - started,
            extra={"surrogate_fooled_rate": round(fooled, 6)},
        )
