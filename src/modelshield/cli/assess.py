"""``modelshield assess`` and ``modelshield demo``: run the threat suite and write the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from torch import nn

from modelshield._checks import check_choice, check_range
from modelshield.assess import (
    AssessmentPlan,
    BlackBoxPlan,
    EvasionPlan,
    ExtractionPlan,
    TabularPlan,
    Threshold,
    check_new_files,
    check_threshold_metrics,
    check_thresholds,
    parse_threshold,
    run,
    write_report,
)
from modelshield.assess.plan import (
    DEFAULT_ATTACKS,
    DEFAULT_BUDGETS,
    DEFAULT_EPS,
    DefensesPlan,
    SupplyChainPlan,
    defended_from_ref,
    parse_floats,
)
from modelshield.assess.regression import Comparison, check_baseline, compare_reports, load_report
from modelshield.assess.suite import target_inputs
from modelshield.cli import _render as render
from modelshield.cli._runner import (
    BACKENDS,
    AddressOption,
    RetriesOption,
    ThreadsOption,
    WorkersOption,
    executor,
)
from modelshield.cli._target import Target, check_model_fits, parse_norm, torch_threads
from modelshield.cli.attack import (
    FEATURE_COLS_HELP,
    LABEL_COL_HELP,
    MODEL_HELP,
    SKOPS_TRUST_HELP,
    TEXT_COL_HELP,
    TRUST_EXPORT_HELP,
    TRUST_PICKLE_HELP,
    ArchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    TrustTorchScriptOption,
    target_options,
)
from modelshield.errors import ConfigError
from modelshield.models import resolve_device
from modelshield.targets import TargetRef

__all__ = ["assess", "demo"]

_EPS_DEFAULT = ",".join(f"{e:g}" for e in DEFAULT_EPS)
_ATTACKS_DEFAULT = ",".join(DEFAULT_ATTACKS)
_BUDGETS_DEFAULT = ",".join(str(b) for b in DEFAULT_BUDGETS)
IMAGE_SECTIONS = ("evasion", "blackbox", "extraction")  # a black-box model: evasion says why it is skipped
TABULAR_SECTIONS = ("tabular", "blackbox", "extraction")
USER_TABULAR_SECTIONS = (*TABULAR_SECTIONS, "poisoning")  # refits the model on poisoned training rows
TEXT_SECTIONS = ("poisoning", "text-evasion", "extraction")  # extraction: a TF-IDF copy from texts
BLACK_BOX_IMAGE_SECTIONS = IMAGE_SECTIONS


def default_sections(target: Target) -> tuple[str, ...]:
    """The report sections that fit the target's modality (and, for tabular models, the data).

    Image: evasion (skipped with the reason for a black-box model), blackbox, extraction.
    Tabular: tabular, blackbox, extraction (the thief queries rows of the training split), plus
    poisoning on the user's own data (a label-flip sweep refitting the model's rebuilt recipe:
    scikit-learn, XGBoost, LightGBM; else a validation of the training rows, saying why). Text:
    poisoning (the sweep on zoo models, validation of the training file for a user's model),
    text-evasion, extraction (a TF-IDF copy trained on the model's answers to training-split
    texts). backdoor and defenses are opt-in: slow, and defenses needs a defended model.
    supply-chain (a static scan of the model file, its signature, the data manifest, the audit
    log; takes about as long as hashing the file) is added for a model given as a file.
    """
    chosen: tuple[str, ...]
    if target.text:
        chosen = TEXT_SECTIONS
    elif target.tabular:
        chosen = USER_TABULAR_SECTIONS if target.data is not None else TABULAR_SECTIONS
    else:
        chosen = IMAGE_SECTIONS
    return (*chosen, "supply-chain") if target.model_info.get("source") == "file" else chosen


def _supply_chain_plan(public_key: list[str] | None, *, bundle: Path | None, manifest: Path | None,
                       audit_log: str | None) -> SupplyChainPlan:
    """The supply-chain sub-plan from ``--public-key`` (repeatable, comma-separated), ``--bundle``,
    ``--manifest`` and ``--audit-log``."""
    keys = tuple(Path(k.strip()) for item in public_key or [] for k in item.split(",") if k.strip())
    return SupplyChainPlan(bundle=bundle, public_keys=keys, manifest=manifest, audit_log=audit_log)


def _parse_ints(text: str, *, name: str) -> tuple[int, ...]:
    values = parse_floats(text, name=name, owner="modelshield assess")
    if any(not v.is_integer() for v in values):
        raise ConfigError(
            f"modelshield assess: {name!r} must be a comma-separated list of integers; got {text!r}. "
            "Write e.g. 100,1000."
        )
    return tuple(int(v) for v in values)


def _defenses_plan(defended: str | None, *, arch: str | None,
                   trust_torchscript: bool = False) -> DefensesPlan:
    """The defenses sub-plan for ``--defended``: a zoo name, or a model file loaded like --model."""
    if defended is None:
        return DefensesPlan()
    module, name = defended_from_ref(defended, arch=arch, trust_torchscript=trust_torchscript)
    if isinstance(module, str):
        return DefensesPlan(defended=module)
    return DefensesPlan(defended=module, name=name)


def _absolute(ref: str) -> str:
    """ref as an absolute path when it names an existing file or folder, else unchanged; zoo and
    built-in data names (which ``load_target`` reads first) and ``package.module:function`` too."""
    from modelshield import zoo
    from modelshield.data import BUILTIN_DATA

    path = Path(ref).expanduser()
    if ref in zoo.names() or ref in BUILTIN_DATA or not path.exists():
        return ref
    return str(path.resolve())


FAIL_ON = ("regression",)
"""What ``--fail-on`` accepts: ``regression`` (exit 1 when the comparison with --baseline regressed)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Baseline:
    """``--baseline``: the report compared with, its path, the tolerance and whether it gates the exit."""

    report: dict[str, Any]
    path: Path
    tolerance: float | None = None
    gate: bool = False


def _baseline(path: Path | None, fail_on: list[str] | None, tolerance: float | None) -> Baseline | None:
    """The loaded ``--baseline`` (checked before any work), or None; bad options raise ConfigError."""
    owner = "modelshield assess"
    for value in fail_on or []:
        check_choice("--fail-on", value, FAIL_ON, owner=owner,
                     fix="Use --fail-on regression together with --baseline old/report.json.")
    gate = "regression" in (fail_on or [])
    if path is None:
        for name, given in (("--fail-on regression", gate), ("--baseline-tolerance", tolerance is not None)):
            if given:
                raise ConfigError(f"{owner}: {name!r} compares with a baseline report; got {name} without "
                                  "--baseline. Add --baseline old/report.json (an earlier assessment's "
                                  "report), or drop the option.")
        return None
    if tolerance is not None:
        check_range("--baseline-tolerance", tolerance, owner=owner, low=0.0, high=1.0,
                    fix="Give an absolute tolerance for rates, e.g. 0.02, or leave it out for 2 binomial "
                        "standard errors.")
    return Baseline(report=load_report(path), path=path, tolerance=tolerance, gate=gate)


def _show_changes(comparison: Comparison, baseline: Baseline) -> None:
    """Print the "Changes since baseline" block."""
    b = comparison.baseline
    render.say(f"[bold]Changes since baseline[/] ({escape(str(b.get('model')))}, "
               f"{escape(str(b.get('generated_at')))}; {escape(str(baseline.path))}):")
    styles = {"worse": "red", "missing": "red", "better": "green", "new": "cyan", "changed": "yellow"}
    for c in comparison.changes:
        if c.status in ("same", "unchanged"):
            continue
        style = "bold red" if c.regression else styles.get(c.status, "")
        render.say(f"  [{style}]{c.status:<9}[/] {escape(c.message)}")
    quiet = sum(c.status in ("same", "unchanged") for c in comparison.changes)
    render.say(f"  {quiet} unchanged (metrics within their tolerance, sections at the same severity)")
    for note in comparison.notes:
        render.say(f"  [dim]note:[/] {escape(note)}")
    n = len(comparison.regressions)
    if comparison.regressed:
        gate = "; --fail-on regression: exit 1" if baseline.gate else ""
        render.say(f"[bold red]Regressed since the baseline:[/] {n} change{'s' if n != 1 else ''} above "
                   f"(a risk got worse or a defence stopped holding){gate}")
    else:
        render.say("[green]No regression since the baseline.[/]")


def _assess_and_write(target: Target, plan: AssessmentPlan, out: Path, *, force: bool,
                      thresholds: list[Threshold], jobs: dict[str, Any] | None = None,
                      baseline: Baseline | None = None) -> None:
    """Assess in this process, or (``jobs``: the runner's settings) as jobs; compare with the
    baseline when there is one; write the report."""
    with render.progress_bar("assessing") as progress, render.show_warnings():
        if jobs is None:
            progress(0, None, f"assessing ({', '.join(plan.sections)}): first batch running")
            result = run(plan=plan, progress=progress, **target_inputs(target))
        else:
            from modelshield.runner.assess import run_assessment

            progress(0, None, f"assessing ({', '.join(plan.sections)}) as jobs on {jobs['executor'].name}")
            done = run_assessment(jobs["ref"], plan, jobs["executor"], checkpoint=jobs["checkpoint"],
                                  shard_size=jobs["shard_size"], retries=jobs["retries"], progress=progress,
                                  defended_ref=jobs["defended_ref"], loaded=target)
            result = done.assessment
    report = result.to_dict()
    comparison = None
    if baseline is not None:
        comparison = compare_reports(baseline.report, report, tolerance=baseline.tolerance)
        report["comparison"] = {**comparison.to_dict(), "baseline_path": str(baseline.path)}
    paths = write_report(report, out, overwrite=force)
    render.assessment_table(report, paths)
    if jobs is not None:
        c = done.counts
        render.say(f"jobs on {escape(done.runs[0].executor)}: {c['done']} run, {c['cached']} from "
                   f"{escape(str(jobs['checkpoint']))}, {c['failed']} failed")
    failures = check_thresholds(result, thresholds)
    for text in failures:
        render.say(f"[bold red]threshold missed:[/] {text}")
    regressed = False
    if comparison is not None and baseline is not None:
        _show_changes(comparison, baseline)
        regressed = baseline.gate and comparison.regressed
    if failures or regressed:
        raise typer.Exit(1)


def assess(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and report.html.")],
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    label_col: Annotated[str | None, typer.Option("--label-col", help=LABEL_COL_HELP)] = None,
    feature_cols: Annotated[str | None, typer.Option("--feature-cols", help=FEATURE_COLS_HELP)] = None,
    text_col: Annotated[str | None, typer.Option("--text-col", help=TEXT_COL_HELP)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
    trust_export: Annotated[bool, typer.Option("--trust-export", help=TRUST_EXPORT_HELP)] = False,
    skops_trust: Annotated[str | None, typer.Option("--skops-trust", help=SKOPS_TRUST_HELP)] = None,
    attacks: Annotated[str, typer.Option(help="Comma-separated evasion attacks.")] = _ATTACKS_DEFAULT,
    eps: Annotated[str, typer.Option(help="Comma-separated eps grid (input units).")] = _EPS_DEFAULT,
    headline_eps: Annotated[float, typer.Option(help="Budget the severity and summary use.")] = 0.1,
    norm: Annotated[str, typer.Option(help="Threat-model norm: 'inf' or '2'.")] = "inf",
    steps: Annotated[int | None, typer.Option(help="Iterations (default: each attack's own).")] = None,
    n: Annotated[int, typer.Option(help="Number of test points (the first n of the test split).")] = 500,
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 250,
    seed: Annotated[int, typer.Option(help="Seed given to every attack.")] = 0,
    sections: Annotated[str | None, typer.Option(
        help="Comma-separated report sections: evasion, blackbox, extraction, backdoor, defenses "
             "(image models), tabular, blackbox, extraction, poisoning (tabular models), poisoning, "
             "text-evasion, extraction (text models), explain (any model: what the model looked at for "
             "its worst evasions and, after backdoor, a backdoor finding; opt-in), physical (image "
             "models: printable adversarial patches at 3/5/10% of the image, held out, PatchCleanser; "
             "opt-in). Default: "
             "evasion,blackbox,extraction for image "
             "models (plus defenses with --defended), tabular,blackbox,extraction for tabular models "
             "(plus poisoning, a label-flip sweep refitting your model, on your own data), "
             "poisoning,text-evasion,extraction for text models (a section that cannot run on the "
             "model says why in the report, and the others still run); plus supply-chain (scan of the "
             "model file, signature, data manifest, audit-log provenance; any model) when --model is a "
             "file or a supply-chain option is given. backdoor and defenses are opt-in: they are slow "
             "(a trigger search per class) or need a defended model (--defended).")] = None,
    defended: Annotated[str | None, typer.Option(
        "--defended", help="defenses section: the defended model compared with --model, a model file "
        "(loaded like --model; a bare state dict uses --arch) or a zoo name. Default: the zoo's "
        "'<name>-at' for a zoo model that has one (digits-cnn -> digits-cnn-at). eps: the defended "
        "zoo model's training eps, else --headline-eps.")] = None,
    query_budgets: Annotated[str, typer.Option(
        help="blackbox section: Square query budgets per point.")] = _BUDGETS_DEFAULT,
    blackbox_n: Annotated[int, typer.Option(help="blackbox section: points attacked.")] = 100,
    hsj_budgets: Annotated[str, typer.Option(
        help="blackbox section: HopSkipJump query budgets per point (one run each).")] = "100,300,1000",
    extraction_budgets: Annotated[str | None, typer.Option(
        help="extraction section: the thief's query budgets (the largest drives the severity; "
             "capped at the training split's size when the pool is your training data; for text "
             "models, texts sent to the model). "
             "Default: the section's own, 100,300,1000.")] = None,
    extraction_epochs: Annotated[int | None, typer.Option(
        help="extraction section: thief training epochs at each budget. Default: the section's own, "
             "20.")] = None,
    max_changes: Annotated[str, typer.Option(
        help="tabular section: L0 budgets (most features changed per row).")] = "1,2,3,5",
    constraints: Annotated[Path | None, typer.Option(
        help="tabular section: constraint spec (YAML/JSON). Default: the shipped phishing spec for the "
             "built-in phishing-websites data; for your own rows, a spec inferred from the assessment "
             "rows (every feature mutable; the report flags it).")] = None,
    fail_under: Annotated[list[str] | None, typer.Option(
        "--fail-under", metavar="METRIC=VALUE", help="Exit 1 when a summary metric is below VALUE "
        "(repeatable), e.g. robust_accuracy=0.6; METRIC<=VALUE caps a metric instead. A metric that "
        "was not measured because its section failed or was skipped also exits 1, naming the "
        "section and the reason (a gate never passes silently); a name no planned section reports "
        "exits 2.")] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="An earlier assessment's report.json (or its --out folder) to compare with: "
        "adds 'Changes since baseline' to the output, report.json ('comparison') and report.html: each "
        "section's severity, the defenses verdict and each headline metric, worse or better for the "
        "defender beyond sampling noise (2 binomial standard errors for rates). The model may differ (a "
        "new version of it); the data may not (SHA-256), nor the report schema. A missing, corrupt or "
        "non-report file exits 2.")] = None,
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on", metavar="regression", help="Exit 1 when the comparison with --baseline regressed: a "
        "section's severity rose, a section of the baseline did not run, a headline metric got worse "
        "beyond its tolerance or a defence stopped holding (the report is still written). Needs "
        "--baseline.")] = None,
    baseline_tolerance: Annotated[float | None, typer.Option(
        "--baseline-tolerance", help="With --baseline: one absolute tolerance for rates and scores (e.g. "
        "0.02) instead of 2 binomial standard errors of the two reports' points. Counts (findings, "
        "masking flags) are always exact.")] = None,
    public_key: Annotated[list[str] | None, typer.Option(
        "--public-key", help="supply-chain section: PEM public key(s) the model's signature must verify "
        "with (repeatable or comma-separated). Default: the trust policy's "
        "($MODELSHIELD_TRUST_POLICY).")] = None,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="supply-chain section: the model's signature bundle. Default: <model>.sig.")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="supply-chain section: a data manifest ('modelshield manifest create') to verify "
        "the --data files against (the data file's folder, or the file when the manifest lists only "
        "it).")] = None,
    audit_log: Annotated[str | None, typer.Option(
        "--audit-log", help="supply-chain section: the audit log (file or postgresql:// URL) holding the "
        "model's provenance. Default: $MODELSHIELD_AUDIT_LOG.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing report files.")] = False,
    device: DeviceOption = "cpu",
    backend: Annotated[str | None, typer.Option(
        help=f"Run the assessment as jobs ({', '.join(BACKENDS)}): the white-box attacks in point shards, "
             "each other section as one job, checkpointed (a rerun resumes) and retried. Default: "
             "everything in this process, no jobs. Seeded numbers are identical either way.")] = None,
    workers: WorkersOption = 2,
    threads_per_worker: ThreadsOption = 1,
    ray_address: AddressOption = None,
    shard_size: Annotated[int | None, typer.Option(
        help="With --backend: points per attack job, a multiple of --batch-size (default: one "
             "batch).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="With --backend: folder of finished jobs; rerunning resumes from it (default "
             "OUT/checkpoints).")] = None,
    retries: RetriesOption = 2,
) -> None:
    """Run the threat suite on a model (evasion, black-box, tabular, extraction, poisoning, text
    evasion: the sections that fit it); write report.json and report.html.

    A section that cannot run on this model or data (bad input for it, a capability the model
    lacks) is reported as failed with the reason, and the other sections still run.

    With --baseline, the report also says what changed since that earlier assessment (a risk that
    got worse, a defence that stopped holding); --fail-on regression turns that into exit 1.

    Exits with 1 when a --fail-under threshold is missed (including one on a metric whose section
    failed or was skipped) or, with --fail-on regression, the assessment regressed against
    --baseline (the report is still written), 2 on bad input (a missing or non-report --baseline
    included), 3 on an internal error (a modelshield bug: the message names the crash file holding
    the traceback; --debug prints it).
    """
    resolve_device(device, owner="modelshield assess")  # a bad --device fails before any work
    owner = "modelshield assess"
    pool = None if backend is None else executor(backend, workers, threads_per_worker, ray_address, retries,
                                                 owner=owner)
    if backend is None:
        for name, value in (("--shard-size", shard_size), ("--checkpoint", checkpoint), ("--ray-address",
                                                                                          ray_address)):
            if value is not None:
                raise ConfigError(f"{owner}: {name!r} is used with --backend; got {name} without it. "
                                  "Add e.g. --backend processes, or drop the option.")
    if shard_size is not None and (shard_size < 1 or shard_size % batch_size):
        raise ConfigError(f"{owner}: '--shard-size' must be a positive multiple of --batch-size "
                          f"{batch_size}; got {shard_size}. Use e.g. --shard-size {batch_size}.")
    thresholds = [parse_threshold(t) for t in fail_under or []]
    base = _baseline(baseline, fail_on, baseline_tolerance)
    evasion = EvasionPlan(
        attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
        eps=parse_floats(eps, name="--eps", owner="modelshield assess"), headline_eps=headline_eps,
        norm=parse_norm(norm), steps=steps)
    blackbox = BlackBoxPlan(eps=headline_eps if headline_eps > 0 else 0.1,
                            budgets=_parse_ints(query_budgets, name="--query-budgets"), n=blackbox_n,
                            hsj_budgets=_parse_ints(hsj_budgets, name="--hsj-budgets"))
    thief_budgets = None if extraction_budgets is None else _parse_ints(extraction_budgets,
                                                                        name="--extraction-budgets")
    extraction = ExtractionPlan(budgets=thief_budgets, epochs=extraction_epochs)
    changes = _parse_ints(max_changes, name="--max-changes")
    tabular = TabularPlan(max_changes=changes, headline_changes=3 if 3 in changes else max(changes),
                          constraints=constraints)
    supply_chain = _supply_chain_plan(public_key, bundle=bundle, manifest=manifest, audit_log=audit_log)
    check_new_files([out / "report.json", out / "report.html"], overwrite=force, owner="modelshield assess")
    if pool is not None:  # workers (a Ray node's included) may start in another folder: absolute paths
        model, data = _absolute(model), None if data is None else _absolute(data)
        data_dir = None if data_dir is None else data_dir.expanduser().resolve()
    ref = TargetRef(model=model, data=data, data_dir=None if data_dir is None else str(data_dir), arch=arch,
                    n=n, trust_torchscript=trust_torchscript, device=device,
                    options=target_options(label_col=label_col, feature_cols=feature_cols, text_col=text_col,
                                           trust_pickle=trust_pickle, trust_export=trust_export,
                                           skops_trust=skops_trust))
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = ref.load(progress)
    if base is not None:  # data that differ from the baseline's fail before the run
        check_baseline(base.report, data=target.data_info)
    chosen = (tuple(s.strip() for s in sections.split(",") if s.strip()) if sections is not None
              else default_sections(target))
    if defended is not None and "defenses" not in chosen:
        if sections is not None:
            raise ConfigError(
                f"modelshield assess: '--defended' is used by the defenses section; got --sections "
                f"{sections!r} without it. Add defenses, e.g. --sections {sections},defenses."
            )
        chosen = (*chosen, "defenses")
    if supply_chain != SupplyChainPlan() and "supply-chain" not in chosen:
        if sections is not None:
            raise ConfigError(
                f"modelshield assess: '--public-key', '--bundle', '--manifest' and '--audit-log' are used by "
                f"the supply-chain section; got --sections {sections!r} without it. Add it, e.g. --sections "
                f"{sections},supply-chain."
            )
        chosen = (*chosen, "supply-chain")
    check_threshold_metrics(thresholds, chosen)  # a misspelt metric fails now, not after the run
    defenses = _defenses_plan(defended, arch=arch, trust_torchscript=trust_torchscript)
    if isinstance(defenses.defended, nn.Module):  # a --defended file must fit the data before any section
        defenses.defended.to(target.x.device)  # and runs where --model does
        check_model_fits(defenses.defended, target.x, target.y, bounds=target.bounds,
                         model=str(defenses.name), data=str(target.data_info.get("name")),
                         fix="Pass to --defended a defended version of --model (same inputs and classes)")
    plan = AssessmentPlan(sections=chosen, n=n, batch_size=batch_size, seed=seed, evasion=evasion,
                          blackbox=blackbox, tabular=tabular, defenses=defenses, extraction=extraction,
                          supply_chain=supply_chain)
    jobs = None
    if pool is not None:
        d_ref = None
        if defended is not None and isinstance(defenses.defended, nn.Module):
            d_ref = {"ref": str(Path(defended).expanduser().resolve()), "arch": arch,
                     "trust_torchscript": trust_torchscript}
        jobs = {"executor": pool, "ref": ref, "shard_size": shard_size, "retries": retries,
                "checkpoint": checkpoint if checkpoint is not None else out / "checkpoints",
                "defended_ref": d_ref}
    _assess_and_write(target, plan, out, force=force, thresholds=thresholds, jobs=jobs, baseline=base)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the reports and index.html.")] = Path(
        "modelshield-report"),
    quick: Annotated[bool, typer.Option("--quick", help=(
        "The one-minute tour: fewer sections and points per model."))] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing report files.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Assess one model of each kind with every section that applies; write their reports and an index.

    digits-cnn (images: evasion, black-box, physical patches, backdoor scan, extraction, defences,
    explanations, supply chain of its weights file), phishing-gbm (tabular: constrained evasion,
    black-box, extraction, explanations) and spam-nb (text: poisoning and its detection, text
    evasion, extraction, explanations), each trained on first use from data inside the package;
    writes OUT/<model>/report.json and report.html for each and OUT/index.html, single-threaded
    (fastest for these small models).
    """
    from modelshield.assess.demo import run_demo

    resolve_device(device, owner="modelshield demo")  # a bad --device fails before any work
    with torch_threads(1), render.show_warnings():
        entries = run_demo(out, quick=quick, force=force, device=device, progress_for=render.progress_bar)
    for e in entries:
        sections = ", ".join(f"{s['id']} {s['severity']}" for s in e.report["sections"])
        render.say(f"{e.model.name}: overall {e.report['summary']['severity']} ({sections}); "
                   f"{e.time_s:.0f} s -> {e.html_path}")
    render.say(f"Open {(out / 'index.html').resolve()} in a browser.")
