"""Feature squeezing (Xu, Evans and Qi, 2018): flag inputs whose prediction moves when squeezed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_bounds, check_inputs, check_labels, check_range
from modelshield._stats import calibrate_threshold
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.pgd import PGD
from modelshield.attacks.results import EvasionResult
from modelshield.defenses.mode import require_eval_mode
from modelshield.errors import ConfigError, InputError, NotFittedError
from modelshield.models import ModelLike, TorchModel, as_gradient_model

__all__ = [
    "DetectorEvaluation",
    "FeatureSqueezing",
    "adaptive_attack",
    "median_filter",
    "reduce_bit_depth",
]


def reduce_bit_depth(x: Tensor, bits: int, bounds: tuple[float, float], *,
                     straight_through: bool = False) -> Tensor:
    """x quantised to 2**bits levels across bounds (same shape).

    With ``straight_through`` the forward value is the same but the backward pass is the
    identity (BPDA, Athalye et al. 2018), so attacks get a usable gradient.
    """
    lo, hi = bounds
    levels = 2**bits - 1
    q: Tensor = torch.round((x - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo
    return x + (q - x).detach() if straight_through else q


def median_filter(x: Tensor, size: int) -> Tensor:
    """Per-channel size x size median filter of images (N, C, H, W) or (N, H, W); shape kept.

    Matches ``scipy.ndimage.median_filter(size=size)`` up to the border: the window covers
    rows i - size // 2 .. i + (size - 1) // 2 and, for an even window, takes the upper of the two
    middle values (scipy's rank size * size // 2); borders repeat the edge pixel. Differentiable
    (the gradient flows to the selected pixel).
    """
    squeeze = x.dim() == 3
    img = x.unsqueeze(1) if squeeze else x
    n, c, h, w = img.shape
    before, after = size // 2, (size - 1) // 2
    padded = F.pad(img.reshape(n * c, 1, h, w), (before, after, before, after), mode="replicate")
    patches = F.unfold(padded, kernel_size=size)  # (N*C, size*size, H*W)
    med = patches.sort(dim=1).values[:, (size * size) // 2, :]
    out = med.reshape(n, c, h, w)
    return out.squeeze(1) if squeeze else out


@dataclass(frozen=True, kw_only=True, slots=True)
class DetectorEvaluation:
    """How a detector fares against one attack.

    Attributes:
        attack: a name for the attack (e.g. ``"PGD"``, ``"adaptive"``).
        x_adv: (N, ...) adversarial inputs.
        eligible: (N,) bool: clean input correctly classified and not flagged.
        misclassified: (N,) bool: the model misclassifies x_adv.
        detected: (N,) bool: the detector flags x_adv.
        threshold: the detector threshold used. fpr_target: its calibrated false-positive rate.
        clean_flagged: share of the clean inputs flagged (a false-positive rate).
    """

    attack: str
    x_adv: Tensor
    eligible: Tensor
    misclassified: Tensor
    detected: Tensor
    threshold: float
    fpr_target: float
    clean_flagged: float

    @property
    def detection_rate(self) -> float:
        """Share of the successful adversarial inputs (eligible and misclassified) that are flagged."""
        sel = self.eligible & self.misclassified
        return float(self.detected[sel].double().mean()) if bool(sel.any()) else math.nan

    @property
    def evasion_rate(self) -> float:
        """Share of eligible points whose x_adv is misclassified *and* not flagged (attack wins)."""
        if not bool(self.eligible.any()):
            return math.nan
        win = self.misclassified & ~self.detected
        return float(win[self.eligible].double().mean())

    @property
    def attack_success_rate(self) -> float:
        """Share of eligible points misclassified, ignoring the detector."""
        if not bool(self.eligible.any()):
            return math.nan
        return float(self.misclassified[self.eligible].double().mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        def r(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)
        return {"attack": self.attack, "eligible": int(self.eligible.sum()),
                "attack_success_rate": r(self.attack_success_rate),
                "detection_rate": r(self.detection_rate), "evasion_rate": r(self.evasion_rate),
                "threshold": self.threshold, "fpr_target": self.fpr_target,
                "clean_flagged": r(self.clean_flagged)}


@dataclass(kw_only=True)
class FeatureSqueezing:
    """Feature-squeezing detector: L1 distance between softmax outputs before and after squeezing.

    ``score(x)`` is the largest, over the squeezers (bit-depth reductions and median filters),
    of ``||softmax(f(x)) - softmax(f(squeeze(x)))||_1`` (in [0, 2]). ``fit`` sets
    ``threshold_`` to the (1 - fpr) quantile of the clean scores, so about a share ``fpr`` of
    clean inputs is flagged; ``predict`` flags scores above the threshold. Median filters need
    images (N, C, H, W) or (N, H, W); use ``median_sizes=()`` for flat inputs.

    Args:
        bit_depths: bit depths to squeeze to (Xu et al.: 1 bit for MNIST, 4-5 for colour images).
        median_sizes: median-filter window sizes (Xu et al.: 2 for MNIST, 2-3 for colour images).
        fpr: target false-positive rate on clean data, in (0, 1).
        bounds: the input range of the model.

    Reference: Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks", NDSS 2018 (arXiv:1704.01155).

    Example:
        det = FeatureSqueezing(bit_depths=(1,), median_sizes=(2,), fpr=0.05).fit(model, x_clean)
        det.predict(model, x_adv)
    """

    bit_depths: tuple[int, ...] = (1,)
    median_sizes: tuple[int, ...] = (2,)
    fpr: float = 0.05
    bounds: tuple[float, float] = (0.0, 1.0)
    threshold_: float = field(init=False)
    fpr_: float = field(init=False)
    n_fit_: int = field(init=False)

    def __post_init__(self) -> None:
        owner = "FeatureSqueezing"
        if not isinstance(self.bit_depths, tuple) or not isinstance(self.median_sizes, tuple):
            raise ConfigError(f"{owner}: 'bit_depths' and 'median_sizes' must be tuples; got "
                              f"{self.bit_depths!r}, {self.median_sizes!r}. Pass e.g. (1,) and (2,).")
        if not self.bit_depths and not self.median_sizes:
            raise ConfigError(f"{owner}: at least one squeezer must be set; got bit_depths=() and "
                              "median_sizes=(). Use e.g. bit_depths=(1,), median_sizes=(2,).")
        for b in self.bit_depths:
            check_range("bit_depths", b, owner=owner, low=1, high=16, integer=True)
        for s in self.median_sizes:
            check_range("median_sizes", s, owner=owner, low=2, high=15, integer=True)
        check_range("fpr", self.fpr, owner=owner, low=0.0, high=1.0, low_open=True,
                    fix="Give the clean false-positive rate to allow, e.g. fpr=0.05.")
        if self.fpr >= 1.0:
            raise ConfigError(f"{owner}: 'fpr' must be a number in (0, 1); got {self.fpr!r}. "
                              "Give the clean false-positive rate to allow, e.g. fpr=0.05.")
        check_bounds(self.bounds, owner=owner)

    # -- squeezing ---------------------------------------------------------------------------
    def squeeze(self, x: Tensor, *, straight_through: bool = False) -> list[Tensor]:
        """The squeezed versions of x, one per squeezer (bit depths first, then medians)."""
        if self.median_sizes and x.dim() not in (3, 4):
            raise InputError(
                f"FeatureSqueezing: median filters need images (N, C, H, W) or (N, H, W); got x of "
                f"shape {tuple(x.shape)}. Pass image-shaped inputs (flatten inside the model) or use "
                "median_sizes=()."
            )
        out = [reduce_bit_depth(x, b, self.bounds, straight_through=straight_through)
               for b in self.bit_depths]
        out += [median_filter(x, s) for s in self.median_sizes]
        return out

    def _scores(self, logits_fn: Any, x: Tensor, *, straight_through: bool = False) -> Tensor:
        """(N,) max L1 distance between softmax(f(x)) and softmax(f(squeeze(x)))."""
        p = F.softmax(logits_fn(x), dim=1)
        dists = [(p - F.softmax(logits_fn(xs), dim=1)).abs().sum(1)
                 for xs in self.squeeze(x, straight_through=straight_through)]
        out: Tensor = torch.stack(dists, dim=1).amax(dim=1)
        return out

    def _prepare(self, model: ModelLike, x: object, owner: str) -> tuple[TorchModel, Tensor]:
        require_eval_mode(model, owner=owner)
        m = as_gradient_model(model, caller=owner)
        if isinstance(x, Tensor):
            m.check_device(x)
        return m, check_inputs(x, bounds=self.bounds, owner=owner)

    # -- sklearn verbs ----------------------------------------------------------------------
    def fit(self, model: ModelLike, x_clean: Tensor) -> FeatureSqueezing:
        """Set ``threshold_`` so that a share ``fpr`` of x_clean is flagged; return self.

        Args:
            model: an ``nn.Module`` (eval mode) returning logits.
            x_clean: (N, ...) clean inputs within bounds (held out from the evaluation set).

        Raises:
            InputError: model in training mode; x_clean malformed, on another device, or too
                few rows for the rate (need N >= 1 / fpr).
        """
        m, x = self._prepare(model, x_clean, "FeatureSqueezing.fit")
        if x.shape[0] < math.ceil(1.0 / self.fpr):
            raise InputError(
                f"FeatureSqueezing.fit: x_clean must have at least {math.ceil(1 / self.fpr)} rows "
                f"for fpr={self.fpr}; got {x.shape[0]}. Pass more clean inputs."
            )
        with torch.no_grad():
            s = self._scores(m.logits, x)
        self.threshold_ = calibrate_threshold(s, self.fpr)  # "> threshold" flags at most fpr of x
        self.fpr_ = float((s > self.threshold_).double().mean())
        self.n_fit_ = int(x.shape[0])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "This FeatureSqueezing instance is not fitted yet. Call 'fit' with the model and "
                "clean inputs before using this detector."
            )

    def score(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) detector scores (max L1 distance, in [0, 2]); higher is more suspicious."""
        self._check_fitted()
        m, x_t = self._prepare(model, x, "FeatureSqueezing.score")
        with torch.no_grad():
            return self._scores(m.logits, x_t)

    def predict(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) bool: True where x is flagged as adversarial (score > threshold_)."""
        out: Tensor = self.score(model, x) > self.threshold_
        return out

    def evaluate(self, model: ModelLike, x: Tensor, y: Tensor, x_adv: Tensor | EvasionResult, *,
                 attack: str | None = None) -> DetectorEvaluation:
        """Detection and evasion rates of an attack's outputs (e.g. a plain PGD result).

        Args:
            model: the classifier the detector protects (eval mode).
            x, y: (N, ...) clean inputs and (N,) labels.
            x_adv: (N, ...) adversarial inputs, or the EvasionResult holding them.
            attack: a name for the report (default: the result's attack name or "attack").
        """
        self._check_fitted()
        name = attack or (x_adv.attack if isinstance(x_adv, EvasionResult) else "attack")
        xa = x_adv.x_adv if isinstance(x_adv, EvasionResult) else x_adv
        m, x_t = self._prepare(model, x, "FeatureSqueezing.evaluate")
        y_t = check_labels(y, n=x_t.shape[0], n_classes=m.n_classes, owner="FeatureSqueezing.evaluate",
                           device=x_t.device)
        _, xa_t = self._prepare(model, xa, "FeatureSqueezing.evaluate")
        if xa_t.shape != x_t.shape:
            raise InputError(f"FeatureSqueezing.evaluate: x_adv must have the shape of x "
                             f"{tuple(x_t.shape)}; got {tuple(xa_t.shape)}. Pass the attack's outputs.")
        with torch.no_grad():
            clean_flag = self._scores(m.logits, x_t) > self.threshold_
            clean_ok = m.logits(x_t).argmax(1) == y_t
            adv_flag = self._scores(m.logits, xa_t) > self.threshold_
            mis = m.logits(xa_t).argmax(1) != y_t
        return DetectorEvaluation(
            attack=name, x_adv=xa_t, eligible=clean_ok & ~clean_flag, misclassified=mis,
            detected=adv_flag, threshold=self.threshold_, fpr_target=self.fpr,
            clean_flagged=float(clean_flag.double().mean()),
        )


class _DetectorAware(nn.Module):
    """Logits of the model plus a 'detected' logit: max_j z_j + weight * (score - threshold).

    argmax is a real class exactly when the detector's score is below its threshold (ties
    aside), so a targeted attack on this module that reaches class t has found an input the model
    calls t and the detector lets through (Carlini and Wagner, 2017). Bit-depth reduction is
    straight-through in the backward pass (BPDA).
    """

    def __init__(self, model: nn.Module, detector: FeatureSqueezing, weight: float) -> None:
        super().__init__()
        self.model = model
        self.detector = detector
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.model(x)
        s = self.detector._scores(self.model, x, straight_through=True)
        det = z.amax(dim=1) + self.weight * (s - self.detector.threshold_)
        return torch.cat([z, det[:, None]], dim=1)


def adaptive_attack(
    detector: FeatureSqueezing,
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "inf",
    steps: int = 100,
    n_target_classes: int = 3,
    detector_weight: float = 10.0,
    seed: int | None = 0,
) -> DetectorEvaluation:
    """A PGD attack that knows the feature-squeezing detector (white-box, adaptive).

    The model and the detector are combined into one classifier with an extra "detected" class
    (``max_j z_j + detector_weight * (score - threshold)``), and ``PGD`` (margin loss, targeted)
    is run on it towards each point's ``n_target_classes`` most likely wrong classes in turn;
    reaching target t means the model says t and the detector stays below its threshold. The
    quantisation is differentiated straight-through (BPDA) and the median filter through the
    selected pixels. Success is re-checked on the real model and detector (``evaluate``).

    Args:
        detector: a fitted FeatureSqueezing.
        model: the protected classifier (an ``nn.Module`` in eval mode).
        x, y: (N, ...) clean inputs and (N,) labels.
        eps, norm: the perturbation budget.
        steps: PGD steps per target class.
        n_target_classes: wrong classes tried per point (most likely first).
        detector_weight: scale of the detector term against the logits.
        seed: seed of PGD's random starts.

    Reference: Carlini and Wagner, "Adversarial Examples Are Not Easily Detected", AISec 2017
    (arXiv:1705.07263); Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of
    Security", ICML 2018 (arXiv:1802.00420).

    Example:
        plain = det.evaluate(model, x, y, PGD(eps=0.1)(model, x, y))
        adaptive = adaptive_attack(det, model, x, y, eps=0.1)
        plain.detection_rate, adaptive.detection_rate
    """
    owner = "adaptive_attack"
    detector._check_fitted()
    check_range("eps", eps, owner=owner, low=0.0,
                fix="Give eps in input units, e.g. eps=0.1 for images in [0, 1].")
    if norm not in NORMS:
        raise ConfigError(f"{owner}: 'norm' must be one of 'inf', '2'; got {norm!r}.")
    check_range("n_target_classes", n_target_classes, owner=owner, low=1, integer=True)
    check_range("detector_weight", detector_weight, owner=owner, low=0.0, low_open=True)
    m, x_t = detector._prepare(model, x, owner)
    y_t = check_labels(y, n=x_t.shape[0], n_classes=m.n_classes, owner=owner, device=x_t.device)
    c = m.n_classes
    wrapped = TorchModel(_DetectorAware(m.module, detector, detector_weight), bounds=detector.bounds,
                         n_classes=c + 1)
    with torch.no_grad():
        ranked = m.logits(x_t).scatter(1, y_t[:, None], -math.inf).argsort(1, descending=True)
    pgd = PGD(eps=eps, norm=norm, steps=steps, loss="margin", seed=seed)
    x_adv = x_t.clone()
    todo = torch.ones_like(y_t, dtype=torch.bool)
    for k in range(min(n_target_classes, c - 1)):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        res = pgd(wrapped, x_t[idx], y_t[idx], target=ranked[idx, k].contiguous())
        x_adv[idx[res.success]] = res.x_adv[res.success]
        todo[idx[res.success]] = False
    return detector.evaluate(m, x_t, y_t, x_adv, attack="adaptive")
