"""TreeSHAP: brute-force Shapley values of the trees' conditional expectation (scikit-learn trees,
forests, gradient boosting and HistGradientBoosting, NaN rows, deep trees with repeated features),
equality with shap's TreeExplainer, the libraries' own contributions and margins, local accuracy, the
per-model structure cache, feature names, bad inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from testkit.shapley import brute_force_shapley

from modelshield.errors import InputError, ModelCapabilityError
from modelshield.explain import TreeShap


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y2 = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    y3 = y2 + (x[:, 3] > 0.8)
    return x, y2, y3


def _cond_exp(tree: Any, x: np.ndarray, subset: set[int]) -> np.ndarray:
    """E[f(x) | x_S] of one sklearn tree: follow x on features in S, average by cover elsewhere."""
    t = tree.tree_
    value = t.value[:, 0, :]

    def g(node: int) -> np.ndarray:
        if t.children_left[node] == -1:
            return np.asarray(value[node], dtype=np.float64)
        left, right = t.children_left[node], t.children_right[node]
        f = int(t.feature[node])
        if f in subset:
            return g(left if x[f] <= t.threshold[node] else right)
        cov = t.weighted_n_node_samples
        return np.asarray((cov[left] * g(left) + cov[right] * g(right)) / cov[node], dtype=np.float64)

    return g(0)


def _brute_force(trees: list[Any], x: np.ndarray, d: int) -> np.ndarray:
    """Shapley values (d, K) of v(S) = mean over trees of E[f(x) | x_S], by enumerating all subsets."""
    def v(s: set[int]) -> np.ndarray:
        return np.asarray(np.mean([_cond_exp(t, x, s) for t in trees], axis=0), dtype=np.float64)

    return brute_force_shapley(v, d)


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    lambda: RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=3, max_depth=4, random_state=0),
], ids=["tree", "forest", "extra-trees"])
def test_sklearn_treeshap_equals_brute_force_shapley(make: Any, data: tuple[Any, ...]) -> None:
    x, _, y3 = data
    model = make().fit(x, y3)
    rows = torch.as_tensor(x[:6])
    for cls in range(3):
        att = TreeShap()(model, rows, target=torch.full((6,), cls))
        trees = [model] if hasattr(model, "tree_") else list(model.estimators_)
        for r in range(2):
            ref = _brute_force(trees, x[r], 5)[:, cls]
            assert np.allclose(att.values[r].numpy(), ref, atol=1e-12)
        assert np.allclose(att.score.numpy(), model.predict_proba(x[:6])[:, cls], atol=1e-12)  # type: ignore[union-attr]
        assert float(att.completeness_gap.max()) < 1e-12  # type: ignore[union-attr]
    default = TreeShap()(model, rows)
    assert torch.equal(default.target, torch.as_tensor(model.predict_proba(x[:6]).argmax(1)))
    assert default.details["output"] == "probability"


def test_sklearn_regressor_treeshap(data: tuple[Any, ...]) -> None:
    x, _, _ = data
    reg = DecisionTreeRegressor(max_depth=4, random_state=0).fit(x, x[:, 0] * x[:, 1] + x[:, 2])
    att = TreeShap()(reg, torch.as_tensor(x[:3]))
    assert np.allclose(att.values[0].numpy(), _brute_force([reg], x[0], 5)[:, 0], atol=1e-12)
    assert np.allclose(att.score.numpy(), reg.predict(x[:3]), atol=1e-12)  # type: ignore[union-attr]


@pytest.mark.parametrize("classes", [2, 3])
def test_gradient_boosting_margins_are_decision_function(classes: int, data: tuple[Any, ...]) -> None:
    x, y2, y3 = data
    y = y2 if classes == 2 else y3
    gb = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y)
    att = TreeShap()(gb, torch.as_tensor(x[:20]))
    margin = gb.decision_function(x[:20])
    want = margin if classes == 2 else margin[np.arange(20), att.target.numpy()]
    if classes == 2:  # log-odds of the predicted class: class 0's is minus class 1's
        want = np.where(att.target.numpy() == 1, margin, -margin)
    assert np.allclose(att.score.numpy(), want, atol=1e-10)  # type: ignore[union-attr]
    assert float(att.completeness_gap.max()) < 1e-10  # type: ignore[union-attr]
    assert torch.equal(att.target, torch.as_tensor(gb.predict(x[:20])))
    if classes == 2:  # one stage, one tree: path-dependent TreeSHAP by brute force (leaves rewritten)
        one = GradientBoostingClassifier(n_estimators=1, max_depth=3, random_state=0).fit(x, y)
        a1 = TreeShap()(one, torch.as_tensor(x[:1]), target=torch.ones(1, dtype=torch.long))
        tree = one.estimators_[0, 0]
        ref = _brute_force([tree], x[0], 5)[:, 0] * one.learning_rate
        assert np.allclose(a1.values[0].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_xgboost_contributions_and_margins(classes: int, data: tuple[Any, ...]) -> None:
    xgboost = pytest.importorskip("xgboost")
    x, y2, y3 = data
    y = y2 if classes == 2 else y3
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    att = TreeShap()(model, torch.as_tensor(x[:30]))
    contrib = model.get_booster().predict(xgboost.DMatrix(x[:30]), pred_contribs=True)
    margin = model.predict(x[:30], output_margin=True)
    tgt = att.target.numpy()
    assert np.array_equal(tgt, model.predict(x[:30]))
    if classes == 2:
        sign = np.where(tgt == 1, 1.0, -1.0)
        assert np.allclose(att.values.numpy(), sign[:, None] * contrib[:, :-1], atol=1e-6)
        assert np.allclose(att.score.numpy(), sign * margin, atol=1e-5)  # type: ignore[union-attr]
    else:
        assert np.allclose(att.values.numpy(), contrib[np.arange(30), tgt, :-1], atol=1e-6)
        assert np.allclose(att.score.numpy(), margin[np.arange(30), tgt], atol=1e-5)  # type: ignore[union-attr]
    assert float(att.completeness_gap.max()) < 1e-5  # type: ignore[union-attr]


@pytest.mark.parametrize("classes", [2, 3])
def test_lightgbm_contributions_and_raw_scores(classes: int, data: tuple[Any, ...]) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    x, y2, y3 = data
    y = y2 if classes == 2 else y3
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, random_state=0).fit(x, y)
    att = TreeShap()(model, torch.as_tensor(x[:30]))
    raw = model.predict(x[:30], raw_score=True)
    tgt = att.target.numpy()
    assert np.array_equal(tgt, model.predict(x[:30]))
    want = np.where(tgt == 1, raw, -raw) if classes == 2 else raw[np.arange(30), tgt]
    assert np.allclose(att.score.numpy(), want, atol=1e-6)  # type: ignore[union-attr]
    assert float(att.completeness_gap.max()) < 1e-6  # type: ignore[union-attr]


def test_bad_inputs_give_one_clear_line(data: tuple[Any, ...]) -> None:
    x, y2, _ = data
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y2)
    with pytest.raises(InputError, match="must have the model's 5 features; got 4"):
        TreeShap()(tree, torch.as_tensor(x[:3, :4]))
    bad = torch.as_tensor(x[:3]).clone()
    bad[1, 0] = float("nan")
    gb = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(x, y2)
    with pytest.raises(InputError, match=r"NaN values in 1 rows \(first row 1\).*cannot take missing"):
        TreeShap()(gb, bad)
    bad[1, 0] = float("inf")
    with pytest.raises(InputError, match="infinite"):
        TreeShap()(tree, bad)
    with pytest.raises(InputError, match="feature_names must name the 5 columns of x; got 2 names"):
        TreeShap()(tree, torch.as_tensor(x[:2]), feature_names=("a", "b"))
    with pytest.raises(ModelCapabilityError, match="not fitted"):
        TreeShap()(RandomForestClassifier(), torch.as_tensor(x[:2]))
    with pytest.raises(InputError, match="target must be class indices"):
        TreeShap()(tree, torch.as_tensor(x[:2]), target=torch.tensor([0, 2]))
    with pytest.raises(ModelCapabilityError, match="Use KernelShap"):
        TreeShap()(LogisticRegression().fit(x, y2), torch.as_tensor(x[:2]))


def _cond_exp_arrays(arrs: tuple[np.ndarray, ...], x: np.ndarray, subset: set[int]) -> float:
    """E[f(x) | x_S] of one tree given as (left, right, feature, threshold, missing_left, cover, value)
    arrays: follow x (NaN by the missing direction) on features in S, average by cover elsewhere."""
    left, right, feat, thr, miss, cover, value = arrs

    def g(node: int) -> float:
        if left[node] < 0:
            return float(value[node])
        f = int(feat[node])
        if f in subset:
            go_left = bool(miss[node]) if np.isnan(x[f]) else bool(x[f] <= thr[node])
            return g(int(left[node]) if go_left else int(right[node]))
        lc, rc = int(left[node]), int(right[node])
        return float((cover[lc] * g(lc) + cover[rc] * g(rc)) / cover[node])

    return g(0)


def _hgb_arrays(predictor: Any) -> tuple[np.ndarray, ...]:
    n = predictor.nodes
    leaf = n["is_leaf"].astype(bool)
    return (np.where(leaf, -1, n["left"].astype(np.int64)), np.where(leaf, -1, n["right"].astype(np.int64)),
            n["feature_idx"], n["num_threshold"], n["missing_go_to_left"], n["count"].astype(float),
            n["value"])


@pytest.fixture(scope="module")
def nan_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 4))
    x[rng.random(x.shape) < 0.15] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.isnan(x[:, 2]) > 0).astype(int)
    return x, y


def test_hist_gradient_boosting_equals_brute_force_with_missing_values(nan_data: tuple[Any, ...]) -> None:
    """Path-dependent Shapley values of a two-iteration HistGradientBoosting model by enumeration of
    all subsets, NaN rows included, and local accuracy against decision_function."""
    x, y = nan_data
    hgb = HistGradientBoostingClassifier(max_iter=2, max_leaf_nodes=8, random_state=0).fit(x, y)
    rows = x[:8]
    assert np.isnan(rows).any()
    att = TreeShap()(hgb, torch.as_tensor(rows), target=torch.ones(8, dtype=torch.long),
                     feature_names=("a", "b", "c", "d"))
    assert att.feature_names == ("a", "b", "c", "d")
    arrs = [_hgb_arrays(it[0]) for it in hgb._predictors]
    for r in range(8):
        ref = brute_force_shapley(lambda s, r=r: sum(_cond_exp_arrays(a, rows[r], s) for a in arrs), 4)
        assert np.allclose(att.values[r].numpy(), ref, atol=1e-12)
    raw = hgb.decision_function(rows)
    assert np.allclose(att.score.numpy(), raw, atol=1e-10)  # type: ignore[union-attr]
    assert np.allclose(att.values.sum(1).numpy() + att.baseline_score.numpy(), raw, atol=1e-10)  # type: ignore[union-attr]


_CASES = [
    (lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0), 2),
    (lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0), 3),
    (lambda: HistGradientBoostingRegressor(max_iter=20, random_state=0), 1),
    (lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0), 2),
    (lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0), 3),
    (lambda: GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0), 1),
    (lambda: RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0), 2),
    (lambda: RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0), 3),
    (lambda: RandomForestRegressor(n_estimators=10, max_depth=10, random_state=0), 1),
]


@pytest.mark.parametrize(("make", "classes"), _CASES, ids=[
    "hgb-clf2", "hgb-clf3", "hgb-reg", "gb-clf2", "gb-clf3", "gb-reg", "rf-clf2", "rf-clf3", "rf-reg"])
def test_equals_shap_tree_explainer_and_local_accuracy(make: Any, classes: int, data: tuple[Any, ...],
                                                       nan_data: tuple[Any, ...]) -> None:
    """Equal to shap's C++ TreeExplainer, and score / local accuracy against the model's own output
    (predict_proba for forests, decision_function for boosting, predict for regressors); NaN rows for
    the models that take them."""
    shap = pytest.importorskip("shap")
    model = make()
    is_clf = hasattr(model, "predict_proba")
    takes_nan = type(model).__name__.startswith(("Hist", "RandomForest"))
    if takes_nan:
        x, y = nan_data
        y = y + (np.nan_to_num(x[:, 3]) > 0.7) if classes == 3 else y
    else:
        x, y2, y3 = data
        y = y2 if classes == 2 else y3
    target = y if is_clf else np.nan_to_num(x[:, 0]) * 2 + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])
    model.fit(x, target)
    rows = x[:40]
    proba_space = type(model).__name__.startswith("RandomForest")
    out = model.predict_proba(rows) if proba_space and is_clf else (
        model.decision_function(rows) if is_clf else model.predict(rows))
    out = np.asarray(out).reshape(40, -1)
    try:
        ref = np.asarray(shap.TreeExplainer(model).shap_values(rows))
    except Exception as exc:  # shap 0.51 refuses multiclass GradientBoostingClassifier
        assert "only supported for binary" in str(exc)
        ref = None
    if ref is not None:
        ref = ref[..., None] if ref.ndim == 2 else ref  # (N, D, K)
        assert ref.shape[2] == out.shape[1]
    margin_binary = is_clf and out.shape[1] == 1  # one log-odds column: explained as class 1
    for col in range(out.shape[1]):
        cls = 1 if margin_binary else col
        att = TreeShap()(model, torch.as_tensor(rows), target=torch.full((40,), cls, dtype=torch.long))
        if ref is not None:
            diff = np.abs(att.values.numpy() - ref[:, :, col]).max()
            assert diff < 1e-10, diff
        assert np.allclose(att.score.numpy(), out[:, col], atol=1e-8)  # type: ignore[union-attr]
        assert float(att.completeness_gap.max()) < 1e-10  # type: ignore[union-attr]


def test_deep_tree_with_repeated_features_equals_brute_force() -> None:
    """Depth 14 on 3 features: every path splits each feature many times (the merged-factor and
    telescoping steps) and the Gauss-Legendre rule must be exact at the highest degree."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 3))
    y = np.sin(3 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=3000)
    from sklearn.tree import DecisionTreeRegressor as Reg

    tree = Reg(max_depth=14, min_samples_leaf=2, random_state=0).fit(x, y)
    assert tree.get_depth() == 14
    rows = x[:5].astype(np.float32).astype(np.float64)
    att = TreeShap()(tree, torch.as_tensor(rows))
    for r in range(5):
        ref = _brute_force([tree], rows[r], 3)[:, 0]
        assert np.allclose(att.values[r].numpy(), ref, atol=1e-10)
    assert np.allclose(att.score.numpy(), tree.predict(rows), atol=1e-10)  # type: ignore[union-attr]


def test_compiled_structure_is_cached_and_refit_invalidates_it(data: tuple[Any, ...]) -> None:
    from modelshield.explain import trees

    x, y2, y3 = data
    rf = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y2)
    TreeShap()(rf, torch.as_tensor(x[:2]))
    first = trees._CACHE[rf]
    TreeShap()(rf, torch.as_tensor(x[:2]))
    assert trees._CACHE[rf] is first
    rf.fit(x, y3)  # now three classes: a stale structure would give two
    att = TreeShap()(rf, torch.as_tensor(x[:4]), target=torch.full((4,), 2, dtype=torch.long))
    assert trees._CACHE[rf] is not first
    assert np.allclose(att.score.numpy(), rf.predict_proba(x[:4])[:, 2], atol=1e-12)  # type: ignore[union-attr]


def test_categorical_hist_gradient_boosting_is_refused(data: tuple[Any, ...]) -> None:
    x, y2, _ = data
    xc = x.copy()
    xc[:, 0] = (x[:, 0] > 0).astype(float) + (x[:, 0] > 1)
    hgb = HistGradientBoostingClassifier(max_iter=3, categorical_features=[0], random_state=0).fit(xc, y2)
    with pytest.raises(ModelCapabilityError, match="categorical splits"):
        TreeShap()(hgb, torch.as_tensor(xc[:2]))
