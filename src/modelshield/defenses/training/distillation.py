"""Defensive distillation: teacher and student trained at temperature T, student deployed at T = 1."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_bounds, check_range
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
    Progress,
    Schedule,
    StepOutput,
    TrainData,
    check_train_data,
    check_val_data,
    train_loop,
)
from modelshield.defenses.usable import MAX_CLEAN_DROP, Usability, chance_accuracy, check_usable
from modelshield.errors import ConfigError, EvaluationWarning
from modelshield.models import TorchModel, parameter_device

__all__ = ["DefensiveDistillation", "DistillationResult"]

EVAL_ROWS = 2048
"""Rows used to measure clean accuracy after training (validation data, else training data)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DistillationResult:
    """A distilled classifier, how it was trained, and whether it is usable at all.

    Attributes:
        model: the student ``nn.Module`` (eval mode), deployed at T = 1: its raw logits are
            about ``temperature`` times larger than those of an ordinarily trained network, so its
            softmax saturates and cross-entropy gradients vanish. That is gradient masking, not
            robustness; evaluate it with margin / logit-scale-invariant losses (``PGD(loss=
            "margin")``, ``APGDT``, ``CarliniWagnerL2``) and ``check_gradient_masking``.
        teacher: the teacher ``nn.Module`` (eval mode), trained at temperature T.
        temperature: the training temperature T.
        teacher_report, student_report: per-epoch training reports (their losses are the ones
            minimised: T times the cross-entropy at temperature T).
        student_accuracy, teacher_accuracy: clean accuracy (argmax, the same at any T) measured
            after training on ``evaluated_on`` data.
        evaluated_on: ``"validation"`` (``val_data`` given to ``fit``) or ``"training"``.
        usability: the verdict on the student (``check_usable`` against chance and against the
            teacher). A student at chance is a failed defence, never a robust model.
    """

    model: nn.Module
    teacher: nn.Module
    temperature: float
    teacher_report: TrainingReport
    student_report: TrainingReport
    student_accuracy: float
    teacher_accuracy: float
    evaluated_on: Literal["validation", "training"]
    usability: Usability

    @property
    def usable(self) -> bool:
        """False when the student is at chance or far below the teacher (see ``usability``)."""
        return self.usability.usable

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {"temperature": self.temperature, "usable": self.usable,
                "usability": self.usability.to_dict(),
                "student_accuracy": round(self.student_accuracy, 6),
                "teacher_accuracy": round(self.teacher_accuracy, 6), "evaluated_on": self.evaluated_on,
                "teacher": self.teacher_report.to_dict(), "student": self.student_report.to_dict()}


def _eval_batches(data: TrainData, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    """Up to EVAL_ROWS rows of data as (x, y) batches, in order (no randomness)."""
    if isinstance(data, tuple):
        x, y = data
        for start in range(0, min(int(x.shape[0]), EVAL_ROWS), batch_size):
            end = min(start + batch_size, EVAL_ROWS)
            yield x[start:end], y[start:end]
        return
    seen = 0
    for batch in data:
        xb, yb = batch[0], batch[1]
        yield xb, yb
        seen += int(xb.shape[0])
        if seen >= EVAL_ROWS:
            return


def _accuracy(teacher: nn.Module, student: nn.Module, data: TrainData,
              batch_size: int) -> tuple[float, float, Tensor, int]:
    """Clean accuracy of teacher and student (both in eval mode), the labels seen, the class count."""
    t_ok = s_ok = 0
    labels: list[Tensor] = []
    n_classes = 2
    with torch.no_grad():
        for xb, yb in _eval_batches(data, batch_size):
            t_logits, s_logits = teacher(xb), student(xb)
            n_classes = max(n_classes, int(s_logits.shape[1]))
            t_ok += int((t_logits.argmax(1) == yb).sum())
            s_ok += int((s_logits.argmax(1) == yb).sum())
            labels.append(yb.long())
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    n = max(int(y.numel()), 1)
    return t_ok / n, s_ok / n, y, n_classes


@dataclass(frozen=True, kw_only=True, slots=True)
class DefensiveDistillation:
    """Defensive distillation (Papernot et al., 2016), kept as a baseline to break.

    1. Train the teacher with softmax at temperature T: cross-entropy of ``softmax(z / T)``.
    2. Label the training data with the teacher's soft labels ``softmax(z_teacher(x) / T)``.
    3. Train the student at the same T on the soft labels (soft cross-entropy).
    4. Deploy the student at T = 1, i.e. its raw logits.

    Carlini and Wagner (2016, 2017) showed that the apparent robustness comes from step 4: the
    deployed logits are about T times larger, the softmax saturates, and cross-entropy gradients
    underflow to zero, while attacks on the logits (margin loss) or on rescaled logits succeed
    at the same budgets as on an undefended model.

    Training at T. A network trained at temperature T must learn logits about T times larger
    than usual before ``softmax(z / T)`` can be confident, and the logit gradient of the
    cross-entropy at T is ``(softmax(z / T) - target) / T``, T times smaller than usual.
    Papernot et al. pay for this with many steps (tens of epochs over MNIST's 60,000 images);
    a short run with an ordinary learning rate ends where the original recipe here did (T=100,
    5 epochs of Adam at lr 1e-3, batch 128, on the 1,257 digits: 50 steps): the teacher's logits
    stay near their initial scale, its soft labels at T=100 are uniform to three decimals
    (loss ln 10), and the student learns nothing (10% accuracy, chance). Two changes fix it:

    - Both losses are multiplied by T, so the logit gradient is ``softmax(z / T) - target``,
      as in ordinary training, whatever T. Hinton et al. (2015, section 2) rescale soft-target
      gradients by T^2 for the same reason; the right factor here is T, because the student's
      logits are themselves on the T scale (with T^2 the SGD student stayed at chance in our
      runs). Adam is invariant to this factor (up to its epsilon); it is what lets
      ``optimizer="sgd"`` (lr about 1e-2: 98.1% teacher, 96.9% student on digits) train at
      T=100 at all.
    - Defaults sized to give the logits room to grow: Adam at lr 2e-2 (cyclic), batch 32, 10
      epochs per network. Measured on digits (cnn-8x8, 1,257 training images, seeds 0-3, one
      CPU thread, about 2 s for both networks): student test accuracy 98.0-98.7% at T=100
      (teacher 97.8-98.7%; the zoo's digits-cnn: at least 97%), 98.3% at T=20, 98.7% at T=1.
      On MNIST (lenet-28, 10,000 training images, 3 epochs, 1,000 test images): 97.9% student,
      98.1% teacher.

    ``fit`` then measures the student's and the teacher's clean accuracy and judges the student
    with ``check_usable`` (against chance and against the teacher): a student at chance is a
    failed defence, returned with ``usable`` False and an ``EvaluationWarning``, never a model
    whose gradient-attack accuracy means anything.

    Args:
        temperature: the distillation temperature T (> 0; the paper uses up to 100).
        epochs: epochs for each of teacher and student. lr, optimizer, weight_decay, schedule,
            batch_size, seed: as in ``AdversarialTrainer``.
        bounds: the input range (checked on the training data).
        max_drop: the largest clean-accuracy loss of the student against the teacher still
            called usable (see ``check_usable``).

    Reference: Papernot, McDaniel, Wu, Jha and Swami, "Distillation as a Defense to Adversarial
    Perturbations against Deep Neural Networks", IEEE S&P 2016 (arXiv:1511.04508); Hinton, Vinyals
    and Dean, "Distilling the Knowledge in a Neural Network", 2015 (arXiv:1503.02531); Carlini and
    Wagner, "Defensive Distillation is Not Robust to Adversarial Examples", 2016
    (arXiv:1607.04311).

    Example:
        result = DefensiveDistillation().fit(build(), build(), (x, y), val_data=(x_val, y_val))
        result.usable, result.usability.reason
        check_gradient_masking(result.model, x_test, y_test, eps=0.1)
    """

    temperature: float = 100.0
    epochs: int = 10
    lr: float = 2e-2
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    schedule: Schedule = "cyclic"
    batch_size: int = 32
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    max_drop: float = MAX_CLEAN_DROP

    def __post_init__(self) -> None:
        owner = "DefensiveDistillation"
        check_range("temperature", self.temperature, owner=owner, low=0.0, low_open=True,
                    fix="Papernot et al. use T between 1 and 100.")
        check_loop_settings(owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                            weight_decay=self.weight_decay, schedule=self.schedule,
                            batch_size=self.batch_size, seed=self.seed)
        check_bounds(self.bounds, owner=owner)
        check_range("max_drop", self.max_drop, owner=owner, low=0.0, high=1.0,
                    fix="Use e.g. 0.15 (15 points below the teacher).")

    def fit(
        self,
        teacher: nn.Module,
        student: nn.Module,
        train_data: TrainData,
        *,
        val_data: tuple[Tensor, Tensor] | None = None,
        progress: Progress | None = None,
    ) -> DistillationResult:
        """Train teacher and student in place at temperature T; return the student deployed at T = 1.

        Args:
            teacher, student: two ``nn.Module`` classifiers returning logits (usually two
                instances of the same architecture; different objects), on the data's device.
            train_data: ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches (hard labels).
            val_data: optional held-out ``(x, y)`` on which the clean accuracies behind the
                usability verdict are measured; without it, the first 2,048 training rows.
            progress: optional ``progress(done, total, message)`` callback over both phases.

        Returns:
            DistillationResult with both modules in eval mode and the usability verdict.

        Raises:
            ConfigError: teacher and student are the same object.
            InputError: data malformed or on another device.

        Warns:
            EvaluationWarning: the student is not usable (at chance, or far below the teacher).
        """
        owner = "DefensiveDistillation"
        t_mod, s_mod = as_trainable(teacher, owner=owner), as_trainable(student, owner=owner)
        if t_mod is s_mod:
            raise ConfigError(
                f"{owner}: 'student' must be a different module from 'teacher'; got the same object. "
                "Build two instances of the architecture (the student learns from the teacher)."
            )
        device = parameter_device(t_mod)
        data = check_train_data(train_data, owner=owner, device=device, bounds=self.bounds)
        val_data = check_val_data(val_data, owner=owner, device=device, bounds=self.bounds)
        cfg = LoopConfig(owner=owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, schedule=self.schedule,
                         batch_size=self.batch_size, seed=self.seed)
        temp = self.temperature
        per_phase = (len(data) if not isinstance(data, tuple)
                     else -(-int(data[0].shape[0]) // self.batch_size)) * self.epochs
        fingerprint = config_fingerprint(self, data)

        def teacher_step(xb: Tensor, yb: Tensor, t: float, gen: torch.Generator) -> StepOutput:
            logits = t_mod(xb)
            correct = int((logits.detach().argmax(1) == yb).sum())
            # times T: the logit gradient is softmax(z / T) - onehot(y), whatever T (see above)
            return StepOutput(temp * F.cross_entropy(logits / temp, yb), correct, correct)

        t_out = train_loop(t_mod, data, cfg, step=teacher_step, bounds=self.bounds,
                           fingerprint=fingerprint, progress=progress, progress_total=2 * per_phase,
                           phase="teacher ")
        teacher_model = TorchModel(t_mod, bounds=self.bounds)
        t_modes = [(m, m.training) for m in t_mod.modules()]
        t_mod.eval()

        def student_step(xb: Tensor, yb: Tensor, t: float, gen: torch.Generator) -> StepOutput:
            with torch.no_grad():
                soft = F.softmax(teacher_model.logits(xb) / temp, dim=1)
            logits = s_mod(xb)
            # times T: the logit gradient is softmax(z / T) - soft, whatever T (see above)
            loss = temp * -(soft * F.log_softmax(logits / temp, dim=1)).sum(1).mean()
            correct = int((logits.detach().argmax(1) == yb).sum())
            return StepOutput(loss, correct, correct)

        try:
            s_out = train_loop(s_mod, data, cfg, step=student_step, bounds=self.bounds,
                               fingerprint=fingerprint, progress=progress,
                               progress_offset=per_phase, progress_total=2 * per_phase,
                               phase="student ")
        finally:
            for m, flag in t_modes:
                m.training = flag
        params = json_params(self)
        t_mod.eval()
        s_mod.eval()
        evaluated_on: Literal["validation", "training"] = "validation" if val_data is not None else "training"
        t_acc, s_acc, y_seen, n_classes = _accuracy(t_mod, s_mod, val_data if val_data is not None else data,
                                                    self.batch_size)
        usability = check_usable(s_acc, n=max(int(y_seen.numel()), 1), n_classes=n_classes,
                                 chance=chance_accuracy(y_seen, n_classes), reference_accuracy=t_acc,
                                 reference_name="the teacher", max_drop=self.max_drop)
        if not usability.usable:
            warnings.warn(
                f"{owner}: the distilled model is not usable: {usability.reason} on the "
                f"{evaluated_on} data, so this defence failed (T={temp:g}, {self.epochs} epochs, lr "
                f"{self.lr:g}). Train longer or with a larger lr (defaults: 10 epochs, Adam lr 2e-2, "
                "batch 32).", EvaluationWarning, stacklevel=2)
        return DistillationResult(
            model=s_mod, teacher=t_mod, temperature=temp,
            teacher_report=report_from("distillation-teacher", params, t_out),
            student_report=report_from("distillation-student", params, s_out),
            student_accuracy=s_acc, teacher_accuracy=t_acc, evaluated_on=evaluated_on,
            usability=usability,
        )
