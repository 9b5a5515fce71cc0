"""Sweeps: many models x attacks x budgets, declared in a YAML plan, run as evasion-shard jobs.

A plan names the models (zoo names, or model files with their data), the attacks (a
``build_attack`` name, one or more eps budgets, norm, steps, max_queries), the number of test
points, the seed and the sharding. ``run_sweep`` turns every (model, attack, eps) into
``evasion-shard`` jobs (``modelshield.runner.evasion``), runs all of them at once with
``run_jobs`` (so the workers stay busy across cells), merges each cell's shards and returns one
row per cell. Seeded sweeps give identical numbers on every backend, worker count and shard size;
a checkpoint folder makes a rerun recompute nothing that finished; a cell whose shards failed is
reported as failed while the others complete.

Example plan (``examples/sweep.yaml``)::

    models: [digits-cnn, digits-cnn-at]
    attacks:
      - {name: pgd, eps: [0.1, 0.2], steps: 10}
      - {name: fgsm, eps: [0.1, 0.2]}
    n: 100
    seed: 0

Example:
    plan = SweepPlan.from_yaml(Path("examples/sweep.yaml"))
    result = run_sweep(plan, ProcessExecutor(workers=2), checkpoint=Path("ckpt"))
    result.rows[0].robust_accuracy
"""

from __future__ import annotations

import difflib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modelshield
from modelshield._typing import Progress
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.runner.executors import Executor
from modelshield.runner.run import JobReport, run_jobs

__all__ = ["SWEEP_FORMAT", "SweepAttack", "SweepModel", "SweepPlan", "SweepResult", "SweepRow", "run_sweep"]

SWEEP_FORMAT = "modelshield-sweep-v1"

_PLAN_KEYS = ("models", "attacks", "n", "seed", "shard_size", "batch_size")
_MODEL_KEYS = ("model", "data", "data_dir", "arch")
_ATTACK_KEYS = ("name", "eps", "norm", "steps", "max_queries")
_NORMS = ("inf", "2")
_EXAMPLE = "see examples/sweep.yaml"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _unknown(where: str, keys: Sequence[Any], known: Sequence[str], source: str) -> None:
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"Use only {', '.join(known)}."
            raise ConfigError(f"sweep plan {source}: {where} keys must be among {', '.join(known)}; got "
                              f"{k!r}. {hint}")


@dataclass(frozen=True, slots=True)
class SweepModel:
    """One model of a sweep: a zoo name, or a model file with its data reference.

    Attributes:
        model: zoo name or model file path (as ``modelshield attack --model`` takes it).
        data: data reference for a model file (None for zoo models).
        data_dir: folder of the data set, when the reference needs one.
        arch: architecture of a state-dict file.
    """

    model: str
    data: str | None = None
    data_dir: str | None = None
    arch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "data_dir": self.data_dir, "arch": self.arch}


@dataclass(frozen=True, slots=True)
class SweepAttack:
    """One attack of a sweep, at one or more budgets.

    Attributes:
        name: a ``build_attack`` name (``pgd``, ``fgsm``, ``apgd-ce``, ``square``, ...).
        eps: the budgets, each > 0.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations (None: the attack's default).
        max_queries: forward queries per point of a black-box attack (None: its default).
    """

    name: str
    eps: tuple[float, ...]
    norm: str = "inf"
    steps: int | None = None
    max_queries: int | None = None

    def config(self, eps: float) -> dict[str, Any]:
        """The ``evasion-shard`` attack mapping at budget eps."""
        return {"name": self.name, "eps": eps, "norm": self.norm, "steps": self.steps,
                "max_queries": self.max_queries}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "eps": list(self.eps), "norm": self.norm, "steps": self.steps,
                "max_queries": self.max_queries}


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What a sweep runs: every model against every attack at every budget.

    Attributes:
        models: the models (``SweepModel``).
        attacks: the attacks (``SweepAttack``), each with its budgets.
        n: test points attacked per (model, attack, eps).
        seed: attack seed (per-point random numbers derive from it, so shards do not matter).
        shard_size: points per job (a multiple of batch_size).
        batch_size: points per attack batch.
        source: where the plan came from (its file), for messages.

    Raises:
        ConfigError: a bad field (one line naming the file, the field, the value and the fix).
    """

    models: tuple[SweepModel, ...]
    attacks: tuple[SweepAttack, ...]
    n: int = 100
    seed: int = 0
    shard_size: int = 50
    batch_size: int = 25
    source: str = field(default="<plan>", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        if not self.models:
            raise ConfigError(f"sweep plan {src}: 'models' must list at least one model; got none. "
                              "Add e.g. models: [digits-cnn].")
        if not self.attacks:
            raise ConfigError(f"sweep plan {src}: 'attacks' must list at least one attack; got none. "
                              "Add e.g. attacks: [{name: pgd, eps: [0.1]}].")
        for name, value, low in (("n", self.n, 1), ("seed", self.seed, 0), ("shard_size", self.shard_size, 1),
                                 ("batch_size", self.batch_size, 1)):
            if not _is_int(value) or value < low:
                raise ConfigError(f"sweep plan {src}: {name!r} must be an int >= {low}; got {value!r}. "
                                  f"Fix it in the plan ({_EXAMPLE}).")
        if self.shard_size % self.batch_size:
            fix = max(1, self.shard_size // self.batch_size) * self.batch_size
            raise ConfigError(f"sweep plan {src}: 'shard_size' must be a multiple of batch_size="
                              f"{self.batch_size}; got {self.shard_size}. Use e.g. shard_size: {fix}.")

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<plan>") -> SweepPlan:
        """A plan from its mapping form (the YAML document), every field checked.

        Raises:
            ConfigError: a bad or unknown field; the message names source, field, value and fix.
        """
        from modelshield.attacks.evasion.registry import EVASION_ATTACKS

        src = source
        if not isinstance(data, Mapping):
            raise ConfigError(f"sweep plan {src}: the document must be a mapping with 'models' and "
                              f"'attacks'; got {type(data).__name__}. Write it as {_EXAMPLE} does.")
        _unknown("top-level", list(data), _PLAN_KEYS, src)
        for key in ("models", "attacks"):
            if key not in data:
                raise ConfigError(f"sweep plan {src}: {key!r} must be given; got no {key!r} key. "
                                  f"Add it ({_EXAMPLE}).")
        raw_models, raw_attacks = data["models"], data["attacks"]
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError(f"sweep plan {src}: 'models' must be a non-empty list; got {raw_models!r}. "
                              "Write e.g. models: [digits-cnn].")
        if not isinstance(raw_attacks, list) or not raw_attacks:
            raise ConfigError(f"sweep plan {src}: 'attacks' must be a non-empty list; got {raw_attacks!r}. "
                              "Write e.g. attacks: [{name: pgd, eps: [0.1]}].")
        models: list[SweepModel] = []
        for i, m in enumerate(raw_models):
            where = f"models[{i}]"
            if isinstance(m, str) and m.strip():
                models.append(SweepModel(m.strip()))
                continue
            if not isinstance(m, Mapping):
                raise ConfigError(f"sweep plan {src}: {where!r} must be a zoo name or a mapping with "
                                  f"'model' (and 'data'); got {m!r}. Write e.g. - digits-cnn.")
            _unknown(where, list(m), _MODEL_KEYS, src)
            for key in _MODEL_KEYS:
                v = m.get(key)
                if (key == "model" and not (isinstance(v, str) and v.strip())) or (
                        v is not None and not isinstance(v, str)):
                    raise ConfigError(f"sweep plan {src}: '{where}.{key}' must be a "
                                      f"{'non-empty ' if key == 'model' else ''}string; got {v!r}. "
                                      "Give a zoo name or a path.")
            models.append(SweepModel(m["model"].strip(), m.get("data"), m.get("data_dir"), m.get("arch")))
        refs = [m.to_dict() for m in models]
        for i, r in enumerate(refs):
            if r in refs[:i]:
                raise ConfigError(f"sweep plan {src}: 'models' must not repeat a model; got {r['model']!r} "
                                  "twice. Remove the duplicate.")
        attacks: list[SweepAttack] = []
        for i, a in enumerate(raw_attacks):
            where = f"attacks[{i}]"
            if not isinstance(a, Mapping):
                raise ConfigError(f"sweep plan {src}: {where!r} must be a mapping with 'name' and 'eps'; got "
                                  f"{a!r}. Write e.g. - {{name: pgd, eps: [0.1, 0.2]}}.")
            _unknown(where, list(a), _ATTACK_KEYS, src)
            name = a.get("name")
            key = name.strip().lower() if isinstance(name, str) else str(name)
            if key not in EVASION_ATTACKS:
                close = difflib.get_close_matches(str(name).lower(), list(EVASION_ATTACKS), n=1)
                hint = f"Did you mean {close[0]!r}?" if close else f"Use one of {', '.join(EVASION_ATTACKS)}."
                raise ConfigError(f"sweep plan {src}: '{where}.name' must be an evasion attack "
                                  f"({', '.join(EVASION_ATTACKS)}); got {name!r}. {hint}")
            if "eps" not in a:
                raise ConfigError(f"sweep plan {src}: '{where}.eps' must be given; got no 'eps' key. "
                                  "Write e.g. eps: [0.1, 0.2].")
            raw_eps = a["eps"]
            eps_list = raw_eps if isinstance(raw_eps, list) else [raw_eps]
            if not eps_list:
                raise ConfigError(f"sweep plan {src}: '{where}.eps' must hold at least one budget; got []. "
                                  "Write e.g. eps: [0.1, 0.2].")
            for e in eps_list:
                if not _is_num(e) or not math.isfinite(e) or e <= 0:
                    raise ConfigError(f"sweep plan {src}: '{where}.eps' must be numbers > 0; got {e!r}. "
                                      "Write e.g. eps: [0.1, 0.2].")
            eps = tuple(float(e) for e in eps_list)
            if len(set(eps)) != len(eps):
                raise ConfigError(f"sweep plan {src}: '{where}.eps' must not repeat a budget; got "
                                  f"{list(eps)}. Remove the duplicate.")
            norm = str(a.get("norm", "inf"))
            if norm not in _NORMS:
                raise ConfigError(f"sweep plan {src}: '{where}.norm' must be one of {', '.join(_NORMS)}; got "
                                  f"{a.get('norm')!r}. Write e.g. norm: inf.")
            for k in ("steps", "max_queries"):
                v = a.get(k)
                if v is not None and (not _is_int(v) or v < 1):
                    raise ConfigError(f"sweep plan {src}: '{where}.{k}' must be an int >= 1; got {v!r}. "
                                      f"Write e.g. {k}: {10 if k == 'steps' else 1000}, or leave it out.")
            attacks.append(SweepAttack(str(key), eps, norm, a.get("steps"), a.get("max_queries")))
        sigs = [(x.name, x.norm, x.steps, x.max_queries) for x in attacks]
        for i, s in enumerate(sigs):
            if s in sigs[:i]:
                raise ConfigError(f"sweep plan {src}: 'attacks' must not repeat an attack; got {s[0]!r} "
                                  f"(norm {s[1]}) twice. List its budgets in one 'eps' list instead.")
        kwargs = {k: data[k] for k in ("n", "seed", "shard_size", "batch_size") if k in data}
        return cls(models=tuple(models), attacks=tuple(attacks), source=src, **kwargs)

    @classmethod
    def from_yaml(cls, path: Path | str) -> SweepPlan:
        """Read a plan from a YAML file (``yaml.safe_load``), every field checked.

        Raises:
            ConfigError: the file is missing, not YAML, or has a bad field (one line).
        """
        import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"sweep plan: the plan file must be a readable UTF-8 YAML file; got "
                              f"{str(p)!r} ({type(exc).__name__}). Check the path.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"sweep plan {p}: the file must be valid YAML; got a syntax error{at} "
                              f"({what}). Fix the YAML.") from None
        return cls.from_dict(data, source=str(p))

    @property
    def cells(self) -> list[tuple[SweepModel, SweepAttack, float]]:
        """Every (model, attack, eps), in plan order."""
        return [(m, a, e) for m in self.models for a in self.attacks for e in a.eps]

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models], "attacks": [a.to_dict() for a in self.attacks],
                "n": self.n, "seed": self.seed, "shard_size": self.shard_size, "batch_size": self.batch_size}


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One (model, attack, eps) of a sweep.

    Attributes:
        model, attack, eps, norm: the cell.
        status: ``"ok"``, or ``"failed"`` when one of its shards failed (metrics then None).
        n: points attacked.
        clean_accuracy, robust_accuracy: on those points.
        attack_success_rate: share of clean-correct points broken (None when none is).
        median_norm: median perturbation norm of the successful adversarial points (None if none).
        queries: forward queries spent by a query-based attack over all points (None otherwise).
        jobs: the cell's jobs; failed: those that failed.
        error: the first failed job's error (type: message), else None.
    """

    model: str
    attack: str
    eps: float
    norm: str
    status: str
    n: int
    clean_accuracy: float | None
    robust_accuracy: float | None
    attack_success_rate: float | None
    median_norm: float | None
    queries: int | None
    jobs: int
    failed: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "attack": self.attack, "eps": self.eps, "norm": self.norm,
                "status": self.status, "n": self.n, "clean_accuracy": self.clean_accuracy,
                "robust_accuracy": self.robust_accuracy, "attack_success_rate": self.attack_success_rate,
                "median_norm": self.median_norm, "queries": self.queries, "jobs": self.jobs,
                "failed": self.failed, "error": self.error}


@dataclass(frozen=True, slots=True)
class SweepResult:
    """The outcome of ``run_sweep``.

    Attributes:
        plan: the plan.
        rows: one ``SweepRow`` per (model, attack, eps), in plan order.
        counts: jobs per runner status (``done``, ``cached``, ``failed``).
        failed_jobs: the failed jobs' reports (kind, params, error), for the report.
        executor: the executor's name.
        time_s: wall time of the run.
    """

    plan: SweepPlan
    rows: tuple[SweepRow, ...]
    counts: dict[str, int]
    failed_jobs: tuple[dict[str, Any], ...]
    executor: str
    time_s: float

    @property
    def ok(self) -> bool:
        """True when every job finished."""
        return not self.failed_jobs

    def numbers(self) -> list[dict[str, Any]]:
        """The rows as dicts: what is identical across backends, worker counts and shard sizes."""
        return [r.to_dict() for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"format": SWEEP_FORMAT, "modelshield_version": modelshield.__version__,
                "plan": self.plan.to_dict(), "executor": self.executor, "time_s": round(self.time_s, 3),
                "counts": dict(self.counts), "rows": self.numbers(), "failed_jobs": list(self.failed_jobs)}


def check_models_cached(plan: SweepPlan) -> None:
    """Refuse a plan whose zoo models are not cached (a sweep never trains one).

    Raises:
        MissingDataError: naming every ``modelshield zoo train NAME`` to run first.
    """
    from modelshield import zoo

    names = set(zoo.names())
    missing = [m.model for m in plan.models if m.model in names and not zoo.is_cached(m.model)]
    if missing:
        cmds = " and ".join(f"`modelshield zoo train {m}`" for m in missing)
        raise MissingDataError(f"sweep plan {plan.source}: zoo models must be trained before a sweep fans "
                               f"out; got {', '.join(missing)} not cached in {str(zoo.cache_dir())!r}. "
                               f"Run {cmds} once, then run the sweep again.")


def _row(model: SweepModel, attack: SweepAttack, eps: float, reports: Sequence[JobReport]) -> SweepRow:
    from modelshield.runner.evasion import merge_shards

    failed = [r for r in reports if r.status == "failed"]
    base: dict[str, Any] = {"model": model.model, "attack": attack.name, "eps": eps, "norm": attack.norm,
            "jobs": len(reports), "failed": len(failed)}
    if failed:
        f = failed[0]
        return SweepRow(status="failed", n=0, clean_accuracy=None, robust_accuracy=None,
                        attack_success_rate=None, median_norm=None, queries=None,
                        error=f"{f.error_type}: {f.error}", **base)
    try:
        merged = merge_shards([r.result for r in reports])
    except DataError as exc:  # a checkpoint of another run cannot get here (keys), but say so if it does
        return SweepRow(status="failed", n=0, clean_accuracy=None, robust_accuracy=None,
                        attack_success_rate=None, median_norm=None, queries=None,
                        error=f"DataError: {exc}", **base)
    norms = [float(p["norm"]) for p in merged.points if p["success"] and p["valid"]]
    q = [p["queries"] for p in merged.points]
    return SweepRow(status="ok", n=merged.n, clean_accuracy=merged.clean_accuracy,
                    robust_accuracy=merged.robust_accuracy, attack_success_rate=merged.attack_success_rate,
                    median_norm=statistics.median(norms) if norms else None,
                    queries=None if any(v is None for v in q) else sum(int(v) for v in q), **base)


def run_sweep(
    plan: SweepPlan,
    executor: Executor | None = None,
    *,
    checkpoint: Path | None = None,
    retries: int = 2,
    progress: Progress | None = None,
) -> SweepResult:
    """Run every (model, attack, eps) of the plan as evasion-shard jobs and merge each cell.

    All jobs go to ``run_jobs`` at once, so workers stay busy across cells; finished jobs found in
    ``checkpoint`` are not recomputed; a job that keeps failing marks its cell failed and the
    other cells complete.

    Args:
        plan: the sweep plan.
        executor: ``InlineExecutor()`` (default), ``ProcessExecutor(...)`` or ``RayExecutor(...)``.
        checkpoint: folder of per-job results (resume); None keeps nothing.
        retries: extra attempts for a failing job.
        progress: ``progress(finished, total, message)`` after each job.

    Returns:
        SweepResult with one row per cell, in plan order.

    Raises:
        MissingDataError: a zoo model of the plan is not cached (``modelshield zoo train NAME``).
        ConfigError: a bad plan, executor or retries.
    """
    from modelshield.runner.evasion import evasion_shards

    if not isinstance(plan, SweepPlan):
        raise ConfigError(f"run_sweep: 'plan' must be a SweepPlan; got {type(plan).__name__}. "
                          "Build it with SweepPlan.from_yaml(path).")
    check_models_cached(plan)
    cells = plan.cells
    groups = []
    for model, attack, eps in cells:
        groups.append(evasion_shards(model.model, attack=attack.config(eps), n=plan.n,
                                     shard_size=plan.shard_size, seed=plan.seed, batch_size=plan.batch_size,
                                     data=model.data, arch=model.arch,
                                     data_dir=None if model.data_dir is None else Path(model.data_dir)))
    jobs = [job for group in groups for job in group]
    run = run_jobs(jobs, executor, checkpoint=checkpoint, retries=retries, progress=progress)
    rows, pos = [], 0
    for (model, attack, eps), group in zip(cells, groups, strict=True):
        rows.append(_row(model, attack, eps, run.reports[pos:pos + len(group)]))
        pos += len(group)
    failed = tuple({"kind": r.job.kind, "params": r.job.params, "attempts": r.attempts,
                    "error_type": r.error_type, "error": r.error} for r in run.failed)
    return SweepResult(plan=plan, rows=tuple(rows), counts=run.counts, failed_jobs=failed,
                       executor=run.executor, time_s=run.time_s)
