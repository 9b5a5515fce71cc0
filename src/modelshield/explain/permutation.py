"""Permutation feature importance (Breiman 2001, "Random Forests", Machine Learning 45:5-32; the
model-agnostic form of Fisher, Rudin and Dominici 2019, "All Models are Wrong, but Many are Useful").

A feature's importance is how much a metric drops when that feature's column is shuffled across the
rows (breaking its link to the label while keeping its marginal distribution). It is a GLOBAL
importance, one number per feature for the whole data set, not a per-row attribution, so it comes
back as its own result, :class:`PermutationResult`, with the spread over repeats.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.ops import make_generator
from modelshield.errors import InputError
from modelshield.explain.shapley import check_tabular, probability_fn

__all__ = ["PermutationImportance", "PermutationResult"]

Metric = Literal["accuracy", "log-loss"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PermutationResult:
    """Global permutation importances of D features.

    Attributes:
        importances: ``(repeats, D)`` metric drop (baseline metric minus shuffled metric; for
            ``log-loss`` the metric is the negative log-loss, so larger is always more important).
        baseline_metric: the metric on the unshuffled data.
        metric: the metric's name.
        feature_names: column names, when given.
        config: the explainer's settings. seconds: wall time.
    """

    importances: Tensor
    baseline_metric: float
    metric: str
    feature_names: tuple[str, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def importances_mean(self) -> Tensor:
        """``(D,)`` mean drop over the repeats."""
        return self.importances.mean(0)

    @property
    def importances_std(self) -> Tensor:
        """``(D,)`` standard deviation of the drop over the repeats (0 for one repeat)."""
        if self.importances.shape[0] < 2:
            return torch.zeros(self.importances.shape[1], dtype=self.importances.dtype)
        return self.importances.std(0)

    def ranking(self) -> list[int]:
        """Feature indices, most important first."""
        return [int(i) for i in self.importances_mean.argsort(descending=True)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        out: dict[str, Any] = {
            "method": "permutation-importance", "metric": self.metric,
            "baseline_metric": self.baseline_metric,
            "importances_mean": self.importances_mean.tolist(),
            "importances_std": self.importances_std.tolist(),
            "config": dict(self.config), "seconds": round(self.seconds, 4),
        }
        if self.feature_names is not None:
            out["feature_names"] = list(self.feature_names)
        return out


def _metric(p: Tensor, y: Tensor, metric: Metric) -> Tensor:
    """Per-block metric of probabilities ``(R, N, C)`` against labels ``(N,)``: ``(R,)``."""
    if metric == "accuracy":
        return (p.argmax(2) == y[None, :]).double().mean(1)
    q = p.gather(2, y[None, :, None].expand(p.shape[0], -1, 1))[..., 0].double().clamp_min(1e-12)
    return q.log().mean(1)  # negative log-loss: higher is better, as for accuracy


@dataclass(frozen=True, kw_only=True, slots=True)
class PermutationImportance:
    """Global permutation importance of each feature, with its spread over ``repeats`` shuffles.

    All ``repeats x D`` shuffled copies of the data are scored in batched model calls (chunked by
    ``memory_mb``). Seeded: the same seed gives the same shuffles.

    Example:
        res = PermutationImportance(repeats=5)(clf, x_test, y_test)
        res.importances_mean, res.importances_std
    """

    repeats: int = 5
    seed: int | None = 0
    metric: Metric = "accuracy"
    memory_mb: int = 256

    def __post_init__(self) -> None:
        check_range("repeats", self.repeats, owner="PermutationImportance", low=1, integer=True,
                    fix="Pass how many shuffles per feature, e.g. 5.")
        check_choice("metric", self.metric, ("accuracy", "log-loss"), owner="PermutationImportance")
        check_range("memory_mb", self.memory_mb, owner="PermutationImportance", low=1, integer=True,
                    fix="Pass the memory budget of one batched model call in MiB, e.g. 256.")

    def __call__(self, model: Any, x: Tensor, y: Tensor, *,
                 feature_names: tuple[str, ...] | None = None) -> PermutationResult:
        """Importances of x's columns (features) for predicting labels y."""
        start = time.perf_counter()
        x = check_tabular(x, owner="PermutationImportance")
        if x.dim() != 2 or x.shape[0] < 2:
            raise InputError(f"PermutationImportance: x must have shape (N, D) with N >= 2 rows to shuffle; "
                             f"got {tuple(x.shape)}. Pass a held-out table of at least 2 rows.")
        n, d = x.shape
        if not isinstance(y, Tensor) or y.shape != (n,) or y.is_floating_point():
            raise InputError(f"PermutationImportance: y must be an int tensor of shape ({n},); got "
                             f"{getattr(y, 'shape', type(y).__name__)}. Pass one class index per row.")
        if feature_names is not None and len(feature_names) != d:
            raise InputError(f"PermutationImportance: feature_names must name the {d} columns; got "
                             f"{len(feature_names)}. Pass one name per column.")
        fn = probability_fn(model)
        gen = make_generator(self.seed, torch.device("cpu"))
        yy = y.long().cpu()
        base = float(_metric(fn(x).double().cpu()[None], yy, self.metric)[0])
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(self.repeats * d)])  # (R*D, N)
        cols = torch.arange(d).repeat(self.repeats)  # block b shuffles column cols[b]
        per_block = n * d * x.element_size() * 3
        chunk = max(1, (self.memory_mb * 2 ** 20) // per_block)
        scores = torch.empty(self.repeats * d, dtype=torch.float64)
        for lo in range(0, perms.shape[0], chunk):
            pb, cb = perms[lo:lo + chunk].to(x.device), cols[lo:lo + chunk].to(x.device)
            blocks = x[None].expand(pb.shape[0], -1, -1).clone()  # (U, N, D)
            shuffled = x[:, cb].T.gather(1, pb)  # (U, N): column cb[u] in the order pb[u]
            blocks.scatter_(2, cb[:, None, None].expand(-1, n, 1), shuffled[:, :, None])
            p = fn(blocks.reshape(-1, d)).double().cpu().reshape(pb.shape[0], n, -1)
            scores[lo:lo + chunk] = _metric(p, yy, self.metric)
        drops = (base - scores).reshape(self.repeats, d)
        return PermutationResult(importances=drops, baseline_metric=base, metric=self.metric,
                                 feature_names=feature_names, config=asdict(self),
                                 seconds=time.perf_counter() - start)
