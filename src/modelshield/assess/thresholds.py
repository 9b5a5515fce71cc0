"""Pass/fail thresholds on an assessment's summary metrics (the CLI's ``--fail-under``).

A threshold is a gate, so it never passes silently: a metric that is nan or None misses it, and
so does a metric that was not measured because its section failed (a ``ModelShieldError`` became
a failed section, see ``modelshield.assess.suite.failed_section``) or was skipped; the message
then names the section and its reason (the CLI exits 1, as for any missed threshold). Only a
metric that no section of the run could report is a usage error (``ConfigError``, exit 2).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelshield.assess.suite import Assessment
from modelshield.errors import ConfigError

__all__ = ["HEADLINE_METRICS", "Threshold", "check_threshold_metrics", "check_thresholds", "parse_threshold",
           "section_not_run"]

_PATTERN = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|=)\s*(\S+)\s*$")
_FIX = ("Write METRIC=VALUE (metric must be at least value), METRIC>=VALUE or METRIC<=VALUE, "
        "e.g. robust_accuracy=0.6")


HEADLINE_METRICS: Mapping[str, tuple[str, ...]] = {
    "evasion": ("clean_accuracy", "robust_accuracy", "attack_success_rate"),
    "blackbox": ("blackbox_robust_accuracy", "blackbox_success_rate"),
    "tabular": ("tabular_success_rate", "malicious_recall_after", "tabular_valid_rows"),
    "defenses": ("defended_clean_accuracy", "defended_robust_accuracy", "undefended_robust_accuracy",
                 "defense_gain", "defended_masking_flags"),
    "extraction": ("extraction_fidelity", "extraction_copy_accuracy"),
    "backdoor": ("backdoor_max_anomaly_index", "backdoor_flagged_classes"),
    "poisoning": ("poisoned_spam_recall", "poisoned_spam_f1", "cleaned_spam_f1",
                  "poison_detection_recall", "poison_detection_precision", "training_label_issue_share",
                  "poisoned_malicious_recall"),
    "text-evasion": ("text_evasion_success_rate", "text_evasion_median_words_changed"),
    "supply-chain": ("supply_chain_blocking_findings", "supply_chain_signature_verified"),
    "explain": ("explain_rank_correlation",),
    "physical": ("physical_patch_success_rate", "physical_universal_fooling_rate",
                 "physical_certified_accuracy", "physical_defended_accuracy", "physical_detection_rate"),
}
"""Headline summary metrics of each built-in section (a section's other numbers are
``<section>.<metric>``), known before the assessment runs so a misspelt threshold fails at once."""


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


def check_threshold_metrics(thresholds: Iterable[Threshold], sections: Iterable[str]) -> None:
    """Check, before running, that each threshold names a metric the planned sections report.

    A bare name must be a headline metric of one of ``sections`` (``HEADLINE_METRICS``); a dotted
    ``<section>.<metric>`` name must start with one of ``sections`` (its metric part is checked by
    ``check_thresholds`` after the run). Sections this module does not know (registered by a user)
    disable the check of bare names, since their headline metrics are unknown until they run.

    Raises:
        ConfigError: a threshold's metric cannot be reported; the message suggests the closest name.
    """
    chosen = tuple(sections)
    known = all(s in HEADLINE_METRICS for s in chosen)
    names = [m for s in chosen for m in HEADLINE_METRICS.get(s, ())]
    for t in thresholds:
        section, dot, _ = t.metric.partition(".")
        if dot:
            if section in chosen:
                continue
            close = difflib.get_close_matches(section, chosen, n=1)
            hint = f" Did you mean '{close[0]}.{t.metric.partition('.')[2]}'?" if close else ""
            raise ConfigError(
                f"check_threshold_metrics: a dotted metric must start with a planned section "
                f"({', '.join(chosen)}); got {t.metric!r}.{hint} Fix the threshold {t} or add the "
                "section."
            )
        if not known or t.metric in names:
            continue
        close = difflib.get_close_matches(t.metric, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"check_threshold_metrics: the metric must be a summary metric of the planned sections "
            f"({', '.join(names)}, or <section>.<metric>); got {t.metric!r}.{hint} Fix the name in the "
            f"threshold {t}."
        )


def section_not_run(metrics: object) -> tuple[Literal["failed", "skipped"], str] | None:
    """``("failed" or "skipped", reason)`` for the metrics of a section that did not run, else None
    (also for metrics that are not a mapping, as in a hostile report file). A failed section's
    reason starts with its error class."""
    if not isinstance(metrics, Mapping):
        return None
    failed = metrics.get("failed") is True
    if not failed and metrics.get("skipped") is not True:
        return None
    reason = str(metrics.get("reason") or "no reason given").rstrip(". ")
    if failed and metrics.get("error"):
        reason = f"{metrics['error']}: {reason}"
    return ("failed" if failed else "skipped"), reason


def _section_states(assessment: Assessment | Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(section id, "failed" or "skipped", reason)`` of each section that did not run."""
    if isinstance(assessment, Assessment):
        sections: list[tuple[str, object]] = [(s.id, s.metrics) for s in assessment.sections]
    else:
        raw = assessment.get("sections", [])
        sections = [(str(s.get("id")), s.get("metrics")) for s in raw if isinstance(s, Mapping)]
    return [(sid, *state) for sid, metrics in sections if (state := section_not_run(metrics)) is not None]


def _not_run_message(t: Threshold, states: list[tuple[str, str, str]]) -> str | None:
    """The miss message for a threshold whose metric belongs to a section that failed or was skipped."""
    section, dot, _ = t.metric.partition(".")
    owners = [section] if dot else [s for s, names in HEADLINE_METRICS.items() if t.metric in names]
    hits = [st for st in states if st[0] in owners]
    if not hits and not dot:  # a user-registered section may have owned a bare name
        hits = [st for st in states if st[0] not in HEADLINE_METRICS]
    if not hits:
        return None
    why = "; ".join(f"the section '{sid}' {state} ({reason})" for sid, state, reason in hits)
    return (f"{t.metric} was not measured: {why}. A threshold on it cannot be met (threshold {t}); "
            "fix what the section reports or drop the threshold.")


def check_thresholds(
    assessment: Assessment | Mapping[str, Any], thresholds: Iterable[Threshold]
) -> list[str]:
    """Return one message per threshold the assessment misses (empty when all hold).

    A threshold misses when its metric is below (or above) the bound, is nan/None, or was not
    measured because the section reporting it failed or was skipped in this run (the message
    names the section and its reason): a gate never passes on a number that does not exist.

    Args:
        assessment: an Assessment, or a report dict as written to report.json.
        thresholds: requirements on ``summary.metrics``.

    Raises:
        ConfigError: a threshold names a metric the summary does not have and no failed or
            skipped section could have reported (the message lists the metrics).
    """
    if isinstance(assessment, Assessment):
        metrics: Mapping[str, Any] = assessment.metrics()
    else:
        metrics = assessment.get("summary", {}).get("metrics", {})
    states = _section_states(assessment)
    failures: list[str] = []
    for t in thresholds:
        if t.metric not in metrics:
            not_run = _not_run_message(t, states)
            if not_run is not None:
                failures.append(not_run)
                continue
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
