"""The "Model extraction" report section.

The scenario behind it (pool, logged prediction API, attack run, PRADA replay) lives in the
library, ``modelshield.experiments.extraction``; its names are re-exported here for
backward compatibility.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from matplotlib.figure import Figure as MplFigure

from modelshield._checks import check_choice, check_range
from modelshield.assess._plots import png_base64
from modelshield.assess._section import (
    ATLAS,
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    is_text_model,
    json_float,
    points_line,
    skipped_section,
)
from modelshield.attacks.extraction import (
    CurvePoint,
    KnockoffNets,
    TextExtraction,
    TextExtractionResult,
    is_unscaled,
)
from modelshield.attacks.extraction.text import SURROGATE
from modelshield.defenses.extraction import HARDENING_METHODS, PRADA
from modelshield.errors import ConfigError, DataError
from modelshield.experiments.extraction import (
    DEFAULT_POOL,
    DEFENCES,
    EXTRACTION_ATTACKS,
    POOLS,
    ExtractionRun,
    Pool,
    QueryLog,
    build_extraction_attack,
    digits_from_mnist,
    load_pool,
    prada_verdict,
    run_extraction,
)
from modelshield.models import CallableModel

__all__ = [
    "DEFAULT_POOL",
    "DEFENCES",
    "EXTRACTION_ATTACKS",
    "EXTRACTION_SEVERITY_THRESHOLDS",
    "POOLS",
    "ExtractionRun",
    "ExtractionSection",
    "Pool",
    "QueryLog",
    "build_extraction_attack",
    "digits_from_mnist",
    "extraction_severity",
    "load_pool",
    "prada_verdict",
    "run_extraction",
]

# Sections add the ATLAS techniques they cite (see ATLAS's docstring).
ATLAS.setdefault("AML.T0024.002", "Extract ML Model")
ATLAS.setdefault("AML.T0040", "ML Model Inference API Access")


EXTRACTION_SEVERITY_THRESHOLDS: tuple[tuple[float, Severity], ...] = (
    (0.90, "critical"),
    (0.70, "high"),
    (0.40, "medium"),
    (0.10, "low"),
)
"""``(minimum gain, severity)`` pairs, checked in order; a lower gain is ``"none"``.

The gain is the copy's fidelity above a constant guess, ``(fidelity - chance) / (1 - chance)``,
where chance is the share of the most frequent victim label on the evaluation points (what a
thief that learned nothing would match). It is read at the section's highest query budget for
the best undefended Knockoff copy (probabilities or labels):

==============  ==========
gain            severity
==============  ==========
>= 0.90         critical
[0.70, 0.90)    high
[0.40, 0.70)    medium
[0.10, 0.40)    low
< 0.10          none
==============  ==========
"""

_RECOMMENDATION = (
    "Give every API client a query budget (modelshield.defenses.extraction.ClientBudget, per "
    "key and per time window) sized to honest use, and monitor each client's query stream with "
    "PRADA-style detection (PRADA) so that synthetic query patterns are flagged and throttled. "
    "Output hardening (top-1 labels only, rounding, noise, reverse sigmoid) only limits how much "
    "each answer leaks about the probabilities: a label-only API is still copied, just with more "
    "queries, so treat it as a secondary measure. Keep the model's weights and training data "
    "private, and watermark the model if you need to prove theft later."
)




def extraction_severity(fidelity: float, chance: float) -> Severity:
    """Severity from the copy's fidelity gain over a constant guess (see the thresholds table).

    nan fidelity (nothing measured) gives ``"none"``.
    """
    if math.isnan(fidelity):
        return "none"
    gain = 0.0 if chance >= 1.0 else (fidelity - chance) / (1.0 - chance)
    for minimum, severity in EXTRACTION_SEVERITY_THRESHOLDS:
        if gain >= minimum:
            return severity
    return "none"


def _train_pool(ctx: AssessmentContext) -> Pool | None:
    """The user's training split as the thief's pool, or None when there is none that fits.

    An attacker holding data from the model's own distribution (a former insider, a partner, a
    scraped copy of the same source): an upper bound on the threat from outside data.
    """
    if ctx.train is None or not isinstance(ctx.train[0], torch.Tensor):
        return None
    x = ctx.train[0].detach().float().cpu()
    if x.dim() < 2 or tuple(x.shape[1:]) != tuple(ctx.x.shape[1:]) or x.shape[0] == 0:
        return None
    lo, hi = ctx.bounds
    x = x.clamp(lo, hi)
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    name = ctx.data_info.get("name") or "the data"
    # on the assessment's device: the thief trains where the pool lies
    return Pool(x=x.to(ctx.x.device), groups=None, name=f"{name} training split", kind="train-split",
                relation="same-distribution", sha256=str(ctx.data_info.get("sha256") or digest),
                points_sha256=digest,
                note=(f"the {int(x.shape[0])} rows of the user's own training split (unlabelled): an "
                      "attacker holding same-distribution data, an upper bound on the threat."))


def _zoo_tabular_pool(ctx: AssessmentContext, data_root: str | None) -> Pool | None:
    """The training split of a built-in tabular data set (a zoo model's own), or None for other data.

    The same attacker as for a user's data: same-distribution rows, an upper bound on the threat
    from outside data (uniform noise over a tabular feature box says nothing about it).
    """
    from modelshield.data import TABULAR_DATASETS, load_tabular_dataset

    name = str(ctx.data_info.get("name"))
    if ctx.data_info.get("format") not in (None, "builtin") or name not in TABULAR_DATASETS:
        return None
    tab = load_tabular_dataset(name, data_root, deduplicate=bool(ctx.data_info.get("deduplicated", False)))
    x = tab.x_train.detach().float().cpu()
    if tuple(x.shape[1:]) != tuple(ctx.x.shape[1:]) or x.shape[0] == 0:
        return None
    lo, hi = ctx.bounds
    x = x.clamp(lo, hi)
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    return Pool(x=x.to(ctx.x.device), groups=None, name=f"{name} training split", kind="train-split",
                relation="same-distribution", sha256=tab.sha256, points_sha256=digest,
                note=(f"the {int(x.shape[0])} rows of the zoo model's own {name} training split "
                      "(unlabelled): an attacker holding same-distribution data, an upper bound on the "
                      "threat."))


_LABELS = {"none": "probabilities (no defence)", "top1": "labels only (top1)", "round": "rounded (2 dp)",
           "noise": "noisy (std 0.05)", "reverse_sigmoid": "reverse sigmoid"}
_TEXT_LABELS = {"proba": "probabilities", "labels": "labels only"}
_COLORS = ("#d1242f", "#1f6feb", "#2da44e", "#8250df", "#bf8700", "#0a7d8c")


def _curve_figure(curves: Mapping[str, Sequence[CurvePoint]], chance: float) -> str:
    """Fidelity and accuracy against queries, one line per API answer type; base64 PNG."""
    fig = MplFigure(figsize=(8.4, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for i, (key, curve) in enumerate(curves.items()):
        qs = [p.queries for p in curve]
        for ax, metric in zip(axes, ("fidelity", "accuracy"), strict=True):
            ax.plot(qs, [getattr(p, metric) for p in curve], marker="o", ms=4, lw=1.8,
                    color=_COLORS[i % len(_COLORS)], label=_LABELS.get(key, key),
                    ls="-" if key in ("none", "top1") else "--")
    axes[0].axhline(chance, color="#57606a", ls=":", lw=1, label="constant guess")
    for ax, metric in zip(axes, ("fidelity to the victim", "copy's test accuracy"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("victim queries")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    return png_base64(fig)


def _runs_plan(label_only: bool, defences: Sequence[str]) -> list[tuple[str, Literal["proba", "labels"]]]:
    """(defence, output) of each Knockoff run: probabilities and labels, then each defence."""
    if label_only:
        return [("top1", "labels")]
    plan: list[tuple[str, Literal["proba", "labels"]]] = [("none", "proba"), ("top1", "labels")]
    plan += [(d, "proba") for d in defences if d not in ("none", "top1")]
    return plan


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractionSection:
    """Section runner for model extraction (MITRE ATLAS AML.T0024.002 via AML.T0040).

    Runs Knockoff Nets (random strategy) against the model's prediction API from a surrogate
    pool at each query budget, with probabilities, with labels only (= the ``top1`` hardening),
    and behind each other hardening defence; measures each copy's fidelity and accuracy on the
    assessment points; reports each defence's cost to honest users (``honest_cost`` on the same
    points); replays the undefended Knockoff stream, a Jacobian-augmentation stream and the
    assessment points (an honest client) through PRADA. Severity: ``extraction_severity`` of the
    best undefended copy at the highest budget.

    The pool: ``pool`` if given (see ``load_pool``), else ``DEFAULT_POOL`` for the model's data
    set; for the user's own data files (``ctx.train``) their training split (a same-distribution attacker;
    budgets above its size are lowered to it, with a warning); for a tabular zoo model the training
    split of its built-in data set (e.g. phishing-websites); else noise. When the default
    pool's files are missing, the model's own training split is used and the section says so.

    Text models (a user's ``list[str] -> probabilities`` model with its data file, or a spam zoo
    model) are stolen with ``TextExtraction`` instead: the thief queries the model on texts of
    the training split (the user's, or sms-spam's) at each budget, with probabilities and with
    labels only, trains a TF-IDF + logistic-regression copy on the answers and is measured on
    the assessment texts, re-queried from the model (Tramèr et al. 2016; Krishna et al. 2020).
    PRADA and the hardening comparison are not run for text (they work on numeric queries).
    Budgets and epochs come from ``ctx.plan.extraction`` (``ExtractionPlan``) when it sets them.
    The thief is a small CNN for images of at least 8x8 pixels, else an MLP; on unscaled rows (a
    value beyond +-10) it standardises its inputs with the query pool's own per-feature mean and
    std, as an attacker holding the pool would do.

    Cost on the digits-cnn zoo model with the defaults: about 15-30 s on two CPU cores (thieves
    are small CNNs trained for ``epochs`` on at most ``max(budgets)`` answers); on MNIST-sized
    inputs roughly ten times more. Enable it with ``AssessmentPlan(sections=(..., "extraction"))``;
    change its settings with ``register_section(ExtractionSection(...), replace=True)``.

    Args:
        budgets: query budgets (curve checkpoints); the highest drives the severity.
        epochs: thief training epochs at each checkpoint.
        pool: a pool spec for ``load_pool``, or None for the default by data set.
        data_root: the data folder for MNIST / Fashion-MNIST pools; None: ``$MODELSHIELD_DATA``.
        defences: the hardening methods to compare (``"top1"`` is always the labels-only run).
        jacobian: also run Jacobian augmentation (labels) at the highest budget for PRADA.
        prada_delta: PRADA's threshold on the Shapiro-Wilk W.

    Reference: Orekondy, Schiele and Fritz, "Knockoff Nets", CVPR 2019; Juuti et al., "PRADA",
    EuroS&P 2019; Tramer et al., "Stealing Machine Learning Models via Prediction APIs", USENIX
    Security 2016; Krishna et al., "Thieves on Sesame Street! Model Extraction of BERT-based APIs",
    ICLR 2020 (text).
    """

    id: str = "extraction"
    budgets: tuple[int, ...] = (100, 300, 1000)
    epochs: int = 20
    pool: str | None = None
    data_root: str | None = None
    defences: tuple[str, ...] = HARDENING_METHODS
    jacobian: bool = True
    prada_delta: float = 0.95

    def __post_init__(self) -> None:
        owner = "ExtractionSection"
        budgets = tuple(self.budgets)
        if not budgets:
            raise ConfigError(f"{owner}: 'budgets' must hold at least one query budget; got (). "
                              "Use e.g. budgets=(100, 300, 1000).")
        for b in budgets:
            check_range("budgets", b, owner=owner, low=1, integer=True)
        check_range("epochs", self.epochs, owner=owner, low=1, integer=True)
        for d in self.defences:
            check_choice("defences", d, HARDENING_METHODS, owner=owner)
        check_range("prada_delta", self.prada_delta, owner=owner, low=0.0, high=1.0)
        object.__setattr__(self, "budgets", tuple(sorted(set(budgets))))
        object.__setattr__(self, "defences", tuple(self.defences))

    def settings(self) -> dict[str, Any]:
        """The section's configuration as a JSON-safe dict."""
        return {"budgets": list(self.budgets), "epochs": self.epochs, "pool": self.pool,
                "defences": list(self.defences), "jacobian": self.jacobian, "prada_delta": self.prada_delta}

    def _pool(self, ctx: AssessmentContext, warnings: list[str]) -> Pool:
        from modelshield.errors import MissingDataError

        dataset = ctx.data_info.get("name")
        shape = tuple(ctx.x.shape[1:])
        need = max(self.budgets)
        builtin = ctx.data_info.get("format") in (None, "builtin")  # a user's file may share a name
        if self.pool is None and (not builtin or str(dataset) not in DEFAULT_POOL):
            train = _train_pool(ctx)
            if train is not None:
                return train
        if self.pool is None and builtin:  # a tabular zoo model: its own training split, not noise
            zoo_rows = _zoo_tabular_pool(ctx, self.data_root)
            if zoo_rows is not None:
                return zoo_rows
        spec = self.pool or DEFAULT_POOL.get(str(dataset), "noise")
        common: dict[str, Any] = {"input_shape": shape, "bounds": ctx.bounds, "victim_dataset": dataset,
                                  "data_root": self.data_root, "size": max(need, 1000), "seed": ctx.seed}
        try:
            pool = load_pool(spec, **common)
        except MissingDataError as exc:
            if self.pool is not None or dataset not in POOLS:
                raise
            why = " ".join(str(exc).split()[:12])
            warnings.append(f"The default pool {spec!r} is not available ({why}...); "
                            f"the model's own {dataset} training split is used instead, i.e. an attacker "
                            "holding same-distribution data (an upper bound on the threat).")
            pool = load_pool(str(dataset), **common)
        if pool.x.shape[0] < need:
            raise DataError(
                f"ExtractionSection: the pool must hold at least max(budgets)={need} rows; got "
                f"{pool.x.shape[0]} from {pool.name!r}. Lower the budgets or give a larger pool."
            )
        return pool

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        override = getattr(ctx.plan, "extraction", None)  # the plan's ExtractionPlan, if any
        budgets = tuple(getattr(override, "budgets", None) or self.budgets)
        epochs = int(getattr(override, "epochs", None) or self.epochs)
        if (budgets, epochs) != (self.budgets, self.epochs):
            return dataclasses.replace(self, budgets=budgets, epochs=epochs)(ctx, progress)
        if is_text_model(ctx):
            return self._run_text(ctx, progress)
        warnings: list[str] = []
        pool = self._pool(ctx, warnings)
        rows = int(pool.x.shape[0])
        if rows < max(self.budgets):  # only the user's training split gets here (other pools raise)
            fit = (*(b for b in self.budgets if b < rows), rows)
            warnings.append(f"The training split holds {rows} rows, fewer than the largest query budget "
                            f"{max(self.budgets)}: the thief's budgets are {', '.join(map(str, fit))}.")
            return dataclasses.replace(self, budgets=fit)._run(ctx, progress, pool, warnings)
        return self._run(ctx, progress, pool, warnings)

    def _text_setup(self, ctx: AssessmentContext) -> tuple[Any, list[str], list[str], dict[str, Any]] | str:
        """(victim, pool texts, evaluation texts, pool info) for a text model, or why there are none."""
        idx = ctx.x.reshape(ctx.x.shape[0], -1)[:, 0].long().tolist()
        if ctx.text_model is not None and ctx.texts is not None:  # the user's own model and file
            train = ctx.train
            if train is None or isinstance(train[0], torch.Tensor) or not len(train[0]):
                return ("no training split of texts was given to draw the thief's queries from; pass the "
                        "model's data file (label<TAB>text) so that its training split serves as the pool.")
            pool_texts = [str(t) for t in train[0]]
            name = str(ctx.data_info.get("name") or "the data")
            sha = str(ctx.data_info.get("sha256") or "")
            return ctx.text_model, pool_texts, [ctx.texts[i] for i in idx], {
                "name": f"{name} training split", "sha256": sha,
                "note": (f"the {len(pool_texts)} texts of the user's own training split (unlabelled): an "
                         "attacker holding same-distribution messages, an upper bound on the threat.")}
        from modelshield.assess.sections.spam import spam_setup
        from modelshield.zoo.spam import train_spam_model

        try:
            kind, ds = spam_setup(ctx, self.data_root, "ExtractionSection")
        except ConfigError as exc:
            return ("the text model is neither a user's model with its data file nor a spam zoo model "
                    f"({exc}).")
        victim = train_spam_model(kind, ds, seed=0)  # type: ignore[arg-type]  # checked in spam_setup; the zoo model's own recipe (fingerprint-checked)
        return victim, list(ds.texts_train), [ds.texts_test[i] for i in idx], {
            "name": f"{ds.name} training split", "sha256": ds.sha256,
            "note": (f"the {len(ds.texts_train)} messages of the {ds.name} training split (unlabelled): an "
                     "attacker holding same-distribution messages, an upper bound on the threat.")}

    def _run_text(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        """Text extraction (``TextExtraction``): probabilities and labels-only, at each budget."""
        setup = self._text_setup(ctx)
        if isinstance(setup, str):
            return skipped_section(self.id, "Model extraction", setup)
        victim, pool_texts, eval_texts, info = setup
        warnings: list[str] = []
        budgets = self.budgets
        if len(pool_texts) < max(budgets):
            budgets = (*(b for b in budgets if b < len(pool_texts)), len(pool_texts))
            warnings.append(f"The training split holds {len(pool_texts)} texts, fewer than the largest "
                            f"query budget {max(self.budgets)}: the thief's budgets are "
                            f"{', '.join(map(str, budgets))}.")
        top = max(budgets)
        runs: dict[str, TextExtractionResult] = {}
        outputs: tuple[Literal["proba", "labels"], ...] = ("proba", "labels")
        for i, output in enumerate(outputs):
            if progress is not None:
                progress(i, len(outputs), f"extraction: text copy from {_TEXT_LABELS[output]}")
            attack = TextExtraction(budget=top, checkpoints=tuple(b for b in budgets if b < top),
                                    output=output, batch_size=max(int(ctx.batch_size), 1), seed=ctx.seed)
            runs[output] = attack(victim, pool_texts, eval_data=(eval_texts, ctx.y))
        if progress is not None:
            progress(len(outputs), len(outputs), "extraction: done")
        digest = hashlib.sha256("\n".join(pool_texts).encode()).hexdigest()
        pool = {"name": info["name"], "kind": "train-split", "relation": "same-distribution",
                "n": len(pool_texts), "shape": None, "sha256": info["sha256"] or digest,
                "points_sha256": digest, "has_groups": False, "note": info["note"]}
        return self._text_section(ctx, runs, pool, tuple(budgets), warnings)

    def _text_section(self, ctx: AssessmentContext, runs: Mapping[str, TextExtractionResult],
                      pool: dict[str, Any], budgets: tuple[int, ...], warnings: list[str]) -> Section:
        top = max(budgets)
        n = len(ctx.y)
        first = next(iter(runs.values()))
        victim_labels = (first.victim_labels if first.victim_labels is not None
                         else torch.zeros(0, dtype=torch.long))
        chance = float(torch.bincount(victim_labels).max()) / max(n, 1) if n else math.nan
        best_key = max(runs, key=lambda k: runs[k].fidelity)
        best = runs[best_key]
        fid, acc = best.fidelity, best.accuracy
        severity = extraction_severity(fid, chance)
        table = Table(
            title="Text copy fidelity by query budget (agreement with the model on the assessment texts)",
            columns=("API answers", *(f"fidelity at {b}" for b in budgets),
                     *(f"accuracy at {b}" for b in budgets), "victim queries", "verification queries"),
            rows=tuple((_TEXT_LABELS[k], *(json_float(r.at(b).fidelity, 4) for b in budgets),
                        *(json_float(r.at(b).accuracy, 4) for b in budgets), r.queries, r.eval_queries)
                       for k, r in runs.items()))
        figure = Figure(
            title="Copy quality against query budget",
            caption=(f"A {SURROGATE} copy trained on the model's answers to texts of the {pool['name']} "
                     f"({pool['relation']}); fidelity is agreement with the model on {n} assessment texts, "
                     "re-queried from the model."),
            how_to_read=("Higher is worse for the model owner: the faster a line climbs toward 1, the fewer "
                         "queries a thief needs for a copy that answers like the model; the dotted line is "
                         "a constant guess."),
            png_base64=_curve_figure({_TEXT_LABELS[k]: r.curve for k, r in runs.items()}, chance))
        findings = [
            f"With {top} queries of texts from the {pool['name']}, a copy agrees with the model on "
            f"{100 * fid:.1f}% of {n} assessment texts ({_TEXT_LABELS[best_key]}); its own accuracy is "
            f"{100 * acc:.1f}% (a constant guess matches {100 * chance:.1f}%): severity {severity}.",
            *(f"{_TEXT_LABELS[k]}: fidelity " + ", ".join(f"{100 * p.fidelity:.1f}% at {p.queries}"
                                                        for p in r.curve)
              + f" queries ({r.queries} victim queries counted, plus {r.eval_queries} to verify on the "
                "assessment texts)." for k, r in runs.items()),
            f"The thief's copy is {SURROGATE}, trained on the answers (Tramèr et al., USENIX Security 2016; "
            "Krishna et al., \"Thieves on Sesame Street!\", ICLR 2020); a fine-tuned language model would do "
            "at least as well, so these numbers are a lower bound.",
            "PRADA and output hardening are compared for image and tabular models only: PRADA watches the "
            "distances between numeric queries, which texts do not have; answering labels only is the "
            "labels-only run above.",
        ]
        headline = {"extraction_fidelity": json_float(fid), "extraction_copy_accuracy": json_float(acc)}
        metrics = {
            **headline, "budget": top, "chance_fidelity": json_float(chance), "best_api": best_key, "n": n,
            "pool": pool, "surrogate": SURROGATE,
            "runs": {k: {"curve": [p.to_dict() for p in r.curve], "queries": r.queries,
                         "eval_queries": r.eval_queries, "time_s": round(r.time_s, 3)}
                     for k, r in runs.items()},
        }
        summary = (f"{top} API queries with texts of the training split give a copy that agrees with the "
                   f"model on {100 * fid:.1f}% of texts; answering labels only does not stop it.")
        settings = {**self.settings(), "budgets": list(budgets), "defences": [], "jacobian": False}
        return Section(
            id=self.id, title="Model extraction", summary=summary, severity=severity,
            atlas=atlas("AML.T0024.002", "AML.T0040"), recommendation=_RECOMMENDATION, metrics=metrics,
            headline=headline, findings=tuple(findings), figures=(figure,), tables=(table,),
            warnings=tuple(warnings),
            provenance={"settings": settings, "pool": pool,
                        "attacks": {f"extraction:text-{k}": r.params for k, r in runs.items()}},
            points=(f"{points_line(n, n)}, on which each copy's agreement with the model is measured; "
                    f"the thief's queries are other texts ({pool['name']})"),
        )

    def _run(self, ctx: AssessmentContext, progress: Progress | None, pool: Pool,
             warnings: list[str]) -> Section:
        m = ctx.model
        label_only = isinstance(m, CallableModel) and m.output == "labels"
        plan = _runs_plan(label_only, self.defences)
        top = max(self.budgets)
        total = len(plan) + int(self.jacobian) + 1
        done = 0

        def tick(text: str) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, text)

        eval_data = (ctx.x, ctx.y)
        runs: dict[str, ExtractionRun] = {}
        monitor = PRADA(delta=self.prada_delta)
        streams: dict[str, dict[str, Any]] = {}
        for i, (defence, output) in enumerate(plan):
            attack = KnockoffNets(budget=top, checkpoints=tuple(b for b in self.budgets if b < top),
                                  output=output, epochs=self.epochs, seed=ctx.seed)
            # A label-only model already is the top1 API: no wrapper in front of it.
            api_defence = "none" if label_only else defence
            run = run_extraction(m, pool, attack, eval_data=eval_data, defence=api_defence,
                                 prada=monitor if i == 0 else None, seed=ctx.seed)
            runs[defence] = run
            if run.prada is not None:
                streams[f"knockoff, {_LABELS.get(defence, defence)}"] = run.prada
            tick(f"extraction: knockoff {_LABELS.get(defence, defence)}")
        jac: ExtractionRun | None = None
        if self.jacobian:
            jattack = build_extraction_attack("jacobian", budget=top, output="labels", epochs=self.epochs,
                                              seed=ctx.seed)
            jac = run_extraction(m, pool, jattack, eval_data=eval_data, prada=monitor, seed=ctx.seed)
            if jac.prada is not None:
                streams["jacobian augmentation (labels)"] = jac.prada
            tick("extraction: jacobian augmentation")
        with torch.no_grad():
            honest_labels = m.predict(ctx.x)
        streams["honest client (assessment points)"] = prada_verdict(ctx.x, honest_labels, monitor=monitor,
                                                                     client="honest")
        tick("extraction: PRADA")
        n = int(ctx.x.shape[0])
        chance = float(torch.bincount(honest_labels.cpu()).max()) / max(n, 1)
        return self._section(ctx, pool, runs, jac, streams, warnings, chance)

    def _section(self, ctx: AssessmentContext, pool: Pool, runs: Mapping[str, ExtractionRun],
                 jac: ExtractionRun | None, streams: Mapping[str, dict[str, Any]],
                 warnings: list[str], chance: float) -> Section:
        top = max(self.budgets)
        n = int(ctx.x.shape[0])
        undefended = {k: runs[k] for k in ("none", "top1") if k in runs}
        best_key = max(undefended, key=lambda k: undefended[k].result.fidelity)
        best = undefended[best_key].result
        fid, acc = best.fidelity, best.accuracy
        severity = extraction_severity(fid, chance)
        base_fid = runs["none"].result.fidelity if "none" in runs else math.nan
        cost_rows = []
        for key, run in runs.items():
            if key == "none":
                continue
            c = run.honest_cost or {}
            cost_rows.append((_LABELS.get(key, key), c.get("accuracy_before"), c.get("accuracy_after"),
                              c.get("label_agreement"), c.get("mean_l1_change"),
                              json_float(run.result.fidelity, 4),
                              json_float(run.result.fidelity - base_fid, 4)))
        tables = [
            Table(title="Knockoff copy fidelity by query budget (agreement with the model on the "
                        "assessment points)",
                  columns=("API answers", *(f"fidelity at {b}" for b in self.budgets), f"accuracy at {top}"),
                  rows=tuple((_LABELS.get(k, k),
                              *(json_float(r.result.at(b).fidelity, 4) for b in self.budgets),
                              json_float(r.result.accuracy, 4)) for k, r in runs.items())),
            Table(title=f"Output hardening: honest users' cost and the thief's fidelity at {top} queries",
                  columns=("defence", "accuracy before", "accuracy after", "label agreement",
                           "mean L1 change", f"thief fidelity at {top}", "fidelity change vs probabilities"),
                  rows=tuple(cost_rows)),
            Table(title=f"PRADA (delta={self.prada_delta:g}) on each query stream",
                  columns=("stream", "queries", "flagged", "queries to detection", "final W"),
                  rows=tuple((name, v["queries"], v["flagged"], v["queries_to_detection"], v["final_w"])
                             for name, v in streams.items())),
        ]
        figures = [Figure(
            title="Copy quality against query budget",
            caption=(f"Knockoff Nets copies trained on answers to surrogate queries ({pool.name}, "
                     f"{pool.relation}); fidelity is agreement with the model on {n} assessment points. "
                     "Solid: undefended API (probabilities, labels only); dashed: hardened outputs."),
            how_to_read=("Higher is worse for the model owner: the faster a line climbs toward 1, the "
                         "cheaper a faithful copy; a hardened output (dashed) helps only if its line stays "
                         "below the solid ones."),
            png_base64=_curve_figure({k: r.result.curve for k, r in runs.items()}, chance),
        )]
        findings = [
            f"With {top} queries of {pool.name} data ({pool.relation}), a Knockoff copy agrees with "
            f"the model on {100 * fid:.1f}% of {n} assessment points ({_LABELS.get(best_key, best_key)}); "
            f"its own test accuracy is {100 * acc:.1f}% (a constant guess matches {100 * chance:.1f}%): "
            f"severity {severity}.",
        ]
        shape = tuple(ctx.x.shape[1:])
        if not (len(shape) == 3 and min(shape[1:]) >= 8) and is_unscaled(pool.x):  # an MLP thief
            findings.append(
                "The features are unscaled: the thief (an MLP) standardises its inputs with its own query "
                "pool's per-feature mean and std, as an attacker holding the pool would do.")
        if "top1" in runs and "none" in runs:
            findings.append(
                f"Answering labels only lowers the copy's fidelity at {top} queries from "
                f"{100 * base_fid:.1f}% to {100 * runs['top1'].result.fidelity:.1f}%: hardening "
                "the outputs slows extraction but does not stop it.")
        for key, run in runs.items():
            if key in ("none", "top1") or run.honest_cost is None:
                continue
            findings.append(
                f"{_LABELS.get(key, key)}: thief fidelity {100 * run.result.fidelity:.1f}% at {top} queries; "
                f"honest users keep {100 * run.honest_cost['label_agreement']:.1f}% of their top-1 labels.")
        for name, v in streams.items():
            verdict = (f"flagged after {v['queries_to_detection']} queries" if v["flagged"]
                       else f"not flagged in {v['queries']} queries")
            findings.append(f"PRADA on the {name} stream: {verdict} (final W={v['final_w']}).")
        headline = {"extraction_fidelity": json_float(fid), "extraction_copy_accuracy": json_float(acc)}
        attacks: dict[str, Any] = {f"extraction:knockoff-{k}": r.result.params for k, r in runs.items()}
        if jac is not None:
            attacks["extraction:jacobian"] = jac.result.params
        metrics = {
            **headline,
            "budget": top,
            "chance_fidelity": json_float(chance),
            "best_api": best_key,
            "n": n,
            "pool": pool.info(),
            "runs": {k: {"defence": r.defence, "curve": [p.to_dict() for p in r.result.curve],
                         "queries": r.result.queries, "honest_cost": r.honest_cost,
                         "time_s": round(r.result.time_s, 3)} for k, r in runs.items()},
            "jacobian": None if jac is None else {"curve": [p.to_dict() for p in jac.result.curve],
                                                  "queries": jac.result.queries},
            "prada": dict(streams),
        }
        source = "rows of the training split" if pool.kind == "train-split" else "surrogate data"
        summary = (f"{top} API queries with {source} give a copy that agrees with the model on "
                   f"{100 * fid:.1f}% of inputs; output hardening only slows this down.")
        return Section(
            id=self.id,
            title="Model extraction",
            summary=summary,
            severity=severity,
            atlas=atlas("AML.T0024.002", "AML.T0040"),
            recommendation=_RECOMMENDATION,
            metrics=metrics,
            headline=headline,
            findings=tuple(findings),
            figures=tuple(figures),
            tables=tuple(tables),
            warnings=tuple(warnings),
            provenance={"settings": self.settings(), "pool": pool.info(), "attacks": attacks},
            points=(f"{points_line(n, n)}, on which each copy's agreement with the model is measured "
                    f"(and PRADA's honest client); the thief's queries are {source}"),
        )
