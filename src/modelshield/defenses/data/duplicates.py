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
    """Duplicate groups found in a data set (see find_duplicates)."""

    n: int
    groups: tuple[DuplicateGroup, ...]
    near_threshold: float

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
    embed: Embed | None = None,
    chunk: int = 1024,
) -> DuplicateReport:
    """Group exact and near-duplicate rows and flag groups with conflicting labels.

    Exact duplicates: identical strings (text) or identical bytes of the row (arrays).
    Near duplicates: cosine similarity >= ``near_threshold`` between TF-IDF vectors (text)
    or between standardised, optionally embedded, feature rows (tabular, images). Pairs are
    joined transitively into groups (union-find). Similarities are computed in chunks of
    ``chunk`` rows, so memory stays O(chunk * N).

    Args:
        x: texts, a 2-D array, or images (N, C, H, W).
        y: labels, or None.
        near_threshold: cosine similarity in (0, 1]; None checks exact duplicates only.
        embed: optional embedding for arrays (N, ...) -> (N, D).
        chunk: rows per similarity block.

    Returns:
        A DuplicateReport.

    Example:
        rep = find_duplicates(texts, y)
        [g.indices for g in rep.groups if g.conflicting]
    """
    if near_threshold is not None:
        check_range(
            "near_threshold", near_threshold, owner="find_duplicates", low=0.0, high=1.0, low_open=True
        )
    check_range("chunk", chunk, owner="find_duplicates", low=1, integer=True)
    kind = data_kind(x, owner="find_duplicates")
    n = n_rows(x)
    labels = None if y is None else as_labels(y, n=n, owner="find_duplicates")
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    def union(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    keys = _row_keys(x, kind)
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key in first:
            union(first[key], i)
        else:
            first[key] = i
    if near_threshold is not None and n > 1:
        feats = Featurizer(embed=embed).fit(x, owner="find_duplicates").transform(x)
        for a, b in _similar_pairs(feats, near_threshold, chunk):
            union(int(a), int(b))
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(root(i), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        exact = len({keys[i] for i in members}) == 1
        labs = tuple(int(labels[i]) for i in members) if labels is not None else ()
        groups.append(DuplicateGroup(tuple(members), "exact" if exact else "near", labs, len(set(labs)) > 1))
    groups.sort(key=lambda g: g.indices[0])
    return DuplicateReport(n=n, groups=tuple(groups), near_threshold=near_threshold or 1.0)


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
