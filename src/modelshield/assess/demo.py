"""The demo: one model of each kind through every section that applies, and an index of all three.

``modelshield demo`` assesses the zoo's ``digits-cnn`` (images), ``phishing-gbm`` (tabular
phishing features) and ``spam-nb`` (SMS spam), each with the sections that apply to it, writes
one report per model (``<out>/<model>/report.json`` and ``report.html``) and an ``index.html``
that summarises the three for the business. Everything runs from data inside the package or
scikit-learn (digits, and the embedded UCI phishing and SMS spam files): nothing is downloaded.
The zoo models train on first use and are cached.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield._io import write_atomic
from modelshield.assess.plan import AssessmentPlan, BlackBoxPlan, EvasionPlan, PhysicalPlan
from modelshield.assess.report import check_new_files, write_report
from modelshield.assess.suite import run, target_inputs
from modelshield.data import ATTRIBUTIONS
from modelshield.targets import TargetRef

__all__ = ["DEMO_MODELS", "DemoEntry", "DemoModel", "demo_files", "demo_plan", "render_index", "run_demo"]


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
              ("evasion", "blackbox", "physical", "backdoor", "extraction", "defenses", "explain"),
              ("evasion", "blackbox", "extraction"), 300, 100, "digits (scikit-learn)"),
    DemoModel("phishing-gbm", "tabular", ("tabular", "blackbox", "extraction", "explain"),
              ("tabular", "extraction"), 300, 100, "phishing-websites (UCI, embedded)"),
    DemoModel("spam-nb", "text", ("poisoning", "text-evasion", "extraction", "explain"),
              ("text-evasion", "extraction"), 200, 100, "sms-spam (UCI, embedded)"),
)
"""The three demo models, in the order they run."""


def demo_plan(model: DemoModel, *, quick: bool = False) -> AssessmentPlan:
    """The demo's plan for one model: every section that applies, sized to run in seconds."""
    n = model.quick_n if quick else model.n
    sections = model.quick_sections if quick else model.sections
    return AssessmentPlan(
        sections=sections, n=n, batch_size=n, seed=0, evasion=EvasionPlan(steps=10 if quick else 20),
        blackbox=BlackBoxPlan(n=min(n, 50 if quick else 100), budgets=(100, 300, 1000) if quick
                              else (100, 300, 1000, 3000), hsj_budgets=(100,) if quick else (100, 300, 1000)),
        physical=PhysicalPlan(steps=150, n=min(n, 300), certify_n=50, detector_n=100),
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
            result = run(plan=plan, progress=progress, **target_inputs(target))
        report = result.to_dict()
        json_path, html_path = write_report(report, out / m.name, overwrite=force)
        entries.append(DemoEntry(m, report, json_path, html_path, time.perf_counter() - started))
    write_atomic(out / "index.html", render_index(entries, quick=quick), force=True)
    return entries


_SEV_COLOURS = {"critical": "#cf222e", "high": "#d1242f", "medium": "#bf8700", "low": "#0969da",
                "none": "#1a7f37"}


def _badge(severity: str) -> str:
    colour = _SEV_COLOURS.get(severity, "#57606a")
    return (f'<span class="badge" style="background:{colour}">{html.escape(severity.upper())}</span>')


def render_index(entries: Sequence[DemoEntry], *, quick: bool = False) -> str:
    """A self-contained ``index.html``: each model's overall risk, its sections' severities, the
    first lines of its executive summary and a link to its report; the data credits."""
    rows = []
    for e in entries:
        r = e.report
        biz = r.get("business") or {}
        summary = "".join(f"<p>{html.escape(line)}</p>" for line in biz.get("executive_summary", [])[:2])
        chips = " ".join(f'<span class="chip">{html.escape(str(s["id"]))} {_badge(str(s["severity"]))}</span>'
                         for s in r.get("sections", []))
        link = f"{e.model.name}/report.html"
        rows.append(
            f'<section class="card" id="model-{html.escape(e.model.name)}">'
            f'<div class="head"><h2><a href="{html.escape(link)}">{html.escape(e.model.name)}</a></h2>'
            f'{_badge(str(r.get("summary", {}).get("severity", "none")))}</div>'
            f'<p class="meta">{html.escape(e.model.kind)} model on {html.escape(e.model.data)}, '
            f'{r.get("summary", {}).get("n")} points, {e.time_s:.0f} s</p>'
            f'<div class="chips">{chips}</div>{summary}'
            f'<p><a href="{html.escape(link)}">Open the full report</a> '
            f'(<a href="{e.model.name}/report.json">JSON</a>)</p></section>')
    credits = "".join(f"<li>{html.escape(text)}</li>" for text in ATTRIBUTIONS.values())
    total = sum(e.time_s for e in entries)
    mode = "quick tour" if quick else "full suite"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelshield demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font-family: system-ui, sans-serif; margin: 0; background: #f6f8fa; color: #1f2328; }}
 header {{ background: #0b2a4a; color: #fff; padding: 24px 40px; }}
 main {{ max-width: 1100px; margin: 24px auto; padding: 0 16px; }}
 .card {{ background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 24px;
          margin-bottom: 16px; }}
 .head {{ display: flex; align-items: center; gap: 12px; }} .head h2 {{ margin: 0; }}
 .badge {{ color: #fff; border-radius: 12px; padding: 2px 10px; font-size: 12px; font-weight: 600; }}
 .chip {{ display: inline-block; border: 1px solid #d0d7de; border-radius: 12px; padding: 2px 8px;
          margin: 2px; font-size: 13px; }}
 .meta {{ color: #57606a; }} a {{ color: #0969da; }}
 @media print {{ body {{ background: #fff; }} .card {{ break-inside: avoid; }} }}
</style></head>
<body><header><div>modelshield &middot; demo ({mode})</div>
<h1>One model of each kind, every threat that applies</h1>
<div>{len(entries)} models assessed in {total:.0f} s. Each report opens with its executive summary,
then the risks, their business impact and frameworks, and the remediation plan.</div></header>
<main>{''.join(rows)}
<section class="card" id="credits"><h2>Data</h2><p>The digits come with scikit-learn. The tabular and
text data sets ship inside modelshield, unchanged, under CC BY 4.0:</p><ul>{credits}</ul></section>
</main></body></html>
"""
