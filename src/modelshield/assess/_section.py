"""Report sections, the context a section runs in, and the section plugin registry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from torch import Tensor

from modelshield._checks import check_choice
from modelshield._typing import Progress
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ConfigError
from modelshield.models import CallableModel, TorchModel

__all__ = [
    "ATLAS",
    "SECTIONS",
    "SEVERITIES",
    "AssessmentContext",
    "Figure",
    "Progress",
    "Section",
    "SectionRunner",
    "Severity",
    "Table",
    "atlas",
    "is_text_model",
    "json_float",
    "max_severity",
    "points_line",
    "register_section",
    "skipped_section",
]

Severity: TypeAlias = Literal["none", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("none", "low", "medium", "high", "critical")
"""Severities from least to most serious; the overall severity of a report is the maximum."""


"""Progress callback: ``progress(done, total, description)``, called after each unit of work."""

ATLAS: dict[str, str] = {
    "AML.T0015": "Evade ML Model",
    "AML.T0043": "Craft Adversarial Data",
    "AML.T0043.000": "White-Box Optimization",
    "AML.T0043.001": "Black-Box Optimization",
    "AML.T0043.002": "Black-Box Transfer",
    "AML.T0041": "Physical Environment Access",
    "AML.T0020": "Poison Training Data",
    "AML.T0018": "Backdoor ML Model",
    "AML.T0010": "AI Supply Chain Compromise",
    "AML.T0010.002": "AI Supply Chain Compromise: Data",
    "AML.T0010.003": "AI Supply Chain Compromise: Model",
    "AML.T0011.000": "User Execution: Unsafe AI Artifacts",
}
"""MITRE ATLAS techniques (https://atlas.mitre.org) that sections cite, by id; sections that
cite another technique add it here before calling ``atlas()``."""


def atlas(*ids: str) -> tuple[dict[str, str], ...]:
    """ATLAS references ``({"id", "name"}, ...)`` for technique ids listed in ``ATLAS``."""
    for tid in ids:
        check_choice("atlas id", tid, ATLAS, owner="atlas", fix="Add the technique to ATLAS first.")
    return tuple({"id": tid, "name": ATLAS[tid]} for tid in ids)


def max_severity(severities: Sequence[str]) -> Severity:
    """The most serious of ``severities`` ("none" for an empty sequence)."""
    return max(severities, key=SEVERITIES.index, default="none")  # type: ignore[arg-type]  # validated members


def points_line(n: int, total: int, *, why: str = "") -> str:
    """``Section.points`` for a section run on the first ``n`` of the ``total`` assessment points:
    "all 300 assessment points", or "the first 100 of the 300 assessment points: <why>".

    Raises:
        ConfigError: n < total without ``why`` (a subset must say why it is one).
    """
    if n >= total:
        return f"all {total} assessment points"
    if not why.strip():
        raise ConfigError(f"points_line: {n} of {total} points needs a reason; pass why=... saying "
                          "why this section runs on a subset.")
    return f"the first {n} of the {total} assessment points: {why}"


def json_float(v: float | None, digits: int = 6) -> float | None:
    """Round v for JSON; nan and None become None."""
    return None if v is None or math.isnan(v) else round(float(v), digits)


@dataclass(frozen=True, kw_only=True, slots=True)
class Figure:
    """A PNG figure embedded in the report.

    Attributes:
        title: short heading shown above the image.
        caption: one or two sentences saying what is plotted (which points, which settings).
        png_base64: the PNG bytes, base64-encoded (ASCII).
        how_to_read: the one-line reading guide shown under it ("Lower is worse: ..."); every
            built-in figure has one, and the report shows it as "How to read".
    """

    title: str
    caption: str
    png_base64: str
    how_to_read: str = ""

    def __post_init__(self) -> None:
        if "\n" in self.how_to_read.strip():
            raise ConfigError(f"Figure {self.title!r}: how_to_read must be one line; got "
                              f"{self.how_to_read!r}. Put details in the caption.")

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "caption": self.caption, "how_to_read": self.how_to_read,
                "png_base64": self.png_base64}


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """A small table: column headers and rows of JSON scalars (already formatted or raw)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "rows", tuple(tuple(r) for r in self.rows))
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ConfigError(
                    f"Table: row {i} must have {len(self.columns)} cells like the columns; "
                    f"got {len(row)}. Give one value per column."
                )

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(r) for r in self.rows]}


@dataclass(frozen=True, kw_only=True, slots=True)
class Section:
    """One threat's part of an assessment: what was tested, how bad it is and what fixes it.

    Sequence fields are stored as tuples (lists are accepted).

    Attributes:
        id: stable identifier, e.g. ``"evasion"`` (the key in the report JSON).
        title: heading, e.g. ``"Evasion (white-box, L-inf)"``.
        summary: one or two sentences for the risk table.
        severity: ``"none"``, ``"low"``, ``"medium"``, ``"high"`` or ``"critical"``.
        atlas: MITRE ATLAS techniques, each ``{"id": ..., "name": ...}`` (see ``atlas()``).
        recommendation: the defence that addresses the finding.
        metrics: JSON-safe numbers and nested dicts backing the findings.
        headline: scalar metrics promoted to the report summary (and to ``--fail-under``);
            names must be unique across sections.
        findings: plain-language statements of what was found.
        figures: embedded plots.
        tables: tables shown in the section.
        warnings: sanity-check flags: reasons the numbers may be misleading.
        provenance: settings needed to reproduce the section (e.g. each attack's config).
        points: one line naming the points its numbers are on, and why when they are not all the
            assessment points (see ``points_line``); shown under the section's summary. Every
            built-in section sets it, so that one report tells one story.
    """

    id: str
    title: str
    summary: str
    severity: Severity
    atlas: Sequence[Mapping[str, str]] = ()
    recommendation: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    headline: Mapping[str, float | None] = field(default_factory=dict)
    findings: Sequence[str] = ()
    figures: Sequence[Figure] = ()
    tables: Sequence[Table] = ()
    warnings: Sequence[str] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)
    points: str = ""

    def __post_init__(self) -> None:
        check_choice("severity", self.severity, SEVERITIES, owner=f"Section {self.id!r}")
        for name in ("atlas", "findings", "figures", "tables", "warnings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Section:
        """The Section ``to_dict`` wrote (e.g. one computed by a runner worker).

        Raises:
            ConfigError: d lacks a field or has a bad severity, table or figure.
        """
        try:
            return cls(
                id=d["id"], title=d["title"], summary=d["summary"], severity=d["severity"],
                atlas=tuple(dict(a) for a in d.get("atlas", ())), recommendation=d.get("recommendation", ""),
                metrics=dict(d.get("metrics", {})), headline=dict(d.get("headline", {})),
                findings=tuple(d.get("findings", ())), warnings=tuple(d.get("warnings", ())),
                tables=tuple(Table(title=t["title"], columns=t["columns"], rows=t["rows"])
                             for t in d.get("tables", ())),
                figures=tuple(Figure(title=f["title"], caption=f["caption"], png_base64=f["png_base64"],
                                     how_to_read=f.get("how_to_read", "")) for f in d.get("figures", ())),
                provenance=dict(d.get("provenance", {})), points=d.get("points", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"Section.from_dict: the dict must be a Section's to_dict(); got an error "
                              f"({type(exc).__name__}: {exc}). Pass what Section.to_dict() returned."
                              ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        return {
            "id": self.id,
            "title": self.title,
            "summary": self.summary,
            "severity": self.severity,
            "atlas": [dict(a) for a in self.atlas],
            "recommendation": self.recommendation,
            "metrics": dict(self.metrics),
            "headline": dict(self.headline),
            "findings": list(self.findings),
            "warnings": list(self.warnings),
            "tables": [t.to_dict() for t in self.tables],
            "figures": [f.to_dict() for f in self.figures],
            "provenance": dict(self.provenance),
            "points": self.points,
        }


@dataclass(frozen=True, kw_only=True)
class AssessmentContext:
    """Everything a section runner may use.

    Attributes:
        model: the adapted model (white-box ``TorchModel`` or black-box ``CallableModel``).
        x: ``(N, *input_shape)`` assessment inputs in ``bounds``. y: ``(N,)`` true labels.
        plan: the ``AssessmentPlan`` (sections read their own sub-plan from it).
        model_info: ``name``, ``weights_sha256``, ``path`` and anything else known.
        data_info: ``name``, ``sha256`` and anything else known (e.g. ``classes``).
        bounds: the input range. seed: base seed for every attack. batch_size: rows per call.
        texts: for a text model, the messages the row indices in ``x`` point to.
        text_model: for a user's text model, the model itself (``list[str] -> probabilities``),
            which text sections attack instead of retraining a zoo recipe.
        train: the user's training split ``(x_train, y_train)`` when the data came from the user
            (``x_train`` a tensor of the model's input shape, or a tuple of strings for text),
            else None. Sections draw attacker pools or validate training data from it.
        user_model: the user's model object as loaded (e.g. a scikit-learn estimator), for
            sections that refit a clone of it; None for zoo models.
        earlier: the sections already run in this assessment, by id (``run`` fills it in as it
            goes), for sections that build on another's finding (``"explain"`` reads
            ``"backdoor"``; such a runner says so with ``reads_earlier = True``, so that the
            runner schedules it after the others); empty when a section is run on its own.
        evasion_results: white-box attack results already computed, by ``(attack name, eps)``
            (a runner's point shards, merged); the evasion section runs only the others.
    """

    model: TorchModel | CallableModel
    x: Tensor
    y: Tensor
    plan: Any
    model_info: Mapping[str, Any]
    data_info: Mapping[str, Any]
    bounds: tuple[float, float]
    seed: int
    batch_size: int
    texts: tuple[str, ...] | None = None
    text_model: Any = None
    train: tuple[Any, Tensor] | None = None
    user_model: Any = None
    earlier: Mapping[str, Section] = field(default_factory=dict)
    evasion_results: Mapping[tuple[str, float], EvasionResult] = field(default_factory=dict)


def is_text_model(ctx: AssessmentContext) -> bool:
    """True for a text model, whose assessment points are row indices into its messages."""
    return ctx.model_info.get("modality") == "text" or str(ctx.data_info.get("points", "")).startswith(
        "row indices")


def skipped_section(section_id: str, title: str, reason: str) -> Section:
    """A Section saying that it does not apply to this model, and why (severity ``"none"``)."""
    return Section(
        id=section_id,
        title=title,
        summary=f"Skipped: {reason}",
        severity="none",
        metrics={"skipped": True, "reason": reason},
        findings=(f"Not run: {reason}",),
        provenance={"skipped": reason},
    )


class SectionRunner(Protocol):
    """A threat plugin: builds one Section from the context.

    Register an instance with ``register_section``; an ``AssessmentPlan`` then names it in
    ``sections=(..., id)``. A runner that reads ``ctx.earlier`` sets a class attribute
    ``reads_earlier = True`` (read with ``getattr``; absent means False).
    """

    @property
    def id(self) -> str: ...

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section: ...


SECTIONS: dict[str, SectionRunner] = {}
"""Registered section runners by id, in registration order."""


def register_section(runner: SectionRunner, *, replace: bool = False) -> SectionRunner:
    """Add a section runner to ``SECTIONS`` and return it.

    Raises:
        ConfigError: a runner with the same id is registered and ``replace`` is False.
    """
    if runner.id in SECTIONS and not replace:
        raise ConfigError(
            f"register_section: 'id' must be unique; got {runner.id!r}, which is already "
            "registered. Pick another id or pass replace=True."
        )
    SECTIONS[runner.id] = runner
    return runner
