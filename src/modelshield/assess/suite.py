"""Run an assessment plan on a model: each section runner contributes one Section."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import PurePath
from typing import Any

from torch import Tensor

from modelshield._checks import check_choice
from modelshield.assess._section import (
    SECTIONS,
    AssessmentContext,
    Progress,
    Section,
    SectionRunner,
    Severity,
    max_severity,
    skipped_section,
)
from modelshield.assess.business import business_view
from modelshield.assess.plan import AssessmentPlan
from modelshield.attacks.verify import check_batch
from modelshield.errors import ConfigError, IntegrityError, ModelShieldError
from modelshield.models import ModelLike, TorchModel, as_model
from modelshield.targets import Target

__all__ = ["SCHEMA_VERSION", "Assessment", "assessment_context", "failed_section", "jsonable",
           "package_versions", "provenance", "run", "run_section", "target_inputs"]

SCHEMA_VERSION = 1
"""Version of the report JSON layout; bumped on any incompatible change."""

_PACKAGES = ("modelshield", "torch", "numpy", "scikit-learn", "matplotlib", "jinja2")


def package_versions() -> dict[str, str | None]:
    """Installed versions of modelshield and the libraries behind its numbers, plus Python."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy of obj: mappings, sequences, paths, numbers (nan/inf become None)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return jsonable(obj.item())
    return str(obj)


def provenance(
    *,
    model_info: Mapping[str, Any],
    data_info: Mapping[str, Any],
    seed: int | None,
    attacks: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything needed to reproduce a number: package versions, model and data hashes, settings.

    Args:
        model_info: at least ``name`` and ``weights_sha256`` when known.
        data_info: at least ``name`` and ``sha256`` when known.
        seed: the seed given to the attacks.
        attacks: each attack's settings by name.
    """
    out: dict[str, Any] = jsonable({
        "packages": package_versions(),
        "platform": platform.platform(),
        "model": {"name": model_info.get("name"), "weights_sha256": model_info.get("weights_sha256"),
                  "path": model_info.get("path")},
        "data": {"name": data_info.get("name"), "sha256": data_info.get("sha256"),
                 "points_sha256": data_info.get("points_sha256"), "n": data_info.get("n")},
        "model_weights_sha256": model_info.get("weights_sha256"),
        "data_sha256": data_info.get("sha256"),
        "seed": seed,
        "attacks": dict(attacks),
    })
    return out


def failed_section(section_id: str, exc: ModelShieldError) -> Section:
    """The Section standing in for one that raised ``exc``: not run, severity ``"none"``, with the reason.

    Like ``skipped_section`` (``metrics["skipped"]`` is True), plus ``metrics["failed"]``, the error
    type, and a warning so the report cannot read as "no risk found" without saying why.
    """
    reason = " ".join(str(exc).split()) or type(exc).__name__
    base = skipped_section(section_id, f"{section_id} (not run: the section failed)", reason)
    return dataclasses.replace(
        base,
        summary=f"Failed: {reason}",
        metrics={**base.metrics, "failed": True, "error": type(exc).__name__},
        warnings=(f"This section failed and its threat was not assessed ({type(exc).__name__}: {reason}); "
                  "its severity 'none' says nothing about the risk.",),
        provenance={**base.provenance, "failed": True, "error": type(exc).__name__},
    )


def run_section(runner: SectionRunner, ctx: AssessmentContext, progress: Progress | None) -> Section:
    """``runner(ctx, progress)``; a ``ModelShieldError`` it raises becomes ``failed_section`` instead.

    An error modelshield raises on purpose (bad input for this section, a capability the model
    lacks) costs that section only, so one section cannot discard the others' results. An
    ``IntegrityError`` (a tampered artifact) and any unexpected exception (a bug) still propagate.
    """
    try:
        return runner(ctx, progress)
    except IntegrityError:
        raise
    except ModelShieldError as exc:
        return failed_section(runner.id, exc)


def _points_sha256(x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256()
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Assessment:
    """The outcome of ``run``: one Section per threat plus what is needed to reproduce it.

    ``to_dict()`` is the report's source of truth; the HTML is rendered from it.
    """

    plan: AssessmentPlan
    model_info: Mapping[str, Any]
    data_info: Mapping[str, Any]
    sections: tuple[Section, ...]
    generated_at: str
    time_s: float
    runner: Mapping[str, Any] | None = None

    @property
    def severity(self) -> Severity:
        """The most serious section severity."""
        return max_severity([s.severity for s in self.sections])

    def metrics(self) -> dict[str, float | None]:
        """Summary metrics: every section's headline metrics, plus ``<section>.<metric>`` scalars."""
        out: dict[str, float | None] = {}
        for s in self.sections:
            out.update(s.headline)
        for s in self.sections:
            for k, v in s.metrics.items():
                if k not in s.headline and isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"{s.id}.{k}"] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe report: schema_version, generated_at, model, data, summary, sections, provenance."""
        attacks: dict[str, Any] = {}
        for s in self.sections:
            attacks.update(s.provenance.get("attacks", {}))
        prov = provenance(model_info=self.model_info, data_info=self.data_info,
                          seed=self.plan.seed, attacks=attacks)
        prov["plan"] = self.plan.to_dict()
        prov["sections"] = jsonable({s.id: dict(s.provenance) for s in self.sections})
        prov["time_s"] = round(self.time_s, 3)
        if self.runner is not None:  # how the jobs ran: executor, job counts, failed jobs
            prov["runner"] = jsonable(dict(self.runner))
        report: dict[str, Any] = jsonable({
            "schema_version": SCHEMA_VERSION,
            "generated_at": self.generated_at,
            "model": dict(self.model_info),
            "data": dict(self.data_info),
            "summary": {
                "severity": self.severity,
                "n": self.data_info.get("n"),
                "metrics": self.metrics(),
                "risks": [
                    {"section": s.id, "title": s.title, "severity": s.severity, "summary": s.summary,
                     "atlas": [dict(a) for a in s.atlas], "recommendation": s.recommendation,
                     "warnings": len(s.warnings)}
                    for s in self.sections
                ],
            },
            "sections": [s.to_dict() for s in self.sections],
            "provenance": prov,
        })
        # For the business: plain-words summary, impact and frameworks per risk, remediation plan.
        info = self.model_info
        ref = str((info.get("name") if info.get("source") in ("zoo", "callable") else info.get("path"))
                  or info.get("name") or "M")
        report["business"] = jsonable(business_view(report["sections"], model=ref))
        return report


def assessment_context(
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    plan: AssessmentPlan,
    model_info: Mapping[str, Any],
    data_info: Mapping[str, Any],
    bounds: tuple[float, float] = (0.0, 1.0),
    texts: tuple[str, ...] | None = None,
    text_model: Any = None,
    train: tuple[Any, Tensor] | None = None,
    user_model: Any = None,
    evasion_results: Mapping[tuple[str, float], Any] | None = None,
) -> AssessmentContext:
    """The context every section of ``run`` sees (arguments as ``run`` takes them).

    Adapts and checks the model and points, keeps the first ``plan.n``, and completes the model
    and data info (weights digest, ``n``, points digest). A runner worker builds the same context
    from the same target, so a section computed there sees exactly what it would see here.

    Raises:
        ConfigError: an unknown section id. InputError: malformed x or y.
    """
    import modelshield.assess.sections  # noqa: F401  # registers the built-in sections

    for sid in plan.sections:
        check_choice("sections", sid, SECTIONS, owner="assess.run",
                     fix="Register the section with register_section() first.")
    m = as_model(model, bounds=bounds)
    x_t, y_t, _ = check_batch(m, x, y, owner="assess.run")
    if plan.n is not None:
        x_t, y_t = x_t[: plan.n], y_t[: plan.n]
    info = dict(model_info)
    info.setdefault("name", type(model).__name__)
    if info.get("weights_sha256") is None and isinstance(m, TorchModel):
        from modelshield.models.load import weights_sha256

        info["weights_sha256"] = weights_sha256(m.module)
    data = {**dict(data_info), "n": int(x_t.shape[0]), "points_sha256": _points_sha256(x_t, y_t)}
    data.setdefault("name", None)
    return AssessmentContext(model=m, x=x_t, y=y_t, plan=plan, model_info=info, data_info=data,
                             bounds=m.bounds, seed=plan.seed, batch_size=plan.batch_size,
                             texts=texts, text_model=text_model, train=train,
                             user_model=user_model, earlier={}, evasion_results=dict(evasion_results or {}))


def run(
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    plan: AssessmentPlan,
    model_info: Mapping[str, Any],
    data_info: Mapping[str, Any],
    bounds: tuple[float, float] = (0.0, 1.0),
    progress: Progress | None = None,
    texts: tuple[str, ...] | None = None,
    text_model: Any = None,
    train: tuple[Any, Tensor] | None = None,
    user_model: Any = None,
    completed: Mapping[str, Section] | None = None,
    evasion_results: Mapping[tuple[str, float], Any] | None = None,
    runners: Mapping[str, SectionRunner] | None = None,
) -> Assessment:
    """Assess a model against the threats in ``plan`` on the points (x, y).

    Args:
        model: a ``torch.nn.Module`` returning logits, a ``predict_proba`` object or callable,
            or an adapted model (see ``as_model``).
        x: ``(N, *input_shape)`` float inputs in ``bounds``; y: ``(N,)`` true labels.
        plan: what to run; ``plan.n`` keeps the first n points.
        model_info: ``name`` plus ``weights_sha256`` and ``path`` when known (the hash is
            computed for torch modules when missing).
        data_info: ``name`` and ``sha256`` of the data set, ``classes`` when known.
        bounds: the input range, used when model is not adapted yet.
        progress: ``progress(done, total, description)``, forwarded to each section.
        texts: for a text model, the messages that the ``(N, 1)`` row indices in x point to.
        text_model: a user's text model (``list[str] -> probabilities``) for the text sections.
        train: the user's training split ``(x_train, y_train)`` (tensors, or texts and labels),
            used by sections that need training data (extraction pool, data validation).
        user_model: the user's model object as loaded, for sections that refit a clone of it.
        completed: sections already computed elsewhere (by runner jobs), by id: used as they are.
        evasion_results: white-box attack results already computed, by ``(attack, eps)``.
        runners: section runners to use instead of the registered ones, by section id (e.g.
            ``{"poisoning": PoisoningSection(rates=(0.0, 0.1, 0.4))}``); each runner's ``id``
            must be its key.

    Returns:
        The Assessment; ``to_dict()`` is the report JSON, ``write_report`` writes it with HTML.

    A section that raises a ``ModelShieldError`` (other than ``IntegrityError``) is reported as
    failed (``failed_section``: severity "none", the one-line reason, a warning) and the run goes
    on; any other exception propagates.

    Raises:
        ConfigError: an unknown section id, or a runner filed under another id. InputError:
            malformed x or y.

    Example:
        result = run(net, x, y, plan=AssessmentPlan(n=300), model_info={"name": "cnn"},
                     data_info={"name": "digits"})
        write_report(result, "report/")
    """
    chosen = dict(runners or {})
    for sid, runner in chosen.items():
        if getattr(runner, "id", None) != sid:
            raise ConfigError(f"run: runners[{sid!r}] is a runner for section "
                              f"{getattr(runner, 'id', None)!r}; file each runner under its own id "
                              "(runners={runner.id: runner}).")
    started = time.perf_counter()
    ctx = assessment_context(model, x, y, plan=plan, model_info=model_info, data_info=data_info,
                             bounds=bounds, texts=texts, text_model=text_model, train=train,
                             user_model=user_model, evasion_results=evasion_results)
    earlier: dict[str, Section] = {}  # filled in as sections finish: later ones may read it
    ctx = dataclasses.replace(ctx, earlier=earlier)
    given = dict(completed or {})
    done: list[Section] = []
    for sid in plan.sections:
        runner = chosen.get(sid, SECTIONS[sid])
        done.append(given[sid] if sid in given else run_section(runner, ctx, progress))
        earlier[sid] = done[-1]
    return Assessment(
        plan=plan, model_info=ctx.model_info, data_info=ctx.data_info, sections=tuple(done),
        generated_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        time_s=time.perf_counter() - started,
    )


def target_inputs(target: Target) -> dict[str, Any]:
    """``run``'s model and data arguments for a loaded target (what the CLI and the runner pass).

    White-box image models go in as their module; everything else adapted. A user's text model
    is also given as ``text_model``; a user's data adds its training split and the model object.
    """
    user_text = target.text and target.model_info.get("source") in ("file", "callable")
    ud = target.data
    return {"model": target.module if target.image and target.white_box else target.adapted(),
            "x": target.x, "y": target.y, "model_info": target.model_info, "data_info": target.data_info,
            "bounds": target.bounds, "texts": target.texts,
            "text_model": target.module if user_text else None,
            "train": None if ud is None else (ud.x_train, ud.y_train),
            "user_model": None if ud is None else target.module}
