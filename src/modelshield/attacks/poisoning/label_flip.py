"""Label-flipping poisoning: random flips and targeted flips chosen by a surrogate's margin."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from modelshield._checks import check_choice, check_range
from modelshield.attacks.ops import make_generator
from modelshield.attacks.poisoning.results import PoisonResult
from modelshield.attacks.verify import attack_params
from modelshield.data.features import as_labels, data_kind, n_rows
from modelshield.errors import ConfigError, InputError, ModelCapabilityError

__all__ = ["RandomLabelFlip", "TargetedLabelFlip", "n_poison"]

_RATE_FIX = "Give the share of the training set to poison, e.g. rate=0.1 for 10%"


def check_rate(rate: object, owner: str) -> None:
    check_range("rate", rate, owner=owner, low=0.0, high=1.0, fix=_RATE_FIX + ".")


def n_poison(rate: float, n: int, *, owner: str) -> int:
    """Rows to poison: rate * n rounded half up. rate > 0 that rounds to 0 rows is a ConfigError.

    rate = 0 is allowed (a no-op, the baseline of a sweep); a positive rate too small to poison
    even one row is refused, since a silent no-op would report "no effect" for the wrong reason.
    """
    k = math.floor(rate * n + 0.5)
    if rate > 0 and k == 0:
        raise ConfigError(
            f"{owner}: 'rate' must poison at least one of the {n} rows; got {rate!r} (rounds to 0 rows). "
            f"Raise rate to at least {1 / (2 * n):.3g}, or pass rate=0 for an unpoisoned baseline."
        )
    return k


def _check_classes(classes: object, owner: str) -> None:
    if classes is not None and (
        not isinstance(classes, tuple)
        or not classes
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
    ):
        raise ConfigError(
            f"{owner}: 'classes' must be None or a non-empty tuple of class indices; got {classes!r}. "
            "Pass e.g. classes=(1,) to flip only spam labels."
        )


def _prepare(x: Any, y: Any, owner: str) -> tuple[np.ndarray, int]:
    data_kind(x, owner=owner)
    labels = as_labels(y, n=n_rows(x), owner=owner)
    return labels, max(int(labels.max()) + 1, 2)


def _pool(labels: np.ndarray, classes: tuple[int, ...] | None, target_class: int | None) -> np.ndarray:
    ok = np.ones(labels.shape[0], dtype=bool) if classes is None else np.isin(labels, classes)
    if target_class is not None:
        ok &= labels != target_class
    return np.flatnonzero(ok)


def _new_labels(
    old: np.ndarray, n_classes: int, target_class: int | None, gen: torch.Generator
) -> np.ndarray:
    if target_class is not None:
        return np.full_like(old, target_class)
    if n_classes == 2:
        return 1 - old
    shift = torch.randint(1, n_classes, (old.shape[0],), generator=gen).numpy()
    return np.asarray((old + shift) % n_classes, dtype=np.int64)


def _result(
    attack: object,
    x: Any,
    labels: np.ndarray,
    chosen: np.ndarray,
    new: np.ndarray,
    started: float,
    target_class: int | None,
) -> PoisonResult:
    order = np.argsort(chosen)
    chosen, new = chosen[order], new[order]
    y_new = labels.copy()
    y_new[chosen] = new
    return PoisonResult(
        attack=type(attack).__name__,
        params=attack_params(attack),
        x_poisoned=x,
        y_poisoned=torch.as_tensor(y_new),
        indices=torch.as_tensor(chosen, dtype=torch.int64),
        original_labels=torch.as_tensor(labels[chosen]),
        target_class=target_class,
        time_s=time.perf_counter() - started,
    )


def _too_few(owner: str, k: int, pool: int, classes: object) -> ConfigError:
    return ConfigError(
        f"{owner}: 'rate' must select at most the {pool} rows eligible for flipping (classes={classes!r}); "
        f"got a rate asking for {k}. Lower rate or widen classes."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RandomLabelFlip:
    """Flip the labels of a random share of the training set (uniform label noise).

    ``rate`` is a share of the whole training set (rounded half up, see n_poison). Only rows
    whose label is in ``classes`` may be flipped (None: any row); a flipped label becomes
    ``target_class``, or, when None, the other class (binary) or a uniformly drawn other class.
    x is returned as given (the same object): only labels change.

    Reference: B. Biggio, B. Nelson and P. Laskov, "Support Vector Machines Under Adversarial
    Label Noise", ACML 2011 (random flips as the baseline).

    Example:
        res = RandomLabelFlip(rate=0.1)(texts, y)
        res.indices, res.y_poisoned
    """

    rate: float
    classes: tuple[int, ...] | None = None
    target_class: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_rate(self.rate, "RandomLabelFlip")
        _check_classes(self.classes, "RandomLabelFlip")
        if self.target_class is not None:
            check_range("target_class", self.target_class, owner="RandomLabelFlip", low=0, integer=True)

    def __call__(self, x_train: Any, y_train: Any, *, model: Any = None) -> PoisonResult:
        """Poison (x_train, y_train); ``model`` is unused (data-only attack)."""
        started = time.perf_counter()
        labels, k_cls = _prepare(x_train, y_train, "RandomLabelFlip")
        k = n_poison(self.rate, labels.shape[0], owner="RandomLabelFlip")
        pool = _pool(labels, self.classes, self.target_class)
        if k > pool.size:
            raise _too_few("RandomLabelFlip", k, pool.size, self.classes)
        gen = make_generator(self.seed, torch.device("cpu"))
        chosen = pool[torch.randperm(pool.size, generator=gen)[:k].numpy()]
        new = _new_labels(labels[chosen], k_cls, self.target_class, gen)
        return _result(self, x_train, labels, chosen, new, started, self.target_class)


Strategy = Literal["margin", "boundary"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetedLabelFlip:
    """Flip the labels whose flip hurts most, ranked by a surrogate model's margin.

    A surrogate (the ``model`` passed at call, any object with ``predict_proba`` on x, or by
    default a logistic regression on TF-IDF (text) or on standardised flattened features,
    fitted on the clean training set) gives each eligible row its margin
    m = p_y - max_{j != y} p_j. ``strategy="margin"`` flips the rows with the largest margin:
    points far on the correct side of the boundary, whose flipped labels the learner can
    only fit by moving the boundary most (the heuristic of Biggio, Nelson and Laskov, 2011,
    and of Xiao et al., "Adversarial Label Flips Attack on Support Vector Machines", ECAI
    2012). ``strategy="boundary"`` flips those nearest the boundary (smallest |m|), a stealthier
    variant that tends to survive data validation.

    Example:
        res = TargetedLabelFlip(rate=0.05, classes=(1,))(texts, y)   # spam relabelled ham
    """

    rate: float
    strategy: Strategy = "margin"
    classes: tuple[int, ...] | None = None
    target_class: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_rate(self.rate, "TargetedLabelFlip")
        check_choice("strategy", self.strategy, ("margin", "boundary"), owner="TargetedLabelFlip")
        _check_classes(self.classes, "TargetedLabelFlip")
        if self.target_class is not None:
            check_range("target_class", self.target_class, owner="TargetedLabelFlip", low=0, integer=True)

    def __call__(self, x_train: Any, y_train: Any, *, model: Any = None) -> PoisonResult:
        """Poison (x_train, y_train); ``model`` is the surrogate (None: fit the default one)."""
        started = time.perf_counter()
        labels, k_cls = _prepare(x_train, y_train, "TargetedLabelFlip")
        k = n_poison(self.rate, labels.shape[0], owner="TargetedLabelFlip")
        pool = _pool(labels, self.classes, self.target_class)
        if k > pool.size:
            raise _too_few("TargetedLabelFlip", k, pool.size, self.classes)
        gen = make_generator(self.seed, torch.device("cpu"))
        chosen = pool[:0]
        probs = np.zeros((0, k_cls))
        if k:
            probs = surrogate_proba(model, x_train, labels, seed=self.seed or 0)
            rows = np.arange(labels.shape[0])
            other = probs.copy()
            other[rows, labels] = -np.inf
            margin = probs[rows, labels] - other.max(1)
            key = -margin[pool] if self.strategy == "margin" else np.abs(margin[pool])
            chosen = pool[np.argsort(key, kind="stable")[:k]]
        new = _new_labels(labels[chosen], k_cls, self.target_class, gen)
        if self.target_class is None and k_cls > 2 and chosen.size:
            probs_c = probs[chosen].copy()
            probs_c[np.arange(chosen.size), labels[chosen]] = np.inf
            new = probs_c.argmin(1)  # the least likely class hurts most
        return dataclasses.replace(
            _result(self, x_train, labels, chosen, new, started, self.target_class),
            time_s=time.perf_counter() - started,
        )


def surrogate_proba(model: Any, x: Any, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """(N, K) probabilities from model.predict_proba(x), or from a default surrogate fitted on (x, labels)."""
    from sklearn.linear_model import LogisticRegression

    kind = data_kind(x, owner="TargetedLabelFlip")
    if model is None:
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if kind == "text":
            from sklearn.feature_extraction.text import TfidfVectorizer

            model = Pipeline(
                [
                    ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))),
                    ("clf", LogisticRegression(C=10.0, solver="liblinear", random_state=seed)),
                ]
            )
            feats: Any = list(x)
        else:
            model = Pipeline(
                [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000, random_state=seed))]
            )
            feats = _flat(x)
        model.fit(feats, labels)
    else:
        feats = list(x) if kind == "text" else _flat(x)
    proba = getattr(model, "predict_proba", None)
    if not callable(proba):
        raise ModelCapabilityError(
            f"TargetedLabelFlip: the surrogate model must have predict_proba; got {type(model).__name__}. "
            "Pass a fitted probabilistic classifier, or model=None for the default surrogate."
        )
    out = proba(feats)
    arr = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    k = int(labels.max()) + 1
    if arr.ndim != 2 or arr.shape[0] != labels.shape[0] or arr.shape[1] < k:
        raise InputError(
            f"TargetedLabelFlip: the surrogate must return ({labels.shape[0]}, >={k}) probabilities; got "
            f"shape {arr.shape}. Use a classifier trained on all classes."
        )
    return arr.astype(np.float64)


def _flat(x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.reshape(arr.shape[0], -1)
