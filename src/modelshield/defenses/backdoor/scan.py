"""Scan a model for a backdoor: Neural Cleanse per class, STRIP calibration and, given the training
set, activation clustering and spectral signatures; one verdict per class."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._typing import Progress
from modelshield.defenses.backdoor._common import check_xy, detection_metrics
from modelshield.defenses.backdoor.activation_clustering import ActivationClustering
from modelshield.defenses.backdoor.neural_cleanse import NeuralCleanse, NeuralCleanseReport
from modelshield.defenses.backdoor.spectral import SpectralSignatures
from modelshield.defenses.backdoor.strip import STRIP
from modelshield.errors import ConfigError, InputError
from modelshield.models import ModelLike, TorchModel, as_model
from modelshield.models import as_gradient_model as _as_gradient_model

__all__ = ["ScanReport", "scan_model"]


"""``progress(done, total, description)``, called before each stage."""


def _r(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScanReport:
    """What ``scan_model`` found: each detector's result and a verdict per class.

    Attributes:
        neural_cleanse: the Neural Cleanse report (per-class reversed triggers, L1 norms,
            anomaly indices, flagged classes).
        strip: the STRIP detector fitted on the clean set (``threshold_`` at its ``frr``;
            ``predict(x)`` flags triggered inputs at run time).
        strip_holdout_rejection: share of the held-out clean inputs STRIP flags (its false
            rejection rate on data it was not calibrated on); None without held-out inputs.
        trigger_detection: for each class Neural Cleanse flags, the share of clean inputs of
            other classes, stamped with that class's reversed trigger, that STRIP catches.
        activation_clustering, spectral_signatures: the training-set detectors fitted on the
            training set, or None when none was given.
        spectral_flagged_classes: the (training-label) classes of the rows spectral signatures
            flags, ascending. n_train: rows of the training set (None without one).
        poisoned_indices: the true poisoned rows when known (for precision / recall).
        n_clean: clean inputs used by Neural Cleanse and STRIP. n_holdout: held-out inputs.
        time_s: wall time.
    """

    neural_cleanse: NeuralCleanseReport
    strip: STRIP = field(repr=False)
    strip_holdout_rejection: float | None = None
    trigger_detection: Mapping[int, float] = field(default_factory=dict)
    activation_clustering: ActivationClustering | None = field(default=None, repr=False)
    spectral_signatures: SpectralSignatures | None = field(default=None, repr=False)
    spectral_flagged_classes: tuple[int, ...] = ()
    n_train: int | None = None
    poisoned_indices: Tensor | None = field(default=None, repr=False)
    n_clean: int = 0
    n_holdout: int = 0
    time_s: float = 0.0

    @property
    def flagged_by(self) -> dict[int, tuple[str, ...]]:
        """Each inspected class (and any class a training-set detector flags) -> detectors flagging it."""
        out: dict[int, list[str]] = {c: [] for c in self.neural_cleanse.classes}
        for c in self.neural_cleanse.flagged:
            out[c].append("neural-cleanse")
        if self.activation_clustering is not None:
            for c in self.activation_clustering.flagged_classes:
                out.setdefault(int(c), []).append("activation-clustering")
        for c in self.spectral_flagged_classes:
            out.setdefault(int(c), []).append("spectral-signatures")
        return {c: tuple(v) for c, v in out.items()}

    @property
    def flagged_classes(self) -> tuple[int, ...]:
        """Classes at least one detector flags, ascending."""
        return tuple(sorted(c for c, why in self.flagged_by.items() if why))

    @property
    def backdoored(self) -> bool:
        return bool(self.flagged_classes)

    @property
    def verdict(self) -> str:
        """``"backdoored"`` when a detector flags a class, else ``"no backdoor found"``."""
        return "backdoored" if self.backdoored else "no backdoor found"

    def per_class(self) -> list[dict[str, Any]]:
        """One JSON-safe row per inspected class: norm, anomaly index, flags and verdict."""
        nc, why = self.neural_cleanse, self.flagged_by
        return [
            {"class": c, "norm": _r(float(nc.norms[i])), "anomaly_index": _r(float(nc.anomaly_index[i])),
             "trigger_asr": _r(float(nc.asr[i])), "neural_cleanse_flagged": c in nc.flagged,
             "flagged_by": list(why[c]), "verdict": "backdoor" if why[c] else "clean"}
            for i, c in enumerate(nc.classes)
        ]

    def strip_summary(self) -> dict[str, Any]:
        """STRIP's calibration: frr, threshold, clean rejection and the reversed-trigger checks."""
        s = self.strip
        out: dict[str, Any] = {"frr": s.frr, "threshold": _r(s.threshold_),
                               "false_rejection_clean": _r(s.false_rejection_), "n_clean": self.n_clean,
                               "n_overlays": s.n_overlays}
        if self.strip_holdout_rejection is not None:
            out["false_rejection_holdout"] = _r(self.strip_holdout_rejection)
            out["n_holdout"] = self.n_holdout
        out["reversed_trigger_detection"] = {str(c): _r(v) for c, v in self.trigger_detection.items()}
        return out

    def training_summary(self) -> dict[str, Any] | None:
        """Training-set detectors' flagged classes (and precision / recall when the poisoned rows
        are known); None without a training set."""
        ac, ss = self.activation_clustering, self.spectral_signatures
        if ac is None or ss is None or self.n_train is None:
            return None
        assert ac.flagged_indices_ is not None and ss.flagged_indices_ is not None  # fitted by scan_model
        truth = self.poisoned_indices

        def metrics(flagged: Tensor) -> dict[str, float | None]:
            if truth is None:
                return {"precision": None, "recall": None, "f1": None, "n_flagged": float(flagged.numel())}
            assert self.n_train is not None  # checked above
            return {k: _r(v) for k, v in detection_metrics(flagged, truth, self.n_train).items()}

        return {
            "n": self.n_train,
            "n_poisoned": None if truth is None else int(truth.numel()),
            "activation_clustering": {"flagged_classes": ac.flagged_classes, **metrics(ac.flagged_indices_)},
            "spectral_signatures": {"flagged_classes": list(self.spectral_flagged_classes),
                                    **metrics(ss.flagged_indices_)},
        }

    def strip_catch_rate(self, x_triggered: Tensor) -> float:
        """Share of x_triggered (inputs carrying a trigger) that the fitted STRIP flags."""
        return float(self.strip.predict(x_triggered).float().mean()) if x_triggered.shape[0] else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe report: verdict, flagged classes, per-class rows and each detector's summary."""
        return {
            "verdict": self.verdict,
            "flagged_classes": list(self.flagged_classes),
            "classes": self.per_class(),
            "neural_cleanse": self.neural_cleanse.to_dict(),
            "strip": self.strip_summary(),
            "training_set": self.training_summary(),
            "time_s": round(self.time_s, 4),
        }


def _unfitted(obj: Any) -> Any:
    """A fresh, unfitted copy of a stateful detector config (the caller's object is not fitted)."""
    return dataclasses.replace(obj)


def scan_model(
    model: ModelLike,
    x_clean: Tensor,
    y_clean: Tensor | None = None,
    *,
    x_train: Tensor | None = None,
    y_train: Tensor | None = None,
    poisoned_indices: Tensor | None = None,
    x_holdout: Tensor | None = None,
    y_holdout: Tensor | None = None,
    neural_cleanse: NeuralCleanse | None = None,
    strip: STRIP | None = None,
    activation_clustering: ActivationClustering | None = None,
    spectral_signatures: SpectralSignatures | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    progress: Progress | None = None,
) -> ScanReport:
    """Look for a backdoor in a white-box image classifier.

    1. Neural Cleanse (Wang et al., 2019) reverses the smallest trigger sending the clean
       inputs to each class and flags classes whose trigger is anomalously small (MAD anomaly
       index above its threshold, 2 by default).
    2. STRIP (Gao et al., 2019) is calibrated on the clean inputs; for each flagged class it
       is asked to catch clean inputs (of other classes) stamped with the reversed trigger.
    3. With a training set, activation clustering (Chen et al., 2018) and spectral signatures
       (Tran et al., 2018) look for a poisoned sub-population in each class.

    The model, the inputs and the detector configs passed in are not modified (fresh unfitted
    copies of STRIP and the training-set detectors are fitted).

    Args:
        model: a torch module returning logits, or a TorchModel (Neural Cleanse needs gradients).
        x_clean: (N, C, H, W) clean inputs (a few hundred suffice). y_clean: their labels, or
            None (the model's predictions then decide which inputs belong to a class).
        x_train, y_train: the (possibly poisoned) training set, for the training-set detectors.
        poisoned_indices: the true poisoned rows of the training set, when known (an
            experiment), for the detectors' precision and recall.
        x_holdout, y_holdout: other clean inputs to evaluate STRIP on (default: x_clean).
        neural_cleanse, strip, activation_clustering, spectral_signatures: detector configs;
            None uses each detector's defaults with ``bounds`` (STRIP at 5% false rejection).
        bounds: the input range of a bare module (a TorchModel's own bounds win).
        progress: ``progress(done, total, description)`` before each stage.

    Returns:
        A ScanReport: ``verdict``, ``flagged_classes``, ``per_class()``, ``to_dict()``.

    Raises:
        ModelCapabilityError: a black-box model. ConfigError: x_train without y_train (or the
        reverse), or poisoned_indices without a training set. InputError: malformed inputs
        or too few clean inputs.

    Reference: B. Wang et al., "Neural Cleanse", IEEE S&P 2019; Y. Gao et al., "STRIP",
    ACSAC 2019; B. Chen et al., "Activation Clustering", arXiv:1811.03728; B. Tran, J. Li and
    A. Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.

    Example:
        report = scan_model(model, x_test[:200], y_test[:200], neural_cleanse=NeuralCleanse(steps=200))
        report.verdict, report.flagged_classes
    """
    started = time.perf_counter()
    owner = "scan_model"
    if (x_train is None) != (y_train is None):
        raise ConfigError(f"{owner}: 'x_train' and 'y_train' must be given together; got only one. "
                          "Pass both for the training-set detectors, or neither.")
    if poisoned_indices is not None and x_train is None:
        raise ConfigError(f"{owner}: 'poisoned_indices' must come with a training set; got indices "
                          "without x_train. Pass x_train and y_train too.")
    if (x_holdout is None) and (y_holdout is not None):
        raise ConfigError(f"{owner}: 'y_holdout' must come with x_holdout; got labels only. Pass both.")
    m = model if isinstance(model, TorchModel) else as_model(model, bounds=bounds)
    m = _as_gradient_model(m, caller=owner)
    if not isinstance(x_clean, Tensor) or not x_clean.is_floating_point():
        raise InputError(f"{owner}: x_clean must be a float tensor of clean images; got "
                         f"{type(x_clean).__name__}. Convert with torch.as_tensor(x, dtype=torch.float32).")
    if y_clean is not None:
        x_clean, y_clean = check_xy(x_clean, y_clean, owner=owner)
    if x_holdout is not None and y_holdout is not None:
        x_holdout, y_holdout = check_xy(x_holdout, y_holdout, owner=owner)
    nc_cfg = neural_cleanse if neural_cleanse is not None else NeuralCleanse(bounds=m.bounds)
    strip_d = _unfitted(strip) if strip is not None else STRIP(frr=0.05, bounds=m.bounds)
    with_train = x_train is not None and y_train is not None
    total = 3 + 2 * int(with_train)

    def tick(done: int, text: str) -> None:
        if progress is not None:
            progress(done, total, text)

    tick(0, f"Neural Cleanse ({nc_cfg.steps} steps per class)")
    nc = nc_cfg(m, x_clean)
    tick(1, "STRIP calibration")
    strip_d.fit(m, x_clean)
    x_eval = x_clean if x_holdout is None else x_holdout
    y_eval = y_clean if x_holdout is None else y_holdout
    holdout_rej = None
    if x_holdout is not None and int(x_holdout.shape[0]) > 0:
        holdout_rej = float(strip_d.predict(x_holdout).float().mean())
    tick(2, "STRIP on the reversed triggers")
    labels = y_eval if y_eval is not None else m.predict(x_eval).cpu()
    detection: dict[int, float] = {}
    for c in nc.flagged:
        others = x_eval[(labels != c).to(x_eval.device)]
        stamped = nc.trigger_for(c).apply(others)
        detection[c] = float(strip_d.predict(stamped).float().mean()) if others.shape[0] else math.nan
    ac = ss = None
    n_train = None
    ss_classes: tuple[int, ...] = ()
    if with_train:
        assert x_train is not None and y_train is not None  # with_train
        xt, yt = check_xy(x_train, y_train, owner=owner)
        n_train = int(yt.numel())
        tick(3, "activation clustering")
        ac = (_unfitted(activation_clustering) if activation_clustering is not None
              else ActivationClustering()).fit(m, xt, yt)
        tick(4, "spectral signatures")
        ss = (_unfitted(spectral_signatures) if spectral_signatures is not None
              else SpectralSignatures()).fit(m, xt, yt)
        assert ss.flagged_indices_ is not None  # fitted just above
        ss_classes = tuple(sorted({int(c) for c in yt[ss.flagged_indices_.to(yt.device)].tolist()}))
    tick(total, "scan done")
    truth = None if poisoned_indices is None else torch.as_tensor(poisoned_indices, dtype=torch.long).cpu()
    return ScanReport(
        neural_cleanse=nc, strip=strip_d, strip_holdout_rejection=holdout_rej, trigger_detection=detection,
        activation_clustering=ac, spectral_signatures=ss, spectral_flagged_classes=ss_classes,
        n_train=n_train, poisoned_indices=truth,
        n_clean=int(x_clean.shape[0]), n_holdout=0 if x_holdout is None else int(x_holdout.shape[0]),
        time_s=time.perf_counter() - started,
    )
