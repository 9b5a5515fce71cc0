"""TreeSHAP: brute-force Shapley values of the trees' conditional expectation, the libraries' own
contributions and margins, local accuracy, bad inputs."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

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
        return (cov[left] * g(left) + cov[right] * g(right)) / cov[node]

    return g(0)


def _brute_force(trees: list[Any], x: np.ndarray, d: int) -> np.ndarray:
    """Shapley values (d, K) of v(S) = mean over trees of E[f(x) | x_S], by enumerating all subsets."""
    def v(s: set[int]) -> np.ndarray:
        return np.mean([_cond_exp(t, x, s) for t in trees], axis=0)

    phi = np.zeros((d, np.asarray(v(set())).shape[0]))
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            w = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for s in combinations(others, size):
                phi[i] += w * (v(set(s) | {i}) - v(set(s)))
    return phi


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    lambda: RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=3, max_depth=4, random_state=0),
], ids=["tree", "forest", "extra-trees"])
def test_sklearn_treeshap_equals_brute_force_shapley(make: Any, data: tuple) -> None:
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


def test_sklearn_regressor_treeshap(data: tuple) -> None:
    x, _, _ = data
    reg = DecisionTreeRegressor(max_depth=4, random_state=0).fit(x, x[:, 0] * x[:, 1] + x[:, 2])
    att = TreeShap()(reg, torch.as_tensor(x[:3]))
    assert np.allclose(att.values[0].numpy(), _brute_force([reg], x[0], 5)[:, 0], atol=1e-12)
    assert np.allclose(att.score.numpy(), reg.predict(x[:3]), atol=1e-12)  # type: ignore[union-attr]


@pytest.mark.parametrize("classes", [2, 3])
def test_gradient_boosting_margins_are_decision_function(classes: int, data: tuple) -> None:
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
def test_xgboost_contributions_and_margins(classes: int, data: tuple) -> None:
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
def test_lightgbm_contributions_and_raw_scores(classes: int, data: tuple) -> None:
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


def test_bad_inputs_give_one_clear_line(data: tuple) -> None:
    x, y2, _ = data
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y2)
    with pytest.raises(InputError, match="must have the model's 5 features; got 4"):
        TreeShap()(tree, torch.as_tensor(x[:3, :4]))
    bad = torch.as_tensor(x[:3]).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        TreeShap()(tree, bad)
    with pytest.raises(InputError, match="target must be class indices"):
        TreeShap()(tree, torch.as_tensor(x[:2]), target=torch.tensor([0, 2]))
    with pytest.raises(ModelCapabilityError, match="Use KernelShap"):
        TreeShap()(LogisticRegression().fit(x, y2), torch.as_tensor(x[:2]))
