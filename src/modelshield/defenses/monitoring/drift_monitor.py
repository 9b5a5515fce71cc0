"""Live drift monitor: a rolling window of queries against a reference set, by population stability index."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring._common import (
    ClientTable,
    check_queries,
    check_rate,
    check_streams,
    not_fitted,
    upper_threshold,
)
from modelshield.errors import InputError

__all__ = ["DriftMonitor", "psi_counts"]

_FIT_ROWS = 5000  # at most this many reference rows go into the PCA (seeded subsample)
_PSI_FLOOR = 1e-4  # as modelshield.defenses.data.drift.psi


def psi_counts(counts: Tensor, reference: Tensor) -> Tensor:
    """(..., d) population stability index of each feature's bin counts (..., d, bins) against the
    reference bin shares (d, bins); shares floored at 1e-4 as in ``defenses.data.drift.psi``."""
    p = (counts / counts.sum(-1, keepdim=True).clamp_min(1)).clamp_min(_PSI_FLOOR)
    out: Tensor = ((p - reference) * (p / reference).log()).sum(-1)
    return out


@dataclass(slots=True)
class _Window:
    """One client's last ``window`` queries as bin indices (ring, oldest first) and their counts."""

    bins: Tensor  # (n, d) uint8 bin index of each held query, oldest first, n <= window
    counts: Tensor  # (d, n_bins) float counts of the held queries
    queries: int = 0
    detections: int = 0
    last: dict[str, float] = field(default_factory=dict)


@dataclass
class DriftMonitor:
    """Flags drift of a client's (or all traffic's) input distribution against a reference set.

    Each query is reduced to a few features (``dim`` values: the inputs themselves when they
    have at most ``dim`` values, else their projections on the reference's top ``dim - 1``
    principal components plus the norm of the residual, so that a shift outside the principal
    subspace, e.g. added noise, is still seen). Each feature is binned at the reference's
    deciles (``bins`` quantile bins); a client keeps the bins of its last ``window`` queries, and
    once the window is full, every ``stride`` queries, the statistic is the largest, over the
    features, population stability index (PSI, as ``modelshield.defenses.data.drift.psi``: ``sum (p - q)
    log(p / q)`` over the bins) of the window against the reference. ``fit`` sets the threshold
    so that a share ``fpr`` of benign windows is flagged, benign windows being ``n_windows``
    windows drawn (with replacement, seeded) from the benign streams. After an alert the client's
    window is cleared, so a lasting drift is reported at most once per ``window`` queries.
    ``fpr`` is per tested window: with the default ``stride`` (= ``window``, disjoint windows) a
    benign client sending L queries is flagged with probability at most about ``L / window * fpr``;
    a smaller stride detects a drift sooner after it starts, but overlapping windows are tested
    more often, so a benign client's false alerts come in bursts and are more frequent. To watch
    all traffic, feed every batch to one client id (the gateway uses ``"*"``).

    Bounded memory and cost: ``window * dim`` bytes and ``dim * bins`` counters per client, at most
    ``max_clients`` clients (least recently seen evicted); a batch of B queries costs one
    projection and an O(B * dim * bins) update of the window counts, whatever the client's history.

    Args:
        fpr: share of benign windows flagged, in (0, 1).
        window: queries per window, at least 2 (PSI needs a few hundred to be stable).
        stride: test the window every ``stride`` queries (None: every ``window`` queries).
        dim: features per query (see above).
        bins: quantile bins per feature (the usual PSI: 10), 2 to 255.
        n_windows: benign windows drawn to set the threshold (at least 1/fpr).
        max_clients: clients kept at once (LRU eviction).
        seed: seed of the PCA subsample and of the window draws.

    Attributes:
        threshold_: alert when the window's max PSI is above it.
        edges_: (d, bins - 1) inner bin edges per feature; reference_: (d, bins) reference shares.
        calibration_: windows, target and in-sample share of flagged benign windows.
        queries_to_detection_: client -> the client's query count at its first alert.

    References: the population stability index (Yurdakul, "Statistical Properties of Population
    Stability Index", PhD thesis, Western Michigan University, 2018); Rabanser, Günnemann and
    Lipton, "Failing Loudly: An Empirical Study of Methods for Detecting Dataset Shift",
    NeurIPS 2019 (arXiv:1810.11953): dimension reduction then univariate tests, Bonferroni/max.

    Example:
        mon = DriftMonitor(fpr=0.005, window=500).fit(x_reference, [x_benign])
        alerts = mon.update("*", x_batch)
    """

    fpr: float = 0.005
    window: int = 500
    dim: int = 8
    bins: int = 10
    stride: int | None = None
    n_windows: int = 2000
    max_clients: int = 1000
    seed: int = 0
    threshold_: float | None = field(init=False, default=None)
    edges_: Tensor | None = field(init=False, default=None, repr=False)
    reference_: Tensor | None = field(init=False, default=None, repr=False)
    input_shape_: tuple[int, ...] | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _mean: Tensor | None = field(init=False, default=None, repr=False)
    _components: Tensor | None = field(init=False, default=None, repr=False)
    _stride: int = field(init=False, repr=False)
    _clients: ClientTable[_Window] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "DriftMonitor"
        check_rate("fpr", self.fpr, owner=owner,
                   fix="Give the share of benign windows to flag, e.g. fpr=0.005.")
        check_range("window", self.window, owner=owner, low=2, high=1_000_000, integer=True,
                    fix="Give the queries per window, e.g. window=500.")
        if self.stride is not None:
            check_range("stride", self.stride, owner=owner, low=1, integer=True,
                        fix="Give how often (in queries) the window is tested, or None for every window.")
        self._stride = self.window if self.stride is None else self.stride
        check_range("dim", self.dim, owner=owner, low=1, integer=True)
        check_range("bins", self.bins, owner=owner, low=2, high=255, integer=True, fix="PSI usually uses 10.")
        check_range("n_windows", self.n_windows, owner=owner, low=math.ceil(1 / self.fpr), integer=True,
                    fix="Give at least 1/fpr benign windows.")
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        check_range("seed", self.seed, owner=owner, integer=True)
        self._clients = ClientTable(self.max_clients)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, reference_x: Tensor, benign_streams: Tensor | Sequence[Tensor]) -> DriftMonitor:
        """Bin the features on reference_x and set ``threshold_`` from windows of benign queries.

        Args:
            reference_x: ``(N, *input_shape)`` reference rows (e.g. the training split), N >= bins.
            benign_streams: ``(M, *input_shape)`` held-out benign queries (other rows than the
                reference) or a sequence of such streams; windows are drawn from all their rows.

        Returns:
            self, fitted; every client's state is reset.
        """
        owner = "DriftMonitor"
        ref = check_queries(reference_x, owner=owner).cpu()
        shape = tuple(reference_x.shape[1:])
        if ref.shape[0] < max(self.bins, 2):
            raise InputError(
                f"{owner}: reference_x must have at least bins = {self.bins} rows; got {ref.shape[0]}. "
                "Pass more reference rows."
            )
        streams = check_streams(benign_streams, owner=owner)
        if any(tuple(s.shape[1:]) != shape for s in streams):
            raise InputError(
                f"{owner}: benign streams must have the reference's query shape {shape}; got "
                f"{sorted({tuple(s.shape[1:]) for s in streams})}. Pass rows of the same kind."
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.input_shape_ = shape
        if ref.shape[1] > self.dim:
            rows = ref[torch.randperm(ref.shape[0], generator=gen)[:_FIT_ROWS]]
            self._mean = rows.mean(0)
            k = max(self.dim - 1, 1)
            _, _, vh = torch.linalg.svd(rows - self._mean, full_matrices=False)
            self._components = vh[:k].T.contiguous()
        else:
            self._mean = self._components = None
        feats = self._features(ref)  # (N, d)
        qs = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)[1:-1]
        self.edges_ = torch.quantile(feats.double(), qs, dim=0).T.float().contiguous()  # (d, bins - 1)
        ref_counts = self._count(self._bin(feats))
        self.reference_ = (ref_counts / ref_counts.sum(-1, keepdim=True)).clamp_min(_PSI_FLOOR)

        pool = torch.cat([self._bin(self._features(check_queries(s, owner=owner).cpu())) for s in streams])
        stats = []
        for start in range(0, self.n_windows, 256):
            b = min(256, self.n_windows - start)
            idx = torch.randint(pool.shape[0], (b, self.window), generator=gen)
            counts = torch.zeros(b, pool.shape[1], self.bins)
            counts.scatter_add_(2, pool[idx].long().transpose(1, 2),
                                torch.ones(b, pool.shape[1], self.window))
            stats.append(psi_counts(counts, self.reference_).amax(-1))
        s = torch.cat(stats)
        self.threshold_ = upper_threshold(s, self.fpr)
        self.calibration_ = {
            "windows": int(s.numel()), "benign_rows": int(pool.shape[0]), "streams": len(streams),
            "window": self.window, "fpr_target": self.fpr, "threshold": self.threshold_,
            "fpr_in_sample": float((s > self.threshold_).double().mean()),
            "features": int(pool.shape[1]),
        }
        self.reset()
        return self

    # -- streaming -------------------------------------------------------------------------

    def update(self, client_id: Hashable, x_batch: Tensor, probs: Tensor | None = None) -> list[Alert]:
        """Feed one client's queries in arrival order; ``probs`` is accepted for the common monitor
        interface and not used (this monitor watches inputs only).

        Returns:
            One Alert per query at which the full window's max PSI exceeds the threshold (the
            window is then cleared; empty when none).
        """
        if self.threshold_ is None or self.reference_ is None:
            raise not_fitted(self)
        new = self._bin(self._features(self._check(x_batch)))  # (B, d)
        d = new.shape[1]
        state = self._clients.get(client_id) or _Window(
            torch.zeros(0, d, dtype=torch.uint8), torch.zeros(d, self.bins))
        alerts: list[Alert] = []
        stat = math.nan
        while new.shape[0]:
            seq = torch.cat([state.bins, new])  # (n + B, d), oldest first; n <= window
            n_old, b = state.bins.shape[0], new.shape[0]
            # counts of the window ending at each batch query: the held counts, plus the batch rows
            # up to it, minus the oldest rows that left (at most B of them): O(B * d * bins)
            added = self._onehot(new).cumsum(0)
            left = torch.cat([added.new_zeros(1, d, self.bins), self._onehot(seq[:b]).cumsum(0)])
            end = n_old + torch.arange(1, b + 1)
            win = state.counts + added - left[(end - self.window).clamp_min(0)]
            full = (end >= self.window) & ((state.queries + torch.arange(1, b + 1)) % self._stride == 0)
            if not bool(full.any()):
                state.bins, state.counts = seq[-self.window:], win[-1]
                state.queries += b
                break
            stats = torch.where(full, psi_counts(win, self.reference_).amax(-1), torch.zeros(b))
            stat = float(stats[full.nonzero().flatten()[-1]])
            hit = (full & (stats > self.threshold_)).nonzero().flatten()
            if hit.numel() == 0:
                state.bins, state.counts = seq[-self.window:], win[-1]
                state.queries += b
                break
            j = int(hit[0])
            state.queries += j + 1
            state.detections += 1
            stat = float(stats[j])
            alerts.append(self._alert(client_id, stat, state.queries))
            state.bins, state.counts = seq[:0], torch.zeros(d, self.bins)
            new = new[j + 1:]
        if not math.isnan(stat):
            state.last["drift_psi"] = stat
        state.last.update({"threshold": self.threshold_, "window_fill": float(state.bins.shape[0])})
        for gone in self._clients.touch(client_id, state):
            self.queries_to_detection_.pop(gone, None)
        return alerts

    def window_statistic(self, client_id: Hashable) -> float:
        """The max PSI of the client's current window (nan until it holds ``window`` queries)."""
        if self.reference_ is None:
            raise not_fitted(self)
        state = self._clients.get(client_id)
        if state is None or state.bins.shape[0] < self.window:
            return math.nan
        return float(psi_counts(state.counts, self.reference_).amax())

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
        """``drift_psi`` (the max PSI of the client's last tested window; absent before the first
        test), ``threshold`` and ``window_fill`` (queries now in the window); empty for an unknown
        client."""
        state = self._clients.get(client_id)
        return {} if state is None else dict(state.last)

    @property
    def n_clients(self) -> int:
        """Clients currently held (at most ``max_clients``)."""
        return len(self._clients)

    # -- pieces ----------------------------------------------------------------------------

    def _features(self, flat: Tensor) -> Tensor:
        """(N, d) monitored features of flattened rows: the rows, or PCA projections + residual norm."""
        if self._components is None or self._mean is None:
            return flat
        c = flat - self._mean
        z = c @ self._components
        resid = (c - z @ self._components.T).norm(dim=1, keepdim=True)
        return torch.cat([z, resid], dim=1)

    def _bin(self, feats: Tensor) -> Tensor:
        """(N, d) uint8 bin index of each feature value (right-closed like numpy searchsorted 'right')."""
        assert self.edges_ is not None
        idx = torch.searchsorted(self.edges_, feats.T.contiguous(), right=True)  # (d, N)
        return idx.T.to(torch.uint8)

    def _onehot(self, bins: Tensor) -> Tensor:
        """(N, d, bins) one-hot float encoding of the (N, d) bin indices."""
        return torch.zeros(*bins.shape, self.bins).scatter_(2, bins.long()[:, :, None], 1.0)

    def _count(self, bins: Tensor) -> Tensor:
        """(d, bins) counts of the (N, d) bin indices."""
        counts = torch.zeros(bins.shape[1], self.bins)
        counts.scatter_add_(1, bins.long().T, torch.ones(bins.shape[1], bins.shape[0]))
        return counts

    def _check(self, x_batch: Tensor) -> Tensor:
        flat = check_queries(x_batch, owner="DriftMonitor")
        if self.input_shape_ is not None and tuple(x_batch.shape[1:]) != self.input_shape_:
            raise InputError(
                f"DriftMonitor: x_batch must have queries of shape {self.input_shape_} (as in fit); "
                f"got {tuple(x_batch.shape[1:])}. Send queries of the fitted shape."
            )
        return flat.cpu()

    def _alert(self, client_id: Hashable, stat: float, at: int) -> Alert:
        assert self.threshold_ is not None
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="DriftMonitor", score=stat, threshold=self.threshold_,
            queries=at,
            message=(f"DriftMonitor: the last {self.window} queries of {client_id!r} drift from the "
                     f"reference (max PSI {stat:.4g} > {self.threshold_:.4g}; query {at}); the input "
                     "distribution has shifted."),
        )
