"""STRIP as a live per-client monitor of backdoor triggers (Gao et al., 2019)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.defenses.backdoor import STRIP
from modelshield.defenses.extraction import Alert
from modelshield.defenses.mode import require_eval_mode
from modelshield.defenses.monitoring._common import (
    ClientTable,
    FlagWindow,
    binomial_alert_count,
    binomial_cdf,
    check_queries,
    check_rate,
    low_threshold,
    not_fitted,
    rate_upper_bound,
)
from modelshield.errors import ConfigError, InputError
from modelshield.models import ModelLike

__all__ = ["StripMonitor"]


@dataclass
class StripMonitor:
    """Flags a client that sends inputs carrying a backdoor trigger, by STRIP on a sample of queries.

    STRIP (Gao et al.) superimposes a query on ``n_overlays`` clean images and measures the mean
    entropy of the model's predictions: a triggered input keeps its target class whatever it is
    mixed with (low entropy), a clean one does not. This costs ``n_overlays`` model calls per
    query, so only a share ``sample`` of the queries is checked (chosen by a seeded generator,
    independent of content). ``fit`` sets the entropy threshold so that a share ``fpr`` of clean
    inputs is flagged; a client is alerted when more than ``limit_`` of its last ``window``
    *checked* queries are flagged (``limit_``: the smallest count a Binomial(window, rate_bound_)
    exceeds with probability at most ``fpr``, ``rate_bound_`` being the one-sided 95%
    Clopper-Pearson upper bound of the per-query rate seen on the clean set, as in
    ``SqueezingMonitor``), and its window is then cleared. An attacker whose triggered queries are
    flagged at rate r is alerted after about ``(limit_ + 1) / (r * sample)`` queries.

    Bounded memory and cost: ``window`` flags per client, at most ``max_clients`` clients (least
    recently seen evicted); the overlay pool is the clean set given to ``fit``; a checked query
    costs ``n_overlays`` model calls, an unchecked one nothing.

    Args:
        model: the served model (eval mode): an ``nn.Module`` or any ``ModelLike`` with class scores.
        fpr: per-query false-positive rate on clean inputs, in (0, 1); also the client rule's level.
        sample: share of queries checked, in (0, 1].
        window: the client rule's window (checked queries), at least 2.
        n_overlays: superimpositions per checked query (the paper: 100; 20 usually suffices).
        mode: ``"add"`` (the paper's clipped sum) or ``"average"``.
        bounds: the model's input range.
        max_clients: clients kept at once (LRU eviction).
        seed: seed of the sampling and of STRIP's overlays.

    Attributes:
        threshold_: a checked query is flagged when its entropy is below it. limit_: the rule's count.
        rate_bound_: the upper bound of the per-query false-positive rate used by the rule.
        strip_: the fitted STRIP detector (its threshold_ is threshold_).
        calibration_: rows, target and in-sample false-positive rate of ``fit``.
        queries_to_detection_: client -> the client's query count at its first alert.

    Reference: Gao, Xu, Wang, Chen, Ranasinghe and Nepal, "STRIP: A Defence Against Trojan
    Attacks on Deep Neural Networks", ACSAC 2019 (arXiv:1902.06531).

    Example:
        mon = StripMonitor(model, fpr=0.005, sample=0.1).fit(x_clean)
        alerts = mon.update("client-7", x_batch)
    """

    model: ModelLike
    fpr: float = 0.005
    sample: float = 0.1
    window: int = 20
    n_overlays: int = 20
    mode: str = "add"
    bounds: tuple[float, float] = (0.0, 1.0)
    max_clients: int = 1000
    seed: int = 0
    threshold_: float | None = field(init=False, default=None)
    limit_: int | None = field(init=False, default=None)
    rate_bound_: float | None = field(init=False, default=None)
    strip_: STRIP = field(init=False, repr=False)
    input_shape_: tuple[int, ...] | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _gen: torch.Generator = field(init=False, repr=False)
    _clients: ClientTable[FlagWindow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "StripMonitor"
        check_rate("fpr", self.fpr, owner=owner,
                   fix="Give a per-query false-positive rate such as fpr=0.005.")
        if not (isinstance(self.sample, int | float) and not isinstance(self.sample, bool)
                and math.isfinite(self.sample) and 0.0 < self.sample <= 1.0):
            raise ConfigError(f"{owner}: 'sample' must be a number in (0, 1]; got {self.sample!r}. "
                              "Give the share of queries to check, e.g. sample=0.1.")
        check_range("window", self.window, owner=owner, low=2, high=100_000, integer=True,
                    fix="Give the checked queries the client rule looks back over, e.g. window=20.")
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        check_range("seed", self.seed, owner=owner, integer=True)
        # STRIP validates n_overlays, mode and the seed (ConfigError naming the field)
        self.strip_ = STRIP(n_overlays=self.n_overlays, frr=self.fpr, mode=self.mode,  # type: ignore[arg-type]
                            bounds=self.bounds, seed=self.seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._clients = ClientTable(self.max_clients)

    def fit(self, clean_x: Tensor) -> StripMonitor:
        """Use clean_x as the overlay pool and set ``threshold_`` at the fpr quantile of its entropies.

        Args:
            clean_x: ``(N, *input_shape)`` clean inputs held out from training, N >= 1 / fpr.
        """
        owner = "StripMonitor"
        require_eval_mode(self.model, owner=owner)
        check_queries(clean_x, owner=owner)
        need = max(math.ceil(1.0 / self.fpr), self.strip_.min_clean)
        if clean_x.shape[0] < need:
            raise InputError(
                f"{owner}: clean_x must have at least {need} rows (1/fpr); got {clean_x.shape[0]}. "
                "Pass more clean inputs or a larger fpr."
            )
        self.strip_.fit(self.model, clean_x.detach())
        ent = self.strip_.clean_entropy_
        assert ent is not None  # set by STRIP.fit
        self.threshold_ = low_threshold(ent, self.fpr)
        self.strip_.threshold_ = self.threshold_
        flagged = int((ent < self.threshold_).sum())
        self.rate_bound_ = rate_upper_bound(flagged, int(ent.numel()))
        self.limit_ = binomial_alert_count(self.window, self.rate_bound_, self.fpr)
        self.input_shape_ = tuple(clean_x.shape[1:])
        self._gen = torch.Generator().manual_seed(self.seed)
        self.calibration_ = {
            "queries": int(ent.numel()), "fpr_target": self.fpr,
            "fpr_in_sample": flagged / ent.numel(), "rate_bound": self.rate_bound_,
            # benign client alerts per query when the per-query rate is rate_bound_: the query is
            # flagged and at least limit_ of the previous window - 1 were too
            "client_alert_rate": self.rate_bound_ * (
                1.0 - binomial_cdf(self.limit_ - 1, self.window - 1, self.rate_bound_)),
            "threshold": self.threshold_, "window": self.window, "limit": self.limit_,
            "sample": self.sample,
        }
        self.reset()
        return self

    def score(self, x_batch: Tensor) -> Tensor:
        """(N,) STRIP entropies of every query of the batch (low = likely triggered); no sampling."""
        if self.threshold_ is None:
            raise not_fitted(self)
        return self.strip_.score(self._check(x_batch))

    def update(self, client_id: Hashable, x_batch: Tensor, probs: Tensor | None = None) -> list[Alert]:
        """Feed one client's queries; a sampled share is checked. ``probs`` is accepted for the
        common monitor interface and not used (STRIP needs the superimposed inputs' predictions).

        Returns:
            One Alert per time the client rule fires in this batch (empty when none).
        """
        if self.threshold_ is None or self.limit_ is None:
            raise not_fitted(self)
        x = self._check(x_batch)
        picked = (torch.rand(x.shape[0], generator=self._gen) < self.sample).nonzero().flatten()
        state = self._clients.get(client_id) or FlagWindow(self.window, self.limit_)
        base = state.queries
        state.queries += int(x.shape[0])
        alerts: list[Alert] = []
        if picked.numel():
            ent = self.strip_.score(x[picked.to(x.device)])
            hits, in_window = state.push(ent < self.threshold_)
            alerts = [self._alert(client_id, float(ent[h]), base + int(picked[h]) + 1) for h in hits]
            state.last = {"strip_entropy": float(ent[-1]), "threshold": self.threshold_,
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

    def checked(self, client_id: Hashable) -> int:
        """Queries of the client that were checked (sampled)."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.checked

    def detections(self, client_id: Hashable) -> int:
        """Alerts raised for the client since it was last reset or evicted."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.detections

    def last_scores(self, client_id: Hashable) -> dict[str, float]:
        """The last checked query's ``strip_entropy``, ``threshold``, the client's
        ``flagged_in_window`` and the rule's ``limit``; empty before any checked query."""
        state = self._clients.get(client_id)
        return {} if state is None else dict(state.last)

    @property
    def n_clients(self) -> int:
        """Clients currently held (at most ``max_clients``)."""
        return len(self._clients)

    def _alert(self, client_id: Hashable, entropy: float, at: int) -> Alert:
        assert self.limit_ is not None and self.threshold_ is not None
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="StripMonitor", score=float(self.limit_ + 1),
            threshold=float(self.limit_), queries=at,
            message=(f"StripMonitor: client {client_id!r} sent more than {self.limit_} of its last "
                     f"{self.window} checked queries with STRIP entropy below {self.threshold_:.4g} "
                     f"(last {entropy:.4g}; query {at}); this looks like backdoor-triggered inputs."),
        )

    def _check(self, x_batch: Tensor) -> Tensor:
        check_queries(x_batch, owner="StripMonitor")
        if self.input_shape_ is not None and tuple(x_batch.shape[1:]) != self.input_shape_:
            raise InputError(
                f"StripMonitor: x_batch must have queries of shape {self.input_shape_} (as in fit); "
                f"got {tuple(x_batch.shape[1:])}. Send queries of the fitted shape."
            )
        return x_batch.detach()
