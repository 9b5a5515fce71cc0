"""Blacklight: detection of query-based evasion by probabilistic content fingerprints (Li et al., 2022)."""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.defenses.extraction import Alert
from modelshield.defenses.monitoring._common import (
    ClientTable,
    check_queries,
    check_streams,
    high_threshold,
    not_fitted,
)
from modelshield.errors import ConfigError, EvaluationWarning, InputError

__all__ = ["Blacklight", "Scope", "fingerprint"]

Scope = Literal["global", "client"]
Hashes = NDArray[np.uint64]

# splitmix64's output function (Steele, Lea and Flood, OOPSLA 2014; Stafford's "Mix13" constants)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@functools.lru_cache(maxsize=64)
def _coefficients(key: int, window: int) -> tuple[Hashes, np.uint64]:
    """The hash's random odd multipliers (one per window position) and additive constant, drawn from
    a generator seeded with key (numpy's SeedSequence takes a non-negative int of any size)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
    words = rng.integers(0, np.iinfo(np.uint64).max, size=window + 1, dtype=np.uint64, endpoint=True)
    multipliers = words[:window] | np.uint64(1)
    multipliers.flags.writeable = False
    return multipliers, words[window]


def _window_count(dim: int, window: int, stride: int) -> int:
    """Windows hashed per query of dim values: starts 0, stride, ... up to dim - window."""
    return 0 if dim < window else (dim - window) // stride + 1


def _fingerprint_array(x: Tensor, *, step: float, window: int, stride: int, top_n: int, offset: float,
                       key: int) -> Hashes:
    """(N, top_n) uint64: each row's top_n largest distinct window hashes, descending, 0-padded."""
    n, dim = x.shape
    out = np.zeros((n, top_n), dtype=np.uint64)
    w = _window_count(dim, window, stride)
    if n == 0 or w == 0:
        return out
    values = x.detach().cpu().float().numpy()
    bins = np.floor((values + np.float32(offset)) / np.float32(step))  # in float32, as torch computes it
    np.clip(bins, -(2.0**62), 2.0**62, out=bins)  # huge values: one extreme bin, no overflow in the cast
    q = bins.astype(np.int64)
    words = q.view(np.uint64)  # two's complement: negative bins wrap modulo 2^64, as the hash wants
    multipliers, constant = _coefficients(key, window)
    s0, s1 = words.strides
    views = as_strided(words, shape=(n, w, window), strides=(s0, stride * s1, s1), writeable=False)
    h: Hashes = np.einsum("nwk,k->nw", views, multipliers)  # the sum wraps modulo 2^64
    h += constant
    h ^= h >> _S30
    h *= _MIX1
    h ^= h >> _S27
    h *= _MIX2
    h ^= h >> _S31
    h.sort(axis=1)
    h[:, :-1][h[:, :-1] == h[:, 1:]] = 0  # keep one of each run of equal hashes (0 = none)
    h.sort(axis=1)
    top = h[:, : -top_n - 1 : -1]  # the top_n largest (or all W), descending
    out[:, : top.shape[1]] = top
    return out


def fingerprint(x: Tensor, *, step: float, window: int, stride: int, top_n: int, offset: float = 0.0,
                key: int = 0) -> list[tuple[int, ...]]:
    """Blacklight's probabilistic fingerprint of each row of x (N, D): its top_n window hashes.

    Each value is quantised to ``floor((x + offset) / step)``; every ``window`` consecutive
    values (windows start each ``stride`` values along the flattened input) are hashed and the
    ``top_n`` largest distinct hashes are kept, in descending order: a pseudo-random but
    content-determined sample of the windows, so two queries that share many windows share many
    fingerprint hashes.

    The hash. The paper hashes each window with SHA-256; what the method needs is a hash whose
    collisions are rare and whose order (which windows make the top_n) the attacker cannot
    predict. Here a keyed 64-bit hash is computed for every window of every row at once:
    ``mix(c + sum_j a_j * q_j mod 2^64)`` with odd multipliers ``a_j`` and constant ``c`` drawn
    from ``key``, the multilinear member of the multiply-shift family of universal hashes
    (Carter and Wegman, JCSS 1979; Dietzfelbinger, Hagerup, Katajainen and Penttonen, J.
    Algorithms 1997; Thorup, "High speed hashing for integers and strings", arXiv:1504.06804),
    followed by splitmix64's bijective 64-bit finaliser ``mix`` (Steele, Lea and Flood, OOPSLA
    2014) so that every output bit depends on every input bit. Two different windows collide
    with probability at most ``2^(v - 63)`` over the key, where ``2^v`` is the largest power of
    two dividing all their differences (v = 0 for most pairs). The same key gives the same
    fingerprints; in production keep the key secret (e.g. ``secrets.randbits(128)``) so that an
    attacker cannot compute which windows are sampled and perturb only the others. A hash of
    exactly 0 (probability 2^-64 per window) is dropped, 0 being the padding of short rows.

    Args:
        x: (N, D) finite queries.
        step: quantisation step in input units.
        window: values per window.
        stride: values between window starts.
        top_n: hashes kept per row (fewer when a row has fewer distinct windows).
        offset: added before quantising: with ``offset = step / 2`` each value is rounded to the
            nearest multiple of ``step`` instead of floored, which keeps discrete inputs (e.g.
            tabular values in {-1, 0, 1} with ``step=1``) in the middle of their bins, where small
            noise does not move them across a bin edge.
        key: the hash key, a non-negative int of any size.

    Returns:
        One tuple of hashes (ints in [1, 2^64)) per row, largest first.
    """
    prints = _fingerprint_array(x, step=step, window=window, stride=stride, top_n=top_n, offset=offset,
                                key=key)
    return [tuple(h for h in row if h) for row in prints.tolist()]


class _Table:
    """Fingerprints of the last ``capacity`` queries and an inverted index hash -> their ring slots.

    The fingerprints live in a (capacity, top_n) uint64 ring (grown by doubling up to capacity,
    so a table that sees few queries stays small). The index maps a hash to the slot of the one
    stored query holding it, an int shared by all that query's entries (the common case), or to
    a list of at most ``bucket`` slots, oldest first, when several stored queries hold it.
    Evicting a query (its slot about to be reused) removes its slot from its hashes' entries, so
    the index always holds exactly the hashes of the stored fingerprints.
    """

    def __init__(self, capacity: int, bucket: int, top_n: int) -> None:
        self.capacity = capacity
        self.bucket = bucket
        self.rows: Hashes = np.zeros((min(capacity, 64), top_n), dtype=np.uint64)
        self.size = 0  # fingerprints stored
        self.added = 0  # fingerprints ever added; the next slot is added % capacity once full
        self._ids: dict[int, int | list[int]] = {}
        self.queries = 0
        self.detections = 0

    def __len__(self) -> int:
        return self.size

    @property
    def prints(self) -> Hashes:
        """A copy of the stored fingerprints, oldest first (0 pads a short one)."""
        if self.size < self.capacity:
            return self.rows[: self.size].copy()
        start = self.added % self.capacity
        return np.concatenate([self.rows[start:], self.rows[:start]])

    @property
    def index(self) -> dict[int, tuple[int, ...]]:
        """A copy of the inverted index: hash -> ring slots of the stored queries holding it, oldest
        first (at most ``bucket``)."""
        return {h: (v,) if isinstance(v, int) else tuple(v) for h, v in self._ids.items()}

    def match(self, fp: list[int]) -> int:
        """The most hashes fp shares with any stored fingerprint (0 when none)."""
        ids = self._ids
        hits = [v for v in map(ids.get, fp) if v is not None]
        if not hits:
            return 0
        lists = [v for v in hits if not isinstance(v, int)]
        if not lists:  # each hash held by one stored query
            counts = Counter(hits)
        else:  # Counter counts an iterable in C: the O(top_n * bucket) case stays fast
            counts = Counter(chain([v for v in hits if isinstance(v, int)], *lists))
        return max(counts.values())

    def add(self, row: Hashes, fp: list[int]) -> None:
        """Store one fingerprint: row its (top_n,) array, fp its nonzero hashes as ints."""
        if self.size < self.capacity:
            slot = self.size
            if slot == self.rows.shape[0]:
                grown = np.zeros((min(2 * slot, self.capacity), self.rows.shape[1]), dtype=np.uint64)
                grown[:slot] = self.rows
                self.rows = grown
            self.size += 1
        else:
            slot = self.added % self.capacity
            self._forget(slot)
        self.rows[slot] = row
        self.added += 1
        ids, bucket = self._ids, self.bucket
        for h in fp:
            v = ids.get(h)
            if v is None or (bucket == 1 and isinstance(v, int)):
                ids[h] = slot
            elif isinstance(v, int):
                ids[h] = [v, slot]
            else:
                v.append(slot)
                if len(v) > bucket:
                    del v[0]

    def _forget(self, slot: int) -> None:
        """Remove the query in slot from the index (its hashes' entries, the entry if it was the last)."""
        ids = self._ids
        for h in self.rows[slot].tolist():
            v = ids.get(h) if h else None
            if v is None:
                continue
            if isinstance(v, int):
                if v == slot:
                    del ids[h]
            elif v[0] == slot:  # the oldest stored query: first in any list holding it
                del v[0]
                if len(v) == 1:
                    ids[h] = v[0]


@dataclass
class Blacklight:
    """Flags a query that shares too many content fingerprints with earlier queries.

    Query-based evasion attacks send long runs of highly similar images. Blacklight quantises
    each query, hashes every sliding window of its flattened pixels, keeps the ``top_n``
    largest hashes as the query's probabilistic fingerprint and looks them up in a hash table
    of earlier queries' fingerprints; a query sharing more than ``threshold_`` hashes with one
    earlier query is flagged. Because it is a table look-up, not a nearest-neighbour search, the
    table can be global (``scope="global"``, the paper's choice: it also catches an attacker
    spreading queries over several accounts) or per client (``scope="client"``).

    The paper fixes the match threshold by hand (about half of the top 50 hashes); here
    ``fit(benign)`` chooses the smallest threshold whose per-query false-positive rate on benign
    streams is at most ``fpr``. Quantisation makes the fingerprint robust to small noise, not to
    transforms that move pixels (shifts change which values fall in each window, except a shift
    along the flattened order).

    The fingerprint (see ``fingerprint``) hashes every window of every query of a batch at once
    with a keyed 64-bit universal hash instead of the paper's SHA-256; in production give a
    secret ``key`` (e.g. ``secrets.randbits(128)``, kept out of logs and configs under version
    control): with the default key an attacker can compute which windows are sampled and
    perturb only the others.

    Bounded memory and cost. Each table keeps the fingerprints of its last ``history`` queries
    (oldest evicted first, with their index entries) in a uint64 ring of ``top_n`` hashes per
    query, and an inverted index hash -> stored query that allocates no container for a hash
    held by one stored query (the common case): about 5 KB per stored query at ``top_n=50``.
    Each hash remembers at most ``bucket`` recent queries, so a common window (e.g. blank
    background) cannot make a look-up scan the whole table: a look-up costs O(top_n * bucket)
    at worst. With ``scope="client"`` at most ``max_clients`` tables are kept (least recently
    seen evicted).

    Args:
        step: quantisation step in input units (the paper quantises 0-255 pixels in steps of
            about 50, i.e. about 0.2 for inputs in [0, 1]).
        window: values per hashed window (the paper uses windows of tens of pixels; on 8x8
            digits 8 works, see benchmarks/monitors.py).
        stride: values between window starts.
        top_n: hashes kept per query (the paper: 50).
        fpr: target per-query false-positive rate on benign traffic, in (0, 1).
        scope: ``"global"`` (one table for every client) or ``"client"``.
        history: fingerprints kept per table.
        bucket: query ids kept per hash.
        max_clients: tables kept with ``scope="client"``.
        offset: added to each value before quantising, ``floor((x + offset) / step)``. On
            discrete inputs (e.g. tabular values in {-1, 0, 1} with ``step=1``) use
            ``offset=step / 2``: each value then sits in the middle of its bin, and small noise
            no longer moves it into the next bin (with 0, any negative noise on an integer value
            does).
        key: the secret hash key, a non-negative int (0 by default, reproducible; see above).
            Not shown in the repr.

    Attributes:
        threshold_: alert when a query shares more than this many hashes (set by ``fit``).
        calibration_: the benign queries, target and in-sample false-positive rate of ``fit``.
        queries_to_detection_: client -> the client's query count at its first alert.

    Reference: Li, Shan, Wenger, Zhang, Zheng and Zhao, "Blacklight: Scalable Defense for Neural
    Networks against Query-Based Black-Box Attacks", USENIX Security 2022 (arXiv:2006.14042).

    Example:
        det = Blacklight(fpr=0.005).fit(x_benign)
        alerts = det.update("client-7", x_batch)
    """

    step: float = 0.2
    window: int = 20
    stride: int = 1
    top_n: int = 50
    fpr: float = 0.005
    scope: Scope = "global"
    history: int = 100_000
    bucket: int = 256
    max_clients: int = 1000
    offset: float = 0.0
    key: int = field(default=0, repr=False)
    threshold_: int | None = field(init=False, default=None)
    input_dim_: int | None = field(init=False, default=None)
    calibration_: dict[str, Any] | None = field(init=False, default=None)
    queries_to_detection_: dict[Hashable, int] = field(init=False, default_factory=dict)
    _global: _Table = field(init=False, repr=False)
    _clients: ClientTable[_Table] = field(init=False, repr=False)
    _counts: ClientTable[list[int]] = field(init=False, repr=False)  # global scope: [queries, alerts]
    _last: ClientTable[int] = field(init=False, repr=False)  # the most matches in the client's last batch
    _scratch: _Table | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        owner = "Blacklight"
        check_range("step", self.step, owner=owner, low=0.0, low_open=True,
                    fix="Give the quantisation step in input units, e.g. step=0.2 for [0, 1] inputs.")
        check_range("window", self.window, owner=owner, low=1, integer=True)
        check_range("stride", self.stride, owner=owner, low=1, integer=True)
        check_range("top_n", self.top_n, owner=owner, low=1, integer=True, fix="The paper uses top_n=50.")
        check_range("fpr", self.fpr, owner=owner, low=0.0, high=1.0, low_open=True,
                    fix="Give a per-query false-positive rate such as fpr=0.005.")
        check_choice("scope", self.scope, ("global", "client"), owner=owner)
        check_range("history", self.history, owner=owner, low=1, integer=True)
        check_range("bucket", self.bucket, owner=owner, low=1, integer=True)
        check_range("max_clients", self.max_clients, owner=owner, low=1, integer=True)
        check_range("offset", self.offset, owner=owner,
                    fix="Give a shift in input units, e.g. offset=0.5 with step=1 on values in {-1, 0, 1}.")
        if not isinstance(self.key, int) or isinstance(self.key, bool) or self.key < 0:
            # the value is a secret: name its type only
            got = ("a negative int" if isinstance(self.key, int) and not isinstance(self.key, bool)
                   else f"a {type(self.key).__name__}")
            raise ConfigError(f"{owner}: 'key' must be a non-negative int; got {got}. "
                              "Use a secret such as secrets.randbits(128).")
        self._global = self._table()
        self._clients = ClientTable(self.max_clients)
        self._counts = ClientTable(self.max_clients)
        self._last = ClientTable(self.max_clients)

    def fingerprints(self, x_batch: Tensor) -> list[tuple[int, ...]]:
        """The fingerprint (top_n window hashes, largest first) of each query of the (N, *input_shape)
        batch, as ``fingerprint`` computes it with this detector's settings and key."""
        return [tuple(h for h in row if h) for row in self._prints(x_batch).tolist()]

    def _prints(self, x_batch: Tensor) -> Hashes:
        flat = check_queries(x_batch, owner="Blacklight", dim=self.input_dim_)
        if flat.shape[1] < self.window:
            raise InputError(
                f"Blacklight: queries must hold at least window={self.window} values; got "
                f"{flat.shape[1]}. Use a smaller window."
            )
        return _fingerprint_array(flat, step=self.step, window=self.window, stride=self.stride,
                                  top_n=self.top_n, offset=self.offset, key=self.key)

    def _table(self) -> _Table:
        return _Table(self.history, self.bucket, self.top_n)

    def fit(self, benign: Tensor | Sequence[Tensor]) -> Blacklight:
        """Learn ``threshold_`` from benign query streams.

        With ``scope="global"`` the streams go through one table, one after the other (as
        benign clients would share it); with ``"client"`` each stream gets a fresh table.

        Returns:
            self, fitted; every table is emptied afterwards.
        """
        streams = check_streams(benign, owner="Blacklight")
        self.input_dim_ = None
        dims = {int(np.prod(s.shape[1:])) for s in streams}
        if len(dims) != 1:
            raise InputError(
                f"Blacklight: every benign stream must have the same query size; got {sorted(dims)}. "
                "Fit one detector per input shape."
            )
        scores = torch.cat([self.score_stream(s, fresh=self.scope == "client" or i == 0)
                            for i, s in enumerate(streams)])
        self.input_dim_ = dims.pop()
        windows = _window_count(self.input_dim_, self.window, self.stride)
        if windows < self.top_n:
            warnings.warn(EvaluationWarning(
                f"Blacklight: a query of {self.input_dim_} values has {windows} windows (window="
                f"{self.window}, stride={self.stride}), fewer than top_n={self.top_n}; every window is "
                "kept, so only near-exact duplicates will match. Use a smaller window or stride."
            ), stacklevel=2)
        self.threshold_ = high_threshold(scores, self.fpr)
        flagged = int((scores > self.threshold_).sum())
        self.calibration_ = {
            "queries": int(scores.numel()), "streams": len(streams), "fpr_target": self.fpr,
            "fpr_in_sample": flagged / scores.numel(), "threshold": self.threshold_,
            "max_benign_matches": int(scores.max()),
        }
        self._scratch = None
        self.reset()
        return self

    def score_stream(self, x: Tensor, *, fresh: bool = True) -> Tensor:
        """(N,) match counts of a stream replayed through a scratch table (fresh, or the one used by
        the previous call when ``fresh=False``); the detector's own tables are untouched."""
        if fresh or self._scratch is None:
            self._scratch = self._table()
        table = self._scratch
        out = []
        prints = self._prints(x)
        for row, hashes in zip(prints, prints.tolist(), strict=True):
            fp = [h for h in hashes if h]
            out.append(table.match(fp))
            table.add(row, fp)
        return torch.tensor(out, dtype=torch.long)

    def update(self, client_id: Hashable, x_batch: Tensor) -> list[Alert]:
        """Feed one client's queries, in arrival order; returns one Alert per flagged query."""
        if self.threshold_ is None:
            raise not_fitted(self)
        prints = self._prints(x_batch)
        if self.scope == "client":
            known = self._clients.get(client_id)
            table = self._table() if known is None else known
            for gone in self._clients.touch(client_id, table):
                self.queries_to_detection_.pop(gone, None)
            counts = [table.queries, table.detections]
        else:
            table = self._global
            counts = self._counts.get(client_id) or [0, 0]
            for gone in self._counts.touch(client_id, counts):
                self.queries_to_detection_.pop(gone, None)
        alerts: list[Alert] = []
        most = 0
        for row, hashes in zip(prints, prints.tolist(), strict=True):
            fp = [h for h in hashes if h]
            score = table.match(fp)
            most = max(most, score)
            table.add(row, fp)
            counts[0] += 1
            if score > self.threshold_:
                counts[1] += 1
                alerts.append(self._alert(client_id, score, self.threshold_, counts[0]))
        if self.scope == "client":
            table.queries, table.detections = counts
        self._last.touch(client_id, most)
        return alerts

    def last_scores(self, client_id: Hashable) -> dict[str, float]:
        """The client's latest statistic: ``{"matches": most hashes shared by a query of its last
        batch with an earlier query}``; empty for an unknown client."""
        most = self._last.get(client_id)
        return {} if most is None else {"matches": float(most)}

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's state (or everything when None); the threshold stays.

        With ``scope="global"`` a client's fingerprints stay in the shared table (they are not
        tracked per client); only its counters are forgotten.
        """
        if client_id is None:
            self._global = self._table()
            self._clients.clear()
            self._counts.clear()
            self._last.clear()
            self.queries_to_detection_.clear()
            return
        self._clients.pop(client_id)
        self._counts.pop(client_id)
        self._last.pop(client_id)
        self.queries_to_detection_.pop(client_id, None)

    def queries(self, client_id: Hashable) -> int:
        """Queries seen from the client since it was last reset or evicted (0 if unknown)."""
        if self.scope == "client":
            table = self._clients.get(client_id)
            return 0 if table is None else table.queries
        counts = self._counts.get(client_id)
        return 0 if counts is None else counts[0]

    def _alert(self, client_id: Hashable, score: int, threshold: int, at: int) -> Alert:
        self.queries_to_detection_.setdefault(client_id, at)
        return Alert(
            client_id=client_id, detector="Blacklight", score=float(score), threshold=float(threshold),
            queries=at,
            message=(f"Blacklight: client {client_id!r} sent a query sharing {score} of its "
                     f"{self.top_n} fingerprint hashes with an earlier query (> {threshold}; query "
                     f"{at}); this looks like a query-based evasion attack."),
        )
