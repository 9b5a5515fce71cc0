"""Regression gate: what changed between a baseline report and this one (``assess --baseline``).

Owns the per-metric directions (which way is better for the defender), the noise tolerance, the
baseline checks (a modelshield report of the same schema on the same data) and the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelshield.assess._section import SEVERITIES
from modelshield.assess.suite import SCHEMA_VERSION
from modelshield.assess.thresholds import section_not_run
from modelshield.errors import ConfigError

__all__ = [
    "DEFENCE_METRICS",
    "FALLBACK_TOLERANCE",
    "METRICS",
    "SCORE_TOLERANCE",
    "Change",
    "Comparison",
    "MetricRule",
    "check_baseline",
    "compare_reports",
    "load_report",
]

Direction = Literal["higher", "lower"]
"""Which way is better for the defender: ``"higher"`` (accuracy) or ``"lower"`` (attack success)."""
Kind = Literal["rate", "count", "score"]
ChangeStatus = Literal["worse", "better", "same", "unchanged", "changed", "new", "missing"]

_FIX = "Pass the report.json an earlier 'modelshield assess --out DIR' wrote"


@dataclass(frozen=True, slots=True)
class MetricRule:
    """How one headline metric is compared.

    Attributes:
        direction: which way is better for the defender; None for a descriptive number (its
            changes are shown, never counted as a regression).
        kind: ``"rate"`` (a share of the section's points: binomial tolerance), ``"count"`` (a
            number of findings or a 0/1 flag: exact) or ``"score"`` (another number:
            ``SCORE_TOLERANCE``).
    """

    direction: Direction | None
    kind: Kind = "rate"


_UP, _DOWN = MetricRule("higher"), MetricRule("lower")

METRICS: Mapping[str, MetricRule] = {
    # evasion
    "clean_accuracy": _UP, "robust_accuracy": _UP, "attack_success_rate": _DOWN,
    # blackbox
    "blackbox_robust_accuracy": _UP, "blackbox_success_rate": _DOWN,
    # tabular: tabular_valid_rows is the share of the attack's rows that keep the constraints,
    # a property of the attack rather than of the model
    "tabular_success_rate": _DOWN, "malicious_recall_after": _UP, "tabular_valid_rows": MetricRule(None),
    # defenses (defense_gain, a difference of two rates on the same points, is compared as a rate)
    "defended_clean_accuracy": _UP, "defended_robust_accuracy": _UP, "undefended_robust_accuracy": _UP,
    "defense_gain": _UP, "defended_masking_flags": MetricRule("lower", "count"),
    # extraction
    "extraction_fidelity": _DOWN, "extraction_copy_accuracy": _DOWN,
    # backdoor
    "backdoor_max_anomaly_index": MetricRule("lower", "score"),
    "backdoor_flagged_classes": MetricRule("lower", "count"),
    # poisoning
    "poisoned_spam_recall": _UP, "poisoned_spam_f1": _UP, "cleaned_spam_f1": _UP,
    "poison_detection_recall": _UP, "poison_detection_precision": _UP, "training_label_issue_share": _DOWN,
    "poisoned_malicious_recall": _UP,
    # text-evasion
    "text_evasion_success_rate": _DOWN, "text_evasion_median_words_changed": MetricRule("higher", "score"),
    # supply-chain
    "supply_chain_blocking_findings": MetricRule("lower", "count"),
    "supply_chain_signature_verified": MetricRule("higher", "count"),
    # explain: how much the attributions move under attack, a description
    "explain_rank_correlation": MetricRule(None, "score"),
    # physical
    "physical_patch_success_rate": _DOWN, "physical_universal_fooling_rate": _DOWN,
    "physical_certified_accuracy": _UP, "physical_defended_accuracy": _UP, "physical_detection_rate": _UP,
}
"""Comparison rule of every built-in headline metric (``thresholds.HEADLINE_METRICS``). A metric of
a section registered by a user has no known direction: its changes are shown, never a regression."""

DEFENCE_METRICS: frozenset[str] = frozenset({
    "defended_clean_accuracy", "defended_robust_accuracy", "defense_gain", "defended_masking_flags",
    "cleaned_spam_f1", "poison_detection_recall", "poison_detection_precision",
    "physical_certified_accuracy", "physical_defended_accuracy", "physical_detection_rate",
    "supply_chain_signature_verified",
})
"""Metrics that measure a defence (adversarial training, certification, a detector, a signature):
one that got worse is reported as a defence that stopped holding."""

Z = 2.0
"""Standard errors a rate may move before it counts as changed (about 95% two-sided)."""
FALLBACK_TOLERANCE = 0.02
"""Absolute tolerance of a rate whose section does not record its number of points."""
SCORE_TOLERANCE = 0.1
"""Tolerance of a score: this share of the baseline's magnitude, and at least this much absolute."""

# defenses verdicts, best first (defense_verdict): a defence that "holds" and then does not has
# stopped holding
_VERDICTS = ("holds", "no gain", "masked", "failed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One compared item: a section's severity, a headline metric, or the defence verdict.

    Attributes:
        kind: ``"section"``, ``"metric"`` or ``"verdict"`` (the defenses section's).
        name: the section id or the metric name.
        section: the section the item belongs to.
        status: sections: ``"worse"``, ``"better"``, ``"same"``, ``"new"`` (not in the baseline, or
            not run there) or ``"missing"`` (in the baseline, not in this report). Metrics:
            ``"worse"``, ``"better"``, ``"unchanged"`` (within the tolerance), ``"changed"`` (no
            known direction), ``"new"`` or ``"missing"`` (measured in the baseline, not now).
        baseline: the baseline's value (a severity or verdict for sections and verdicts).
        current: this report's value.
        tolerance: the absolute tolerance a metric was compared with (None for sections).
        defence: the item measures a defence (``DEFENCE_METRICS``, the defenses verdict).
        regression: this change makes the comparison regressed.
        message: one line saying what changed.
    """

    kind: Literal["section", "metric", "verdict"]
    name: str
    section: str | None
    status: ChangeStatus
    baseline: float | str | None
    current: float | str | None
    tolerance: float | None = None
    defence: bool = False
    regression: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """The outcome of ``compare_reports``.

    Attributes:
        changes: every compared section, verdict and headline metric (unchanged ones included),
            sections first, in report order.
        baseline: the baseline's identity: model name and weights digest, generation time, severity.
        tolerance: the fixed absolute tolerance, or None for the binomial rule (see ``compare_reports``).
        notes: what the reader should know: a plan that differs, the same model weights.
    """

    changes: tuple[Change, ...]
    baseline: Mapping[str, Any]
    tolerance: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def regressions(self) -> tuple[Change, ...]:
        """The changes that make the comparison regressed."""
        return tuple(c for c in self.changes if c.regression)

    @property
    def regressed(self) -> bool:
        """True when a risk got worse or a defence stopped holding (see ``compare_reports``)."""
        return any(c.regression for c in self.changes)

    def lines(self) -> list[str]:
        """One line per change that is not unchanged, then a count of the unchanged items."""
        shown = [c.message for c in self.changes if c.status not in ("same", "unchanged")]
        quiet = sum(c.status in ("same", "unchanged") for c in self.changes)
        if quiet:
            shown.append(f"{quiet} item{'s' if quiet != 1 else ''} unchanged (metrics within their "
                         "tolerance, sections at the same severity).")
        return shown

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c.status] = counts.get(c.status, 0) + 1
        return {
            "regressed": self.regressed,
            "baseline": dict(self.baseline),
            "tolerance": self.tolerance,
            "tolerance_rule": (
                "rates: 2 binomial standard errors of the difference; scores: 10% (at least 0.1); "
                "counts: exact"
                if self.tolerance is None else
                f"rates and scores: {self.tolerance:g} absolute; counts: exact"),
            "counts": counts,
            "regressions": [c.message for c in self.regressions],
            "notes": list(self.notes),
            "changes": [c.to_dict() for c in self.changes],
        }


# -- loading and checking a baseline ------------------------------------------------------------

def _check_report(report: object, *, owner: str, what: str) -> Mapping[str, Any]:
    """report as a Mapping, or ConfigError when it does not have a modelshield report's shape."""
    if not isinstance(report, Mapping):
        raise ConfigError(f"{owner}: the {what} must be a modelshield report (a JSON object); got "
                          f"{type(report).__name__}. {_FIX}.")
    missing = [k for k in ("schema_version", "model", "data", "summary", "sections") if k not in report]
    summary = report.get("summary")
    if not missing and not (isinstance(summary, Mapping) and isinstance(summary.get("metrics"), Mapping)):
        missing = ["summary.metrics"]
    sections = report.get("sections")
    shaped = isinstance(sections, list) and all(
        isinstance(s, Mapping) and "id" in s and "severity" in s for s in sections)
    if not missing and not shaped:
        missing = ["sections[].id/severity"]
    if missing:
        raise ConfigError(f"{owner}: the {what} must be a modelshield report; got a JSON object without "
                          f"{', '.join(repr(m) for m in missing)}. {_FIX}.")
    if report["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(
            f"{owner}: the {what} must have report schema version {SCHEMA_VERSION} (this modelshield's); "
            f"got {report['schema_version']!r}. Re-run the baseline assessment with this version of "
            "modelshield and compare against its report.json.")
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json written by ``modelshield assess`` (or a folder holding one) and check its shape.

    Args:
        path: the report.json file, or the ``--out`` folder of an earlier assessment.

    Returns:
        The report dict.

    Raises:
        ConfigError: the file is missing, unreadable, not JSON, not a modelshield report, or of
            another report schema version (one line naming the path and the fix).
    """
    owner = "load_report"
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "report.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{owner}: the baseline must be an existing report.json; got {str(file)!r} "
                          f"(no such file). {_FIX}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{owner}: the baseline must be a readable UTF-8 report.json; got {str(file)!r} "
                          f"({type(exc).__name__}: {exc}). {_FIX}.") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{owner}: the baseline must be valid JSON; got {str(file)!r}, which is not "
                          f"(line {exc.lineno}, column {exc.colno}: {exc.msg}). {_FIX}.") from None
    return dict(_check_report(report, owner=f"{owner} ({file})", what="baseline"))


def check_baseline(baseline: Mapping[str, Any], *, data: Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``baseline`` is a report of this schema on the data ``data`` describes.

    The model may differ (a new version of it is what a regression gate compares). The data may
    not: a number that moved because the points changed says nothing about the model. Two data
    sets are the same when their SHA-256 digests are (when either report lacks a digest, their
    names must match).

    Args:
        baseline: the baseline report dict.
        data: this assessment's data info (a report's ``"data"``: ``name``, ``sha256``).
    """
    owner = "check_baseline"
    _check_report(baseline, owner=owner, what="baseline")
    old = baseline["data"] if isinstance(baseline["data"], Mapping) else {}
    old_sha, new_sha = old.get("sha256"), data.get("sha256")
    same = old_sha == new_sha if old_sha and new_sha else old.get("name") == data.get("name")
    if not same:
        def label(info: Mapping[str, Any]) -> str:
            sha = info.get("sha256")
            return f"{info.get('name')!s} (sha256 {str(sha)[:12]})" if sha else str(info.get("name"))

        raise ConfigError(
            f"{owner}: the baseline must assess the same data as this assessment, {label(data)}; got a "
            f"baseline on {label(old)}. Compare runs on one data set (the same --data), or re-run the "
            "baseline on this data.")


# -- comparing ----------------------------------------------------------------------------------

def _number(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def _not_run(section: Mapping[str, Any]) -> str | None:
    """Why a section did not run ("failed: reason" or "skipped: reason"), or None when it ran."""
    state = section_not_run(section.get("metrics"))
    return None if state is None else f"{state[0]}: {state[1]}"


def _severity_rank(sev: object) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else -1


def _section_points(section: Mapping[str, Any] | None, report: Mapping[str, Any]) -> int | None:
    """The section's number of points (``metrics.n``), else the report's; None when unknown."""
    for source in ((section or {}).get("metrics"), report["summary"]):
        n = source.get("n") if isinstance(source, Mapping) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def _tolerance(rule: MetricRule, old: float, new: float, n_old: int | None, n_new: int | None,
               fixed: float | None) -> float:
    """Absolute tolerance for one metric (see ``compare_reports``)."""
    if rule.kind == "count":
        return 0.0
    if rule.kind == "score":
        return fixed if fixed is not None else max(SCORE_TOLERANCE, SCORE_TOLERANCE * abs(old))
    if fixed is not None:
        return fixed
    if n_old is None or n_new is None:
        return FALLBACK_TOLERANCE
    p, q = min(max(old, 0.0), 1.0), min(max(new, 0.0), 1.0)
    return Z * math.sqrt(p * (1 - p) / n_old + q * (1 - q) / n_new)


def _fmt(v: float | str | None, kind: Kind) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, str):
        return v
    if kind == "rate":
        return f"{100 * v:.1f}%"
    return f"{v:g}"


def _delta(d: float, kind: Kind) -> str:
    return f"{100 * abs(d):.1f} points" if kind == "rate" else f"{abs(d):.4g}"


def _compare_metric(name: str, section: str | None, old: float | None, new: float | None, *,
                    n_old: int | None, n_new: int | None, fixed: float | None, in_old: bool,
                    in_new: bool) -> Change:
    unknown_kind: Kind = "rate" if all(v is None or 0.0 <= v <= 1.0 for v in (old, new)) else "score"
    rule = METRICS.get(name, MetricRule(None, unknown_kind))
    defence = name in DEFENCE_METRICS
    where = f"{name} ({section})" if section else name

    def change(status: ChangeStatus, message: str, *, tol: float | None = None,
               regression: bool = False) -> Change:
        return Change(kind="metric", name=name, section=section, status=status, baseline=old, current=new,
                      tolerance=tol, defence=defence, regression=regression, message=message)

    if old is None:
        text = "new" if not in_old else "not measured in the baseline"
        return change("new", f"{where}: {text}, now {_fmt(new, rule.kind)}.")
    if new is None:
        why = "not in this report" if not in_new else "not measured now"
        return change("missing", f"{where}: {_fmt(old, rule.kind)} in the baseline, {why} (a gate cannot "
                                 "pass on a number that does not exist).",
                      regression=rule.direction is not None)
    tol = _tolerance(rule, old, new, n_old, n_new, fixed)
    d = new - old
    arrow = f"{where}: {_fmt(old, rule.kind)} -> {_fmt(new, rule.kind)}"
    if abs(d) <= tol + 1e-9:  # reports round to 6 digits: equal numbers may differ in the last bits
        return change("unchanged", f"{arrow}, within the tolerance {_delta(tol, rule.kind)}.", tol=tol)
    if rule.direction is None:
        return change("changed", f"{arrow}, changed by {_delta(d, rule.kind)} (a description, not a risk).",
                      tol=tol)
    worse = (d < 0) if rule.direction == "higher" else (d > 0)
    tail = f" (tolerance {_delta(tol, rule.kind)})" if tol else ""
    text = (f"{arrow}, {'worse' if worse else 'better'} by {_delta(d, rule.kind)}{tail}"
            + (": a defence got weaker." if worse and defence else "."))
    return change("worse" if worse else "better", text, tol=tol, regression=worse)


def _compare_section(sid: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> Change:
    was = None if old is None else str(old.get("severity"))
    now = None if new is None else str(new.get("severity"))

    def change(status: ChangeStatus, message: str, *, regression: bool = False) -> Change:
        return Change(kind="section", name=sid, section=sid, status=status, baseline=was, current=now,
                      regression=regression, message=f"section {sid}: {message}")

    old_why = None if old is None else _not_run(old)
    new_why = None if new is None else _not_run(new)
    if old is None:
        return change("new", f"new, severity {now}" + (f" ({new_why})." if new_why else "."))
    if new is None:
        return change("missing", f"assessed in the baseline (severity {was}), not in this report; add it "
                                 "to --sections to compare it.", regression=old_why is None)
    if old_why is not None and new_why is not None:
        return change("same", f"not run in either ({new_why}).")
    if old_why is not None:
        return change("new", f"not run in the baseline ({old_why}); now severity {now}.")
    if new_why is not None:
        return change("missing", f"assessed in the baseline (severity {was}), not run now ({new_why}).",
                      regression=True)
    a, b = _severity_rank(was), _severity_rank(now)
    if a == b:
        return change("same", f"severity {now} in both.")
    status: ChangeStatus = "worse" if b > a else "better"
    return change(status, f"severity {was} -> {now} ({status}).", regression=status == "worse")


def _compare_verdict(old: Mapping[str, Any], new: Mapping[str, Any]) -> Change | None:
    """The defenses verdict's change (holds / no gain / masked / failed), None without verdicts."""
    a, b = ((s.get("metrics") or {}).get("verdict") for s in (old, new))
    if a not in _VERDICTS or b not in _VERDICTS:
        return None
    worse = _VERDICTS.index(b) > _VERDICTS.index(a)
    status: ChangeStatus = "same" if a == b else "worse" if worse else "better"
    if a == b:
        message = f"defenses verdict: {b} in both."
    else:
        tail = ": the defence stopped holding." if worse and a == "holds" else "."
        message = f"defenses verdict: {a} -> {b} ({status}){tail}"
    return Change(kind="verdict", name="verdict", section="defenses", status=status, baseline=a, current=b,
                  defence=True, regression=status == "worse", message=message)


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, Mapping):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _plan_notes(baseline: Mapping[str, Any], current: Mapping[str, Any], shared: Iterable[str]) -> list[str]:
    """A note naming the plan settings that differ (batch size aside; sections in both reports)."""
    plans = [(r.get("provenance") or {}).get("plan") or {} for r in (baseline, current)]
    if not all(isinstance(p, Mapping) for p in plans):
        return []
    keep = {"n", "seed", *shared}
    old, new = (_flat({k: v for k, v in p.items() if k in keep}) for p in plans)
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)]
    if not diffs:
        return []
    return [f"The plan differs from the baseline's ({'; '.join(diffs)}): numbers may move because of the "
            "settings, not the model. Re-run the baseline with these settings for a like-for-like gate."]


def _identity(report: Mapping[str, Any]) -> dict[str, Any]:
    model = report["model"] if isinstance(report["model"], Mapping) else {}
    return {"model": model.get("name"), "weights_sha256": model.get("weights_sha256"),
            "generated_at": report.get("generated_at"), "severity": report["summary"].get("severity")}


def compare_reports(baseline: Mapping[str, Any], current: Mapping[str, Any], *,
                    tolerance: float | None = None) -> Comparison:
    """Compare an assessment with a baseline assessment of (usually) an earlier model version.

    Compared: each section's severity (worse, better, same, new, missing), the defenses
    section's verdict (holds, no gain, masked, failed) and each headline metric of
    ``summary.metrics`` (worse, better or unchanged, by the direction that is better for the
    defender, ``METRICS``). The comparison is **regressed** when a risk got worse or a defence
    stopped holding:

    - a section's severity rose, or a section assessed in the baseline did not run now (it
      failed, was skipped or is not in the report: a gate never passes silently);
    - a headline metric moved the wrong way by more than its tolerance, or was measured in the
      baseline and is not now (a defence metric, ``DEFENCE_METRICS``, that got worse is a
      defence that stopped holding);
    - the defenses verdict got worse (``"holds"`` to anything else: the defence stopped holding).

    New sections and metrics, and metrics without a known direction, are shown but never regress.

    Tolerance (sampling noise): with ``tolerance=None`` a rate (a share of the section's ``n``
    points: accuracies, success rates, fidelity) may move by ``2 * sqrt(p0 (1 - p0) / n0 +
    p1 (1 - p1) / n1)`` (two standard errors of the difference of two binomial proportions; the
    reports' own values and points), e.g. 0.06 for 60% -> 55% on 500 points and 0.14 on 100
    points; 0.02 when a section does not record its points. A float replaces that rule with one
    absolute tolerance. Counts (masking flags, blocking findings, flagged classes, a verified
    signature) are exact: any increase is worse. Other scores (anomaly index, words changed) may
    move by 10% of the baseline's magnitude (at least 0.1), or by the float given.

    Args:
        baseline: the baseline report dict (``load_report``); its model may differ.
        current: this assessment's report dict (``Assessment.to_dict()``).
        tolerance: None for the rule above, else an absolute tolerance in [0, 1] for rates and scores.

    Returns:
        The Comparison (``regressed``, ``changes``, ``to_dict()``).

    Raises:
        ConfigError: either dict is not a modelshield report, the schema versions differ, the data
            differ (``check_baseline``), or tolerance is not a number in [0, 1].

    Example:
        cmp = compare_reports(load_report("old/report.json"), result.to_dict())
        if cmp.regressed: print(*cmp.lines(), sep="\\n")
    """
    owner = "compare_reports"
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, int | float)
                                  or not 0.0 <= tolerance <= 1.0):
        raise ConfigError(f"{owner}: 'tolerance' must be None or a number in [0.0, 1.0]; got {tolerance!r}. "
                          "Use None for two binomial standard errors, or e.g. 0.02.")
    _check_report(current, owner=owner, what="current report")
    check_baseline(baseline, data=current["data"] if isinstance(current["data"], Mapping) else {})
    old_sections = {str(s["id"]): s for s in baseline["sections"]}
    new_sections = {str(s["id"]): s for s in current["sections"]}
    order = [*new_sections, *(s for s in old_sections if s not in new_sections)]
    changes: list[Change] = []
    for sid in order:
        change = _compare_section(sid, old_sections.get(sid), new_sections.get(sid))
        changes.append(change)
        if sid == "defenses" and sid in old_sections and sid in new_sections:
            verdict = _compare_verdict(old_sections[sid], new_sections[sid])
            if verdict is not None:
                changes.append(verdict)
    gone = {c.name for c in changes if c.kind == "section" and c.status == "missing"}

    def owners(report: Mapping[str, Any]) -> dict[str, str]:
        return {str(k): str(s["id"]) for s in report["sections"] for k in (s.get("headline") or {})}

    old_owner, new_owner = owners(baseline), owners(current)
    old_metrics, new_metrics = baseline["summary"]["metrics"], current["summary"]["metrics"]
    names = [k for k in (*new_metrics, *old_metrics) if "." not in str(k)]
    for name in dict.fromkeys(names):
        section = new_owner.get(name) or old_owner.get(name)
        if section in gone:  # the section's own change already says it is not measured now
            continue
        changes.append(_compare_metric(
            name, section, _number(old_metrics.get(name)), _number(new_metrics.get(name)),
            n_old=_section_points(old_sections.get(section or ""), baseline),
            n_new=_section_points(new_sections.get(section or ""), current),
            fixed=None if tolerance is None else float(tolerance),
            in_old=name in old_metrics, in_new=name in new_metrics))
    shared = [s for s in new_sections if s in old_sections]
    notes = _plan_notes(baseline, current, shared)
    ident_old, ident_new = _identity(baseline), _identity(current)
    if ident_old["weights_sha256"] and ident_old["weights_sha256"] == ident_new["weights_sha256"]:
        notes.append("The baseline assessed the same model weights (equal SHA-256).")
    return Comparison(changes=tuple(changes), baseline=ident_old, tolerance=tolerance, notes=tuple(notes))
