"""Masked fine-tuning: the base model PatchCleanser needs (Xiang et al., 2022, Section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_bounds
from modelshield._typing import Progress
from modelshield.defenses.certification.patchcleanser import PatchCleanser, mask_set
from modelshield.defenses.training.adversarial import (
    TrainingReport,
    as_trainable,
    check_loop_settings,
    config_fingerprint,
    json_params,
    report_from,
)
from modelshield.defenses.training.engine import (
    LoopConfig,
    OptimizerName,
    Schedule,
    StepOutput,
    TrainData,
    check_train_data,
    train_loop,
)
from modelshield.errors import ConfigError
from modelshield.models import parameter_device

__all__ = ["MaskedTraining", "masked_training"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskedTraining:
    """Settings of masked fine-tuning (see ``masked_training``)."""

    patch_size: float | tuple[int, int]
    masks_per_axis: int
    mask_value: float | None
    epochs: int = 5
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    schedule: Schedule = "cyclic"
    batch_size: int = 128
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    checkpoint_dir: str | Path | None = None

    def __post_init__(self) -> None:
        owner = "masked_training"
        check_loop_settings(owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                            weight_decay=self.weight_decay, schedule=self.schedule,
                            batch_size=self.batch_size, seed=self.seed)
        check_bounds(self.bounds, owner=owner)


def masked_training(
    model: nn.Module,
    train_data: TrainData,
    *,
    cleanser: PatchCleanser,
    epochs: int = 5,
    lr: float = 1e-3,
    optimizer: OptimizerName = "adam",
    weight_decay: float = 0.0,
    schedule: Schedule = "cyclic",
    batch_size: int = 128,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainingReport:
    """Fine-tune model in place on images carrying two random masks of ``cleanser``'s mask set.

    PatchCleanser certifies a point only when every one- and two-mask view of it is classified
    correctly; a model never trained on masked images rarely is (on MNIST a vanilla CNN's
    certified accuracy at a 5% patch is near 0). As the paper does, the base model is trained
    with masks like the ones it will see: each image gets two masks drawn uniformly from the
    mask set (the same mask twice is a one-mask view), filled with the cleanser's mask value.
    A quarter of each batch is left unmasked, for the first round's unmasked prediction.
    Checkpoints, resume and the report work as in ``AdversarialTrainer.fit``.

    Reference: Xiang, Mahloujifar and Mittal, "PatchCleanser: Certifiably Robust Defense against
    Adversarial Patches for Any Image Classifier", USENIX Security 2022 (arXiv:2108.09135).

    Example:
        pc = PatchCleanser(patch_size=0.05)
        masked_training(model, (x_train, y_train), cleanser=pc, epochs=5)
        pc.certify(model.eval(), x_test, y_test).certified_accuracy
    """
    owner = "masked_training"
    if not isinstance(cleanser, PatchCleanser):
        raise ConfigError(f"{owner}: 'cleanser' must be the PatchCleanser you will certify with; got "
                          f"{type(cleanser).__name__}. E.g. cleanser=PatchCleanser(patch_size=0.05).")
    cfg_obj = MaskedTraining(patch_size=cleanser.patch_size, masks_per_axis=cleanser.masks_per_axis,
                             mask_value=cleanser.mask_value, epochs=epochs, lr=lr, optimizer=optimizer,
                             weight_decay=weight_decay, schedule=schedule, batch_size=batch_size,
                             bounds=bounds, seed=seed, checkpoint_dir=checkpoint_dir)
    module = as_trainable(model, owner=owner)
    data = check_train_data(train_data, owner=owner, device=parameter_device(module), bounds=bounds)
    cfg = LoopConfig(owner=owner, epochs=epochs, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, schedule=schedule, batch_size=batch_size, seed=seed)
    lo, hi = bounds
    fill = (lo + hi) / 2.0 if cleanser.mask_value is None else float(cleanser.mask_value)
    if not lo <= fill <= hi:
        raise ConfigError(f"{owner}: the cleanser's mask_value {fill!r} lies outside the bounds "
                          f"[{lo:g}, {hi:g}]. Give a value in the bounds, or None for their midpoint.")
    cache: dict[tuple[int, int], Tensor] = {}

    def masks_for(xb: Tensor) -> Tensor:
        h, w = int(xb.shape[-2]), int(xb.shape[-1])
        if (h, w) not in cache:
            cache[(h, w)] = mask_set(h, w, cleanser.patch_pixels(h, w), cleanser.masks_per_axis)
        return cache[(h, w)].to(xb.device)

    def step(xb: Tensor, yb: Tensor, t: float, gen: torch.Generator) -> StepOutput:
        masks = masks_for(xb)
        n, m = xb.shape[0], masks.shape[0]
        pick = torch.randint(m, (2, n), generator=gen).to(xb.device)
        covered = masks[pick[0]] | masks[pick[1]]  # (n, H, W)
        keep = torch.rand(n, generator=gen).to(xb.device) < 0.25
        covered &= ~keep[:, None, None]
        xm = torch.where(covered[:, None], torch.full_like(xb, fill), xb)
        logits = module(xm)
        correct = int((logits.detach().argmax(1) == yb).sum())
        return StepOutput(F.cross_entropy(logits, yb), correct, correct)

    outcome = train_loop(
        module, data, cfg, step=step, bounds=bounds,
        fingerprint=config_fingerprint(cfg_obj, data, exclude=("checkpoint_dir",)),
        checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
    )
    return report_from("masked", json_params(cfg_obj), outcome)
