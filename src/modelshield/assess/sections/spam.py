"""Report sections for text (spam) models: data poisoning and text evasion.

``PoisoningSection`` (id ``"poisoning"``): spam recall and F1 of the model's recipe retrained on
training sets with a growing share of spam labels flipped to ham, with and without cleaning by
confident learning, and how well that validator finds the flipped rows.
``TextEvasionSection`` (id ``"text-evasion"``): how often black-box text edits (characters,
words, good words) make detected spam pass, against the share of words an attacker may change;
for a text classifier that is not a binary spam filter (``text_evasion_goal``), how often they
change the label of a correctly classified text (untargeted, any number of classes).

Both need a text zoo model (``spam-nb``, ``spam-logreg``): the context's ``model_info["arch"]``
names the recipe (``"nb"`` / ``"logreg"``) and ``data_info["name"]`` must be ``"sms-spam"``; the
assessment points ``ctx.x`` are ``(N, 1)`` row indices into the SMS test split (see the CLI's
text target). The sections retrain the recipe (deterministic, a second or two) because a
poisoning experiment needs the training data and the evasion attack needs raw strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from matplotlib.figure import Figure as MplFigure

from modelshield.assess._plots import png_base64
from modelshield.assess._section import (
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
    points_line,
)
from modelshield.errors import ConfigError

__all__ = [
    "MALICIOUS_TEXT_LABELS",
    "POISON_RATES",
    "TEXT_BUDGETS",
    "TEXT_METHODS",
    "PoisoningSection",
    "TextEvasionSection",
    "poisoning_severity",
    "spam_setup",
    "text_evasion_goal",
    "text_evasion_severity",
]

POISON_RATES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)
"""Shares of the spam training rows flipped to ham in the poisoning sweep."""
TEXT_BUDGETS: tuple[float, ...] = (0.1, 0.2, 0.3)
"""Shares of a message's words the text attacker may change."""
TEXT_METHODS: tuple[str, ...] = ("char", "word", "goodword", "combined")
MALICIOUS_TEXT_LABELS: frozenset[str] = frozenset(
    {"spam", "junk", "phish", "phishing", "smishing", "scam", "fraud", "malicious"})
"""Class names (case-insensitive) that make a two-class text task a spam filter for text evasion."""

_BLUE, _RED, _GREEN, _GREY = "#1f6feb", "#d1242f", "#1a7f37", "#57606a"

_POISON_RECOMMENDATION = (
    "Validate training data before every (re)training: run confident learning (Northcutt, Jiang "
    "and Chuang, 2021; modelshield.defenses.data.validate_dataset / `modelshield validate-data`) "
    "on out-of-fold predictions, review or drop the flagged rows, and keep provenance of who "
    'labelled what so crowd-sourced or user-reported labels ("not spam" buttons) cannot be '
    "flipped in bulk."
)
_TEXT_RECOMMENDATION = (
    "Normalise inputs before the filter sees them: Unicode NFKC, homoglyph folding (Cyrillic and "
    "Greek look-alikes, leetspeak digits), stripping invisible characters (zero-width spaces, "
    "joiners, soft hyphens) and separators inside words; then retrain with adversarial or "
    "augmented examples (perturbed spam from these attacks, synonyms, appended ham words) so "
    "the filter does not rest on a few exact tokens."
)


def poisoning_severity(recall_drop: float) -> Severity:
    """Severity from the drop in spam recall at the headline poison rate (clean minus poisoned)."""
    if math.isnan(recall_drop):
        return "none"
    for minimum, severity in ((0.3, "critical"), (0.15, "high"), (0.05, "medium"), (0.01, "low")):
        if recall_drop >= minimum:
            return severity  # type: ignore[return-value]  # a member of SEVERITIES
    return "none"


def text_evasion_severity(success_rate: float) -> Severity:
    """Severity from the share of detected spam evaded at the headline word budget."""
    if math.isnan(success_rate):
        return "none"
    for minimum, severity in ((0.5, "critical"), (0.25, "high"), (0.1, "medium"), (0.02, "low")):
        if success_rate >= minimum:
            return severity  # type: ignore[return-value]  # a member of SEVERITIES
    return "none"


def text_evasion_goal(classes: object) -> tuple[Literal["malicious", "any"], int | None]:
    """``(goal, malicious class index)`` of the text evasion attack for a task's class names.

    A task with exactly two classes, one of them named like spam (``MALICIOUS_TEXT_LABELS``,
    e.g. ``["ham", "spam"]``), is a spam filter: the attacker makes detected rows of that class
    pass as the other (TextEvasion goal ``"malicious"``). Any other task (more classes, labels
    with no malicious name such as ``0``/``1`` or ``pos``/``neg``, unknown names) is attacked
    untargeted (goal ``"any"``): any change of a correctly classified text's label counts.

    Example:
        text_evasion_goal(["ham", "spam"])  # ("malicious", 1)
        text_evasion_goal(["food", "sport", "tech"])  # ("any", None)
    """
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) == 2:
        hits = [i for i, c in enumerate(classes) if str(c).strip().lower() in MALICIOUS_TEXT_LABELS]
        if len(hits) == 1:
            return "malicious", hits[0]
    return "any", None


def spam_setup(ctx: AssessmentContext, data_root: str | Path | None, owner: str) -> tuple[str, Any]:
    """``(recipe, sms-spam TextDataset)`` of a spam zoo model's context.

    Raises:
        ConfigError: the context is not a spam zoo model on sms-spam.
    """
    from modelshield.data.sms_spam import load_sms_spam
    from modelshield.zoo.spam import SPAM_KINDS

    kind = ctx.model_info.get("arch")
    if ctx.data_info.get("name") != "sms-spam" or kind not in SPAM_KINDS:
        raise ConfigError(
            f"{owner}: the model must be a text zoo model on sms-spam (spam-nb, spam-logreg); got "
            f"model {ctx.model_info.get('name')!r} on data {ctx.data_info.get('name')!r}. Assess a "
            "spam-* model, or drop this section."
        )
    return str(kind), load_sms_spam(data_root)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    """A median for the report's text: "n/a" when there is none (no success)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"


def _rates(values: Sequence[float], owner: str) -> tuple[float, ...]:
    out = tuple(sorted({float(v) for v in values}))
    if not out or any(not 0.0 <= v <= 1.0 for v in out):
        raise ConfigError(
            f"{owner}: rates must be numbers in [0, 1]; got {tuple(values)!r}. Use e.g. (0, 0.1)."
        )
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class PoisoningSection:
    """Data poisoning: spam recall/F1 against the share of spam training labels flipped.

    For a user's own text model (``ctx.text_model``), the sweep, which retrains a zoo recipe, is
    replaced by a validation of the user's training split (see ``data_validation_section``):
    suspected label issues and conflicting duplicates. For a tabular model on the user's own
    data (``ctx.train``), a clone of the user's estimator (``ctx.user_model``) is refitted on
    the training split with malicious labels flipped (``tabular_poisoning_section``), or, when
    it cannot be refitted, the training split is validated and the section says why.

    Args:
        rates: shares of the spam training rows flipped to ham (0 is the baseline).
        headline_rate: the rate the severity and summary use (added to ``rates``).
        attack: ``"label-flip"`` (random) or ``"targeted-flip"`` (largest margin first).
        validator: the cleaning defence (see ``VALIDATORS``; default confident learning).
        data_root: folder holding ``sms-spam/`` (None: ``$MODELSHIELD_DATA``).
    """

    id: str = "poisoning"
    rates: tuple[float, ...] = POISON_RATES
    headline_rate: float = 0.1
    attack: str = "label-flip"
    validator: str = "confident-learning"
    data_root: str | Path | None = None

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        from modelshield.experiments.poisoning import poison_text_dataset

        owner = "PoisoningSection"
        rates = _rates((*self.rates, self.headline_rate), owner)
        if ctx.train is not None and ctx.text_model is None and ctx.model_info.get("modality") == "tabular":
            from modelshield.assess.sections.tabular_poisoning import (
                TABULAR_POISON_RATES,
                tabular_poisoning_section,
            )

            return tabular_poisoning_section(self.id, ctx, progress, estimator=ctx.user_model,
                                             rates=TABULAR_POISON_RATES, headline_rate=self.headline_rate)
        if ctx.text_model is not None or (ctx.train is not None and ctx.model_info.get("modality") != "text"):
            from modelshield.assess.sections.data_validation import data_validation_section

            return data_validation_section(
                self.id, ctx, progress,
                why=("Poisoning impact was not measured: it retrains the model on poisoned data, which "
                     "needs its training recipe, and a user's model is run as given."))
        kind, ds = spam_setup(ctx, self.data_root, owner)
        from modelshield.zoo.spam import spam_metrics, train_spam_model

        base = spam_metrics(train_spam_model(kind, ds, seed=ctx.seed), ds.texts_test, ds.y_test)  # type: ignore[arg-type]
        rows: list[dict[str, Any]] = []
        for i, rate in enumerate(rates):
            if progress is not None:
                progress(i, len(rates), f"poisoning {100 * rate:g}% of spam labels")
            run = poison_text_dataset(
                ds,
                attack=self.attack,
                rate=rate,
                model=kind,
                validate=True,
                validator=self.validator,
                seed=ctx.seed,
                clean_metrics=base,
            )
            s = run.summary
            det = s["validation"]["detection"]
            rows.append(
                {
                    "rate": rate,
                    "n_poisoned": s["n_poisoned"],
                    "recall": s["poisoned"]["recall"],
                    "f1": s["poisoned"]["f1"],
                    "recall_cleaned": s["validation"]["after_cleaning"]["recall"],
                    "f1_cleaned": s["validation"]["after_cleaning"]["f1"],
                    "removed": s["validation"]["removed"],
                    "detection_precision": det["precision"] if det["poisoned"] else None,
                    "detection_recall": det["recall"],
                    "clean": s["clean"],
                }
            )
        if progress is not None:
            progress(len(rates), len(rates), "poisoning done")
        clean = rows[0]["clean"]
        head = next(r for r in rows if r["rate"] == float(self.headline_rate))
        drop = clean["recall"] - head["recall"]
        severity = poisoning_severity(drop)
        summary = (
            f"Flipping {100 * self.headline_rate:g}% of spam training labels to ham changes spam recall from "
            f"{_pct(clean['recall'])} to {_pct(head['recall'])} (F1 {clean['f1']:.3f} -> {head['f1']:.3f}); "
            f"after cleaning with {self.validator}, recall is {_pct(head['recall_cleaned'])}."
        )
        findings = [
            f"{self.validator} flagged {head['removed']} rows at {100 * self.headline_rate:g}% flips: "
            "precision "
            f"{_pct(head['detection_precision'])}, recall {_pct(head['detection_recall'])} of the "
            f"{head['n_poisoned']} flipped rows.",
            f"At the largest rate ({100 * rates[-1]:g}%), spam recall is {_pct(rows[-1]['recall'])} without "
            f"cleaning and {_pct(rows[-1]['recall_cleaned'])} with it.",
        ]
        table = Table(
            title="Spam metrics on the test split against poison rate",
            columns=(
                "spam labels flipped",
                "rows",
                "recall",
                "F1",
                "recall (cleaned)",
                "F1 (cleaned)",
                "detection precision",
                "detection recall",
            ),
            rows=[
                (
                    f"{100 * r['rate']:g}%",
                    r["n_poisoned"],
                    _pct(r["recall"]),
                    f"{r['f1']:.3f}",
                    _pct(r["recall_cleaned"]),
                    f"{r['f1_cleaned']:.3f}",
                    _pct(r["detection_precision"]),
                    _pct(r["detection_recall"]),
                )
                for r in rows
            ],
        )
        metrics = {
            "clean_spam_recall": json_float(clean["recall"]),
            "clean_spam_f1": json_float(clean["f1"]),
            "curve": [
                {k: (json_float(v) if isinstance(v, float) else v) for k, v in r.items() if k != "clean"}
                for r in rows
            ],
        }
        headline = {
            "poisoned_spam_recall": json_float(head["recall"]),
            "poisoned_spam_f1": json_float(head["f1"]),
            "cleaned_spam_f1": json_float(head["f1_cleaned"]),
            "poison_detection_recall": json_float(head["detection_recall"]),
            "poison_detection_precision": json_float(head["detection_precision"]),
        }
        return Section(
            id=self.id,
            title="Data poisoning (spam labels flipped to ham)",
            summary=summary,
            severity=severity,
            atlas=atlas("AML.T0020"),
            recommendation=_POISON_RECOMMENDATION,
            metrics=metrics,
            headline=headline,
            findings=findings,
            figures=(
                Figure(
                    title="Spam recall and F1 against poison rate",
                    caption=(
                        "Each point retrains the filter on the training set with that share of spam labels "
                        "flipped to ham (solid), and again after dropping the rows the validator flags "
                        "(dashed). Scored on the held-out SMS test split."
                    ),
                    how_to_read=(
                        "Lower is worse: the faster the solid lines fall, the more spam the poisoned "
                        "filter lets through; a dashed line above its solid partner means the validator's "
                        "cleaning helps."
                    ),
                    png_base64=_poison_figure(rows),
                ),
            ),
            tables=(table,),
            provenance={
                "attack": self.attack,
                "validator": self.validator,
                "rates": list(rates),
                "headline_rate": self.headline_rate,
                "recipe": kind,
                "data_sha256": ds.sha256,
                "attacks": {f"poisoning:{self.attack}": {"rates": list(rates), "seed": ctx.seed}},
            },
            points=(f"the whole held-out SMS test split ({len(ds.y_test)} messages), not the "
                    f"{int(ctx.x.shape[0])} assessment points: poisoning changes the training data, so each "
                    "rate retrains the filter and scores it on every held-out message"),
        )


def _poison_figure(rows: Sequence[dict[str, Any]]) -> str:
    fig = MplFigure(figsize=(7.2, 3.4), layout="constrained")
    ax = fig.add_subplot()
    xs = [100 * r["rate"] for r in rows]
    ax.plot(xs, [r["recall"] for r in rows], "o-", color=_RED, label="spam recall")
    ax.plot(xs, [r["recall_cleaned"] for r in rows], "o--", color=_GREEN, label="spam recall, cleaned")
    ax.plot(xs, [r["f1"] for r in rows], "s-", color=_BLUE, label="spam F1")
    ax.plot(xs, [r["f1_cleaned"] for r in rows], "s--", color=_GREY, label="spam F1, cleaned")
    ax.set_xlabel("spam training labels flipped to ham (%)")
    ax.set_ylabel("test metric")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return png_base64(fig)


@dataclass(frozen=True, kw_only=True, slots=True)
class TextEvasionSection:
    """Text evasion: share of detected spam evaded against the word budget, per method.

    The attacker's goal comes from the data's class names (``text_evasion_goal``): for a binary
    spam/ham task, detected spam made to pass as ham; for any other text classifier (e.g. three
    topics), correctly classified texts made to change label. The report names the goal and,
    for a spam filter, the malicious label.

    Args:
        methods: TextEvasion methods run.
        budgets: shares of a message's words that may change.
        headline_budget: the budget the severity and summary use (added to ``budgets``).
        examples: adversarial texts shown.
        data_root: folder holding ``sms-spam/`` (None: ``$MODELSHIELD_DATA``).
    """

    id: str = "text-evasion"
    methods: tuple[str, ...] = TEXT_METHODS
    budgets: tuple[float, ...] = TEXT_BUDGETS
    headline_budget: float = 0.2
    examples: int = 5
    data_root: str | Path | None = None

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        import torch

        from modelshield.attacks.evasion.text import TextEvasion
        from modelshield.zoo.spam import train_spam_model

        owner = "TextEvasionSection"
        budgets = _rates((*self.budgets, self.headline_budget), owner)
        idx = ctx.x.reshape(ctx.x.shape[0], -1)[:, 0].long().tolist()
        y = ctx.y.detach().cpu().long()
        model: Any
        kind: str | None = None  # the zoo recipe retrained, None for a user's model
        if ctx.text_model is not None and ctx.texts is not None:  # the user's own text model, as given
            texts = [ctx.texts[i] for i in idx]
            model = ctx.text_model
        else:
            kind, ds = spam_setup(ctx, self.data_root, owner)
            texts = [ds.texts_test[i] for i in idx]
            if not torch.equal(y, ds.y_test[torch.as_tensor(idx, dtype=torch.long)]):
                raise ConfigError(
                    f"{owner}: the assessment points must be row indices into the SMS test split with "
                    "their labels; got labels that do not match. Build the points with zoo.text_split."
                )
            model = train_spam_model(kind, ds, seed=0)  # type: ignore[arg-type]  # checked in spam_setup; equal to the zoo model (fingerprint-checked recipe)
        names = ctx.data_info.get("classes")
        goal, malicious = text_evasion_goal(names)
        label_names = ([str(c) for c in names] if isinstance(names, Sequence) and not isinstance(names, str)
                       else None)
        bad: str | None = None
        good: str | None = None
        if goal == "malicious" and label_names is not None and malicious is not None:
            bad = label_names[malicious]
            good = label_names[1 - malicious]
            rows_word = f"detected '{bad}' messages"
            passes = f"pass as '{good}'"
            goal_text = (f"Goal: make detected '{bad}' messages (the malicious class) pass as '{good}' "
                         "(a two-class spam filter).")
        else:
            n_cls = len(label_names) if label_names is not None else None
            rows_word = "correctly classified messages"
            passes = "change label"
            goal_text = (
                "Goal: untargeted: change the label of a correctly classified message to any other class ("
                + (f"{n_cls} classes: {', '.join(repr(c) for c in label_names)}" if label_names else
                   "class names unknown")
                + "; no class is named as spam, so there is no malicious-to-benign direction).")
        runs = [(m, b) for m in self.methods for b in budgets]
        curve: list[dict[str, Any]] = []
        head_results: dict[str, Any] = {}
        for i, (method, budget) in enumerate(runs):
            if progress is not None:
                progress(i, len(runs), f"text {method} {100 * budget:g}% of words")
            res = TextEvasion(method=method, max_word_fraction=budget, seed=ctx.seed,  # type: ignore[arg-type]
                              goal=goal, spam_class=1 if malicious is None else malicious)(model, texts, y)
            curve.append(
                {
                    "method": method,
                    "budget": budget,
                    "success_rate": json_float(res.success_rate),
                    "median_words_changed": json_float(res.median_words_changed),
                    "median_queries": json_float(res.median_queries),
                    "eligible": int(res.eligible.sum()),
                    "successes": int(res.success.sum()),
                }
            )
            if budget == float(self.headline_budget):
                head_results[method] = res
        if progress is not None:
            progress(len(runs), len(runs), "text evasion done")
        head = [c for c in curve if c["budget"] == float(self.headline_budget)]
        best = max(head, key=lambda c: -1.0 if c["success_rate"] is None else c["success_rate"])
        rate = best["success_rate"] if best["success_rate"] is not None else math.nan
        severity = text_evasion_severity(rate)
        best_res = head_results[best["method"]]
        shown = best_res.success.nonzero().flatten()[: self.examples].tolist()
        examples = Table(
            title=(
                f"Adversarial {rows_word.removeprefix('detected ')} that {passes} ({best['method']}, "
                f"{100 * self.headline_budget:g}% of words)"
            ),
            columns=("original", "adversarial", "words changed"),
            rows=[(best_res.texts[j], best_res.texts_adv[j], int(best_res.words_changed[j])) for j in shown],
        )
        grid = Table(
            title=f"Evasion success (share of {rows_word} that {passes}) by method and word budget",
            columns=("method", *(f"{100 * b:g}% of words" for b in budgets)),
            rows=[(m, *(_pct(c["success_rate"]) for c in curve if c["method"] == m)) for m in self.methods],
        )
        eligible = best["eligible"]
        summary = (
            f"Changing at most {100 * self.headline_budget:g}% of the words, the strongest method "
            f"({best['method']}) makes {_pct(best['success_rate'])} of {eligible} {rows_word} {passes} "
            f"(median {_num(best['median_words_changed'])} words changed)."
        )
        findings = [
            goal_text,
            *(f"{c['method']}: {_pct(c['success_rate'])} evaded, median {_num(c['median_words_changed'])} "
              "words changed, "
              f"median {_num(c['median_queries'])} queries per message."
              for c in head),
        ]
        return Section(
            id=self.id,
            title="Text evasion (black-box edits to spam)" if goal == "malicious" else
            "Text evasion (black-box edits, untargeted)",
            summary=summary,
            severity=severity,
            atlas=atlas("AML.T0015", "AML.T0043"),
            recommendation=_TEXT_RECOMMENDATION,
            metrics={"curve": curve, "n": len(texts), "eligible": eligible, "goal": goal,
                     "malicious_label": bad, "benign_label": good},
            headline={
                "text_evasion_success_rate": json_float(rate),
                "text_evasion_median_words_changed": best["median_words_changed"],
            },
            findings=findings,
            figures=(
                Figure(
                    title="Evasion success against word budget",
                    caption=(
                        f"Share of {rows_word} that an attacker makes {passes}, when at most "
                        "the given share of each message's words may change; one line per method. Every "
                        "success is re-verified by querying the model again."
                    ),
                    how_to_read=(
                        "Higher is worse: each line is an attack method, and the higher it sits at a "
                        "budget, the more messages the attacker gets past the model by changing that few "
                        "words."
                    ),
                    png_base64=_text_figure(curve, self.methods, budgets),
                ),
            ),
            tables=(grid, examples),
            provenance={
                "recipe": kind,
                "methods": list(self.methods),
                "budgets": list(budgets),
                "headline_budget": self.headline_budget,
                "goal": goal,
                "malicious_class": malicious,
                "data_sha256": ds.sha256 if kind is not None else ctx.data_info.get("sha256"),
                "attacks": {f"text:{m}": {"budgets": list(budgets), "seed": ctx.seed, "goal": goal,
                                          "malicious_class": malicious} for m in self.methods},
            },
            points=f"{points_line(len(texts), len(texts))}: the {eligible} {rows_word} are attacked",
        )


def _text_figure(curve: Sequence[dict[str, Any]], methods: Sequence[str], budgets: Sequence[float]) -> str:
    fig = MplFigure(figsize=(7.2, 3.4), layout="constrained")
    ax = fig.add_subplot()
    colors = (_BLUE, _RED, _GREEN, _GREY)
    for k, m in enumerate(methods):
        pts = [c for c in curve if c["method"] == m]
        ax.plot(
            [100 * c["budget"] for c in pts],
            [math.nan if c["success_rate"] is None else c["success_rate"] for c in pts],
            "o-",
            color=colors[k % len(colors)],
            label=m,
        )
    ax.set_xlabel("words changed (% of the message), at most")
    ax.set_ylabel("evasion success")
    ax.set_xticks([100 * b for b in budgets])
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return png_base64(fig)
