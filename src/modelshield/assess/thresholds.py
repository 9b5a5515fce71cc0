"""Pass/fail thresholds on an assessment's summary metrics (the CLI's ``--fail-under``)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelshield.assess.suite import Assessment
from modelshield.errors import ConfigError

__all__ = ["Threshold", "check_thresholds", "parse_threshold"]

_PATTERN = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|=)\s*(\S+)\s*$")
_FIX = ("Write METRIC=VALUE (metric must be at least value), METRIC>=VALUE or METRIC<=VALUE, "
        "e.g. robust_accuracy=0.6")


@dataclass(frozen=True, kw_only=True, slots=True)
class Threshold:
    """A requirement on one summary metric.

    Attributes:
        metric: name in the report's ``summary.metrics``, e.g. ``"robust_accuracy"``.
        op: ``">="`` (the metric must be at least ``value``) or ``"<="`` (at most).
        value: the bound.
    """

    metric: str
    op: Literal[">=", "<="]
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def holds(self, actual: float) -> bool:
        """True when ``actual`` meets the requirement (nan never does)."""
        if math.isnan(actual):
            return False
        return actual >= self.value if self.op == ">=" else actual <= self.value


def parse_threshold(text: str) -> Threshold:
    """Parse ``"robust_accuracy=0.6"`` (at least), ``"name>=v"`` or ``"name<=v"``.

    Raises:
        ConfigError: the text is not of that form or the value is not a finite number.

    Example:
        parse_threshold("robust_accuracy=0.6")  # Threshold(metric='robust_accuracy', op='>=', value=0.6)
    """
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"parse_threshold: a threshold must be METRIC=VALUE; got {text!r}. {_FIX}.")
    metric, op, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            f"parse_threshold: the value of {metric!r} must be a finite number; got {raw!r}. {_FIX}."
        )
    return Threshold(metric=metric, op="<=" if op == "<=" else ">=", value=value)


def check_thresholds(
    assessment: Assessment | Mapping[str, Any], thresholds: Iterable[Threshold]
) -> list[str]:
    """Return one message per threshold the assessment misses (empty when all hold).

    Args:
        assessment: an Assessment, or a report dict as written to report.json.
        thresholds: requirements on ``summary.metrics``.

    Raises:
        ConfigError: a threshold names a metric the summary does not have (the message lists them).
    """
    if isinstance(assessment, Assessment):
        metrics: Mapping[str, Any] = assessment.metrics()
    else:
        metrics = assessment.get("summary", {}).get("metrics", {})
    failures: list[str] = []
    for t in thresholds:
        if t.metric not in metrics:
            names = ", ".join(sorted(metrics)) or "(none)"
            raise ConfigError(
                f"check_thresholds: the metric must be one of the summary metrics {names}; "
                f"got {t.metric!r}. Fix the name in the threshold {t}."
            )
        raw = metrics[t.metric]
        actual = math.nan if raw is None else float(raw)
        if not t.holds(actual):
            bound = "at least" if t.op == ">=" else "at most"
            failures.append(
                f"{t.metric} is {actual:.4g}; required {bound} {t.value:g} (threshold {t})."
            )
    return failures
