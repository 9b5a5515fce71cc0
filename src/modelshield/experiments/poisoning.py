"""Poisoning experiments on a text classifier: poison, train, score, validate and clean.

The glue shared by ``modelshield poison``, the "Data poisoning" report section and
``benchmarks/poisoning.py``. Rates here are a share of the *attacked class's* training rows
(spam by default): ``rate=0.1`` with 560 spam training messages poisons 56 of them. The
library attacks take a share of the whole training set instead; ``class_rate`` converts.

Example:
    ds = load_sms_spam()
    run = poison_text_dataset(ds, attack="label-flip", rate=0.1, model="nb", validate=True)
    run.summary["poisoned"]["f1"], run.summary["validation"]["detection"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.poisoning.label_flip import RandomLabelFlip, TargetedLabelFlip
from modelshield.attacks.poisoning.results import PoisonResult, evaluate_poisoning
from modelshield.attacks.poisoning.trigger import TriggerPhrasePoison
from modelshield.data.sms_spam import SMS_SPAM_CLASSES, TextDataset, read_labelled_texts
from modelshield.errors import ConfigError, DataError

__all__ = [
    "POISON_ATTACKS",
    "VALIDATORS",
    "PoisonAttackName",
    "TextPoisoningRun",
    "ValidatorName",
    "build_poison_attack",
    "class_rate",
    "detect_poison",
    "detection_scores",
    "poison_text_dataset",
    "text_dataset_from_file",
]

PoisonAttackName: TypeAlias = Literal["label-flip", "targeted-flip", "trigger-phrase"]
POISON_ATTACKS: tuple[PoisonAttackName, ...] = ("label-flip", "targeted-flip", "trigger-phrase")
ValidatorName: TypeAlias = Literal["confident-learning", "knn", "validate-dataset"]
VALIDATORS: tuple[ValidatorName, ...] = ("confident-learning", "knn", "validate-dataset")

_RATE_FIX = "Give the share of the spam training rows to poison, e.g. 0.1 for 10%."


def class_rate(rate: float, y: Tensor | np.ndarray, *, cls: int = 1) -> float:
    """The whole-training-set rate that poisons ``round(rate * n_cls)`` rows of class ``cls``.

    The library attacks draw ``round(rate_whole * n)`` rows (see ``n_poison``); this returns
    ``k / n`` with ``k = floor(rate * n_cls + 0.5)``, so they draw exactly k rows of the class.

    Raises:
        ConfigError: rate outside [0, 1].
    """
    check_range("rate", rate, owner="class_rate", low=0.0, high=1.0, fix=_RATE_FIX)
    labels = y.numpy() if isinstance(y, Tensor) else np.asarray(y)
    n_cls = int((labels == cls).sum())
    k = math.floor(rate * n_cls + 0.5)
    return k / labels.shape[0] if labels.shape[0] else 0.0


def build_poison_attack(
    name: str,
    *,
    rate: float,
    spam_class: int = 1,
    ham_class: int = 0,
    phrase: str = "blue quokka",
    seed: int = 0,
) -> RandomLabelFlip | TargetedLabelFlip | TriggerPhrasePoison:
    """The poisoning attack named ``name``, configured with a whole-training-set ``rate``.

    ``"label-flip"``: RandomLabelFlip of spam rows to ham; ``"targeted-flip"``: TargetedLabelFlip
    (largest-margin spam rows) to ham; ``"trigger-phrase"``: TriggerPhrasePoison (dirty label:
    spam rows get ``phrase`` and the ham label).

    Raises:
        ConfigError: unknown name or a bad rate.
    """
    check_choice("attack", name, POISON_ATTACKS, owner="build_poison_attack")
    if name == "label-flip":
        return RandomLabelFlip(rate=rate, classes=(spam_class,), target_class=ham_class, seed=seed)
    if name == "targeted-flip":
        return TargetedLabelFlip(rate=rate, classes=(spam_class,), target_class=ham_class, seed=seed)
    return TriggerPhrasePoison(rate=rate, phrase=phrase, target_class=ham_class, seed=seed)


def detection_scores(flagged: np.ndarray | Tensor, truth: np.ndarray | Tensor) -> dict[str, Any]:
    """Precision and recall of ``flagged`` rows against the truly poisoned rows.

    Precision is 0.0 when nothing is flagged; recall is None when nothing was poisoned.
    """
    f = np.asarray(flagged.numpy() if isinstance(flagged, Tensor) else flagged, dtype=bool)
    t = np.asarray(truth.numpy() if isinstance(truth, Tensor) else truth, dtype=bool)
    tp = int((f & t).sum())
    return {
        "flagged": int(f.sum()),
        "poisoned": int(t.sum()),
        "true_positives": tp,
        "precision": tp / int(f.sum()) if f.any() else 0.0,
        "recall": tp / int(t.sum()) if t.any() else None,
    }


def detect_poison(
    validator: str, texts: Sequence[str], y: Tensor, *, seed: int = 0
) -> tuple[np.ndarray, Any]:
    """``(flagged (N,) bool, fitted validator or ValidationReport)`` for one validator by name.

    ``"confident-learning"``: ConfidentLearning (defaults) issues; ``"knn"``:
    KNNLabelConsistency issues; ``"validate-dataset"``: validate_dataset's removed rows
    (confident-learning label issues and minority labels of conflicting duplicates).
    """
    from modelshield.defenses.data import ConfidentLearning, KNNLabelConsistency, validate_dataset

    check_choice("validator", validator, VALIDATORS, owner="detect_poison")
    x = list(texts)
    if validator == "confident-learning":
        cl = ConfidentLearning(seed=seed).fit(x, y)
        return np.asarray(cl.issues_, dtype=bool), cl
    if validator == "knn":
        knn = KNNLabelConsistency().fit(x, y)
        return np.asarray(knn.issues_, dtype=bool), knn
    report = validate_dataset(x, y, seed=seed)
    return report.removed.numpy().astype(bool), report


@dataclass(frozen=True, slots=True)
class TextPoisoningRun:
    """One poisoning experiment: the poisoned set and the JSON-safe summary of its effect.

    Attributes:
        result: the PoisonResult (``x_poisoned`` texts, ``y_poisoned`` labels, ``indices``).
        summary: ``attack``, ``rate`` (share of spam training rows), ``library_rate`` (share of
            the whole training set given to the attack), ``indices``, ``clean`` / ``poisoned``
            test metrics (spam precision, recall, F1, accuracy), ``f1_drop``, ``trigger`` and,
            with validation, ``validation`` (detection precision/recall of the poisoned rows,
            rows removed, test metrics after training on the cleaned set).
    """

    result: PoisonResult
    summary: dict[str, Any]


def poison_text_dataset(
    ds: TextDataset,
    *,
    attack: str,
    rate: float,
    model: str = "nb",
    validate: bool = False,
    validator: str = "validate-dataset",
    phrase: str = "blue quokka",
    seed: int = 0,
    train_fn: Callable[[Any, Tensor], Any] | None = None,
    clean_metrics: Mapping[str, float] | None = None,
) -> TextPoisoningRun:
    """Poison a text data set's training split, train on it and score the test split.

    Args:
        ds: the data set (its training split is poisoned, its test split scores the models).
        attack: one of ``POISON_ATTACKS``.
        rate: share of the spam (label 1) training rows poisoned, in [0, 1].
        model: the spam filter recipe, ``"nb"`` or ``"logreg"`` (see ``train_spam_model``);
            ignored when ``train_fn`` is given.
        validate: also run ``validator`` on the poisoned set, score its detection of the
            poisoned rows and retrain on the cleaned set.
        validator: one of ``VALIDATORS``.
        phrase: the trigger phrase for ``"trigger-phrase"``.
        seed: seed of the attack and of the validator.
        train_fn: ``(texts, y) -> model`` (default: ``train_spam_model(model, ...)``).
        clean_metrics: the unpoisoned model's test metrics when already known (a sweep over
            rates); None trains the clean baseline here.

    Returns:
        A TextPoisoningRun.

    Raises:
        ConfigError: unknown attack, model or validator, or rate outside [0, 1] or asking for
            more rows than there are spam rows.
    """
    from modelshield.zoo.spam import SPAM_KINDS, train_spam_model

    check_range("rate", rate, owner="poison_text_dataset", low=0.0, high=1.0, fix=_RATE_FIX)
    check_choice("attack", attack, POISON_ATTACKS, owner="poison_text_dataset")
    check_choice("validator", validator, VALIDATORS, owner="poison_text_dataset")
    custom = train_fn is not None
    if train_fn is None:
        check_choice("model", model, SPAM_KINDS, owner="poison_text_dataset")
        kind = model

        def fit(x: Any, y: Tensor) -> Any:
            return train_spam_model(kind, list(x), y, seed=seed)  # type: ignore[arg-type]  # checked above

        train_fn = fit
    whole = class_rate(rate, ds.y_train, cls=1)
    atk = build_poison_attack(attack, rate=whole, phrase=phrase, seed=seed)
    result = atk(list(ds.texts_train), ds.y_train)
    if clean_metrics is None:
        scores = evaluate_poisoning(
            train_fn,
            result,
            list(ds.texts_test),
            ds.y_test,
            x_train_clean=list(ds.texts_train),
            y_train_clean=ds.y_train,
        )
    else:
        scores = evaluate_poisoning(train_fn, result, list(ds.texts_test), ds.y_test)
        scores["clean"] = dict(clean_metrics)
        scores["f1_drop"] = scores["clean"]["f1"] - scores["poisoned"]["f1"]
    summary: dict[str, Any] = {
        "data": ds.name,
        "data_sha256": ds.sha256,
        "attack": attack,
        "attack_class": result.attack,
        "model": None if custom else model,
        "rate": float(rate),
        "rate_of": "spam training rows (label 1)",
        "library_rate": whole,
        "n_train": result.n,
        "n_spam_train": int((ds.y_train == 1).sum()),
        "n_poisoned": result.n_poisoned,
        "indices": result.indices.tolist(),
        "params": result.params,
        "clean": scores["clean"],
        "poisoned": scores["poisoned"],
        "f1_drop": scores.get("f1_drop"),
        "trigger": scores["trigger"],
        "seed": seed,
    }
    if validate:
        flagged, _ = detect_poison(validator, result.x_poisoned, result.y_poisoned, seed=seed)
        keep = np.flatnonzero(~flagged)
        x_poisoned = list(result.x_poisoned)
        cleaned = train_fn([x_poisoned[i] for i in keep], result.y_poisoned[torch.as_tensor(keep)])
        from modelshield.zoo.spam import spam_metrics

        summary["validation"] = {
            "validator": validator,
            "detection": detection_scores(flagged, result.mask),
            "removed": int(flagged.sum()),
            "after_cleaning": spam_metrics(cleaned, list(ds.texts_test), ds.y_test),
        }
    return TextPoisoningRun(result=result, summary=summary)


def text_dataset_from_file(
    path: str | Path, *, test_fraction: float = 0.25, seed: int = 0, name: str | None = None
) -> TextDataset:
    """A stratified train/test TextDataset from a ``<label>\\t<text>`` file (SMS format).

    Raises:
        MissingDataError: no such file. DataError: a malformed line (named), or a class with
            fewer than 2 rows (the split needs both classes on both sides).
    """
    import hashlib

    from sklearn.model_selection import train_test_split

    p = Path(path).expanduser()
    texts, y = read_labelled_texts(p)
    counts = np.bincount(y.numpy(), minlength=len(SMS_SPAM_CLASSES))
    if counts.min() < 2:
        raise DataError(
            f"text_dataset_from_file: {str(p)!r} must hold at least 2 rows of each class "
            f"{SMS_SPAM_CLASSES!r}; got counts {counts.tolist()}. Add labelled rows of the missing class."
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"text_dataset_from_file: 'test_fraction' must be in (0, 1); got {test_fraction!r}. "
            "Use e.g. 0.25."
        )
    idx = np.arange(len(texts))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    return TextDataset(
        name=name or p.name,
        texts_train=tuple(texts[i] for i in tr),
        y_train=y[torch.as_tensor(tr)],
        texts_test=tuple(texts[i] for i in te),
        y_test=y[torch.as_tensor(te)],
        class_names=SMS_SPAM_CLASSES,
        sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        source=str(p.resolve()),
    )
