"""Assessments on the runner: report sections and point shards of the white-box attacks as jobs.

``run_assessment(TargetRef(...), plan, executor)`` splits an assessment into jobs:

- ``assess-attack-shard``: one white-box attack of the evasion section at one eps on a slice
  ``[start, stop)`` of the assessment points. The worker returns the verified per-batch results
  (predictions, success, norms, queries; the adversarial rows only at the headline eps, the only
  ones the report draws), and the driver merges every batch of every shard at once with
  ``EvasionResult.concat``, exactly as ``run_in_batches`` does in one process.
- ``assess-section``: any other section (blackbox, extraction, backdoor, ...), run by the worker
  on a context it builds itself. Sections that read earlier sections' findings
  (``reads_earlier``, e.g. ``explain`` after ``backdoor``) run in a second wave with those findings.

Workers receive the target's reference (``TargetRef``: names, paths, flags) and the digests the
driver recorded, load the target themselves, refuse one whose digests differ (``IntegrityError``)
and never train a zoo model (the driver loads, and if needed trains, it once before fanning
out). The ``supply-chain`` section reads local files and an audit-log URL that may hold a
password, so the driver runs it (it costs about one hash of the model file); so is ``defenses``
when its defended model was given as an ``nn.Module`` without a file reference.

For a seeded plan the report's numbers are identical, bit for bit, whatever the executor, the
number of workers or the shard size: points are attacked in the same batches (shards are cut at
multiples of the batch size), every randomised attack seeds each point from the seed and the
point itself, and sections run on the same target and plan. A failed job becomes a failed
section in the report (its reason and a warning) while the others complete; finished jobs are
checkpointed, so a rerun recomputes nothing that finished.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._checks import check_range
from modelshield._typing import Progress
from modelshield.assess import SECTIONS, Assessment, AssessmentPlan, Section, attack_batches
from modelshield.assess.plan import (
    BlackBoxPlan,
    DefensesPlan,
    EvasionPlan,
    ExplainPlan,
    ExtractionPlan,
    PhysicalPlan,
    TabularPlan,
    defended_from_ref,
)
from modelshield.assess.suite import assessment_context, failed_section, jsonable, run, target_inputs
from modelshield.attacks.evasion.registry import build_attack
from modelshield.attacks.results import EvasionResult
from modelshield.errors import ConfigError, IntegrityError, ModelShieldError
from modelshield.models import TorchModel
from modelshield.runner.evasion import attack_cost, check_cached
from modelshield.runner.executors import Executor
from modelshield.runner.jobs import Job, register_job
from modelshield.runner.run import JobReport, RunResult, run_jobs
from modelshield.targets import Target, TargetRef, check_digests, target_digests

__all__ = ["ASSESS_SECTION_FORMAT", "ATTACK_SHARD_FORMAT", "DRIVER_SECTIONS", "AssessmentRun",
           "assessment_jobs", "plan_from_spec", "plan_spec", "run_assessment"]

ASSESS_SECTION_FORMAT = "modelshield-assess-section-v1"
ATTACK_SHARD_FORMAT = "modelshield-assess-attack-shard-v1"
DRIVER_SECTIONS = frozenset({"supply-chain"})
"""Sections the driver runs itself: they read local files and secrets, and cost about a hash."""
SECTION_COST = 1000.0
"""A section job's scheduling cost per assessment point (in attack steps per point): each section is
one job that cannot be split, so it starts before the attack shards (longest first)."""


# -- the plan as JSON --------------------------------------------------------------------------


def plan_spec(plan: AssessmentPlan, *, defended_ref: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON a worker rebuilds ``plan`` from (``plan_from_spec``): every sub-plan but supply-chain.

    ``defended_ref`` (``{"ref": file, "arch", "trust_torchscript"}``) stands for a defended model
    given as an ``nn.Module``; a zoo name is kept as it is.
    """
    d = plan.defenses
    defenses = d.to_dict()
    if isinstance(d.defended, nn.Module):
        defenses["defended"] = None if defended_ref is None else {
            "ref": str(defended_ref["ref"]), "arch": defended_ref.get("arch"),
            "trust_torchscript": bool(defended_ref.get("trust_torchscript", False))}
    return {"sections": list(plan.sections), "n": plan.n, "batch_size": plan.batch_size, "seed": plan.seed,
            "evasion": plan.evasion.to_dict(), "blackbox": plan.blackbox.to_dict(),
            "tabular": plan.tabular.to_dict(), "extraction": plan.extraction.to_dict(),
            "explain": plan.explain.to_dict(), "physical": plan.physical.to_dict(), "defenses": defenses}


def plan_from_spec(spec: Mapping[str, Any]) -> AssessmentPlan:
    """The plan ``plan_spec`` described (a defended model file is loaded, its digest checked).

    Raises:
        ConfigError: a malformed spec. IntegrityError: the defended file changed.
    """
    try:
        d = dict(spec["defenses"])
        ref = d.get("defended")
        want = d.pop("weights_sha256", None)
        if isinstance(ref, Mapping):
            module, name = defended_from_ref(str(ref["ref"]), arch=ref.get("arch"),
                                             trust_torchscript=bool(ref.get("trust_torchscript")))
            if want is not None and isinstance(module, nn.Module):
                from modelshield.models.load import weights_sha256

                if weights_sha256(module) != want:
                    raise IntegrityError(f"assess-section: the defended model {ref['ref']!r} must have the "
                                         "weights the driver loaded; got other weights. It changed during "
                                         "the run: restore it, or start again.")
            d["defended"] = module
            d["name"] = d.get("name") or name
        d["curve_factors"] = tuple(d["curve_factors"])
        return AssessmentPlan(
            sections=tuple(spec["sections"]), n=spec["n"], batch_size=spec["batch_size"], seed=spec["seed"],
            evasion=EvasionPlan(**spec["evasion"]), blackbox=BlackBoxPlan(**spec["blackbox"]),
            tabular=TabularPlan(**spec["tabular"]), extraction=ExtractionPlan(**spec["extraction"]),
            explain=ExplainPlan(**spec["explain"]), physical=PhysicalPlan.from_dict(spec["physical"]),
            defenses=DefensesPlan(**d))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"assess job: the plan spec must be what plan_spec() wrote; got an error "
                          f"({type(exc).__name__}: {exc}). Rebuild the jobs with this modelshield.") from None


# -- EvasionResult as exact JSON ---------------------------------------------------------------


def _enc(t: Tensor | None) -> dict[str, Any] | None:
    if t is None:
        return None
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode()}


def _dec(d: Mapping[str, Any] | None, device: torch.device) -> Tensor | None:
    if d is None:
        return None
    arr = np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(arr.copy()).to(device)


_TENSORS = ("y", "target", "clean_pred", "adv_pred", "success", "valid", "norms", "point_queries",
            "model_errors")


def _encode_result(r: EvasionResult, *, with_x_adv: bool) -> dict[str, Any]:
    """One batch's result, tensors as exact bytes; x_adv only when asked."""
    out: dict[str, Any] = {k: _enc(getattr(r, k)) for k in _TENSORS}
    out.update({"attack": r.attack, "params": r.params, "norm": r.norm, "eps": r.eps,
                "queries_forward": r.queries_forward, "queries_backward": r.queries_backward,
                "time_s": r.time_s, "extra": r.extra, "x_adv": _enc(r.x_adv) if with_x_adv else None})
    return out


def _decode_result(d: Mapping[str, Any], x_rows: Tensor) -> EvasionResult:
    """The batch result; without shipped adversarial rows, x_adv holds the clean rows x_rows
    (the evasion section draws adversarial rows only at the headline eps, which ships them)."""
    dev = x_rows.device
    t = {k: _dec(d[k], dev) for k in _TENSORS}
    x_adv = _dec(d["x_adv"], dev)
    return EvasionResult(attack=d["attack"], params=d["params"],
                         x_adv=x_rows.clone() if x_adv is None else x_adv,
                         norm=d["norm"], eps=d["eps"], queries_forward=int(d["queries_forward"]),
                         queries_backward=int(d["queries_backward"]), time_s=float(d["time_s"]),
                         extra=d["extra"], **t)  # type: ignore[arg-type]  # the required ones are never None


# -- the worker side ---------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _load(ref_json: str, cache: str) -> Target:
    """The target of a reference, memoised per worker process and zoo cache folder."""
    return TargetRef.from_dict(json.loads(ref_json)).load()


def _target(params: Mapping[str, Any], owner: str) -> Target:
    from modelshield import zoo

    ref = params.get("target")
    if not isinstance(ref, Mapping) or not isinstance(ref.get("model"), str):
        raise ConfigError(f"{owner}: 'target' must be a TargetRef's to_dict(); got {ref!r}.")
    check_cached(ref["model"], owner)  # every job: a memoised target must not skip it
    target = _load(json.dumps(ref, sort_keys=True), str(zoo.cache_dir()))
    check_digests(target, params.get("digests"), owner=owner)
    return target


def _ensure_sections(params: Mapping[str, Any]) -> None:
    """Import the modules that register the plan's sections (the user's plugins; built-ins first)."""
    import modelshield.assess.sections  # noqa: F401  # the built-in sections

    for module, root in params.get("plugins") or []:
        if isinstance(module, str) and module not in sys.modules:
            if isinstance(root, str) and root not in sys.path:
                sys.path.append(root)  # appended, so it never shadows an installed package
            importlib.import_module(module)


def assess_section(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run one section on the job's target and plan; return the Section as JSON.

    Params: ``target`` (``TargetRef.to_dict()``), ``digests`` (the driver's ``target_digests``),
    ``plan`` (``plan_spec``), ``section`` (its id), ``plugins`` (``[module, root]`` of every
    section of the plan that is not built in, imported first), ``earlier`` (sections before it
    that it reads, as dicts).

    A ``ModelShieldError`` the section raises becomes a failed section, as in ``assess.run``; an
    ``IntegrityError`` propagates (the job fails, the driver refuses the run).
    """
    from modelshield.assess.suite import run_section

    owner = "assess-section"
    _ensure_sections(params)
    sid = params.get("section")
    if sid not in SECTIONS:
        raise ConfigError(f"{owner}: 'section' must be a registered section; got {sid!r}.")
    target = _target(params, owner)
    plan = plan_from_spec(params["plan"])
    ctx = assessment_context(plan=plan, **target_inputs(target))
    earlier = {k: Section.from_dict(v) for k, v in dict(params.get("earlier") or {}).items()}
    ctx = dataclasses.replace(ctx, earlier=earlier)
    section = run_section(SECTIONS[sid], ctx, None)
    return {"format": ASSESS_SECTION_FORMAT, "section": jsonable(section.to_dict())}


def assess_attack_shard(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run one white-box attack at one eps on the assessment points ``[start, stop)``.

    Params: ``target``, ``digests``, ``attack``, ``eps``, ``norm``, ``steps``, ``seed``, ``n``,
    ``batch_size``, ``start`` (a multiple of batch_size), ``stop``, ``x_adv`` (ship the
    adversarial rows). Returns the per-batch results (``EvasionResult`` fields, tensors as exact
    bytes) in order.
    """
    owner = "assess-attack-shard"
    batch: Any = params.get("batch_size")
    start: Any = params.get("start")
    stop: Any = params.get("stop")
    check_range("batch_size", batch, owner=owner, low=1, integer=True)
    check_range("start", start, owner=owner, low=0, integer=True)
    check_range("stop", stop, owner=owner, low=1, integer=True)
    if start % batch or stop <= start:
        raise ConfigError(f"{owner}: 'start' must be a multiple of batch_size below 'stop'; got "
                          f"start={start}, stop={stop}, batch_size={batch}. Build the jobs with "
                          "assessment_jobs().")
    target = _target(params, owner)
    name, eps = params["attack"], float(params["eps"])
    plan = AssessmentPlan(sections=("evasion",), n=params["n"], batch_size=batch, seed=params["seed"],
                          evasion=EvasionPlan(attacks=(name,), eps=(eps,), headline_eps=eps,
                                              norm=params["norm"], steps=params["steps"]))
    ctx = assessment_context(plan=plan, **target_inputs(target))
    if stop > int(ctx.x.shape[0]):
        raise ConfigError(f"{owner}: 'stop' must be at most the {int(ctx.x.shape[0])} assessment points; "
                          f"got {stop}.")
    attack = build_attack(name, eps=eps, norm=params["norm"], steps=params["steps"], seed=params["seed"])
    parts = attack_batches(attack, ctx.model, ctx.x[start:stop], ctx.y[start:stop], batch_size=batch)
    ship = bool(params.get("x_adv"))
    return {"format": ATTACK_SHARD_FORMAT, "attack": name, "eps": eps, "start": start, "stop": stop,
            "parts": jsonable([_encode_result(p, with_x_adv=ship) for p in parts])}


register_job("assess-section", assess_section)
register_job("assess-attack-shard", assess_attack_shard)


# -- the driver side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssessmentRun:
    """What ``run_assessment`` returns: the assessment and how its jobs ran.

    Attributes:
        assessment: the Assessment (``to_dict()`` is the report; its provenance has ``runner``).
        runs: the RunResult of each wave of jobs (one, or two when a section reads earlier ones).
    """

    assessment: Assessment
    runs: tuple[RunResult, ...]

    @property
    def counts(self) -> dict[str, int]:
        out = {"done": 0, "cached": 0, "failed": 0}
        for r in self.runs:
            for k, v in r.counts.items():
                out[k] += v
        return out

    @property
    def failed(self) -> list[JobReport]:
        return [j for r in self.runs for j in r.failed]


def _runner_of(sid: str) -> tuple[str, str | None]:
    """The module registering section sid and the folder to put on a worker's sys.path for it
    (None for modelshield's own sections)."""
    module = type(SECTIONS[sid]).__module__
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path or module.startswith("modelshield."):
        return module, None
    p = Path(path).resolve()
    depth = module.count(".") + (2 if p.name == "__init__.py" else 1)
    return module, str(p.parents[depth - 1])


def _job_sections(plan: AssessmentPlan, *, sharded: bool, defenses_in_driver: bool) -> list[str]:
    skip = set(DRIVER_SECTIONS) | ({"evasion"} if sharded else set())
    if defenses_in_driver:
        skip.add("defenses")
    return [s for s in plan.sections if s not in skip]


def assessment_jobs(
    target: TargetRef,
    plan: AssessmentPlan,
    *,
    digests: Mapping[str, Any],
    n: int,
    white_box: bool,
    shard_size: int | None = None,
    defended_ref: Mapping[str, Any] | None = None,
    defended_sha256: str | None = None,
    earlier: Mapping[str, Section] | None = None,
    wave: int = 1,
) -> list[Job]:
    """The jobs of one wave of an assessment (``run_assessment`` builds both waves).

    Wave 1: the evasion section's attack shards (white-box models) and every section job that
    does not read earlier sections; wave 2: those that do, with ``earlier`` (figures dropped).

    Raises:
        ConfigError: shard_size is not a positive multiple of the plan's batch size.
    """
    batch = plan.batch_size
    size = batch if shard_size is None else shard_size
    check_range("shard_size", size, owner="run_assessment", low=1, integer=True)
    if size % batch:
        raise ConfigError(f"run_assessment: 'shard_size' must be a multiple of the batch size {batch}; got "
                          f"{size}. Use e.g. {max(1, size // batch) * batch}, so that every point is "
                          "attacked in the same batch whatever the sharding.")
    ref = target.to_dict()
    sharded = white_box and "evasion" in plan.sections
    in_driver = isinstance(plan.defenses.defended, nn.Module) and defended_ref is None
    spec = plan_spec(plan, defended_ref=defended_ref)
    if defended_sha256 is not None and isinstance(spec["defenses"].get("defended"), dict):
        spec["defenses"]["weights_sha256"] = defended_sha256
    plugins = sorted({_runner_of(sid) for sid in plan.sections if _runner_of(sid)[1] is not None})
    jobs: list[Job] = []
    if wave == 1 and sharded:
        ev = plan.evasion
        for name in ev.attacks:
            for eps in ev.eps:
                for a in range(0, n, size):
                    jobs.append(Job("assess-attack-shard", {
                        "target": ref, "digests": dict(digests), "attack": name, "eps": eps, "norm": ev.norm,
                        "steps": ev.steps, "seed": plan.seed, "n": plan.n, "batch_size": batch, "start": a,
                        "stop": min(n, a + size), "x_adv": eps == ev.headline_eps},
                        cost=0.0 if eps == 0 else attack_cost(name, min(n, a + size) - a, steps=ev.steps)))
    for sid in _job_sections(plan, sharded=sharded, defenses_in_driver=in_driver):
        reads = bool(getattr(SECTIONS[sid], "reads_earlier", False))
        if reads != (wave == 2):
            continue
        before = plan.sections[:plan.sections.index(sid)]
        prior = {k: {**v.to_dict(), "figures": []} for k, v in (earlier or {}).items() if k in before}
        jobs.append(Job("assess-section", {"target": ref, "digests": dict(digests), "plan": spec,
                                           "section": sid, "plugins": plugins,
                                           "earlier": jsonable(prior) if reads else {}},
                        cost=SECTION_COST * n))
    return jobs


def _train_defended_once(plan: AssessmentPlan, model_info: Mapping[str, Any],
                         progress: Progress | None) -> None:
    """Load (training it if needed) the defenses section's zoo counterpart in the driver, so that no
    worker trains it: the explicit zoo name, or the assessed zoo model's ``<name>-at`` unless that is
    a slow recipe not cached yet (which the section reports as skipped, as in one process)."""
    from modelshield import zoo

    if "defenses" not in plan.sections or isinstance(plan.defenses.defended, nn.Module):
        return
    name = plan.defenses.defended
    if name is None:
        assessed = model_info.get("name")
        name = f"{assessed}-at"
        if assessed not in zoo.names() or name not in zoo.names() or (
                zoo.spec(name).slow and not zoo.is_cached(name)):
            return
    zoo.load(name, progress=progress)


class _JobFailed(ModelShieldError):
    """Stands in for the exception of a job that failed in a worker (its type is in the message)."""


def _failed(sid: str, reports: Sequence[JobReport]) -> Section:
    f = reports[0]
    err = _JobFailed(f"{f.error_type}: {f.error} (job failed after {f.attempts} attempt(s))")
    return failed_section(sid, err)


def run_assessment(
    target: TargetRef,
    plan: AssessmentPlan,
    executor: Executor | None = None,
    *,
    checkpoint: Path | None = None,
    shard_size: int | None = None,
    retries: int = 2,
    progress: Progress | None = None,
    defended_ref: Mapping[str, Any] | None = None,
    loaded: Target | None = None,
) -> AssessmentRun:
    """Run an assessment as jobs on an executor; return the same Assessment ``assess.run`` gives.

    Args:
        target: the model and data by reference (workers load it themselves).
        plan: the assessment plan (``plan.seed`` seeds every attack).
        executor: ``InlineExecutor()`` (default), ``ProcessExecutor(...)`` or ``RayExecutor(...)``.
        checkpoint: folder of finished jobs; a rerun recomputes none of them.
        shard_size: assessment points per attack job, a multiple of ``plan.batch_size`` (default:
            one batch).
        retries: extra attempts for a failing job before its section is reported as failed.
        progress: ``progress(finished, total, message)`` after each job.
        defended_ref: ``{"ref": file, "arch", "trust_torchscript"}`` of a defended model given
            in ``plan.defenses`` as an ``nn.Module`` (else that section runs in the driver).
        loaded: the target already loaded by the caller from ``target`` (else loaded here; a zoo
            model is trained here, once, if it is not cached yet).

    Returns:
        AssessmentRun: the assessment (failed jobs as failed sections) and the jobs' runs.

    Raises:
        IntegrityError: a worker found the model or data changed (digests differ).
        ConfigError: a bad shard size, retries or executor.
    """
    tgt = loaded if loaded is not None else target.load(progress)
    _train_defended_once(plan, tgt.model_info, progress)
    digests = target_digests(tgt)
    inputs = target_inputs(tgt)
    ctx = assessment_context(plan=plan, **inputs)
    n = int(ctx.x.shape[0])
    white_box = isinstance(ctx.model, TorchModel)
    defended_sha = None
    if isinstance(plan.defenses.defended, nn.Module) and defended_ref is not None:
        from modelshield.models.load import weights_sha256

        defended_sha = weights_sha256(plan.defenses.defended)
    common: dict[str, Any] = {"digests": digests, "n": n, "white_box": white_box, "shard_size": shard_size,
              "defended_ref": defended_ref, "defended_sha256": defended_sha}
    jobs = assessment_jobs(target, plan, **common)
    first = run_jobs(jobs, executor, checkpoint=checkpoint, retries=retries, progress=progress)
    completed: dict[str, Section] = {}
    evasion_results: dict[tuple[str, float], EvasionResult] = {}
    shards: dict[tuple[str, float], list[JobReport]] = {}
    runs = [first]

    def settle(run_: RunResult) -> None:
        for rep in run_.reports:
            if rep.job.kind == "assess-attack-shard":
                shards.setdefault((rep.job.params["attack"], float(rep.job.params["eps"])), []).append(rep)
                continue
            sid = rep.job.params["section"]
            if rep.status == "failed":
                if rep.error_type == "IntegrityError":
                    raise IntegrityError(f"run_assessment: section {sid!r}: {rep.error}")
                completed[sid] = _failed(sid, [rep])
            else:
                assert rep.result is not None
                completed[sid] = Section.from_dict(rep.result["section"])

    settle(first)
    failed_shards = [r for reps in shards.values() for r in reps if r.status == "failed"]
    if failed_shards:
        if any(r.error_type == "IntegrityError" for r in failed_shards):
            raise IntegrityError(f"run_assessment: evasion: {failed_shards[0].error}")
        completed["evasion"] = _failed("evasion", failed_shards)
    else:
        for key, reps in shards.items():
            parts: list[EvasionResult] = []
            for rep in sorted(reps, key=lambda r: int(r.job.params["start"])):
                assert rep.result is not None
                row = int(rep.result["start"])
                for p in rep.result["parts"]:
                    k = int(p["y"]["shape"][0])
                    parts.append(_decode_result(p, ctx.x[row:row + k]))
                    row += k
            evasion_results[key] = EvasionResult.concat(parts)
    second = assessment_jobs(target, plan, earlier=completed, wave=2, **common)
    if second:
        runs.append(run_jobs(second, executor, checkpoint=checkpoint, retries=retries, progress=progress))
        settle(runs[-1])
    assessment = run(plan=plan, completed=completed, evasion_results=evasion_results, **inputs)
    info = {"executor": runs[0].executor, "jobs": sum(len(r.reports) for r in runs),
            "counts": AssessmentRun(assessment, tuple(runs)).counts,
            "shard_size": plan.batch_size if shard_size is None else shard_size,
            "failed_jobs": [{"kind": j.job.kind, "section": j.job.params.get("section", "evasion"),
                             "attempts": j.attempts, "error_type": j.error_type, "error": j.error}
                            for r in runs for j in r.failed]}
    assessment = dataclasses.replace(assessment, runner=info)
    return AssessmentRun(assessment=assessment, runs=tuple(runs))
