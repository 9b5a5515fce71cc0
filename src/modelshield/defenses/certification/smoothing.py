"""Randomized smoothing: a certified L2 radius per point from Gaussian-noise votes (Cohen et al., 2019)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_bounds, check_inputs, check_labels, check_range
from modelshield._resources import check_memory, tensor_bytes
from modelshield.attacks.ops import make_generator
from modelshield.defenses.mode import require_eval_mode
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
    train_loop,
)
from modelshield.errors import ConfigError
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model, parameter_device

__all__ = [
    "ABSTAIN",
    "CertificationResult",
    "NoiseTraining",
    "RandomizedSmoothing",
    "SmoothedPrediction",
    "binomial_pvalue",
    "certified_accuracy",
    "certified_radius",
    "clopper_pearson_lower",
    "noise_augmented_training",
]

ABSTAIN = -1
"""Label returned where the smoothed classifier abstains."""


def clopper_pearson_lower(successes: Tensor, n: int, alpha: float) -> Tensor:
    """(N,) one-sided (1 - alpha) Clopper-Pearson lower bounds on a binomial proportion.

    ``beta.ppf(alpha, k, n - k + 1)`` (0 when k = 0): the same bound as Cohen et al.'s
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    from scipy.stats import beta  # type: ignore[import-untyped]  # scipy ships no type stubs

    k = successes.detach().cpu().double().numpy()
    low = beta.ppf(alpha, k, n - k + 1)
    low[k == 0] = 0.0
    return torch.as_tensor(low, dtype=torch.float64)


def binomial_pvalue(k: Tensor, n: Tensor) -> Tensor:
    """(N,) two-sided binomial-test p-values of k successes in n trials against p = 0.5."""
    from scipy.stats import binomtest

    out = [binomtest(int(a), int(b), 0.5).pvalue if int(b) > 0 else 1.0
           for a, b in zip(k.tolist(), n.tolist(), strict=True)]
    return torch.tensor(out, dtype=torch.float64)


def certified_radius(p_lower: Tensor, sigma: float) -> Tensor:
    """(N,) certified L2 radius sigma * Phi^-1(p_lower); 0 where p_lower <= 0.5 (abstain)."""
    from scipy.stats import norm

    p = p_lower.detach().cpu().double().numpy()
    r = sigma * norm.ppf(p)
    r[p <= 0.5] = 0.0
    return torch.as_tensor(r, dtype=torch.float64)


class SmoothedPrediction(NamedTuple):
    """Output of ``RandomizedSmoothing.predict``: unpacks as ``labels, abstain``."""

    labels: Tensor
    """(N,) int64 smoothed labels, ``ABSTAIN`` (-1) where abstained."""
    abstain: Tensor
    """(N,) bool."""


@dataclass(frozen=True, slots=True)
class CertificationResult:
    """Per-point output of CERTIFY.

    Attributes:
        labels: (N,) int64 predicted class ``c_A`` (``ABSTAIN`` where abstained).
        y: (N,) true labels, or None when not given.
        p_lower: (N,) float64 lower confidence bound on P(f(x + noise) = c_A).
        radius: (N,) float64 certified L2 radius ``sigma * Phi^-1(p_lower)`` (0 when abstained).
        abstain: (N,) bool: p_lower < 0.5.
        counts: (N,) int64 votes for c_A among the n estimation samples.
        sigma, n0, n, alpha: the settings used. time_s: wall time.
    """

    labels: Tensor
    y: Tensor | None
    p_lower: Tensor
    radius: Tensor
    abstain: Tensor
    counts: Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    time_s: float

    @property
    def correct(self) -> Tensor:
        """(N,) bool: not abstained and labels == y (requires y)."""
        if self.y is None:
            raise ConfigError("CertificationResult: 'y' must be given to certify() to score "
                              "accuracy; got None. Pass the true labels.")
        out: Tensor = (~self.abstain) & (self.labels == self.y)
        return out

    def certified_accuracy(self, radii: Sequence[float]) -> list[float]:
        """Share of points correct with certified radius >= r, for each r in radii."""
        return certified_accuracy(self, radii)

    def to_dict(self, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)) -> dict[str, Any]:
        """JSON-safe summary (certified accuracy at radii when y is known)."""
        out: dict[str, Any] = {
            "sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha,
            "points": int(self.labels.shape[0]),
            "abstain_rate": float(self.abstain.double().mean()),
            "mean_radius": float(self.radius.mean()), "time_s": round(self.time_s, 4),
        }
        if self.y is not None:
            out["certified_accuracy"] = {f"{r:g}": round(a, 6)
                                         for r, a in zip(radii, self.certified_accuracy(radii),
                                                         strict=True)}
        return out


def certified_accuracy(result: CertificationResult, radii: Sequence[float]) -> list[float]:
    """Certified accuracy at each radius: correct, not abstained, and radius >= r.

    Raises:
        ConfigError: result has no labels y, or a radius is negative.
    """
    correct = result.correct
    out = []
    for r in radii:
        check_range("radius", r, owner="certified_accuracy", low=0.0)
        out.append(float((correct & (result.radius >= r)).double().mean()))
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class RandomizedSmoothing:
    """The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c), with certificates.

    ``predict`` is Cohen et al.'s PREDICT: n samples, the two most-voted classes, and a two-sided
    binomial test at level alpha; it abstains when the test does not reject a tie (so a wrong
    answer has probability at most alpha). ``certify`` is CERTIFY: n0 samples pick c_A, n fresh
    samples give a one-sided Clopper-Pearson lower bound p_lower on P(f(x + noise) = c_A); the
    radius is sigma * Phi^-1(p_lower), and it abstains when p_lower < 0.5. Noise is added
    without clipping to the bounds, as in the paper; the base classifier should be trained
    with the same noise (``noise_augmented_training``).

    Args:
        sigma: noise standard deviation in input units (> 0).
        n0: selection samples per point (CERTIFY). n: estimation samples per point.
        alpha: failure probability of the test / bound (0 < alpha < 1).
        batch_size: noisy copies evaluated per forward pass.
        seed: seed of the noise; None draws fresh entropy (not reproducible).

    Reference: Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized
    Smoothing", ICML 2019 (arXiv:1902.02918).

    Example:
        result = RandomizedSmoothing(sigma=0.25, n=10_000).certify(model, x, y)
        result.certified_accuracy([0.0, 0.5, 1.0])
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int | None = 0

    def __post_init__(self) -> None:
        owner = "RandomizedSmoothing"
        check_range("sigma", self.sigma, owner=owner, low=0.0, low_open=True,
                    fix="Give the noise std in input units, e.g. sigma=0.25 for images in [0, 1].")
        check_range("n0", self.n0, owner=owner, low=1, integer=True)
        check_range("n", self.n, owner=owner, low=1, integer=True,
                    fix="Cohen et al. use n=100000; smaller n gives smaller radii.")
        check_range("alpha", self.alpha, owner=owner, low=0.0, high=1.0, low_open=True,
                    fix="Use e.g. alpha=0.001.")
        if self.alpha >= 1.0:
            check_range("alpha", self.alpha, owner=owner, low=0.0, high=0.999,
                        fix="Use e.g. alpha=0.001.")
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)

    def _model(self, model: ModelLike, x: object, owner: str) -> tuple[TorchModel | CallableModel, Tensor]:
        require_eval_mode(model, owner=owner)
        m = as_model(model)
        if isinstance(m, TorchModel) and isinstance(x, Tensor):
            m.check_device(x)  # before reading values: a tensor on another device cannot be read
        x_t = check_inputs(x, bounds=m.bounds, owner=owner)
        with torch.no_grad():
            m.predict(x_t[:1])  # a counted probe that fixes the number of classes
        return m, x_t

    def _counts(self, m: TorchModel | CallableModel, x: Tensor, num: int,
                gen: torch.Generator) -> Tensor:
        """(N, C) int64 votes of the base classifier over num noisy copies of each row."""
        c = m.n_classes
        b_max = min(self.batch_size, num)
        check_memory("RandomizedSmoothing", f"a batch of noisy copies ({b_max} = min(batch_size, samples) "
                     f"rows of shape {tuple(x.shape[1:])}, {x.element_size()}-byte values, 3 copies: the "
                     "noise, the noisy inputs and the first layer's input; the model's activations come "
                     "on top)", tensor_bytes(b_max, x.shape[1:], itemsize=x.element_size(), copies=3),
                     fix="Lower batch_size (CLI: --batch-size).")
        rows = []
        with torch.no_grad():
            for xi in x:
                votes = torch.zeros(c, dtype=torch.long, device=x.device)
                left = num
                while left > 0:
                    b = min(self.batch_size, left)
                    noise = torch.randn((b, *xi.shape), generator=gen, device=x.device, dtype=x.dtype)
                    votes += torch.bincount(m.predict(xi.unsqueeze(0) + self.sigma * noise),
                                            minlength=c)[:c]
                    left -= b
                rows.append(votes)
        return torch.stack(rows)

    def predict(self, model: ModelLike, x: Tensor) -> SmoothedPrediction:
        """PREDICT: smoothed labels with abstention (``ABSTAIN`` where the vote is not significant).

        Args:
            model: the base classifier (an ``nn.Module`` in eval mode, or any Model).
            x: (N, ...) inputs within the model's bounds.

        Returns:
            ``(labels, abstain)``.

        Raises:
            InputError: model in training mode, x malformed or on another device.
        """
        m, x_t = self._model(model, x, "RandomizedSmoothing.predict")
        gen = make_generator(self.seed, x_t.device)
        counts = self._counts(m, x_t, self.n, gen)
        top2 = counts.topk(min(2, counts.shape[1]), dim=1)
        n_a = top2.values[:, 0]
        n_b = top2.values[:, 1] if counts.shape[1] > 1 else torch.zeros_like(n_a)
        pval = binomial_pvalue(n_a, n_a + n_b)
        abstain = (pval > self.alpha).to(x_t.device)
        labels = torch.where(abstain, torch.full_like(n_a, ABSTAIN), top2.indices[:, 0])
        return SmoothedPrediction(labels, abstain)

    def certify(self, model: ModelLike, x: Tensor, y: Tensor | None = None) -> CertificationResult:
        """CERTIFY: per point the class c_A, the lower bound p_lower and the certified L2 radius.

        Args:
            model: the base classifier (an ``nn.Module`` in eval mode, or any Model).
            x: (N, ...) inputs within the model's bounds.
            y: optional (N,) true labels (needed for ``certified_accuracy``).

        Returns:
            The CertificationResult.

        Raises:
            InputError: model in training mode, x or y malformed, or on another device.
        """
        started = time.perf_counter()
        owner = "RandomizedSmoothing.certify"
        m, x_t = self._model(model, x, owner)
        y_t = None
        if y is not None:
            y_t = check_labels(y, n=x_t.shape[0], n_classes=m.n_classes, owner=owner,
                               device=x_t.device)
        gen = make_generator(self.seed, x_t.device)
        c_a = self._counts(m, x_t, self.n0, gen).argmax(1)
        n_a = self._counts(m, x_t, self.n, gen).gather(1, c_a[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(n_a, self.n, self.alpha)
        abstain = (p_lower < 0.5).to(x_t.device)
        radius = certified_radius(p_lower, self.sigma)
        radius[abstain.cpu()] = 0.0
        labels = torch.where(abstain, torch.full_like(c_a, ABSTAIN), c_a)
        return CertificationResult(
            labels=labels, y=y_t, p_lower=p_lower, radius=radius, abstain=abstain, counts=n_a,
            sigma=self.sigma, n0=self.n0, n=self.n, alpha=self.alpha,
            time_s=time.perf_counter() - started,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class NoiseTraining:
    """Settings of Gaussian data-augmentation training (see ``noise_augmented_training``)."""

    sigma: float = 0.25
    epochs: int = 10
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    schedule: Schedule = "cyclic"
    batch_size: int = 128
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    checkpoint_dir: str | Path | None = None

    def __post_init__(self) -> None:
        owner = "noise_augmented_training"
        check_range("sigma", self.sigma, owner=owner, low=0.0, low_open=True,
                    fix="Train with the sigma you will certify with, e.g. sigma=0.25.")
        check_loop_settings(owner, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                            weight_decay=self.weight_decay, schedule=self.schedule,
                            batch_size=self.batch_size, seed=self.seed)
        check_bounds(self.bounds, owner=owner)


def noise_augmented_training(
    model: nn.Module,
    train_data: TrainData,
    *,
    sigma: float = 0.25,
    epochs: int = 10,
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
    """Train model in place on inputs with Gaussian noise N(0, sigma^2 I) (the smoothing base model).

    Each batch is replaced by x + sigma * noise (not clipped, matching ``RandomizedSmoothing``),
    with noise from a private generator seeded with ``seed``. The report's
    ``train_adv_accuracy`` is the accuracy on the noisy batches. Checkpoints and resume work as
    in ``AdversarialTrainer.fit``.

    Args:
        model: an ``nn.Module`` returning logits, on the data's device.
        train_data: ``(x, y)`` tensors or a DataLoader of ``(x, y)`` batches.
        sigma: noise std in input units; use the sigma you will certify with.
        epochs, lr, optimizer, weight_decay, schedule, batch_size, seed: as in
            ``AdversarialTrainer``. bounds: the input range (checked on the data).
        checkpoint_dir, resume, progress: as in ``AdversarialTrainer.fit``.

    Reference: Cohen, Rosenfeld and Kolter, ICML 2019 (arXiv:1902.02918), Section 3.

    Example:
        noise_augmented_training(model, (x, y), sigma=0.5, epochs=20)
    """
    cfg_obj = NoiseTraining(sigma=sigma, epochs=epochs, lr=lr, optimizer=optimizer,
                            weight_decay=weight_decay, schedule=schedule, batch_size=batch_size,
                            bounds=bounds, seed=seed, checkpoint_dir=checkpoint_dir)
    owner = "noise_augmented_training"
    module = as_trainable(model, owner=owner)
    data = check_train_data(train_data, owner=owner, device=parameter_device(module), bounds=bounds)
    cfg = LoopConfig(owner=owner, epochs=epochs, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, schedule=schedule, batch_size=batch_size, seed=seed)

    def step(xb: Tensor, yb: Tensor, t: float, gen: torch.Generator) -> StepOutput:
        noise = torch.randn(xb.shape, generator=gen, dtype=xb.dtype).to(xb.device)
        logits = module(xb + sigma * noise)
        correct = int((logits.detach().argmax(1) == yb).sum())
        return StepOutput(F.cross_entropy(logits, yb), correct, correct)

    outcome = train_loop(
        module, data, cfg, step=step, bounds=bounds,
        fingerprint=config_fingerprint(cfg_obj, data, exclude=("checkpoint_dir",)),
        checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
    )
    return report_from("noise", json_params(cfg_obj), outcome)

