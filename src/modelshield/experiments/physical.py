"""A physical-world attack end to end: learn a pattern on a target's training split, test it on the
held-out points under fresh conditions, draw examples, and write the files to print and keep.

``modelshield attack physical`` is this module plus option parsing and the summary it prints; a
script gets the same run with ``learn_and_evaluate`` and ``save_pattern_files``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelshield._io import write_atomic
from modelshield._typing import Progress
from modelshield.attacks.ops import make_generator
from modelshield.attacks.physical import (
    EVAL_SEED,
    PhysicalEvaluation,
    PhysicalPattern,
    UniversalPerturbation,
    evaluate_pattern,
    save_pattern_png,
    save_sheet,
    strength_curve,
)
from modelshield.errors import ConfigError, DataError
from modelshield.models import TorchModel, eval_mode
from modelshield.targets import Target

__all__ = ["EXAMPLES", "STRENGTHS", "PhysicalRun", "learn_and_evaluate", "save_pattern_files", "train_split"]

STRENGTHS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
"""Strengths of the conditions (relative to the training ones) in a run's strength curve."""
EXAMPLES = 8
"""Held-out images drawn clean and with the pattern in the examples sheet."""


@dataclass(frozen=True, slots=True)
class PhysicalRun:
    """One learned pattern and how it fared on held-out images.

    Attributes:
        pattern: the learned patch, sticker or universal perturbation.
        evaluation: held-out evaluation at the training conditions (strength 1).
        curve: evaluations at each of ``STRENGTHS`` (empty for a universal perturbation, which is
            added digitally and has no physical conditions).
        examples: ``(clean, with the pattern, clean labels, labels with the pattern)`` for the first
            ``EXAMPLES`` held-out images, the labels from fresh queries.
        n_train: training images the pattern was learned on.
    """

    pattern: PhysicalPattern
    evaluation: PhysicalEvaluation
    curve: list[PhysicalEvaluation]
    examples: tuple[Tensor, Tensor, Tensor, Tensor]
    n_train: int


def train_split(target: Target, n: int, *, data_dir: Path | None = None, owner: str = "train_split"
                ) -> tuple[Tensor, Tensor]:
    """The first n rows of the training split of the target's data (its test split stays held out):
    the user's data when the target came with some, else the zoo model's data set.

    Raises:
        DataError: the data has no training split.
    """
    if target.data is not None:  # the user's data
        x, y = target.data.x_train, target.data.y_train
    else:  # a zoo model: the training split of its data set
        from modelshield import zoo
        from modelshield.data import load_dataset

        ds = load_dataset(zoo.spec(str(target.model_info["name"])).dataset, root=data_dir)
        x, y = ds.x_train, ds.y_train
    if len(y) == 0:
        raise DataError(f"{owner}: the data {target.data_info.get('name')!r} must have a training split to "
                        "learn the pattern on; got none. Pass data with training and test rows.")
    dev = target.x.device
    return x[:n].float().clone().to(dev), y[:n].long().clone().to(dev)


def _examples(model: TorchModel, pattern: PhysicalPattern, x: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A patch is placed under one draw of its conditions (seeded with EVAL_SEED); a sticker is
    stamped as printed (pixels outside its mask unchanged); a universal perturbation is added."""
    clean = x[:EXAMPLES]
    if pattern.kind == "patch":
        gen = make_generator(EVAL_SEED, clean.device)
        adv = pattern.apply(clean, draws=pattern.transforms.draw(clean.shape[0], gen, device=clean.device,
                                                                  dtype=clean.dtype))
    else:
        adv = pattern.apply(clean)
    with eval_mode(model):
        return clean, adv, model.predict(clean), model.predict(adv)


def learn_and_evaluate(attack: Any, target: Target, train: tuple[Tensor, Tensor], *,
                       target_class: int | None = None, draws: int = 4,
                       progress: Progress | None = None) -> PhysicalRun:
    """Learn ``attack``'s pattern on ``train`` and test it on the target's points.

    Args:
        attack: an ``AdversarialPatch``, ``Sticker`` or ``UniversalPerturbation``.
        target: the white-box image target (its points are the held-out images).
        train: ``(x, y)`` training images (see ``train_split``).
        target_class: the class a patch or sticker sends every input to (None: untargeted).
        draws: fresh conditions drawn per held-out image.
        progress: ``progress(done, total, description)``.

    Raises:
        ConfigError: the target is query-only (a physical pattern needs the model's gradients).
    """
    model = target.adapted()
    if not isinstance(model, TorchModel):
        raise ConfigError(f"learn_and_evaluate: the target must be a white-box image model (PyTorch); got "
                          f"{target.model_info.get('name')!r}, which is query-only. Pass a PyTorch model.")
    if isinstance(attack, UniversalPerturbation):
        pattern = attack(model, *train, progress=progress)
    else:
        pattern = attack(model, *train, target=target_class, progress=progress)
    if progress is not None:
        progress(0, 1, f"held-out evaluation ({int(target.x.shape[0])} images)")
    curve: list[PhysicalEvaluation] = []
    if pattern.kind == "universal":  # digital: no physical conditions to strengthen
        evaluation = evaluate_pattern(model, pattern, target.x, target.y, draws=draws)
    else:
        curve = strength_curve(model, pattern, target.x, target.y, strengths=STRENGTHS, draws=draws)
        evaluation = curve[STRENGTHS.index(1.0)]
    if progress is not None:
        progress(1, 1, "held-out evaluation")
    examples = _examples(model, pattern, target.x)
    return PhysicalRun(pattern, evaluation, curve, examples, int(train[0].shape[0]))


def save_pattern_files(run: PhysicalRun, *, png: Path, tensors: Path, sheet: Path,
                       bounds: tuple[float, float], class_names: Any = None, print_mm: float = 50.0,
                       dpi: int = 300, force: bool = False) -> dict[str, Any]:
    """Write the PNG to print, the pattern as plain tensors (``torch.load(..., weights_only=True)``)
    and the examples sheet; returns ``{"png": save_pattern_png's info, "tensors": {name: shape}}``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    info = save_pattern_png(run.pattern, png, print_mm=print_mm, dpi=dpi)
    saved = {"pattern": run.pattern.pattern.detach().cpu().contiguous()}
    if run.pattern.mask is not None:
        saved["mask"] = run.pattern.mask.detach().cpu().contiguous()
    buf = io.BytesIO()
    torch.save(saved, buf)
    write_atomic(tensors, buf.getvalue(), force=force)
    clean, adv, clean_pred, adv_pred = run.examples
    save_sheet(sheet, clean, adv, clean_pred, adv_pred, bounds=bounds, class_names=class_names)
    return {"png": info, "tensors": {k: list(v.shape) for k, v in saved.items()}}
