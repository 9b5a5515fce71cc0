"""Exact and near-duplicate rows, and duplicate groups whose labels conflict."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelshield._checks import check_range
from modelshield.data.features import Embed, Featurizer, as_labels, data_kind, n_rows

__all__ = ["DuplicateGroup", "DuplicateReport", "find_duplicates"]


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """Rows that are copies of one another.

    Attributes:
        indices: the rows, ascending. kind: ``"exact"`` (identical rows) or ``"near"``.
        labels: their labels (empty when no labels were given).
        conflicting: the rows carry more than one label.
    """

    indices: tuple[int, ...]
    kind: Literal["exact", "near"]
    labels: tuple[int, ...]
    conflicting: bool

    def minority(self) -> tuple[int, ...]:
        """Rows whose label differs from the group's majority label (all rows on a tie)."""
        if not self.conflicting:
            return ()
        vals, counts = np.unique(np.asarray(self.labels), return_counts=True)
        if (counts == counts.max()).sum() > 1:
            return self.indices
        major = int(vals[counts.argmax()])
        return tuple(i for i, lab in zip(self.indices, self.labels, strict=True) if lab != major)


@dataclass(frozen=True, slots=True)
class DuplicateReport:
    """Duplicate groups found in a data set (see find_duplicates).

    Attributes:
        n: rows. groups: the duplicate groups, by first row. near_threshold: the cosine used for
        text (1.0 when only exact duplicates were checked). near_radius: the relative radius used
        for arrays (None: not checked). radius: the absolute Euclidean radius it gave (None for
        text or when not checked).
    """

    n: int
    groups: tuple[DuplicateGroup, ...]
    near_threshold: float
    near_radius: float | None = None
    radius: float | None = None

    @property
    def duplicate_rows(self) -> np.ndarray:
        """(N,) bool: rows that repeat an earlier row of their group (the first copy is kept)."""
        mask = np.zeros(self.n, dtype=bool)
        for g in self.groups:
            mask[list(g.indices[1:])] = True
        return mask

    @property
    def conflicting_rows(self) -> np.ndarray:
        """(N,) bool: rows in a duplicate group whose labels disagree."""
        mask = np.zeros(self.n, dtype=bool)
        for g in self.groups:
            if g.conflicting:
                mask[list(g.indices)] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "near_threshold": self.near_threshold,
            "near_radius": self.near_radius,
            "radius": self.radius,
            "groups": len(self.groups),
            "exact_groups": sum(g.kind == "exact" for g in self.groups),
            "near_groups": sum(g.kind == "near" for g in self.groups),
            "conflicting_groups": sum(g.conflicting for g in self.groups),
            "duplicate_rows": int(self.duplicate_rows.sum()),
        }


def find_duplicates(
    x: Any,
    y: Any = None,
    *,
    near_threshold: float | None = 0.95,
    near_radius: float = 0.13,
    embed: Embed | None = None,
    chunk: int = 1024,
) -> DuplicateReport:
    """Group exact and near-duplicate rows and flag groups with conflicting labels.

    Exact duplicates: identical strings (text) or identical bytes of the row (arrays).

    Near duplicates of texts: cosine similarity >= ``near_threshold`` between TF-IDF vectors
    (high-dimensional and sparse, where a cosine near 1 means nearly the same words).

    Near duplicates of arrays (tabular rows, images, embeddings): Euclidean distance between
    standardised (optionally embedded) rows <= ``near_radius`` times the median distance from a
    distinct row to its nearest distinct row: rows far closer to each other than rows of the
    data set typically are. This is the near-duplicate rule of cleanlab's Datalab (its
    ``near_duplicate`` check, default 0.13 of the median nearest-neighbour distance), adopted
    because it is relative to the data's own spacing; a cosine on standardised rows is not a
    duplicate test for a few columns (two 4-feature rows pointing the same way from the mean can
    be far apart, so most rows of a small table fell into one group).

    Groups are formed without transitive chaining: rows are visited in order, and a row that is
    not already in a group joins the group of the earliest kept (first) row within the
    threshold, so every row of a group is a copy of its first row, not of a chain of rows.
    Exact copies always join their first occurrence. Text similarities are computed in chunks of
    ``chunk`` rows (memory O(chunk * N)); array neighbours come from scikit-learn's
    ``NearestNeighbors``.

    Args:
        x: texts, a 2-D array, or images (N, C, H, W).
        y: labels, or None.
        near_threshold: cosine similarity in (0, 1] for texts; None checks exact duplicates only
            (for every kind of data).
        near_radius: for arrays, the radius in (0, 1] relative to the median nearest-neighbour
            distance.
        embed: optional embedding for arrays (N, ...) -> (N, D).
        chunk: rows per similarity block (texts).

    Returns:
        A DuplicateReport.

    Reference:
        Cleanlab Datalab, "near_duplicate" issue type (NearDuplicateIssueManager: threshold 0.13
        times the median nearest-neighbour distance), https://docs.cleanlab.ai.

    Example:
        rep = find_duplicates(texts, y)
        [g.indices for g in rep.groups if g.conflicting]
    """
    owner = "find_duplicates"
    if near_threshold is not None:
        check_range("near_threshold", near_threshold, owner=owner, low=0.0, high=1.0, low_open=True)
    check_range("near_radius", near_radius, owner=owner, low=0.0, high=1.0, low_open=True)
    check_range("chunk", chunk, owner=owner, low=1, integer=True)
    kind = data_kind(x, owner=owner)
    n = n_rows(x)
    labels = None if y is None else as_labels(y, n=n, owner=owner)
    keys = _row_keys(x, kind)
    leader = np.arange(n)  # the first row of each row's group
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key in first:
            leader[i] = first[key]
        else:
            first[key] = i
    distinct = np.fromiter(first.values(), dtype=np.int64, count=len(first))  # ascending
    radius: float | None = None
    if near_threshold is not None and len(distinct) > 1:
        feats = Featurizer(embed=embed).fit(x, owner=owner).transform(x)
        if kind == "text":
            pairs = _similar_pairs(feats, near_threshold, chunk)
        else:
            radius, pairs = _close_pairs(np.asarray(feats)[distinct], near_radius)
            pairs = [(int(distinct[a]), int(distinct[b])) for a, b in pairs]
        _attach(leader, pairs, distinct)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(int(leader[i]), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        exact = len({keys[i] for i in members}) == 1
        labs = tuple(int(labels[i]) for i in members) if labels is not None else ()
        groups.append(DuplicateGroup(tuple(members), "exact" if exact else "near", labs, len(set(labs)) > 1))
    groups.sort(key=lambda g: g.indices[0])
    near_used = near_threshold is not None and kind != "text"
    return DuplicateReport(n=n, groups=tuple(groups), near_threshold=near_threshold or 1.0,
                           near_radius=near_radius if near_used else None, radius=radius)


def _attach(leader: np.ndarray, pairs: list[tuple[int, int]], distinct: np.ndarray) -> None:
    """Leader grouping of distinct rows: each row (in order) that no earlier row has taken joins the
    earliest still-kept row it is close to; exact copies follow the row they copy."""
    close: dict[int, list[int]] = {}
    for a, b in pairs:
        lo, hi = (a, b) if a < b else (b, a)
        close.setdefault(hi, []).append(lo)
    for j in distinct.tolist():
        if j in close:
            kept = [i for i in close[j] if leader[i] == i]
            if kept:
                leader[j] = min(kept)
    leader[:] = leader[leader]  # exact copies of a row that joined a group join it too


def _close_pairs(z: np.ndarray, near_radius: float) -> tuple[float, list[tuple[int, int]]]:
    """(radius, pairs i < j of rows of z within it): radius = near_radius * the median distance from
    a row to its nearest other row (z has no two identical rows)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=2).fit(z)
    dist, _ = nn.kneighbors(z)
    radius = float(near_radius * np.median(dist[:, 1]))
    if radius <= 0.0:
        return radius, []
    _, neighbours = nn.radius_neighbors(z, radius=radius)
    pairs = [(i, int(j)) for i, row in enumerate(neighbours) for j in row.tolist() if j > i]
    return radius, pairs


def _row_keys(x: Any, kind: str) -> list[bytes]:
    if kind == "text":
        return [t.encode("utf-8") for t in x]
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    flat = np.ascontiguousarray(arr.reshape(arr.shape[0], -1))
    return [hashlib.sha256(row.tobytes()).digest() for row in flat]


def _similar_pairs(feats: Any, threshold: float, chunk: int) -> list[tuple[int, int]]:
    """Pairs (i < j) with cosine similarity >= threshold."""
    import scipy.sparse as sp  # type: ignore[import-untyped]  # sklearn dependency, no stubs
    from sklearn.preprocessing import normalize

    z = normalize(feats)
    n = z.shape[0]
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, chunk):
        block = z[start : start + chunk]
        sims = block @ z.T
        sims = sims.toarray() if sp.issparse(sims) else np.asarray(sims)
        rows, cols = np.nonzero(sims >= threshold - 1e-9)
        rows = rows + start
        keep = cols > rows
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    return pairs
