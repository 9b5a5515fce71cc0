"""Feature squeezing as a live per-client monitor of adversarial inputs (Xu, Evans and Qi, 2018)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.defenses.detection import FeatureSqueezing
from modelshield.defenses.extraction import Alert
from modelshield.defenses.mode import require_eval_mode
from modelshield.defenses.monitoring._common import (
    ClientTable,
    FlagWindow,
    binomial_alert_count,
    binomial_cdf,
    check_probs,
    check_queries,
    check_rate,
    not_fitted,
    rate_upper_bound,
    upper_threshold,
)
from modelshield.errors import InputError
from modelshield.models import ModelLike, TorchModel, as_model, probabilities

__all__ = ["SqueezingMonitor"]


@dataclass
class SqueezingMonitor:
    """Flags a client that sends adversarial examples, by feature squeezing each query.

    Each query's score is feature squeezing's (Xu et al.): the largest L1 distance between the
    model's probabilities on the query and on its squeezed versions (bit-depth reductions and
    median filters, from ``FeatureSqueezing.squeeze``). ``fit`` sets the per-query threshold so
    that a share ``fpr`` of benign queries is flagged. A benign client then still sends a flagged
    query now and then (one in 1/fpr), so the client-level rule is sequential: the client is
    alerted when more than ``limit_`` of its last ``window`` queries are flagged, ``limit_`` being
    the smallest count a Binomial(window, rate_bound_) exceeds with probability at most ``fpr``;
    after an alert the client's window is cleared. ``rate_bound_`` is the one-sided 95%
    Clopper-Pearson upper bound of the per-query rate seen on the calibration set: the threshold is
    an order statistic of a finite sample, so its false-positive rate on new benign queries is
    only known up to that sample's error (with 200 rows at fpr=0.005 it can well be 2%), and the
    client rule must not turn that error into flagged benign clients. An attacker whose
    adversarial examples are flagged at rate r is alerted after about ``(limit_ + 1) / r`` of them.

    Works on white-box (``nn.Module``) and black-box models (a callable or ``predict_proba``
    object returning probabilities): it only needs the model's probabilities. When ``update``
    gets the model's probabilities for the batch it reuses them (one model call per squeezer).

    Bounded memory and cost: a client keeps ``window`` flags; at most ``max_clients`` clients
    (least recently seen evicted); a query costs one model call per squeezer.

    Args:
        model: the served model (eval mode), an ``nn.Module`` returning logits or any ``ModelLike``
            returning probabilities.
        fpr: per-query false-positive rate on benign traffic, in (0, 1); also the level of the
            client rule.
        window: the client rule's window (queries), at least 2.
        bit_depths, median_sizes: the squeezers (Xu et al.: 1 bit and 2x2 median for MNIST);
            ``median_sizes=None`` means ``(2,)`` for image queries ((C, H, W) or (H, W)) and no
            median filter for flat (tabular) ones.
        bounds: the model's input range.
        max_clients: clients kept at once (LRU eviction).

    Attributes:
        threshold_: per-query alert when the score is above it. limit_: the client rule's count.
        rate_bound_: the upper bound of the per-query false-positive rate used by the rule.
        squeezer_: the FeatureSqueezing whose squeezers are used (its threshold_ is threshold_).
        calibration_: rows, target and in-sample per-query false-positive rate of ``fit``.
        queries_to_detection_: client -> the client's query count at its first alert.

    Reference: Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks", NDSS 2018 (arXiv:1704.01155).

    Example:
        mon = SqueezingMonitor(model, fpr=0.005).fit(x_clean)
        alerts = mon.update("client-7", x_batch, probs)
    """

    model: ModelLike
    fpr: float = 0.005
    window: int = 20
    bit_depths: tuple[int, ...] = (1,)
    median_sizes: tuple[int, ...] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    max_clients: int = 1000
    threshold_: float | None = field(init=False, default=None)
    limit_: int | None = field(init=False, default=None)
    rate_bound_: float | None = field(init=False, default=None)
    squeezer_: FeatureSqueezing = field(init=False, repr=False)
    input_shape_: tuple[int, ...] | None = field(init=False, default=None)
    n_classes_: int | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _model: Any = field(init=False, default=None, repr=False)
    _clients: ClientTable[FlagWindow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "SqueezingMonitor"
        check_rate("fpr", self.fpr, owner=owner,
                   fix="Give a per-query false-positive rate such as fpr=0.005.")
        check_range("window", self.window, owner=owner, low=2, high=100_000, integer=True,
                    fix="Give the queries the client rule looks back over, e.g. window=20.")
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        # FeatureSqueezing validates the squeezers and bounds (ConfigError naming the field)
        medians = (2,) if self.median_sizes is None else self.median_sizes
        self.squeezer_ = FeatureSqueezing(bit_depths=self.bit_depths, median_sizes=medians, fpr=self.fpr,
                                          bounds=self.bounds)
        self._model = as_model(self.model, bounds=self.bounds)
        self._clients = ClientTable(self.max_clients)

    def fit(self, benign_x: Tensor) -> SqueezingMonitor:
        """Set ``threshold_`` so that a share ``fpr`` of benign_x is flagged; return self.

        Args:
            benign_x: ``(N, *input_shape)`` benign queries (held out from training), N >= 1 / fpr.
        """
        owner = "SqueezingMonitor"
        require_eval_mode(self._model, owner=owner)
        x = self._check(benign_x, fitting=True)
        need = math.ceil(1.0 / self.fpr)
        if x.shape[0] < need:
            raise InputError(
                f"{owner}: benign_x must have at least 1/fpr = {need} rows; got {x.shape[0]}. "
                "Pass more benign queries or a larger fpr."
            )
        self.input_shape_ = tuple(x.shape[1:])
        if self.median_sizes is None and x.dim() not in (3, 4):
            self.squeezer_ = FeatureSqueezing(bit_depths=self.bit_depths, median_sizes=(), fpr=self.fpr,
                                              bounds=self.bounds)
        scores = torch.cat([self.score(x[i:i + 512]) for i in range(0, x.shape[0], 512)])
        self.threshold_ = upper_threshold(scores, self.fpr)
        self.squeezer_.threshold_ = self.threshold_
        flagged = int((scores > self.threshold_).sum())
        self.rate_bound_ = rate_upper_bound(flagged, int(scores.numel()))
        self.limit_ = binomial_alert_count(self.window, self.rate_bound_, self.fpr)
        self.calibration_ = {
            "queries": int(scores.numel()), "fpr_target": self.fpr,
            "fpr_in_sample": flagged / scores.numel(), "rate_bound": self.rate_bound_,
            # benign client alerts per query when the per-query rate is rate_bound_: the query is
            # flagged and at least limit_ of the previous window - 1 were too
            "client_alert_rate": self.rate_bound_ * (
                1.0 - binomial_cdf(self.limit_ - 1, self.window - 1, self.rate_bound_)),
            "threshold": self.threshold_, "window": self.window, "limit": self.limit_,
        }
        self.reset()
        return self

    def score(self, x_batch: Tensor, probs: Tensor | None = None) -> Tensor:
        """(N,) squeezing scores (max L1 distance of probabilities, in [0, 2]); higher is more suspicious."""
        x = self._check(x_batch)
        with torch.no_grad():
            p = (probabilities(self._model, x) if probs is None
                 else check_probs(probs, x.shape[0], self.n_classes_, owner="SqueezingMonitor"))
            p = p.float().cpu()
            if self.n_classes_ is None:
                self.n_classes_ = int(p.shape[1])
            dists = [(p - probabilities(self._model, xs).float().cpu()).abs().sum(1)
                     for xs in self.squeezer_.squeeze(x)]
        out: Tensor = torch.stack(dists, dim=1).amax(dim=1)
        return out

    def update(self, client_id: Hashable, x_batch: Tensor, probs: Tensor | None = None) -> list[Alert]:
        """Feed one client's queries (and optionally the model's probabilities for them).

        Returns:
            One Alert per time the client rule fires in this batch (empty when none).
        """
        if self.threshold_ is None or self.limit_ is None:
            raise not_fitted(self)
        scores = self.score(x_batch, probs)
        if scores.numel() == 0:
            return []
        state = self._clients.get(client_id) or FlagWindow(self.window, self.limit_)
        flags = scores > self.threshold_
        hits, in_window = state.push(flags)
        base = state.queries
        state.queries += int(scores.numel())
        alerts = [self._alert(client_id, float(scores[h]), base + h + 1) for h in hits]
        state.last = {"squeezing": float(scores[-1]), "threshold": self.threshold_,
                      "flagged_in_window": float(in_window), "limit": float(self.limit_)}
        for gone in self._clients.touch(client_id, state):
            self.queries_to_detection_.pop(gone, None)
        return alerts

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or every client's when None); the threshold stays."""
        if client_id is None:
            self._clients.clear()
            self.queries_to_detection_.clear()
            return
        self._clients.pop(client_id)
        self.queries_to_detection_.pop(client_id, None)

    def queries(self, client_id: Hashable) -> int:
        """Queries seen from the client since it was last reset or evicted (0 if unknown)."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.queries

    def detections(self, client_id: Hashable) -> int:
        """Alerts raised for the client since it was last reset or evicted."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.detections

    def last_scores(self, client_id: Hashable) -> dict[str, float]:
        """The last query's ``squeezing`` score, ``threshold``, the client's ``flagged_in_window``
        and the rule's ``limit``; empty for an unknown client."""
        state = self._clients.get(client_id)
        return {} if state is None else dict(state.last)

    @property
    def n_clients(self) -> int:
        """Clients currently held (at most ``max_clients``)."""
        return len(self._clients)

    def _alert(self, client_id: Hashable, score: float, at: int) -> Alert:
        assert self.limit_ is not None and self.threshold_ is not None
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="SqueezingMonitor", score=float(self.limit_ + 1),
            threshold=float(self.limit_), queries=at,
            message=(f"SqueezingMonitor: client {client_id!r} sent more than {self.limit_} of its "
                     f"last {self.window} queries with a squeezing score above {self.threshold_:.4g} "
                     f"(last {score:.4g}; query {at}); this looks like adversarial examples."),
        )

    def _check(self, x_batch: Tensor, *, fitting: bool = False) -> Tensor:
        check_queries(x_batch, owner="SqueezingMonitor")
        if not fitting and self.input_shape_ is not None and tuple(x_batch.shape[1:]) != self.input_shape_:
            raise InputError(
                f"SqueezingMonitor: x_batch must have queries of shape {self.input_shape_} (as in fit); "
                f"got {tuple(x_batch.shape[1:])}. Send queries of the fitted shape."
            )
        x: Tensor = x_batch.detach()
        if isinstance(self._model, TorchModel):
            self._model.check_device(x)
        return x
