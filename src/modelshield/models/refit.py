"""Clone a fitted classifier for refitting: the same training recipe, ready for other labels.

Measuring what poisoning does to a model retrains it on poisoned data, which needs its training
recipe. ``clone_for_refit(model)`` rebuilds that recipe from the fitted model itself:

* scikit-learn estimators (and the scikit-learn APIs of XGBoost and LightGBM): ``sklearn.base.clone``,
  which copies the constructor parameters exactly.
* an XGBoost ``Booster`` (or the read-only ``XGBoostClassifier`` a model file is loaded as): the
  objective, class count, booster and tree parameters from ``Booster.save_config()`` and the number
  of rounds from ``num_boosted_rounds()``; retrained with ``xgboost.train``. A model *file* keeps
  the trees but not the training parameters (``save_config()`` then shows XGBoost's defaults), so
  ``max_depth`` is read from the trees themselves (a depth-wise tree grown with a larger limit on
  the same data is the same tree) and, when the training rows are given, the learning rate is
  chosen from a grid as the one whose refit on the clean rows reproduces the model's margins best.
* a LightGBM ``Booster`` (or ``LightGBMClassifier``): the training parameters LightGBM stores in the
  model (``Booster.params``, else the ``parameters:`` block of ``model_to_string()``) and the
  number of rounds from ``current_iteration()``; retrained with ``lightgbm.train``.

Anything else (a plain callable, a torch module, a pipeline that cannot be cloned) raises
``ModelCapabilityError`` saying why; callers report that reason instead of a sweep.

Example:
    recipe = clone_for_refit(model, x=x_train, y=y_train)
    poisoned = recipe.fit(x_train, y_flipped)       # a fresh fit, the given model is untouched
    poisoned.predict(x_test), recipe.describe()
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from modelshield._checks import exception_head
from modelshield.errors import ModelCapabilityError

__all__ = [
    "ETA_GRID",
    "LightGBMRefit",
    "RefitRecipe",
    "XGBoostRefit",
    "clone_for_refit",
    "refit_predict",
]

ETA_GRID: tuple[float, ...] = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
"""Learning rates tried when a boosted model's file does not keep the one it was trained with."""

_OWNER = "clone_for_refit"
_XGB_TREE_PARAMS = ("eta", "max_depth", "min_child_weight", "subsample", "colsample_bytree",
                    "colsample_bylevel", "colsample_bynode", "lambda", "alpha", "gamma", "max_delta_step",
                    "max_bin", "grow_policy", "max_leaves", "sampling_method")
# LightGBM parameters that describe the run, not the model (I/O, networking, devices, verbosity).
_LGB_SKIP = frozenset({
    "metric", "num_iterations", "early_stopping_round", "early_stopping_min_delta", "first_metric_only",
    "num_machines", "local_listen_port", "time_out", "machine_list_filename", "machines", "gpu_platform_id",
    "gpu_device_id", "gpu_use_dp", "num_gpu", "device_type", "num_threads", "verbosity", "header",
    "two_round", "pre_partition", "precise_float_parser", "saved_feature_importance_type", "tree_learner",
    "is_provide_training_metric", "output_model", "input_model", "snapshot_freq", "data", "valid",
})


def _number(text: str) -> Any:
    """An XGBoost config value as int, float or str."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


class XGBoostRefit(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn ships no types
    """An unfitted XGBoost classifier with a fixed recipe: ``xgboost.train(params, ..., num_boost_round)``.

    scikit-learn compatible (``fit``, ``predict``, ``predict_proba``, ``sklearn.base.clone``).
    Labels must be ``0 .. n_classes - 1``.
    """

    def __init__(self, params: Mapping[str, Any] | None = None, num_boost_round: int = 10,
                 n_classes: int = 2) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.n_classes = n_classes

    def fit(self, x: Any, y: Any) -> XGBoostRefit:
        """Train a booster on ``(x, y)`` with the recipe; returns self."""
        import xgboost

        arr = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        labels = np.asarray(y).astype(np.int64).reshape(-1)
        classes = _fitted_classes(labels, int(self.n_classes))
        self.booster_ = xgboost.train(dict(self.params or {}), xgboost.DMatrix(arr, label=labels),
                                      num_boost_round=int(self.num_boost_round))
        self.classes_ = classes
        return self

    def margin(self, x: Any) -> np.ndarray:
        """Raw margins ``(N,)`` or ``(N, C)``."""
        import xgboost

        arr = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        return np.asarray(self.booster_.predict(xgboost.DMatrix(arr), output_margin=True), dtype=np.float64)

    def predict_proba(self, x: Any) -> np.ndarray:
        """``(N, len(classes_))`` probabilities of the classes fitted on (columns in ``classes_`` order)."""
        return _fitted_columns(_proba_from_margin(self.margin(x), int(self.n_classes)), self.classes_)

    def predict(self, x: Any) -> np.ndarray:
        """``(N,)`` labels (members of ``classes_``)."""
        return np.asarray(self.classes_[self.predict_proba(x).argmax(1)], dtype=np.int64)


class LightGBMRefit(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn ships no types
    """An unfitted LightGBM classifier with a fixed recipe: ``lightgbm.train(params, ..., num_boost_round)``.

    scikit-learn compatible (``fit``, ``predict``, ``predict_proba``, ``sklearn.base.clone``).
    """

    def __init__(self, params: Mapping[str, Any] | None = None, num_boost_round: int = 10,
                 n_classes: int = 2) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.n_classes = n_classes

    def fit(self, x: Any, y: Any) -> LightGBMRefit:
        """Train a booster on ``(x, y)`` with the recipe; returns self."""
        import lightgbm

        arr = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        labels = np.asarray(y).astype(np.int64).reshape(-1)
        classes = _fitted_classes(labels, int(self.n_classes))
        params = {**dict(self.params or {}), "verbosity": -1, "num_threads": 1}
        self.booster_ = lightgbm.train(params, lightgbm.Dataset(arr, label=labels),
                                       num_boost_round=int(self.num_boost_round))
        self.classes_ = classes
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        """``(N, len(classes_))`` probabilities of the classes fitted on (columns in ``classes_`` order)."""
        out = np.asarray(self.booster_.predict(np.asarray(x, dtype=np.float64).reshape(len(x), -1)))
        full = np.stack([1.0 - out, out], axis=1) if out.ndim == 1 else out
        return _fitted_columns(full, self.classes_)

    def predict(self, x: Any) -> np.ndarray:
        """``(N,)`` labels (members of ``classes_``)."""
        return np.asarray(self.classes_[self.predict_proba(x).argmax(1)], dtype=np.int64)


def _fitted_classes(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The classes a refit saw (sorted), as scikit-learn sets ``classes_``: not the model's output count.

    A 3-output recipe fitted on labels {0, 1} must report ``classes_ = [0, 1]``; scikit-learn's
    cross-validation lines probability columns up with ``classes_`` and fails on a mismatch.
    """
    present = np.unique(labels)
    if present.size and (present.min() < 0 or present.max() >= n_classes):
        raise ModelCapabilityError(
            f"{_OWNER}: labels must be class indices in [0, {n_classes - 1}] (the model has {n_classes} "
            f"outputs); got {present.tolist()}. Encode the labels as indices of the model's classes.")
    return np.asarray(present, dtype=np.int64)


def _fitted_columns(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The probability columns of the fitted classes, renormalised (the other outputs get no labels)."""
    if proba.shape[1] == classes.size:
        return proba
    part = proba[:, classes]
    total = part.sum(1, keepdims=True)
    return np.asarray(np.where(total > 0, part / np.where(total > 0, total, 1.0), 1.0 / classes.size))


def _proba_from_margin(margin: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2:
        p = 1.0 / (1.0 + np.exp(-margin.reshape(-1)))
        return np.stack([1.0 - p, p], axis=1)
    z = margin.reshape(len(margin), -1)
    e = np.exp(z - z.max(1, keepdims=True))
    return np.asarray(e / e.sum(1, keepdims=True))


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class RefitRecipe:
    """How a fitted model is retrained: an unfitted clone and what was reconstructed.

    Attributes:
        estimator: the unfitted clone (``fit(x, y) -> self``, ``predict``, ``predict_proba``;
            ``sklearn.base.clone`` works on it).
        library: ``"scikit-learn"``, ``"xgboost"`` or ``"lightgbm"``.
        model_type: the given model's class name.
        source: where the recipe was read from, e.g. ``"sklearn.base.clone"``.
        params: the training parameters reconstructed (JSON-safe).
        rounds: boosting rounds (None for scikit-learn estimators).
        inferred: parameters not read but inferred, each with how (e.g. ``{"max_depth": "..."}``).
        reproduction: with training rows given, how well a refit on them reproduces the given
            model there: ``{"label_agreement": ...}`` (and ``"margin_mae"`` for XGBoost); else {}.
    """

    estimator: Any
    library: str
    model_type: str
    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    rounds: int | None = None
    inferred: Mapping[str, str] = field(default_factory=dict)
    reproduction: Mapping[str, float] = field(default_factory=dict)

    def fresh(self) -> Any:
        """A new unfitted clone (``sklearn.base.clone`` of ``estimator``)."""
        from sklearn.base import clone

        return clone(self.estimator)

    def fit(self, x: Any, y: Any) -> Any:
        """A fresh clone fitted on ``(x, y)``."""
        return self.fresh().fit(x, y)

    def describe(self) -> str:
        """One sentence: the library, the source and the key parameters."""
        if self.library == "scikit-learn":
            return f"{self.model_type} cloned with sklearn.base.clone (same constructor parameters)"
        keys = ("objective", "eta", "learning_rate", "max_depth", "num_leaves", "num_class")
        shown = ", ".join(f"{k}={self.params[k]}" for k in keys if k in self.params)
        extra = "; ".join(f"{k} {how}" for k, how in self.inferred.items())
        return (f"{self.library} {self.model_type}: {self.rounds} rounds, {shown} (read from {self.source})"
                + (f"; {extra}" if extra else ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (no estimator)."""
        return {"library": self.library, "model_type": self.model_type, "source": self.source,
                "params": dict(self.params), "rounds": self.rounds, "inferred": dict(self.inferred),
                "reproduction": dict(self.reproduction), "description": self.describe()}


def refit_predict(model: Any, x: Any) -> np.ndarray:
    """``(N,)`` int64 class indices of a fitted model: ``predict``, else the argmax of ``predict_proba``.

    Integer answers are taken as class indices (a refitted clone is fitted on indices). Other
    answers (a model fitted on string labels predicts names, e.g. ``"phish"``) are mapped to their
    position in the model's ``classes_``, the order the assessed data's labels are encoded in.

    Raises:
        ModelCapabilityError: non-integer answers and no ``classes_`` to map them through, or an
            answer that is not one of ``classes_``.
    """
    if callable(getattr(model, "predict", None)):
        pred = np.asarray(model.predict(x)).reshape(-1)
    else:
        proba = np.asarray(model.predict_proba(x))
        classes = np.asarray(getattr(model, "classes_", np.arange(proba.shape[1])))
        pred = np.asarray(classes[proba.argmax(1)]).reshape(-1)
    if pred.dtype.kind in "iub" or (pred.dtype.kind == "f" and bool(np.all(pred == np.round(pred)))):
        return pred.astype(np.int64)
    return _label_positions(model, pred)


def _label_positions(model: Any, pred: np.ndarray) -> np.ndarray:
    """Positions in ``model.classes_`` of the labels ``pred`` (e.g. names a string-label model predicts)."""
    raw = getattr(model, "classes_", None)
    if raw is None:
        raise ModelCapabilityError(
            f"{_OWNER}: the model's predictions must be class indices, or it must have classes_ to map "
            f"them to indices; got {type(model).__name__} predicting {pred[:3].tolist()} without classes_. "
            "Fit it on integer labels or give it a classes_ attribute.")
    classes = np.asarray(raw)
    index = {str(c): i for i, c in enumerate(classes.tolist())}
    unknown = sorted({str(p) for p in pred.tolist()} - index.keys())
    if unknown:
        raise ModelCapabilityError(
            f"{_OWNER}: the model's predictions must be among its classes_ {classes.tolist()}; got "
            f"{unknown[:3]}. Check that the model's classes_ describe what it predicts.")
    return np.asarray([index[str(p)] for p in pred.tolist()], dtype=np.int64)


def _booster(model: Any, library: str) -> Any | None:
    """The raw Booster of ``library`` inside ``model`` (itself or its ``booster`` attribute)."""
    mod = sys.modules.get(library)  # not imported: the model cannot be one of its boosters
    if mod is None:
        return None
    for obj in (model, getattr(model, "booster", None)):
        if isinstance(obj, mod.Booster):
            return obj
    return None


def _tree_depth(booster: Any) -> int:
    """The deepest leaf of any tree of an XGBoost booster (from its text dump: one tab per level)."""
    depth = 0
    for tree in booster.get_dump():
        for line in tree.splitlines():
            if "leaf=" in line:
                depth = max(depth, len(line) - len(line.lstrip("\t")))
    return depth


def _xgboost_recipe(booster: Any, model_type: str) -> RefitRecipe:
    config = json.loads(booster.save_config())["learner"]
    kind = str(config["learner_train_param"].get("booster", "gbtree"))
    if kind != "gbtree":
        raise ModelCapabilityError(
            f"{_OWNER}: the XGBoost model must use the gbtree booster to be refitted; got {kind!r}. "
            "Pass a scikit-learn-compatible estimator (xgboost.XGBClassifier) instead.")
    objective = str(config["objective"]["name"])
    n_cls = int(config["learner_model_param"].get("num_class", "0") or 0)
    if objective.startswith("binary:"):
        n_cls = 2
    elif objective not in ("multi:softprob", "multi:softmax") or n_cls < 2:
        raise ModelCapabilityError(
            f"{_OWNER}: the XGBoost model must be a classifier to be refitted; got objective "
            f"{objective!r}. Refit it with a classification objective.")
    tree = config["gradient_booster"]["tree_train_param"]
    params: dict[str, Any] = {"objective": "multi:softprob" if objective == "multi:softmax" else objective}
    if n_cls > 2:
        params["num_class"] = n_cls
    params.update({k: _number(str(tree[k])) for k in _XGB_TREE_PARAMS if k in tree})
    if isinstance(params.get("eta"), float):
        params["eta"] = round(float(params["eta"]), 6)  # float32 storage: 0.300000012 -> 0.3
    params["tree_method"] = str(config["gradient_booster"]["gbtree_train_param"].get("tree_method", "auto"))
    spw = config["objective"].get("reg_loss_param", {}).get("scale_pos_weight")
    if spw is not None:
        params["scale_pos_weight"] = _number(str(spw))
    params["seed"] = _number(str(config["generic_param"].get("seed", "0")))
    params["nthread"] = 1
    inferred: dict[str, str] = {}
    if params.get("grow_policy", "depthwise") == "depthwise" and not params.get("max_leaves"):
        depth = _tree_depth(booster)
        if depth and depth != params.get("max_depth"):
            inferred["max_depth"] = (f"{depth} read from the trees (the config says "
                                     f"{params.get('max_depth')}, XGBoost's default when the model "
                                     "came from a file)")
            params["max_depth"] = depth
    rounds = int(booster.num_boosted_rounds())
    return RefitRecipe(estimator=XGBoostRefit(params=params, num_boost_round=rounds, n_classes=n_cls),
                       library="xgboost", model_type=model_type,
                       source="Booster.save_config() and num_boosted_rounds()", params=params,
                       rounds=rounds, inferred=inferred)


def _lightgbm_params(booster: Any) -> dict[str, Any]:
    params = dict(getattr(booster, "params", None) or {})
    if not params or "objective" not in params:
        text = booster.model_to_string()
        if "\nparameters:\n" in text:
            block = text.split("\nparameters:\n", 1)[1].split("\nend of parameters", 1)[0]
            for line in block.splitlines():
                if line.startswith("[") and ": " in line:
                    key, value = line.strip("[]").split(": ", 1)
                    params[key] = _number(value)
    return params


def _lightgbm_recipe(booster: Any, model_type: str) -> RefitRecipe:
    params = _lightgbm_params(booster)
    objective = str(params.get("objective", ""))
    if objective in ("binary", "cross_entropy", "xentropy"):
        n_cls = 2
    elif objective in ("multiclass", "softmax", "multiclassova", "ova", "ovr"):
        n_cls = int(booster.num_model_per_iteration())
    else:
        raise ModelCapabilityError(
            f"{_OWNER}: the LightGBM model must be a classifier whose training parameters it stores; got "
            f"objective {objective or 'none'!r}. Save it with booster.save_model(path) after training a "
            "classifier.")
    kept = {k: v for k, v in params.items() if k not in _LGB_SKIP and isinstance(v, int | float | str | bool)}
    if n_cls > 2:
        kept["num_class"] = n_cls
    rounds = int(booster.current_iteration()) or int(booster.num_trees()) // max(n_cls if n_cls > 2 else 1, 1)
    return RefitRecipe(estimator=LightGBMRefit(params=kept, num_boost_round=rounds, n_classes=n_cls),
                       library="lightgbm", model_type=model_type,
                       source="Booster.params (the parameters stored in the model) and current_iteration()",
                       params=kept, rounds=rounds)


def _sklearn_recipe(model: Any) -> RefitRecipe:
    from sklearn.base import clone

    try:
        fresh = clone(model)
    except Exception as exc:  # a user's object: whatever clone raises means "not refittable"
        raise ModelCapabilityError(
            f"{_OWNER}: the model must be a scikit-learn estimator, an XGBoost or a LightGBM booster to "
            f"be refitted; got {type(model).__name__}, which sklearn.base.clone refuses "
            f"({type(exc).__name__}: {exception_head(exc, 120)}). Pass the fitted estimator itself.") from exc
    if not callable(getattr(fresh, "fit", None)) or not (
            callable(getattr(fresh, "predict", None)) or callable(getattr(fresh, "predict_proba", None))):
        raise ModelCapabilityError(
            f"{_OWNER}: the model must have fit and predict methods to be refitted; got "
            f"{type(model).__name__}. Pass a scikit-learn-compatible classifier.")
    try:
        params = {k: v for k, v in fresh.get_params(deep=False).items()
                  if v is None or isinstance(v, int | float | str | bool)}
    except Exception:  # get_params of a user's class may fail: the clone works without it
        params = {}
    return RefitRecipe(estimator=fresh, library="scikit-learn", model_type=type(model).__name__,
                       source="sklearn.base.clone", params=params)


def _calibrate_eta(recipe: RefitRecipe, booster: Any, x: np.ndarray, y: np.ndarray) -> RefitRecipe:
    """The XGBoost recipe with the grid learning rate whose clean refit best matches the booster's margins."""
    import xgboost

    target = np.asarray(booster.predict(xgboost.DMatrix(x.astype(np.float32)), output_margin=True),
                        dtype=np.float64)
    est: XGBoostRefit = recipe.estimator
    base = dict(est.params or {})
    start = float(base.get("eta", 0.3))
    best_eta, best_gap = start, math.inf
    for eta in (start, *(e for e in ETA_GRID if not math.isclose(e, start))):
        fit = XGBoostRefit(params={**base, "eta": eta}, num_boost_round=est.num_boost_round,
                           n_classes=est.n_classes).fit(x, y)
        gap = float(np.abs(fit.margin(x) - target).mean())
        if gap < best_gap - 1e-9:
            best_eta, best_gap = eta, gap
    params = {**base, "eta": best_eta}
    inferred = dict(recipe.inferred)
    if not math.isclose(best_eta, start):
        inferred["eta"] = (f"{best_eta:g} chosen from {list(ETA_GRID)} by matching the model's margins on "
                           f"the training rows (the config says {start:g})")
    return RefitRecipe(estimator=XGBoostRefit(params=params, num_boost_round=est.num_boost_round,
                                              n_classes=est.n_classes),
                       library=recipe.library, model_type=recipe.model_type, source=recipe.source,
                       params=params, rounds=recipe.rounds, inferred=inferred,
                       reproduction={"margin_mae": round(best_gap, 6)})


def _given_labels(model: Any, xgb: Any, lgb: Any, x: np.ndarray, estimator: Any) -> np.ndarray:
    """The given model's labels on x (a bare Booster answers through its own predict)."""
    if xgb is not None and model is xgb:
        import xgboost

        margin = np.asarray(xgb.predict(xgboost.DMatrix(x.astype(np.float32)), output_margin=True),
                            dtype=np.float64)
        return np.asarray(_proba_from_margin(margin, int(estimator.n_classes)).argmax(1), dtype=np.int64)
    if lgb is not None and model is lgb:
        out = np.asarray(lgb.predict(x))
        return np.asarray((out > 0.5) if out.ndim == 1 else out.argmax(1), dtype=np.int64)
    return refit_predict(model, x)


def clone_for_refit(model: Any, *, x: Any = None, y: Any = None) -> RefitRecipe:
    """The training recipe of a fitted classifier, as an unfitted clone (see the module docstring).

    Args:
        model: a fitted scikit-learn-compatible estimator, an XGBoost or LightGBM ``Booster``, or
            the ``XGBoostClassifier`` / ``LightGBMClassifier`` a model file is loaded as.
        x, y: the model's training rows and labels, when known. With them, parameters a model file
            does not keep are chosen to reproduce the model (XGBoost's learning rate), and
            ``reproduction["label_agreement"]`` says how often a clean refit predicts like the model
            on those rows (1.0: the recipe is the model's own).

    Raises:
        ModelCapabilityError: the model cannot be refitted (a callable, a torch module, a booster
            that is not a classifier), with the reason.
    """
    if model is None:
        raise ModelCapabilityError(
            f"{_OWNER}: 'model' must be a fitted estimator; got None. Pass the model object as loaded.")
    xgb, lgb = _booster(model, "xgboost"), _booster(model, "lightgbm")
    if xgb is not None:
        recipe = _xgboost_recipe(xgb, type(model).__name__)
    elif lgb is not None:
        recipe = _lightgbm_recipe(lgb, type(model).__name__)
    else:
        recipe = _sklearn_recipe(model)
    if x is None or y is None:
        return recipe
    arr = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    labels = np.asarray(y).astype(np.int64).reshape(-1)
    if xgb is not None:
        recipe = _calibrate_eta(recipe, xgb, arr, labels)
    given = _given_labels(model, xgb, lgb, arr, recipe.estimator)
    again = refit_predict(recipe.fit(arr, labels), arr)
    reproduction = {**recipe.reproduction, "label_agreement": round(float((again == given).mean()), 6)}
    return RefitRecipe(estimator=recipe.estimator, library=recipe.library, model_type=recipe.model_type,
                       source=recipe.source, params=recipe.params, rounds=recipe.rounds,
                       inferred=recipe.inferred, reproduction=reproduction)
