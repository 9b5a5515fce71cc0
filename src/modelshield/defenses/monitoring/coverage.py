"""Distribution-coverage monitor of model extraction by natural or synthetic queries (Kesarwani et al.)."""

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
    check_probs,
    check_queries,
    check_rate,
    check_streams,
    not_fitted,
)
from modelshield.errors import InputError

__all__ = ["CoverageMonitor", "histogram_divergence", "kmeans"]

_FIT_ROWS = 5000  # at most this many reference rows go into k-means (seeded subsample)


def kmeans(x: Tensor, k: int, *, iters: int, generator: torch.Generator) -> Tensor:
    """(k, d) centres of x (N, d) by k-means++ seeding and ``iters`` Lloyd steps (empty cells keep
    their centre)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        w = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(w, 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        cnt = torch.bincount(a, minlength=k).to(x.dtype)
        c = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c)
    return c


def histogram_divergence(counts: Tensor, q: Tensor) -> Tensor:
    """(...,) Kullback-Leibler divergence KL(p || q) in nats of the empirical distributions p =
    counts / counts.sum(-1) (empty bins contribute 0) from q (..., B) with q > 0."""
    n = counts.sum(-1, keepdim=True).clamp_min(1)
    p = counts / n
    out: Tensor = torch.where(p > 0, p * (p.clamp_min(1e-30) / q).log(), torch.zeros_like(p)).sum(-1)
    return out


@dataclass(slots=True)
class _Client:
    bins: Tensor  # (K + 1,) query counts per cell, the last bin is "out of distribution"
    classes: Tensor | None  # (C,) counts of the model's answers
    queries: int = 0
    detections: int = 0
    last: dict[str, float] = field(default_factory=dict)


@dataclass
class CoverageMonitor:
    """Flags a client whose queries cover the input space unlike benign clients do (extraction).

    Knockoff Nets (Orekondy et al., CVPR 2019) steal a model by querying natural images from
    another distribution (or synthetic inputs), whose queries need not look like an attack to
    PRADA: they are not crafted, just foreign. Kesarwani et al. (ACSAC 2018) watch instead how
    a user's queries cover the feature space against what benign use covers. Here the input
    space is cut once, at ``fit``, into ``cells`` k-means cells of (a seeded random projection
    of) the reference data, plus one "out of distribution" cell for queries farther from every
    centre than all but ``ood_rate`` of held-out reference rows. Each client keeps the counts of
    its queries per cell (and, when ``probs`` are given, per answered class); the statistic is
    the Kullback-Leibler divergence of the client's histogram from the reference's (cells plus
    answered classes, in nats). A benign client's divergence shrinks towards zero as it sends
    more queries (only sampling noise remains), while a thief's stays high: every query from
    another distribution lands in the out-of-distribution cell (KL about ``log(1/ood_rate)``),
    and uniform noise or images of one other kind crowd into a few cells, and the model's answers
    to them into a few classes.

    Threshold as a function of the query count. The statistic is checked at checkpoints
    ``n = min_queries * (1, 1.5, 2, 3, 4, 6, ...)`` up to ``horizon`` and then every ``horizon``
    queries; each checkpoint has its own threshold, set by replaying ``n_boot`` benign client
    streams drawn (with replacement, seeded) from the benign streams given to ``fit``, so that
    at most a share ``fpr`` of those benign clients is ever flagged at any checkpoint up to the
    horizon. A long benign stream is therefore compared with benign streams of the same length,
    not flagged for being long. The bootstrap treats benign queries as independent draws from
    the benign pool; a benign client whose traffic is itself narrow (one class only) looks like
    a thief, so calibrate on streams like the real clients'.

    Bounded memory and cost. A client holds ``cells + 1`` (plus classes) counters, at most
    ``max_clients`` clients are kept (least recently seen evicted). A query costs one projection
    and one distance row to the ``cells`` centres; a checkpoint costs O(cells + classes).

    Args:
        fpr: target share of benign clients ever flagged (up to ``horizon``), in (0, 1).
        cells: k-means cells of the reference.
        dim: inputs with more values than this are projected (seeded Gaussian projection,
            Johnson-Lindenstrauss) to ``dim`` values first.
        ood_rate: share of held-out reference rows beyond the out-of-distribution radius.
        standardize: standardise each input value by the reference's mean and standard
            deviation first (for tabular features on different scales; leave off for images).
        min_queries: first checkpoint (queries).
        horizon: last calibrated checkpoint; later checks reuse its threshold.
        n_boot: bootstrapped benign streams used to set the thresholds.
        max_clients: clients kept at once (LRU eviction).
        kmeans_iters: Lloyd iterations of the k-means fit.
        seed: seed of the projection, the reference split, k-means and the bootstrap.

    Attributes:
        centres_: (cells, d) cell centres. radius_: the out-of-distribution distance.
        reference_: (cells + 1,) reference share per cell (the last: out of distribution).
        class_reference_: (C,) reference share of each answered class, or None.
        checkpoints_: query counts at which the statistic is tested; thresholds_: one per checkpoint.
        threshold_: the threshold at the horizon (and every later check), the lowest one.
        calibration_: the benign streams, rows and in-sample share of flagged bootstrap clients.
        queries_to_detection_: client -> the client's query count at its first alert.

    References: Kesarwani, Mukhoty, Arya and Mehta, "Model Extraction Warning in MLaaS Paradigm",
    ACSAC 2018 (arXiv:1711.07221); Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing
    Functionality of Black-Box Models", CVPR 2019 (arXiv:1812.02766).

    Example:
        mon = CoverageMonitor(fpr=0.005).fit(x_reference, [x_benign_a, x_benign_b])
        alerts = mon.update("client-7", x_batch, probs)
    """

    fpr: float = 0.005
    cells: int = 32
    dim: int = 64
    ood_rate: float = 0.01
    standardize: bool = False
    min_queries: int = 10
    horizon: int = 4096
    n_boot: int = 2000
    max_clients: int = 1000
    kmeans_iters: int = 20
    seed: int = 0
    centres_: Tensor | None = field(init=False, default=None, repr=False)
    radius_: float | None = field(init=False, default=None)
    reference_: Tensor | None = field(init=False, default=None, repr=False)
    class_reference_: Tensor | None = field(init=False, default=None, repr=False)
    checkpoints_: list[int] = field(init=False, default_factory=list)
    thresholds_: list[float] = field(init=False, default_factory=list)
    threshold_: float | None = field(init=False, default=None)
    input_shape_: tuple[int, ...] | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _projection: Tensor | None = field(init=False, default=None, repr=False)
    _mean: Tensor | None = field(init=False, default=None, repr=False)
    _scale: Tensor | None = field(init=False, default=None, repr=False)
    _clients: ClientTable[_Client] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "CoverageMonitor"
        check_rate("fpr", self.fpr, owner=owner,
                   fix="Give the share of benign clients that may be flagged, e.g. fpr=0.005.")
        check_range("cells", self.cells, owner=owner, low=2, integer=True)
        check_range("dim", self.dim, owner=owner, low=1, integer=True)
        check_rate("ood_rate", self.ood_rate, owner=owner, fix="e.g. ood_rate=0.01.")
        check_range("min_queries", self.min_queries, owner=owner, low=1, integer=True)
        check_range("horizon", self.horizon, owner=owner, low=self.min_queries, integer=True,
                    fix="The horizon must be at least min_queries.")
        check_range("n_boot", self.n_boot, owner=owner, low=math.ceil(1 / self.fpr), integer=True,
                    fix="Give at least 1/fpr bootstrap streams.")
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        check_range("kmeans_iters", self.kmeans_iters, owner=owner, low=1, integer=True)
        check_range("seed", self.seed, owner=owner, integer=True)
        self._clients = ClientTable(self.max_clients)

    # -- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        reference_x: Tensor,
        benign_streams: Tensor | Sequence[Tensor],
        *,
        reference_probs: Tensor | None = None,
        benign_probs: Tensor | Sequence[Tensor] | None = None,
    ) -> CoverageMonitor:
        """Cut the input space on reference_x and set the thresholds from benign streams.

        Args:
            reference_x: ``(N, *input_shape)`` in-distribution rows (e.g. the training split),
                N >= 2 * cells; half fits the cells, half sets the radius and cell shares.
            benign_streams: ``(M, *input_shape)`` held-out benign queries or a sequence of such
                streams (other rows than reference_x): the bootstrap draws benign clients from them.
            reference_probs: ``(N, C)`` the model's probabilities on reference_x: adds the
                answered-class histogram to the statistic (then ``update`` needs ``probs``).
            benign_probs: the model's probabilities on the benign streams (same layout), needed
                with reference_probs.

        Returns:
            self, fitted; every client's state is reset.
        """
        owner = "CoverageMonitor"
        ref = check_queries(reference_x, owner=owner).cpu()
        shape = tuple(reference_x.shape[1:])
        if ref.shape[0] < 2 * self.cells:
            raise InputError(
                f"{owner}: reference_x must have at least 2 * cells = {2 * self.cells} rows; got "
                f"{ref.shape[0]}. Pass more reference rows or fewer cells."
            )
        streams = check_streams(benign_streams, owner=owner)
        if any(tuple(s.shape[1:]) != shape for s in streams):
            raise InputError(
                f"{owner}: benign streams must have the reference's query shape {shape}; got "
                f"{sorted({tuple(s.shape[1:]) for s in streams})}. Pass rows of the same kind."
            )
        if (reference_probs is None) != (benign_probs is None):
            raise InputError(
                f"{owner}: give both reference_probs and benign_probs, or neither; got "
                f"reference_probs={'set' if reference_probs is not None else None}, "
                f"benign_probs={'set' if benign_probs is not None else None}. The class term needs both."
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.input_shape_ = shape
        if self.standardize:
            self._mean = ref.mean(0)
            self._scale = ref.std(0).clamp_min(1e-6)
        else:
            self._mean = self._scale = None
        d_in = ref.shape[1]
        self._projection = (torch.randn(d_in, self.dim, generator=gen) / math.sqrt(self.dim)
                            if d_in > self.dim else None)
        e = self._embed(ref)
        perm = torch.randperm(e.shape[0], generator=gen)
        half = e.shape[0] // 2
        fit_rows, held = perm[:half][:_FIT_ROWS], perm[half:]
        self.centres_ = kmeans(e[fit_rows], self.cells, iters=self.kmeans_iters, generator=gen)
        dist = torch.cdist(e[held], self.centres_)
        near, cell = dist.min(1)
        self.radius_ = float(torch.quantile(near.double(), 1.0 - self.ood_rate))
        bins = torch.where(near > self.radius_, self.cells, cell)
        self.reference_ = _shares(torch.bincount(bins, minlength=self.cells + 1), floor=0.5)

        pool_bins = torch.cat([self._assign(check_queries(s, owner=owner).cpu())[0] for s in streams])
        pool_classes: Tensor | None = None
        self.class_reference_ = None
        if reference_probs is not None and benign_probs is not None:
            rp = check_probs(reference_probs, ref.shape[0], None, owner=owner, name="reference_probs")
            prob_list = [benign_probs] if isinstance(benign_probs, Tensor) else list(benign_probs)
            if len(prob_list) != len(streams):
                raise InputError(
                    f"{owner}: benign_probs must hold one (M, C) tensor per benign stream "
                    f"({len(streams)}); got {len(prob_list)}. Pass the model's probabilities on each stream."
                )
            c = rp.shape[1]
            pool_classes = torch.cat([
                check_probs(p, s.shape[0], c, owner=owner, name="benign_probs").argmax(1)
                for p, s in zip(prob_list, streams, strict=True)
            ])
            self.class_reference_ = _shares(torch.bincount(rp.argmax(1), minlength=c), floor=0.5)
        self._calibrate(pool_bins, pool_classes, gen, n_streams=len(streams))
        self.reset()
        return self

    def _calibrate(self, pool_bins: Tensor, pool_classes: Tensor | None, gen: torch.Generator, *,
                   n_streams: int) -> None:
        """Per-checkpoint thresholds from bootstrapped benign clients (see the class docstring)."""
        assert self.reference_ is not None  # set just before by fit
        cps = _grid(self.min_queries, self.horizon)
        b, k1 = self.n_boot, self.cells + 1
        bins = torch.zeros(b, k1)
        classes = (torch.zeros(b, self.class_reference_.shape[0])
                   if self.class_reference_ is not None else None)
        stats = torch.empty(b, len(cps), dtype=torch.float64)
        # Bayesian bootstrap (Rubin, 1981): each client draws from its own Dirichlet(1) reweighting
        # of the pool, so clients differ as much as a new benign sample of the pool's size would.
        weights = -torch.rand(b, pool_bins.shape[0], generator=gen).clamp_min(1e-12).log()
        done = 0
        for j, n in enumerate(cps):
            idx = torch.multinomial(weights, n - done, replacement=True, generator=gen)
            bins.scatter_add_(1, pool_bins[idx], torch.ones(idx.shape))
            if classes is not None and pool_classes is not None:
                classes.scatter_add_(1, pool_classes[idx], torch.ones(idx.shape))
            stats[:, j] = self._statistic(bins, classes).double()
            done = n
        # the largest per-checkpoint tail share a such that at most fpr of the clients cross any
        lo, hi = self.fpr / len(cps), self.fpr
        thr = _quantiles(stats, lo)
        for _ in range(30):
            mid = (lo + hi) / 2
            cand = _quantiles(stats, mid)
            if float((stats > cand).any(1).double().mean()) <= self.fpr:
                lo, thr = mid, cand
            else:
                hi = mid
        self.checkpoints_ = cps
        self.thresholds_ = [float(t) for t in thr]
        self.threshold_ = self.thresholds_[-1]
        self.calibration_ = {
            "streams": n_streams, "benign_rows": int(pool_bins.shape[0]), "bootstrap_clients": b,
            "fpr_target": self.fpr, "per_checkpoint_tail": lo,
            "fpr_in_sample": float((stats > thr).any(1).double().mean()),
            "benign_ood_share": float((pool_bins == self.cells).double().mean()),
            "checkpoints": cps, "thresholds": [round(t, 6) for t in self.thresholds_],
        }

    # -- streaming -------------------------------------------------------------------------

    def update(self, client_id: Hashable, x_batch: Tensor, probs: Tensor | None = None) -> list[Alert]:
        """Feed one client's queries (and the model's probabilities for them); returns the alerts.

        Args:
            client_id: any hashable client key.
            x_batch: ``(N, *input_shape)`` float queries of the fitted shape.
            probs: ``(N, C)`` the model's probabilities on x_batch; required when fitted with
                ``reference_probs``, ignored otherwise.

        Returns:
            One Alert per checkpoint passed in this batch at which the statistic is above its
            threshold (empty when none).
        """
        owner = "CoverageMonitor"
        if self.centres_ is None or self.reference_ is None:
            raise not_fitted(self)
        flat = self._check(x_batch)
        if flat.shape[0] == 0:
            return []
        bins, score = self._assign(flat)
        classes: Tensor | None = None
        if self.class_reference_ is not None:
            if probs is None:
                raise InputError(
                    f"{owner}: this monitor was fitted with reference_probs, so update needs probs "
                    f"({flat.shape[0]}, {self.class_reference_.shape[0]}); got None. Pass the model's "
                    "probabilities for the batch."
                )
            classes = check_probs(probs, flat.shape[0], self.class_reference_.shape[0], owner=owner,
                                  name="probs").argmax(1)
        state = self._clients.get(client_id) or _Client(
            torch.zeros(self.cells + 1),
            None if self.class_reference_ is None else torch.zeros(self.class_reference_.shape[0]))
        alerts: list[Alert] = []
        n0, b = state.queries, flat.shape[0]
        for cp, thr in self._checkpoints_between(n0, n0 + b):
            m = cp - n0
            h = state.bins + torch.bincount(bins[:m], minlength=self.cells + 1)
            hc = (None if state.classes is None or classes is None
                  else state.classes + torch.bincount(classes[:m], minlength=state.classes.shape[0]))
            stat = float(self._statistic(h[None], None if hc is None else hc[None])[0])
            state.last["threshold"] = thr
            if stat > thr:
                state.detections += 1
                self.queries_to_detection_.setdefault(client_id, cp)
                alerts.append(self._alert(client_id, h, stat, thr, cp))
        state.bins += torch.bincount(bins, minlength=self.cells + 1)
        if state.classes is not None and classes is not None:
            state.classes += torch.bincount(classes, minlength=state.classes.shape[0])
        state.queries += b
        n = float(state.bins.sum())
        state.last.update({
            "coverage_kl": float(self._statistic(state.bins[None],
                                                 None if state.classes is None else state.classes[None])[0]),
            "ood_share": float(state.bins[-1]) / n,
            "coverage": float((state.bins[:-1] > 0).sum()) / self.cells,
            "ood_score": float(score[-1]),
        })
        for gone in self._clients.touch(client_id, state):
            self.queries_to_detection_.pop(gone, None)
        return alerts

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or every client's when None); the thresholds stay."""
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
        """The client's latest statistics: ``coverage_kl`` (the divergence, nats), ``threshold``
        (at the last checkpoint passed), ``ood_share``, ``coverage`` (share of cells hit) and
        ``ood_score`` (the last query's distance over the radius); empty for an unknown client."""
        state = self._clients.get(client_id)
        return {} if state is None else dict(state.last)

    def threshold_at(self, n: int) -> float:
        """The threshold the statistic is compared with at query count n (inf when n is no checkpoint)."""
        if not self.checkpoints_:
            raise not_fitted(self)
        return dict(self._checkpoints_between(n - 1, n)).get(n, math.inf)

    @property
    def n_clients(self) -> int:
        """Clients currently held (at most ``max_clients``)."""
        return len(self._clients)

    # -- pieces ----------------------------------------------------------------------------

    def _statistic(self, bins: Tensor, classes: Tensor | None) -> Tensor:
        assert self.reference_ is not None
        out = histogram_divergence(bins, self.reference_)
        if classes is not None and self.class_reference_ is not None:
            out = out + histogram_divergence(classes, self.class_reference_)
        return out

    def _checkpoints_between(self, n0: int, n1: int) -> list[tuple[int, float]]:
        """(checkpoint, threshold) for every checkpoint n with n0 < n <= n1."""
        out = [(c, t) for c, t in zip(self.checkpoints_, self.thresholds_, strict=True) if n0 < c <= n1]
        last, t_last = self.checkpoints_[-1], self.thresholds_[-1]
        first = max(n0 // last + 1, 2)
        out += [(m * last, t_last) for m in range(first, n1 // last + 1)]
        return out

    def _embed(self, flat: Tensor) -> Tensor:
        if self._mean is not None and self._scale is not None:
            flat = (flat - self._mean) / self._scale
        return flat if self._projection is None else flat @ self._projection

    def _assign(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) cell of each row (``cells`` for out of distribution) and (N,) distance / radius."""
        assert self.centres_ is not None and self.radius_ is not None
        near, cell = torch.cdist(self._embed(flat), self.centres_).min(1)
        return torch.where(near > self.radius_, self.cells, cell), near / max(self.radius_, 1e-12)

    def _check(self, x_batch: Tensor) -> Tensor:
        flat = check_queries(x_batch, owner="CoverageMonitor")
        if self.input_shape_ is not None and tuple(x_batch.shape[1:]) != self.input_shape_:
            raise InputError(
                f"CoverageMonitor: x_batch must have queries of shape {self.input_shape_} (as in fit); "
                f"got {tuple(x_batch.shape[1:])}. Send queries of the fitted shape."
            )
        return flat.cpu()

    def _alert(self, client_id: Hashable, bins: Tensor, stat: float, thr: float, at: int) -> Alert:
        ood = float(bins[-1]) / max(float(bins.sum()), 1.0)
        return Alert(
            client_id=client_id, detector="CoverageMonitor", score=stat, threshold=thr, queries=at,
            message=(f"CoverageMonitor: client {client_id!r} covers the input space unlike benign "
                     f"clients after {at} queries (divergence {stat:.4g} > {thr:.4g} nats; "
                     f"{ood:.0%} out of distribution); this looks like model extraction."),
        )


def _shares(counts: Tensor, *, floor: float) -> Tensor:
    """counts as shares, each count raised to at least ``floor`` first (no zero share)."""
    c = counts.double().clamp_min(floor)
    return (c / c.sum()).float()


def _grid(first: int, horizon: int) -> list[int]:
    """first * (1, 1.5, 2, 3, 4, 6, ...) up to horizon, horizon included."""
    out: list[int] = []
    base = first
    while base <= horizon:
        out += [base] + ([base * 3 // 2] if base * 3 // 2 <= horizon and base * 3 // 2 > base else [])
        base *= 2
    if out[-1] != horizon:
        out.append(horizon)
    return sorted(set(out))


def _quantiles(stats: Tensor, tail: float) -> Tensor:
    """(J,) per-column upper quantile of stats (B, J): at most floor(tail * B) rows above it."""
    s = stats.sort(0, descending=True).values
    k = min(math.floor(tail * stats.shape[0]), stats.shape[0] - 1)
    return s[k]
