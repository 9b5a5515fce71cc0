"""clone_for_refit: a fitted model's training recipe rebuilt for refitting (sklearn, XGBoost, LightGBM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelshield.errors import ModelCapabilityError
from modelshield.models.refit import LightGBMRefit, XGBoostRefit, clone_for_refit, refit_predict
from modelshield.models.refs import load_model_ref


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = (d.target >= 5).astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    return x[perm[:1300]], y[perm[:1300]], x[perm[1300:]], y[perm[1300:]]


def test_xgboost_file_recipe_reproduces_the_model(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    xtr, ytr, xte, yte = _data()
    clf = xgb.XGBClassifier(n_estimators=25, max_depth=3, learning_rate=0.1, n_jobs=1).fit(xtr, ytr)
    clf.save_model(tmp_path / "m.json")
    model = load_model_ref(tmp_path / "m.json").model  # the file keeps trees, not eta / max_depth
    bare = clone_for_refit(model)
    assert bare.library == "xgboost" and bare.rounds == 25
    assert bare.params["max_depth"] == 3 and "max_depth" in bare.inferred  # read from the trees
    assert bare.params["eta"] == pytest.approx(0.3)  # XGBoost's default: not what it was trained with
    recipe = clone_for_refit(model, x=xtr, y=ytr)
    assert recipe.params["eta"] == pytest.approx(0.1) and "eta" in recipe.inferred
    assert recipe.reproduction["margin_mae"] < 1e-4 and recipe.reproduction["label_agreement"] == 1.0
    refit = recipe.fit(xtr, ytr)
    original = float((clf.predict(xte) == yte).mean())
    assert float((refit_predict(refit, xte) == yte).mean()) == pytest.approx(original, abs=0.01)
    assert "25 rounds" in recipe.describe() and recipe.to_dict()["params"]["objective"] == "binary:logistic"
    # a fresh clone per fit (sklearn.base.clone, as cross-validation needs)
    from sklearn.base import clone

    assert isinstance(clone(recipe.estimator), XGBoostRefit) and not hasattr(recipe.fresh(), "booster_")


def test_xgboost_in_memory_booster_keeps_its_config() -> None:
    xgb = pytest.importorskip("xgboost")
    xtr, ytr, _, _ = _data()
    booster = xgb.train({"objective": "binary:logistic", "eta": 0.2, "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(xtr, label=ytr), num_boost_round=15)
    recipe = clone_for_refit(booster)
    assert recipe.params["eta"] == pytest.approx(0.2) and recipe.params["max_depth"] == 2
    assert recipe.rounds == 15 and not recipe.inferred
    assert clone_for_refit(booster, x=xtr, y=ytr).reproduction["label_agreement"] == 1.0


def test_lightgbm_file_recipe_reads_the_stored_parameters(tmp_path: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    xtr, ytr, xte, yte = _data()
    clf = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, learning_rate=0.2, verbose=-1, n_jobs=1)
    clf.fit(xtr, ytr)
    clf.booster_.save_model(str(tmp_path / "m.txt"))
    recipe = clone_for_refit(load_model_ref(tmp_path / "m.txt").model, x=xtr, y=ytr)
    assert isinstance(recipe.estimator, LightGBMRefit) and recipe.rounds == 20
    assert recipe.params["num_leaves"] == 7 and recipe.params["learning_rate"] == pytest.approx(0.2)
    assert recipe.reproduction["label_agreement"] >= 0.99
    original = float((clf.predict(xte) == yte).mean())
    assert float((recipe.fit(xtr, ytr).predict(xte) == yte).mean()) == pytest.approx(original, abs=0.01)


def test_sklearn_estimators_are_cloned_and_callables_refused() -> None:
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, _, _ = _data()
    clf = LogisticRegression(C=0.5, max_iter=300).fit(xtr, ytr)
    recipe = clone_for_refit(clf, x=xtr, y=ytr)
    assert recipe.library == "scikit-learn" and recipe.params["C"] == 0.5
    assert recipe.reproduction["label_agreement"] == 1.0 and not hasattr(recipe.estimator, "coef_")

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        return np.asarray(clf.predict_proba(rows))

    with pytest.raises(ModelCapabilityError, match=r"sklearn\.base\.clone refuses"):
        clone_for_refit(predict_proba)
    with pytest.raises(ModelCapabilityError, match="got None"):
        clone_for_refit(None)
