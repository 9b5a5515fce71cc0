"""The demo: one model of each kind through every section that applies, and an index of all three.

``modelshield demo`` assesses the zoo's ``digits-cnn`` (images), ``phishing-gbm`` (tabular
phishing features) and ``spam-nb`` (SMS spam), each with the sections that apply to it, writes
one report per model (``<out>/<model>/report.json`` and ``report.html``) and an ``index.html``
that summarises the three for the business. Everything runs from data inside the package or
scikit-learn (digits, and the embedded UCI phishing and SMS spam files): nothing is downloaded.
The zoo models train on first use and are cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield import __version__
from modelshield._io import write_atomic
from modelshield.assess._section import SectionRunner
from modelshield.assess.plan import AssessmentPlan, BlackBoxPlan, DefensesPlan, EvasionPlan, PhysicalPlan
from modelshield.assess.report import check_new_files, render_page, write_report
from modelshield.assess.sections.spam import PoisoningSection
from modelshield.assess.suite import run, target_inputs
from modelshield.data import ATTRIBUTIONS
from modelshield.targets import TargetRef

__all__ = ["DEMO_MODELS", "DEMO_RUNNERS", "DemoEntry", "DemoModel", "demo_files", "demo_plan", "render_index",
           "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoModel:
    """One model of the demo: its zoo name, kind, sections (full and ``--quick``) and points."""

    name: str
    kind: str
    sections: tuple[str, ...]
    quick_sections: tuple[str, ...]
    n: int
    quick_n: int
    data: str


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("digits-cnn", "image",
              ("evasion", "blackbox", "physical", "backdoor", "extraction", "defenses", "explain",
               "supply-chain"),
              ("evasion", "blackbox", "extraction"), 300, 100, "digits (scikit-learn)"),
    DemoModel("phishing-gbm", "tabular", ("tabular", "blackbox", "extraction", "explain"),
              ("tabular", "extraction"), 300, 100, "phishing-websites (UCI, embedded)"),
    DemoModel("spam-nb", "text", ("poisoning", "text-evasion", "extraction", "explain"),
              ("text-evasion", "extraction"), 200, 100, "sms-spam (UCI, embedded)"),
)
"""The three demo models, in the order they run. Supply chain runs on digits-cnn only: it is the one
with a model file (its cached weights); the phishing and spam zoo entries are rebuilt from the
embedded data on every load, so there is no file to scan or sign."""


DEMO_RUNNERS: Mapping[str, Mapping[str, SectionRunner]] = {
    "spam-nb": {"poisoning": PoisoningSection(rates=(0.0, 0.1, 0.4))},
}
"""Section runners the full demo configures differently from the defaults, by model: spam
poisoning at three rates instead of five (each rate retrains the filter and runs confident
learning's cross-validation, about 18 s on 2 cores), to keep the demo under three minutes."""


def demo_plan(model: DemoModel, *, quick: bool = False) -> AssessmentPlan:
    """The demo's plan for one model: every section that applies, sized to run in seconds."""
    n = model.quick_n if quick else model.n
    sections = model.quick_sections if quick else model.sections
    return AssessmentPlan(
        sections=sections, n=n, batch_size=n, seed=0, evasion=EvasionPlan(steps=10 if quick else 20),
        blackbox=BlackBoxPlan(n=min(n, 50 if quick else 100), budgets=(100, 300, 1000) if quick
                              else (100, 300, 1000, 3000), hsj_budgets=(100,) if quick else (100, 300, 1000)),
        physical=PhysicalPlan(steps=150, n=min(n, 300), certify_n=50, detector_n=100),
        defenses=DefensesPlan(n=min(n, 100)),
    )


def demo_files(out: Path) -> list[Path]:
    """Every file the demo writes under ``out`` (checked before any work, to never overwrite)."""
    files = [out / "index.html"]
    for m in DEMO_MODELS:
        files += [out / m.name / "report.json", out / m.name / "report.html"]
    return files


def _silent(done: int, total: int | None, message: str) -> None:
    """The progress callback of a demo run without a progress bar."""


@dataclass(frozen=True, slots=True)
class DemoEntry:
    """One model's result in the demo: its report (the JSON dict), where it was written, its time."""

    model: DemoModel
    report: Mapping[str, Any]
    json_path: Path
    html_path: Path
    time_s: float


def run_demo(
    out: Path, *, quick: bool = False, force: bool = False, device: str = "cpu",
    progress_for: Callable[[str], Any] | None = None,
) -> list[DemoEntry]:
    """Assess the three demo models and write their reports and ``index.html`` into ``out``.

    Args:
        out: the output folder (``<out>/<model>/report.*`` and ``<out>/index.html``).
        quick: the one-minute tour (fewer sections and points).
        force: overwrite existing files (else ConfigError before any work).
        device: where the image model runs.
        progress_for: optional factory ``label -> context manager yielding a progress callback``
            (the CLI's progress bar); None runs silently.

    Returns:
        The three entries, in ``DEMO_MODELS`` order.
    """
    check_new_files(demo_files(out), overwrite=force, owner="modelshield demo")
    entries: list[DemoEntry] = []
    for m in DEMO_MODELS:
        plan = demo_plan(m, quick=quick)
        started = time.perf_counter()
        label = f"{m.name}: loading (trains it on first use)"
        with nullcontext(_silent) if progress_for is None else progress_for(label) as progress:
            ref = TargetRef(model=m.name, n=plan.n, device=device if m.kind == "image" else "cpu")
            target = ref.load(progress)
            progress(0, None, f"{m.name}: {', '.join(plan.sections)}")
            result = run(plan=plan, progress=progress, runners=None if quick else DEMO_RUNNERS.get(m.name),
                         **target_inputs(target))
        report = result.to_dict()
        json_path, html_path = write_report(report, out / m.name, overwrite=force)
        entries.append(DemoEntry(m, report, json_path, html_path, time.perf_counter() - started))
    write_atomic(out / "index.html", render_index(entries, quick=quick), force=True)
    return entries


def render_index(entries: Sequence[DemoEntry], *, quick: bool = False) -> str:
    """A self-contained ``index.html`` (the reports' styles and badges): each model's overall
    risk, its sections' severities, the first lines of its executive summary and a link to its
    report; the data credits."""
    rows = [{"name": e.model.name, "kind": e.model.kind, "data": e.model.data, "time_s": e.time_s,
             "report": e.report} for e in entries]
    return render_page("index.html.j2", entries=rows, quick=quick, version=__version__,
                       total_s=sum(e.time_s for e in entries), credits=list(ATTRIBUTIONS.values()))
