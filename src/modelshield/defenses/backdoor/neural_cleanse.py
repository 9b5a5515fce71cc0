"""Neural Cleanse: reverse a minimal trigger per class; flag classes whose trigger is anomalously small."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.backdoor.triggers import StampTrigger, check_image_batch, stamp
from modelshield.attacks.ops import make_generator
from modelshield.attacks.verify import attack_params
from modelshield.defenses.backdoor._common import MAD_CONSTANT, anomaly_indices, check_clean_set
from modelshield.errors import ConfigError, InputError
from modelshield.models import ModelLike, TorchModel, as_gradient_model, eval_mode

__all__ = ["MAD_CONSTANT", "NeuralCleanse", "NeuralCleanseReport", "anomaly_indices", "reverse_trigger"]

def reverse_trigger(
    m: TorchModel,
    x: Tensor,
    target: int,
    *,
    steps: int,
    lr: float,
    init_cost: float,
    batch_size: int,
    asr_threshold: float,
    patience: int,
    cost_multiplier: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, float]:
    """(mask (1, H, W), pattern (C, H, W), ASR) of the smallest-L1 mask found that sends x to target.

    Optimises ``CE(f((1-m) x + m p), target) + cost * |m|_1`` over tanh-parametrised m and p
    with Adam; every ``patience`` steps the cost is raised by ``cost_multiplier`` while the
    ASR stays >= asr_threshold and lowered by ``cost_multiplier ** 1.5`` otherwise (the
    paper's schedule; the cost starts at 0 and is set to init_cost once the ASR is reached).
    """
    lo, hi = m.bounds
    _, c, h, w = x.shape
    mask_t = torch.zeros((1, h, w), device=x.device, dtype=x.dtype).requires_grad_(True)
    pat_t = torch.zeros((c, h, w), device=x.device, dtype=x.dtype).requires_grad_(True)
    opt = torch.optim.Adam([mask_t, pat_t], lr=lr, betas=(0.5, 0.9))
    labels = torch.full((batch_size,), target, dtype=torch.long, device=x.device)
    cost = 0.0
    best: tuple[Tensor, Tensor, float] | None = None
    best_l1 = math.inf
    last: tuple[Tensor, Tensor, float] | None = None
    hits_window, up, down = [], 0, 0
    n = int(x.shape[0])
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator, device=x.device)
        with torch.enable_grad():
            mask = (torch.tanh(mask_t) + 1) / 2
            pattern = lo + (hi - lo) * (torch.tanh(pat_t) + 1) / 2
            logits = m.logits(stamp(x[idx], mask, pattern))
            ce = F.cross_entropy(logits, labels[: idx.numel()])
            l1 = mask.sum()
            loss = ce + cost * l1
            g_m, g_p = torch.autograd.grad(loss, [mask_t, pat_t])
        mask_t.grad, pat_t.grad = g_m, g_p
        opt.step()
        hits_window.append(float((logits.argmax(1) == target).float().mean()))
        l1_now = float(l1.detach())
        if l1_now < best_l1 and hits_window[-1] >= asr_threshold:
            best_l1 = l1_now
            best = (mask.detach().clone(), pattern.detach().clone(), hits_window[-1])
        last = (mask.detach().clone(), pattern.detach().clone(), hits_window[-1])
        if (step + 1) % patience == 0:
            asr = sum(hits_window) / len(hits_window)
            hits_window = []
            if cost == 0.0:
                if asr >= asr_threshold:
                    cost = init_cost
                continue
            if asr >= asr_threshold:
                up, down = up + 1, 0
            else:
                up, down = 0, down + 1
            if up >= 1:
                cost *= cost_multiplier
            elif down >= 1:
                cost /= cost_multiplier**1.5
    mask_t.grad = pat_t.grad = None
    out = best if best is not None else last
    assert out is not None  # steps >= 1
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class NeuralCleanseReport:
    """Per-class reversed triggers, their L1 norms and anomaly indices, and the flagged classes.

    Attributes:
        norms: (C,) L1 norm of each class's reversed mask.
        anomaly_index: (C,) MAD anomaly index of each norm.
        flagged: classes with anomaly index > threshold and a norm below the median (backdoor
            targets). classes: the classes inspected, in order.
        triggers: one StampTrigger per inspected class (``.image`` / ``.mask`` to display).
        asr: (C,) success rate of each reversed trigger on the clean set.
    """

    params: dict[str, Any]
    classes: tuple[int, ...]
    norms: Tensor
    anomaly_index: Tensor
    flagged: tuple[int, ...]
    triggers: tuple[StampTrigger, ...] = field(repr=False)
    asr: Tensor
    threshold: float
    time_s: float

    @property
    def backdoored(self) -> bool:
        return bool(self.flagged)

    @property
    def suspect(self) -> int:
        """The class with the smallest reversed trigger."""
        return self.classes[int(self.norms.argmin())]

    def trigger_for(self, label: int) -> StampTrigger:
        """The reversed trigger of class label."""
        return self.triggers[self.classes.index(label)]

    @property
    def max_anomaly_index(self) -> float:
        """Largest anomaly index among classes whose norm is below the median (0 when none)."""
        low = self.norms < self.norms.median()
        return float(self.anomaly_index[low].max()) if bool(low.any()) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": "NeuralCleanse",
            "flagged": list(self.flagged),
            "suspect": self.suspect,
            "max_anomaly_index": round(self.max_anomaly_index, 6),
            "norms": [round(float(v), 6) for v in self.norms],
            "anomaly_index": [round(float(v), 6) for v in self.anomaly_index],
            "trigger_asr": [round(float(v), 6) for v in self.asr],
            "threshold": self.threshold,
            "time_s": round(self.time_s, 4),
            "params": self.params,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class NeuralCleanse:
    """Neural Cleanse model inspection: needs only the model and a small clean set.

    For every class, optimise a mask and pattern that send clean inputs to that class with the
    smallest mask L1 norm (see ``reverse_trigger``). A backdoor target needs a much smaller
    trigger than the other classes; classes whose norm is below the median with a MAD anomaly
    index above ``threshold`` (2 in the paper) are flagged.

    Args:
        steps: optimisation steps per class (mini-batches of ``batch_size`` clean inputs).
        lr: Adam learning rate (0.1 in the paper).
        init_cost: first weight of the L1 term (1e-3 in the paper).
        cost_multiplier: schedule factor (1.5 in the paper).
        patience: steps between cost updates.
        asr_threshold: success rate a reversed trigger must reach (0.99 in the paper).
        threshold: anomaly-index cut-off (2).
        batch_size: clean inputs per step. min_clean: smallest clean set accepted.
        classes: the classes to inspect; None for all. seed: mini-batch sampling seed.

    Reference: B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng and B. Y. Zhao,
    "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks",
    IEEE S&P 2019.

    Example:
        report = NeuralCleanse(steps=300)(model, x_clean)
        report.flagged, report.triggers[report.suspect].image
    """

    steps: int = 300
    lr: float = 0.1
    init_cost: float = 1e-3
    cost_multiplier: float = 1.5
    patience: int = 10
    asr_threshold: float = 0.99
    threshold: float = 2.0
    batch_size: int = 64
    min_clean: int = 20
    classes: tuple[int, ...] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    def __post_init__(self) -> None:
        o = "NeuralCleanse"
        check_range("steps", self.steps, owner=o, low=1, integer=True)
        check_range("lr", self.lr, owner=o, low=0.0, low_open=True)
        check_range("init_cost", self.init_cost, owner=o, low=0.0, low_open=True)
        check_range("cost_multiplier", self.cost_multiplier, owner=o, low=1.0, low_open=True)
        check_range("patience", self.patience, owner=o, low=1, integer=True)
        check_range("asr_threshold", self.asr_threshold, owner=o, low=0.0, high=1.0, low_open=True)
        check_range("threshold", self.threshold, owner=o, low=0.0)
        check_range("batch_size", self.batch_size, owner=o, low=1, integer=True)
        check_range("min_clean", self.min_clean, owner=o, low=1, integer=True)

    def __call__(self, model: ModelLike, x: Tensor, y: Tensor | None = None) -> NeuralCleanseReport:
        """Inspect model with clean inputs x (N, C, H, W); y is accepted for symmetry and unused."""
        started = time.perf_counter()
        m = as_gradient_model(model, caller="NeuralCleanse") if not isinstance(model, TorchModel) else model
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise InputError(
                "NeuralCleanse: x must be a float tensor of clean images; got "
                f"{type(x).__name__}. Convert with torch.as_tensor(x, dtype=torch.float32)."
            )
        check_image_batch(x, owner="NeuralCleanse")
        check_clean_set(int(x.shape[0]), self.min_clean, owner="NeuralCleanse")
        with eval_mode(m):
            n_classes = m.n_classes if m.n_classes_known is not None else int(m.scores(x[:1]).shape[1])
            classes = tuple(range(n_classes)) if self.classes is None else self.classes
            bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < n_classes)]
            if bad or len(classes) < 3:
                raise ConfigError(
                    f"NeuralCleanse: 'classes' must be at least 3 classes of the model (0..{n_classes - 1}); "
                    f"got {self.classes!r}. The MAD outlier test needs several classes to compare."
                )
            gen = make_generator(self.seed, x.device)
            trig, asr = [], []
            for c in classes:
                mask, pat, a = reverse_trigger(
                    m, x, c, steps=self.steps, lr=self.lr, init_cost=self.init_cost,
                    batch_size=self.batch_size, asr_threshold=self.asr_threshold, patience=self.patience,
                    cost_multiplier=self.cost_multiplier, generator=gen,
                )
                trig.append(StampTrigger(mask=mask, pattern=pat, kind="reversed"))
                asr.append(a)
        norms = torch.tensor([t.l1 for t in trig])
        ai = anomaly_indices(norms)
        med = norms.median()
        flagged = tuple(int(classes[i]) for i in range(len(classes))
                        if float(ai[i]) > self.threshold and float(norms[i]) < float(med))
        return NeuralCleanseReport(
            params=attack_params(self), classes=tuple(int(c) for c in classes), norms=norms,
            anomaly_index=ai, flagged=flagged,
            triggers=tuple(trig), asr=torch.tensor(asr), threshold=self.threshold,
            time_s=time.perf_counter() - started,
        )
