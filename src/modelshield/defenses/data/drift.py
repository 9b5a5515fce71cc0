"""Distribution drift of a data set against a trusted reference: class balance and features."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshield._checks import check_range
from modelshield.data.features import Embed, Featurizer, as_labels, data_kind, n_rows
from modelshield.errors import InputError

__all__ = ["DriftReport", "FeatureDrift", "drift_report", "psi"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
TEXT_FEATURES = ("chars", "words", "digit_share", "upper_share", "non_ascii_share")


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's shift: two-sample KS statistic and p-value, population stability index."""

    name: str
    ks: float
    p_value: float
    psi: float
    drifted: bool


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Class-balance and feature drift of x against a reference set (see drift_report)."""

    kind: str
    n: int
    n_reference: int
    alpha: float
    class_counts: tuple[int, ...]
    reference_class_counts: tuple[int, ...]
    class_chi2: float
    class_p_value: float
    features: tuple[FeatureDrift, ...]
    text: dict[str, Any] | None

    @property
    def class_drift(self) -> bool:
        return self.class_p_value < self.alpha

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    @property
    def drifted(self) -> bool:
        return self.class_drift or bool(self.drifted_features)

    def to_dict(self) -> dict[str, Any]:
        def share(c: tuple[int, ...]) -> list[float]:
            tot = sum(c) or 1
            return [round(v / tot, 6) for v in c]

        return {
            "kind": self.kind,
            "n": self.n,
            "n_reference": self.n_reference,
            "alpha": self.alpha,
            "drifted": self.drifted,
            "class_balance": {
                "counts": list(self.class_counts),
                "reference_counts": list(self.reference_class_counts),
                "proportions": share(self.class_counts),
                "reference_proportions": share(self.reference_class_counts),
                "chi2": round(self.class_chi2, 6),
                "p_value": self.class_p_value,
                "drifted": self.class_drift,
            },
            "features_tested": len(self.features),
            "drifted_features": list(self.drifted_features)[:50],
            "top_features": [
                {"name": f.name, "ks": round(f.ks, 6), "p_value": f.p_value, "psi": round(f.psi, 6)}
                for f in sorted(self.features, key=lambda f: -f.ks)[:10]
            ],
            "text": self.text,
        }


def psi(values: np.ndarray, reference: np.ndarray, *, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins (0.0001 floor per bin)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        same = np.isclose(values, edges[0]).mean() if edges.size else 1.0
        return float((1 - same) * math.log((1 - same + 1e-4) / 1e-4))
    inner = edges[1:-1]
    p = np.bincount(np.searchsorted(inner, values, side="right"), minlength=edges.size - 1) / max(
        values.size, 1
    )
    q = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=edges.size - 1) / max(
        reference.size, 1
    )
    p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    return float(((p - q) * np.log(p / q)).sum())


def _text_stats(texts: list[str]) -> np.ndarray:
    rows = []
    for t in texts:
        n = max(len(t), 1)
        rows.append(
            [
                len(t),
                len(t.split()),
                sum(c.isdigit() for c in t) / n,
                sum(c.isupper() for c in t) / n,
                sum(ord(c) > 127 for c in t) / n,
            ]
        )
    return np.asarray(rows, dtype=np.float64)


def drift_report(
    x: Any,
    y: Any,
    reference_x: Any,
    reference_y: Any,
    *,
    alpha: float = 0.01,
    psi_threshold: float = 0.25,
    embed: Embed | None = None,
) -> DriftReport:
    """Compare x (and its labels) with a trusted reference set.

    Class balance: chi-square test of homogeneity on the (2, K) table of class counts.
    Features: a two-sample Kolmogorov-Smirnov test per feature (Bonferroni-corrected:
    drift when p < alpha / D) together with the population stability index (drift also needs
    PSI >= ``psi_threshold``, the usual "significant shift" level, so that tiny but
    significant shifts in big samples are not flagged). Tabular rows are tested column by
    column, images pixel by pixel or on ``embed(x)``; text on message statistics (characters,
    words, shares of digits, upper-case and non-ASCII characters) plus a vocabulary summary:
    the share of x's tokens unseen in the reference and the Jensen-Shannon divergence of the
    two token distributions.

    Returns:
        A DriftReport (``drifted``, ``class_drift``, ``drifted_features``, ``to_dict()``).

    Example:
        rep = drift_report(new_texts, new_y, trusted_texts, trusted_y)
        rep.drifted
    """
    check_range("alpha", alpha, owner="drift_report", low=0.0, high=1.0, low_open=True)
    check_range("psi_threshold", psi_threshold, owner="drift_report", low=0.0)
    kind = data_kind(x, owner="drift_report")
    ref_kind = data_kind(reference_x, owner="drift_report")
    if kind != ref_kind:
        raise InputError(
            f"drift_report: reference_x must be the same kind of data as x; got {ref_kind} vs {kind}. "
            "Pass a trusted set of the same form."
        )
    yl = as_labels(y, n=n_rows(x), owner="drift_report")
    yr = as_labels(reference_y, n=n_rows(reference_x), owner="drift_report")
    from scipy.stats import chi2_contingency, ks_2samp  # type: ignore[import-untyped]  # no stubs

    k = int(max(yl.max(), yr.max())) + 1
    counts, ref_counts = np.bincount(yl, minlength=k), np.bincount(yr, minlength=k)
    table = np.stack([counts, ref_counts])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] > 1:
        chi2, p_cls = (float(v) for v in chi2_contingency(table)[:2])
    else:
        chi2, p_cls = 0.0, 1.0
    text: dict[str, Any] | None = None
    if kind == "text":
        a, b = _text_stats(list(x)), _text_stats(list(reference_x))
        names: tuple[str, ...] = TEXT_FEATURES
        text = _vocabulary_shift(list(x), list(reference_x))
    else:
        fz = Featurizer(embed=embed).fit(reference_x, owner="drift_report")
        a, b = fz.raw(x), fz.raw(reference_x)
        names = tuple(f"feature_{j}" for j in range(a.shape[1]))
        if a.shape[1] != b.shape[1]:
            raise InputError(
                f"drift_report: x and reference_x must have the same features; got {a.shape[1]} and "
                f"{b.shape[1]}. Pass rows of the same shape."
            )
    corrected = alpha / max(len(names), 1)
    feats = []
    for j, name in enumerate(names):
        res = ks_2samp(a[:, j], b[:, j])
        stat, p = float(res.statistic), float(res.pvalue)
        ps = psi(a[:, j], b[:, j])
        feats.append(FeatureDrift(name, stat, p, ps, p < corrected and ps >= psi_threshold))
    return DriftReport(
        kind=kind,
        n=n_rows(x),
        n_reference=n_rows(reference_x),
        alpha=alpha,
        class_counts=tuple(int(c) for c in counts),
        reference_class_counts=tuple(int(c) for c in ref_counts),
        class_chi2=chi2,
        class_p_value=p_cls,
        features=tuple(feats),
        text=text,
    )


def _vocabulary_shift(texts: list[str], reference: list[str]) -> dict[str, Any]:
    ca = Counter(tok for t in texts for tok in _TOKEN.findall(t.lower()))
    cb = Counter(tok for t in reference for tok in _TOKEN.findall(t.lower()))
    total_a, total_b = sum(ca.values()) or 1, sum(cb.values()) or 1
    unseen = {tok: c for tok, c in ca.items() if tok not in cb}
    vocab = set(ca) | set(cb)
    js = 0.0
    for tok in vocab:
        p, q = ca.get(tok, 0) / total_a, cb.get(tok, 0) / total_b
        m = (p + q) / 2
        js += (p * math.log2(p / m) if p else 0.0) + (q * math.log2(q / m) if q else 0.0)
    return {
        "unseen_token_share": round(sum(unseen.values()) / total_a, 6),
        "js_divergence": round(js / 2, 6),
        "top_unseen_tokens": [tok for tok, _ in Counter(unseen).most_common(10)],
    }
