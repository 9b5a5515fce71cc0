"""Defensive distillation: teacher and student trained at temperature T, student deployed at T = 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_bounds, check_range
from modelshield.defenses._mode import module_device
from modelshield.defenses.training._engine import (
    LoopConfig,
    OptimizerName,
    Progress,
    Schedule,
    StepOutput,
    TrainData,
    check_train_data,
    train_loop,
)
from modelshield.defenses.training.adversarial import (
    TrainingReport,
    as_trainable,
    check_loop_settings,
    config_fingerprint,
    json_params,
    report_from,
)
from modelshield.errors import ConfigError
from modelshield.models import TorchModel

__all__ = ["DefensiveDistillation", "DistillationResult"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DistillationResult:
    """A distilled classifier and how it was trained.

    Attributes:
        model: the student ``nn.Module`` (eval mode), deployed at T = 1: its raw logits are
            about ``temperature`` times larger than those of an ordinarily trained network, so its
            softmax saturates and cross-entropy gradients vanish. That is gradient masking, not
            robustness; evaluate it with margin / logit-scale-invariant losses (``PGD(loss=
            "margin")``, ``APGDT``, ``CarliniWagnerL2``) and ``check_gradient_masking``.
        teacher: the teacher ``nn.Module`` (eval mode), trained at temperature T.
        temperature: the training temperature T.
        teacher_report, student_report: per-epoch training reports.
    """

    model: nn.Module
    teacher: nn.Module
    temperature: float
    teacher_report: TrainingReport
    student_report: TrainingReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {"temperature": self.temperature, "teacher": self.teacher_report.to_dict(),
                "student": self.student_report.to_dict()}


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

    Args:
        temperature: the distillation temperature T (> 0; the paper uses up to 100).
        epochs: epochs for each of teacher and student. lr, optimizer, weight_decay, schedule,
            batch_size, seed: as in ``AdversarialTrainer``.
        bounds: the input range (checked on the training data).

    Reference: Papernot, McDaniel, Wu, Jha and Swami, "Distillation as a Defense to Adversarial
    Perturbations against Deep Neural Networks", IEEE S&P 2016 (arXiv:1511.04508); Carlini and
    Wagner, "Defensive Distillation is Not Robust to Adversarial Examples", 2016
    (arXiv:1607.04311).

    Example:
        result = DefensiveDistillation(temperature=100, epochs=10).fit(build(), build(), (x, y))
        check_gradient_masking(result.model, x_test, y_test, eps=0.1)
    """

    temperature: float = 100.0
    epochs: int = 10
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    schedule: Schedule = "cyclic"
    batch_size: int = 128
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "DefensiveDistillation"
        check_range("temperature", self.temperature, owner=owner, low=0.0, low_open=True,
                    fix="Papernot et al. use T between 1 and 100.")
        check_loop_settings(owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                            weight_decay=self.weight_decay, schedule=self.schedule,
                            batch_size=self.batch_size, seed=self.seed)
        check_bounds(self.bounds, owner=owner)

    def fit(
        self,
        teacher: nn.Module,
        student: nn.Module,
        train_data: TrainData,
        *,
        progress: Progress | None = None,
    ) -> DistillationResult:
        """Train teacher and student in place at temperature T; return the student deployed at T = 1.

        Args:
            teacher, student: two ``nn.Module`` classifiers returning logits (usually two
                instances of the same architecture; different objects), on the data's device.
            train_data: ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches (hard labels).
            progress: optional ``progress(done, total, message)`` callback over both phases.

        Returns:
            DistillationResult with both modules in eval mode.

        Raises:
            ConfigError: teacher and student are the same object.
            InputError: data malformed or on another device.
        """
        owner = "DefensiveDistillation"
        t_mod, s_mod = as_trainable(teacher, owner=owner), as_trainable(student, owner=owner)
        if t_mod is s_mod:
            raise ConfigError(
                f"{owner}: 'student' must be a different module from 'teacher'; got the same object. "
                "Build two instances of the architecture (the student learns from the teacher)."
            )
        data = check_train_data(train_data, owner=owner, device=module_device(t_mod),
                                bounds=self.bounds)
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
            return StepOutput(F.cross_entropy(logits / temp, yb), correct, correct)

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
            loss = -(soft * F.log_softmax(logits / temp, dim=1)).sum(1).mean()
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
        return DistillationResult(
            model=s_mod, teacher=t_mod, temperature=temp,
            teacher_report=report_from("distillation-teacher", params, t_out),
            student_report=report_from("distillation-student", params, s_out),
        )
