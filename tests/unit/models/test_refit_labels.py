"""Refit recipes on labels that differ from the model file's outputs (held-out trial, defects 5 and 6).

* A 3-output boosted model refitted on 2-class labels must report ``classes_`` of the labels it
  saw, so scikit-learn's cross-validation lines the probability columns up (it raised IndexError).
* A scikit-learn model fitted on string labels predicts names: ``refit_predict`` maps them to
  their positions in ``classes_`` (it raised ValueError casting "phish" to int).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelshield.errors import ModelCapabilityError
from modelshield.models.refit import LightGBMRefit, clone_for_refit, refit_predict


def _three_class(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 4)) + y[:, None] * np.array([2.0, -1.0, 0.5, 0.0])
    return x.astype(np.float64), y.astype(np.int64)


def _lightgbm_three_class_file(tmp_path: Path) -> object:
    lgb = pytest.importorskip("lightgbm")
    from modelshield.models.refs import load_model_ref

    x, y = _three_class()
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbosity": -1,
                         "num_threads": 1}, lgb.Dataset(x, label=y), num_boost_round=10)
    booster.save_model(str(tmp_path / "m3.txt"))
    return load_model_ref(tmp_path / "m3.txt").model


def test_lightgbm_refit_classes_are_the_labels_fitted_on(tmp_path: Path) -> None:
    model = _lightgbm_three_class_file(tmp_path)
    x, y = _three_class(seed=1)
    two = y < 2
    recipe = clone_for_refit(model)
    assert isinstance(recipe.estimator, LightGBMRefit) and recipe.estimator.n_classes == 3
    fitted = recipe.fit(x[two], y[two])
    assert fitted.classes_.tolist() == [0, 1]
    proba = fitted.predict_proba(x[two])
    assert proba.shape == (int(two.sum()), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert set(np.unique(fitted.predict(x[two])).tolist()) <= {0, 1}
    # labels {0, 2}: the columns and the predictions are those classes, not positions 0 and 1
    skip = y != 1
    gapped = recipe.fit(x[skip], y[skip])
    assert gapped.classes_.tolist() == [0, 2]
    assert set(np.unique(gapped.predict(x[skip])).tolist()) <= {0, 2}
    assert float((gapped.predict(x[skip]) == y[skip]).mean()) > 0.8
    # the full label set keeps every output
    assert recipe.fit(x, y).predict_proba(x).shape == (len(y), 3)


def test_lightgbm_three_output_recipe_cross_validates_on_two_classes(tmp_path: Path) -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from modelshield.defenses.data.label_issues import ConfidentLearning

    model = _lightgbm_three_class_file(tmp_path)
    x, y = _three_class(seed=2)
    two = y < 2
    recipe = clone_for_refit(model)
    part = cross_val_predict(recipe.fresh(), x[two], y[two], method="predict_proba",
                             cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert part.shape == (int(two.sum()), 2)
    found = ConfidentLearning(model_factory=recipe.fresh, cv=3).fit(x[two], y[two])
    assert found.pred_probs_ is not None and found.pred_probs_.shape == (int(two.sum()), 2)


def test_refit_labels_outside_the_model_outputs_are_refused(tmp_path: Path) -> None:
    recipe = clone_for_refit(_lightgbm_three_class_file(tmp_path))
    x, _ = _three_class()
    with pytest.raises(ModelCapabilityError, match=r"class indices in \[0, 2\]"):
        recipe.fit(x[:6], np.array([0, 1, 3, 0, 1, 3]))


def test_string_label_forest_is_refitted_and_compared_by_position() -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = _three_class()
    names = np.array(["barolo", "grignolino", "barbera"])[y]  # classes_ sorted: barbera, barolo, grignolino
    rf = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, names)
    index = np.searchsorted(rf.classes_, names)  # the data's labels encoded in classes_ order
    pred = refit_predict(rf, x)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(rf.classes_[pred], rf.predict(x))
    recipe = clone_for_refit(rf, x=x, y=index)
    assert recipe.reproduction["label_agreement"] >= 0.95
    refit = recipe.fit(x, index)
    np.testing.assert_array_equal(refit_predict(refit, x), refit.predict(x))


def test_refit_predict_refuses_names_it_cannot_map() -> None:
    class Named:
        classes_ = np.array(["ham", "spam"])

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.array(["spam", "eggs"])[: len(x)]

    with pytest.raises(ModelCapabilityError, match=r"among its classes_.*'eggs'"):
        refit_predict(Named(), np.zeros((2, 3)))

    class NoClasses:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.array(["spam"] * len(x))

    with pytest.raises(ModelCapabilityError, match="without classes_"):
        refit_predict(NoClasses(), np.zeros((2, 3)))
