"""PRADA: per-client streaming detection of model-extraction query patterns (Juuti et al., 2019)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import shapiro  # type: ignore[import-untyped]  # scipy ships no type stubs
from torch import Tensor

from modelshield._checks import check_range
from modelshield.errors import ConfigError, InputError

__all__ = ["PRADA", "Alert"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    """One detection raised by a monitor for one client.

    Attributes:
        client_id: the client the alert is about.
        detector: the detector's class name (e.g. ``"PRADA"``).
        score: the statistic that crossed the threshold (PRADA: Shapiro-Wilk W).
        threshold: the threshold it was compared with (PRADA: delta).
        queries: the client's query count when the alert was raised.
        message: one human-readable line.
    """

    client_id: Hashable
    detector: str
    score: float
    threshold: float
    queries: int
    message: str


class _Rows:
    """A growing (n, d) float tensor with amortised O(1) appends."""

    def __init__(self, d: int, device: torch.device) -> None:
        self.buf = torch.empty(16, d, device=device)
        self.n = 0

    def append(self, row: Tensor) -> None:
        if self.n == self.buf.shape[0]:
            self.buf = torch.cat([self.buf, torch.empty_like(self.buf)])
        self.buf[self.n] = row
        self.n += 1

    @property
    def rows(self) -> Tensor:
        return self.buf[: self.n]


@dataclass(slots=True)
class _ClientState:
    growing: dict[int, _Rows] = field(default_factory=dict)  # G_c
    growing_dists: dict[int, list[float]] = field(default_factory=dict)  # D_{G_c}
    thresholds: dict[int, float] = field(default_factory=dict)  # T_c
    distances: list[float] = field(default_factory=list)  # D
    classes: list[int] = field(default_factory=list)  # the predicted class of each value of D
    class_counts: dict[int, int] = field(default_factory=dict)  # distances in D per class
    queries: int = 0
    last_w: float = math.nan
    min_w: float = math.inf


@dataclass
class PRADA:
    """PRADA: flags a client whose successive-query distances stop looking normally distributed.

    Natural queries lie at distances from earlier queries that are roughly normally
    distributed; extraction attacks that synthesise queries (Jacobian augmentation, small
    perturbations of earlier queries) produce a very different, spiky distribution. Per
    client and per predicted class c, PRADA keeps a growing set G_c. For each query x with
    predicted class c (Algorithm 1 of the paper, with the details of the authors' reference
    code):

    1. if G_c is empty, x starts it, D_{G_c} = {0} and T_c = 0;
    2. else d_min = min L2 distance from x to G_c's members is added to D; if d_min > T_c, x
       joins G_c, d_min joins D_{G_c} and T_c = max(T_c, mean(D_{G_c}) - std(D_{G_c}))
       (population standard deviation);
    3. the test: D restricted to the classes with at least ``min_class_distances`` distances,
       values beyond ``outlier_std`` standard deviations from its mean removed; once more
       than ``min_queries`` values remain, their Shapiro-Wilk statistic W is computed and
       W < ``delta`` raises an alert.

    The test runs every ``check_every`` queries (the paper: every query; the authors' code:
    10). A client stays flagged after its first alert. Config fields are read-only after
    construction; per-client state is fitted by ``update``.

    Choosing delta: the paper tunes δ per data set on benign traffic. ``calibrate`` does that
    from the defender's own benign query streams: it returns a copy whose δ flags at most a
    given share of them (see ``min_statistic``). Check the false-positive rate on *other*
    benign streams: the calibration is in-sample.

    Args:
        delta: detection threshold δ on W (0.95 by default; see ``calibrate``).
        min_queries: the test starts once D (after outlier removal) holds more than this many
            distances (paper: 100).
        outlier_std: D values further than this many standard deviations are dropped before
            the test (paper: 3).
        check_every: run the test after every ``check_every``-th query of a client.
        min_class_distances: a class's distances enter the test once it has this many
            (authors' code: 10), so a class seen only a few times does not skew D.

    Attributes:
        queries_to_detection_: client -> the client's query count at its first alert.
        shapiro_: client -> the latest W.
        flagged_: clients that have raised an alert.
        calibration_: set by ``calibrate`` on the monitor it returns: the benign streams'
            lowest W values, the target and the in-sample false-positive rate; else None.

    Reference: Juuti, Szyller, Marchal and Asokan, "PRADA: Protecting Against DNN Model
    Stealing Attacks", IEEE EuroS&P 2019 (arXiv:1805.02628), and the authors' reference code
    (SSG Aalto, ``GrowingDistanceAgent``).

    Example:
        monitor = PRADA().calibrate(benign_streams, max_fpr=0.01)
        alerts = monitor.update("client-7", x_batch, model.predict(x_batch))
    """

    delta: float = 0.95
    min_queries: int = 100
    outlier_std: float = 3.0
    check_every: int = 1
    min_class_distances: int = 10
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    shapiro_: dict[Hashable, float] = field(init=False, default_factory=dict)
    flagged_: set[Hashable] = field(init=False, default_factory=set)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    _clients: dict[Hashable, _ClientState] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_range("delta", self.delta, owner="PRADA", low=0.0, high=1.0,
                    fix="Use a Shapiro-Wilk threshold such as delta=0.95.")
        check_range("min_queries", self.min_queries, owner="PRADA", low=3, integer=True,
                    fix="The Shapiro-Wilk test needs at least 3 values; the paper uses 100.")
        check_range("outlier_std", self.outlier_std, owner="PRADA", low=0.0, low_open=True)
        check_range("check_every", self.check_every, owner="PRADA", low=1, integer=True)
        check_range("min_class_distances", self.min_class_distances, owner="PRADA", low=1, integer=True,
                    fix="The authors' code uses 10; use 1 to test on every class's distances.")

    def update(self, client_id: Hashable, x_batch: Tensor, predicted_labels: Tensor) -> list[Alert]:
        """Feed one client's queries (in the order they arrived) and their predicted labels.

        Args:
            client_id: any hashable client key (API key, IP, ...).
            x_batch: ``(N, *input_shape)`` queries; flattened for the L2 distance.
            predicted_labels: ``(N,)`` the labels the protected model returned for them.

        Returns:
            At most one Alert for this call: raised when a test in this batch gave W < delta.
        """
        x, labels = self._check(x_batch, predicted_labels)
        state = self._clients.setdefault(client_id, _ClientState())
        worst = math.inf
        for row, c in zip(x, labels.tolist(), strict=True):
            state.queries += 1
            self._add(state, row, int(c))
            if state.queries % self.check_every == 0 and len(state.distances) > self.min_queries:
                w = self._test(state)
                if math.isnan(w):
                    continue
                state.last_w = w
                state.min_w = min(state.min_w, w)
                self.shapiro_[client_id] = w
                if w < self.delta:
                    worst = min(worst, w)
                    self.queries_to_detection_.setdefault(client_id, state.queries)
        if worst == math.inf:
            return []
        self.flagged_.add(client_id)
        return [Alert(
            client_id=client_id, detector="PRADA", score=worst, threshold=self.delta,
            queries=state.queries,
            message=(f"PRADA: client {client_id!r} looks like a model-extraction attack "
                     f"(Shapiro-Wilk W={worst:.4f} < delta={self.delta} after "
                     f"{state.queries} queries)."),
        )]

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or every client's when None)."""
        if client_id is None:
            self._clients.clear()
            self.queries_to_detection_.clear()
            self.shapiro_.clear()
            self.flagged_.clear()
            return
        self._clients.pop(client_id, None)
        self.queries_to_detection_.pop(client_id, None)
        self.shapiro_.pop(client_id, None)
        self.flagged_.discard(client_id)

    def queries(self, client_id: Hashable) -> int:
        """Queries seen from the client so far (0 for an unknown client)."""
        state = self._clients.get(client_id)
        return 0 if state is None else state.queries

    @staticmethod
    def _check(x_batch: object, labels: object) -> tuple[Tensor, Tensor]:
        if not isinstance(x_batch, Tensor) or x_batch.dim() < 2 or not x_batch.is_floating_point():
            got = (f"shape {tuple(x_batch.shape)}, dtype {x_batch.dtype}"
                   if isinstance(x_batch, Tensor) else type(x_batch).__name__)
            raise InputError(
                f"PRADA: x_batch must be a float tensor of shape (N, *input_shape); got {got}. "
                "Add a batch dimension with x.unsqueeze(0) for one query."
            )
        if (not isinstance(labels, Tensor) or labels.dim() != 1
                or labels.shape[0] != x_batch.shape[0] or labels.is_floating_point()):
            got = (f"shape {tuple(labels.shape)}, dtype {labels.dtype}"
                   if isinstance(labels, Tensor) else type(labels).__name__)
            raise InputError(
                f"PRADA: predicted_labels must be an ({x_batch.shape[0]},) integer tensor; got "
                f"{got}. Pass model.predict(x_batch)."
            )
        return x_batch.detach().flatten(1).float(), labels.detach().cpu()

    @staticmethod
    def _add(state: _ClientState, row: Tensor, c: int) -> None:
        """Algorithm 1's growing-set step for one query of predicted class c."""
        grown = state.growing.get(c)
        if grown is None:
            grown = state.growing[c] = _Rows(row.shape[0], row.device)
            grown.append(row)
            state.growing_dists[c] = [0.0]
            state.thresholds[c] = 0.0
            return
        d_min = float((grown.rows - row).norm(dim=1).min())
        state.distances.append(d_min)
        state.classes.append(c)
        state.class_counts[c] = state.class_counts.get(c, 0) + 1
        if d_min > state.thresholds[c]:
            grown.append(row)
            dists = state.growing_dists[c]
            dists.append(d_min)
            t = torch.tensor(dists, dtype=torch.float64)
            spread = float(t.std(correction=0))
            state.thresholds[c] = max(state.thresholds[c], float(t.mean()) - spread)

    def _test(self, state: _ClientState) -> float:
        """W of D over the classes with enough distances; nan while too few values remain."""
        if all(n >= self.min_class_distances for n in state.class_counts.values()):
            values = state.distances
        else:
            keep = {c for c, n in state.class_counts.items() if n >= self.min_class_distances}
            values = [d for d, c in zip(state.distances, state.classes, strict=True) if c in keep]
        return self._statistic(values)

    def _statistic(self, distances: list[float]) -> float:
        """Shapiro-Wilk W of D without its outliers; nan while at most min_queries values remain."""
        d = torch.tensor(distances, dtype=torch.float64)
        if d.numel() == 0:
            return math.nan
        mean, std = d.mean(), d.std(correction=0)
        kept = d[(d - mean).abs() <= self.outlier_std * std] if float(std) > 0 else d
        if kept.numel() <= self.min_queries:
            return math.nan
        if kept.numel() < 3 or float(kept.std()) == 0.0:
            return 0.0  # all distances equal: as far from a normal distribution as it gets
        with warnings.catch_warnings():
            # Above 5000 values scipy warns that the p-value is approximate; only W is used.
            warnings.simplefilter("ignore", UserWarning)
            return float(shapiro(kept.numpy()).statistic)

    def min_statistic(self, x: Tensor, predicted_labels: Tensor) -> float:
        """The lowest W the test gives on one query stream, replayed through a fresh state.

        The stream is flagged at threshold δ exactly when this value is below δ (``inf`` when
        the stream is too short for any test). This monitor's own state is not touched.
        """
        probe = dataclasses.replace(self, delta=0.0)
        probe.update("stream", x, predicted_labels)
        return probe._clients["stream"].min_w if "stream" in probe._clients else math.inf

    def calibrate(self, benign_streams: Sequence[tuple[Tensor, Tensor]], *,
                  max_fpr: float = 0.0) -> PRADA:
        """A copy of this monitor whose δ flags at most ``max_fpr`` of the benign streams.

        Each stream ``(x, predicted_labels)`` is one honest client's queries in arrival order
        (e.g. logged production traffic, or held-out data split into client-sized streams).
        With m_1 <= ... <= m_n the streams' ``min_statistic`` values and k = floor(max_fpr * n),
        δ = m_{k+1}: exactly the streams with m_i < δ (at most k) are flagged. This is the
        largest δ allowed, so the most sensitive to attacks; δ = 1 when fewer than k + 1 streams
        are ever tested (or max_fpr = 1). The false-positive rate holds on these streams only: measure it on
        others (benign traffic varies).

        Args:
            benign_streams: at least one ``(x, predicted_labels)`` pair.
            max_fpr: the largest share of benign streams that may be flagged, in [0, 1].

        Returns:
            A new PRADA with the same settings, the calibrated delta and ``calibration_`` set.

        Raises:
            ConfigError: max_fpr outside [0, 1] or no streams.
        """
        check_range("max_fpr", max_fpr, owner="PRADA.calibrate", low=0.0, high=1.0,
                    fix="Use e.g. max_fpr=0.01 (at most 1% of benign clients flagged).")
        streams = list(benign_streams)
        if not streams:
            raise ConfigError(
                "PRADA.calibrate: 'benign_streams' must hold at least one (x, predicted_labels) "
                "stream; got none. Pass honest clients' query streams."
            )
        lows = sorted(self.min_statistic(x, labels) for x, labels in streams)
        k = math.floor(max_fpr * len(lows))
        delta = 1.0 if k >= len(lows) or math.isinf(lows[k]) else min(1.0, lows[k])
        out = dataclasses.replace(self, delta=delta)
        out.calibration_ = {
            "streams": len(lows), "max_fpr": max_fpr, "delta": delta,
            "in_sample_fpr": sum(w < delta for w in lows) / len(lows),
            "min_w": [None if math.isinf(w) else round(w, 6) for w in lows],
        }
        return out
