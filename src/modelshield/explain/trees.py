"""Exact TreeSHAP for tree ensembles: XGBoost, LightGBM and scikit-learn trees.

- XGBoost and LightGBM: the libraries' own exact TreeSHAP (``Booster.predict(DMatrix,
  pred_contribs=True)``, ``predict(X, pred_contrib=True)``), in their margin space (log-odds for
  binary classifiers, the raw per-class score for multiclass ones).
- scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*`` (probability space for
  classifiers: ``predict_proba`` is the mean of the trees' leaf class fractions),
  ``GradientBoosting*`` and ``HistGradientBoosting*`` (the raw score: log-odds / per-class score of
  ``decision_function``, the regressor's prediction before any inverse link): path-dependent
  TreeSHAP (Lundberg et al. 2020, "From local explanations to global understanding with
  explainable AI for trees", Nature Machine Intelligence 2:56-67), computed here by
  :func:`forest_shap`.

The value function is the tree's conditional expectation ``E[f(x) | x_S]`` estimated from the training
cover of each node, so ``sum(values) == score - baseline_score`` with ``baseline_score`` the cover-
weighted mean output (the library's bias term).

How :func:`forest_shap` computes it (the same numbers as Algorithm 2 of Lundberg et al. 2020, in
O(nodes x ceil(depth / 2)) per row instead of O(leaves x depth^2)). For one leaf with value v, the
game over the unique features j of its path is ``v * prod_{j in S} o_j * prod_{j not in S} z_j`` (z_j:
product of the cover ratios of j's splits on the path, o_j in {0, 1}: whether x follows all of them).
Owen's (1972) multilinear-extension formula gives its Shapley value as
``phi_i = v (o_i - z_i) * integral_0^1 prod_{j != i} (z_j + t (o_j - z_j)) dt``: a polynomial of
degree < depth in t, so Gauss-Legendre quadrature with ceil(depth / 2) points is exact. As in Linear
TreeSHAP (Yu et al. 2022, "Linear TreeShap", NeurIPS), the products are evaluated at those points top-
down (each node multiplies its parent's by one factor), leaf values times products are summed bottom-up
(each node holds its subtree's sum), and each edge adds its feature's share from its node's sum; a
feature split again lower on the path replaces its earlier factor, and the earlier edge's share is
subtracted there, so the shares telescope to the leaf's final factor. Every step is vectorised over
rows, all nodes of one depth across many trees at once, and the quadrature points, in torch float64:
no Python loop per row or per node. The row-independent tree structure is built once per model and
cached (weakly) against it.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import InputError, ModelCapabilityError
from modelshield.explain.result import Attribution

__all__ = [
    "ForestStructure",
    "TreeShap",
    "build_forest",
    "forest_shap",
    "is_tree_model",
    "tree_shap_sklearn_tree",
]

#: elements (rows x nodes x quadrature points x outputs) of one working array in forest_shap
_WORK_ELEMENTS = 1 << 20


@dataclass(frozen=True, slots=True)
class _Trees:
    """Trees in one flat node numbering: each tree's nodes are contiguous, its root first."""

    left: np.ndarray  # (M,) int64 global child index, -1 for leaves
    right: np.ndarray
    feature: np.ndarray  # (M,) int64 split feature (-1 for leaves)
    threshold: np.ndarray  # (M,) float64: go left when x[feature] <= threshold
    missing_left: np.ndarray  # (M,) bool: NaN goes left
    cover: np.ndarray  # (M,) float64 training cover
    value: np.ndarray  # (M, K) float64 leaf outputs (internal nodes ignored)
    roots: np.ndarray  # (T,) int64


@dataclass(frozen=True, slots=True)
class _Group:
    """Row-independent structure of a group of trees, nodes numbered locally in depth order."""

    n: int  # nodes in the group
    levels: tuple[tuple[int, int], ...]  # [start, stop) of each depth >= 1 (the edges into those nodes)
    parent: Tensor  # (n,) int64 (roots: themselves)
    prev: Tensor  # (n,) int64: node whose edge is the previous split on the same feature, else n (dummy)
    is_left: Tensor  # (n,) bool
    edge_feature: Tensor  # (n,) int64 feature of the split above the node (roots: 0, unused)
    z: Tensor  # (n,) float64 merged cover fraction of that feature up to this edge (roots: 1)
    z_prev: Tensor  # (n,) float64 the same at the previous occurrence (1 when none)
    split_feature: Tensor  # (n,) int64 (leaves: 0)
    threshold: Tensor  # (n,) float64 (leaves: +inf)
    missing_left: Tensor  # (n,) bool
    node_value: Tensor  # (n, K) float64: leaf values, zero at internal nodes
    n_roots: int


@dataclass(frozen=True, slots=True)
class ForestStructure:
    """Precomputed, row-independent structure of an additive tree ensemble (see :func:`build_forest`)."""

    groups: tuple[_Group, ...]
    expected: Tensor  # (K,) float64 sum over trees of the cover-weighted mean leaf value
    quad_t: Tensor  # (Q,) Gauss-Legendre points on [0, 1]
    quad_w: Tensor  # (Q,) weights
    n_outputs: int
    n_nodes: int
    max_depth: int


def _concat(trees: list[tuple[np.ndarray, ...]]) -> _Trees:
    """Concatenate per-tree (left, right, feature, threshold, missing_left, cover, value) arrays."""
    offs = np.cumsum([0] + [len(t[0]) for t in trees])
    lefts, rights = [], []
    for (lft, rgt, *_), off in zip(trees, offs[:-1], strict=False):
        lefts.append(np.where(lft < 0, -1, lft + off))
        rights.append(np.where(rgt < 0, -1, rgt + off))
    return _Trees(
        left=np.concatenate(lefts).astype(np.int64), right=np.concatenate(rights).astype(np.int64),
        feature=np.concatenate([t[2] for t in trees]).astype(np.int64),
        threshold=np.concatenate([t[3] for t in trees]).astype(np.float64),
        missing_left=np.concatenate([t[4] for t in trees]).astype(bool),
        cover=np.concatenate([t[5] for t in trees]).astype(np.float64),
        value=np.concatenate([t[6] for t in trees]).astype(np.float64), roots=offs[:-1].astype(np.int64))


def _build_group(t: _Trees, roots: np.ndarray) -> tuple[_Group, np.ndarray, int]:
    """Depth-ordered structure of the trees rooted at ``roots``; also their expected value (K,) and
    their maximum depth."""
    order = [roots]
    parent_g = [roots]
    frontier = roots
    while True:
        inner = frontier[t.left[frontier] >= 0]
        if inner.size == 0:
            break
        kids = np.concatenate([t.left[inner], t.right[inner]])
        par = np.concatenate([inner, inner])
        order.append(kids)
        parent_g.append(par)
        frontier = kids
    glob = np.concatenate(order)
    n = glob.size
    local = np.empty(int(glob.max()) + 1, dtype=np.int64)
    local[glob] = np.arange(n)
    parent = local[np.concatenate(parent_g)]
    sizes = [a.size for a in order]
    starts = np.cumsum([0, *sizes])
    levels = tuple((int(starts[i]), int(starts[i + 1])) for i in range(1, len(sizes)))
    is_left = np.zeros(n, dtype=bool)
    is_left[local[t.left[glob][t.left[glob] >= 0]]] = True
    split_feature = np.where(t.left[glob] >= 0, t.feature[glob], 0)
    edge_feature = np.where(np.arange(n) < roots.size, 0, split_feature[parent])
    is_root = np.arange(n) < roots.size
    ratio = np.ones(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = t.cover[glob] / t.cover[glob][parent]
    ratio[~is_root] = np.nan_to_num(r[~is_root], nan=0.0)
    prev = np.full(n, n, dtype=np.int64)
    z = np.ones(n + 1)  # index n: the dummy "no previous occurrence" (z = 1, o = 1)
    path_z = np.ones(n)  # product of cover ratios root -> node (cover share of the node)
    for lo, hi in levels:
        c = np.arange(lo, hi)
        j = edge_feature[c]
        found = np.full(c.size, n, dtype=np.int64)
        cand = parent[c]
        for _ in range(len(levels)):
            live = cand >= roots.size
            if not live.any():
                break
            hit = live & (found == n) & (edge_feature[cand] == j)
            found[hit] = cand[hit]
            cand = np.where(live, parent[cand], cand)
        prev[c] = found
        z[c] = z[found] * ratio[c]
        path_z[c] = path_z[parent[c]] * ratio[c]
    leaves = np.nonzero(t.left[glob] < 0)[0]
    leaf_value = t.value[glob[leaves]]
    node_value = np.zeros((n, leaf_value.shape[1]))
    node_value[leaves] = leaf_value
    expected = (path_z[leaves, None] * leaf_value).sum(0)
    group = _Group(
        n=n, levels=levels, parent=torch.as_tensor(parent), prev=torch.as_tensor(prev),
        is_left=torch.as_tensor(is_left), edge_feature=torch.as_tensor(edge_feature),
        z=torch.as_tensor(z[:n]), z_prev=torch.as_tensor(z[prev]),
        split_feature=torch.as_tensor(split_feature),
        threshold=torch.as_tensor(np.where(t.left[glob] >= 0, t.threshold[glob], np.inf)),
        missing_left=torch.as_tensor(t.missing_left[glob]), node_value=torch.as_tensor(node_value),
        n_roots=int(roots.size))
    return group, expected, len(levels)


def build_forest(trees: list[tuple[np.ndarray, ...]], *, group_nodes: int = 1 << 12) -> ForestStructure:
    """Row-independent structure of an additive ensemble for :func:`forest_shap`.

    Args:
        trees: per tree ``(left, right, feature, threshold, missing_left, cover, value)``: local child
            indices (-1 for leaves), split feature, threshold (left when ``x <= threshold``), NaN goes
            left, training cover per node, and the ``(nodes, K)`` leaf outputs (already scaled, e.g. by a
            learning rate or 1 / n_trees). The ensemble's output is the sum of the trees' outputs.
        group_nodes: trees are processed in groups of about this many nodes.
    """
    t = _concat(trees)
    sizes = np.diff(np.append(t.roots, t.left.size))
    groups, expected, depth = [], np.zeros(t.value.shape[1]), 0
    start = 0
    while start < t.roots.size:
        stop = start + 1
        total = int(sizes[start])
        while stop < t.roots.size and total + int(sizes[stop]) <= group_nodes:
            total += int(sizes[stop])
            stop += 1
        g, e, d = _build_group(t, t.roots[start:stop])
        groups.append(g)
        expected += e
        depth = max(depth, d)
        start = stop
    q = max(1, math.ceil(depth / 2))
    pts, wts = np.polynomial.legendre.leggauss(q)
    return ForestStructure(
        groups=tuple(groups), expected=torch.as_tensor(expected), quad_t=torch.as_tensor((pts + 1) / 2),
        quad_w=torch.as_tensor(wts / 2), n_outputs=int(t.value.shape[1]), n_nodes=int(t.left.size),
        max_depth=depth)


def _edge_tables(g: _Group, t: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per edge and state, at the quadrature points: the factor an edge multiplies the running product
    by, and its feature's share weight; ``(3 * n, Q)`` each, row ``3 * node + state``.

    States per row: 0 = x follows the edge and every earlier split on its feature (hot), 1 = it
    followed the earlier ones but not this one, 2 = an earlier one was already not followed. The
    edge's factor is ``z + t (o - z)`` (hot: o = 1, else 0), divided by the previous occurrence's,
    and its share weight ``w (d / a - d_prev / a_prev)`` with d = o - z (0 in state 2)."""
    zc, zp = g.z[:, None], g.z_prev[:, None]
    one = 1.0 - t[None, :]
    a1c, a0c = zc + t * (1.0 - zc), zc * one
    a1p, a0p = zp + t * (1.0 - zp), zp * one
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = torch.stack([a1c / a1p, a0c / a1p, torch.nan_to_num(a0c / a0p, nan=0.0)], 1)
        share = w * torch.stack([(1.0 - zc) / a1c - (1.0 - zp) / a1p, -1.0 / one - (1.0 - zp) / a1p,
                                 torch.zeros_like(a1c)], 1)
    q = t.shape[0]
    return ratio.reshape(-1, q), torch.nan_to_num(share, nan=0.0, posinf=0.0, neginf=0.0).reshape(-1, q)


def _group_shap(g: _Group, xt: Tensor, ratio: Tensor, share: Tensor) -> Tensor:
    """The group's Shapley values ``(D, B, K)`` of rows ``xt`` (D, B), given its :func:`_edge_tables`."""
    d, b = xt.shape
    k = g.node_value.shape[1]
    q = ratio.shape[1]
    xv = xt.index_select(0, g.split_feature)  # (n, B)
    go_left = torch.where(torch.isnan(xv), g.missing_left[:, None], xv <= g.threshold[:, None])
    hot = torch.ones(g.n + 1, b, dtype=torch.bool)  # index n: no previous occurrence
    row = torch.empty(g.n, b, dtype=torch.int64)  # table row 3 * node + state of each edge
    prod = torch.empty(g.n, b, q, dtype=torch.float64)  # running product root -> node per t
    prod[:g.n_roots] = 1.0
    for lo, hi in g.levels:  # top-down, one depth of all the group's trees at a time
        par = g.parent[lo:hi]
        follows = go_left.index_select(0, par) == g.is_left[lo:hi, None]
        hot_prev = hot.index_select(0, g.prev[lo:hi])
        hot[lo:hi] = hot_prev & follows
        idx = torch.where(hot_prev, (~follows).long(), 2).add_(torch.arange(lo * 3, hi * 3, 3)[:, None])
        row[lo:hi] = idx
        torch.mul(prod.index_select(0, par), ratio.index_select(0, idx.view(-1)).view(hi - lo, b, q),
                  out=prod[lo:hi])
    # subtree sums of leaf value x product, bottom-up (internal nodes' node_value is zero)
    sums = prod[..., None] * g.node_value[:, None, None, :]
    del prod
    for lo, hi in reversed(g.levels):
        sums[:lo].index_add_(0, g.parent[lo:hi], sums[lo:hi])  # parents lie above lo
    lo = g.levels[0][0] if g.levels else g.n
    sh = share.index_select(0, row[lo:].reshape(-1)).view(g.n - lo, b, q)
    contrib = torch.einsum("nbq,nbqk->nbk", sh, sums[lo:])
    phi = torch.zeros(d, b, k, dtype=torch.float64)
    phi.index_add_(0, g.edge_feature[lo:], contrib)
    return phi


def forest_shap(forest: ForestStructure, x: Tensor, *, work_elements: int = _WORK_ELEMENTS) -> Tensor:
    """Exact path-dependent TreeSHAP values ``(N, D, K)`` of rows x ``(N, D)`` (float64, NaN allowed:
    missing values follow each split's ``missing_left``) for an ensemble built by :func:`build_forest`.
    Their sum plus ``forest.expected`` is the ensemble's output for each row."""
    n, d = x.shape
    k = forest.n_outputs
    xt = x.t().contiguous()
    out = torch.zeros(d, n, k, dtype=torch.float64)
    for g in forest.groups:
        ratio, share = _edge_tables(g, forest.quad_t, forest.quad_w)
        rows = max(1, min(n, work_elements // max(1, g.n * forest.quad_t.shape[0] * k)))
        for r0 in range(0, n, rows):
            out[:, r0:r0 + rows] += _group_shap(g, xt[:, r0:r0 + rows], ratio, share)
    return out.permute(1, 0, 2).contiguous()


def _sklearn_tree_arrays(tree: Any, scale: float, *, proba: bool,
                         column: int | None = None) -> tuple[np.ndarray, ...]:
    """(left, right, feature, threshold, missing_left, cover, value) of a fitted ``tree_``; ``proba``
    normalises class counts to fractions, ``column`` keeps one output column."""
    value = np.asarray(tree.value, dtype=np.float64)[:, 0, :]
    if proba:
        total = value.sum(1, keepdims=True)
        value = np.divide(value, total, out=np.zeros_like(value), where=total > 0)
    if column is not None:
        value = value[:, column:column + 1]
    missing = getattr(tree, "missing_go_to_left", None)
    miss = np.zeros(tree.node_count, dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    return (np.asarray(tree.children_left), np.asarray(tree.children_right), np.asarray(tree.feature),
            np.asarray(tree.threshold, dtype=np.float64), miss,
            np.asarray(tree.weighted_n_node_samples, dtype=np.float64), value * scale)


def _hist_tree_arrays(predictor: Any) -> tuple[np.ndarray, ...]:
    """The same arrays from a HistGradientBoosting ``TreePredictor``'s ``nodes`` record array (leaf
    values already include the learning rate)."""
    nodes = predictor.nodes
    leaf = nodes["is_leaf"].astype(bool)
    if bool((nodes["is_categorical"].astype(bool) & ~leaf).any()):
        raise ModelCapabilityError(
            "TreeShap: HistGradientBoosting models with categorical splits are not supported (their "
            "splits are category bitsets); got a model fitted with categorical_features. Use KernelShap "
            "or fit without categorical_features.")
    left = np.where(leaf, -1, nodes["left"].astype(np.int64))
    right = np.where(leaf, -1, nodes["right"].astype(np.int64))
    return (left, right, np.where(leaf, -2, nodes["feature_idx"]), nodes["num_threshold"].astype(np.float64),
            nodes["missing_go_to_left"].astype(bool), nodes["count"].astype(np.float64),
            nodes["value"].astype(np.float64)[:, None])


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A scikit-learn model as additive forests: ``parts[i]`` explains output columns ``columns[i]``."""

    parts: tuple[ForestStructure, ...]
    columns: tuple[tuple[int, ...], ...]
    n_outputs: int
    offset: np.ndarray  # (K,) constant raw offset (HistGradientBoosting's baseline), else zeros
    float32: bool  # scikit-learn trees compare float32 inputs
    binary_proba: bool  # a two-class probability forest computed for class 1 only
    signature: tuple[Any, ...]


_CACHE: weakref.WeakKeyDictionary[Any, _Compiled] = weakref.WeakKeyDictionary()


def _signature(model: Any) -> tuple[Any, ...]:
    """Identity of a fitted model's trees: refitting replaces these objects (warm starts grow them)."""
    for name in ("estimators_", "_predictors", "tree_"):
        obj = getattr(model, name, None)
        if obj is not None:
            size = len(obj) if hasattr(obj, "__len__") else int(getattr(obj, "node_count", -1))
            return (name, id(obj), size, int(getattr(model, "n_features_in_", -1)))
    return ()


def _compile(kind: str, model: Any) -> _Compiled:
    if int(getattr(model, "n_outputs_", 1)) > 1:
        raise ModelCapabilityError(
            f"TreeShap: multi-output scikit-learn trees are not supported; got n_outputs_="
            f"{model.n_outputs_}. Explain one output per model.")
    is_clf = hasattr(model, "classes_")
    sig = _signature(model)
    if kind == "sklearn-forest":
        ests = [model] if hasattr(model, "tree_") else list(model.estimators_)
        n_cls = len(model.classes_) if is_clf else 1
        binary = n_cls == 2
        col = 1 if binary else None
        forest = build_forest([_sklearn_tree_arrays(e.tree_, 1.0 / len(ests), proba=is_clf, column=col)
                               for e in ests])
        cols = (1,) if binary else tuple(range(n_cls))
        return _Compiled((forest,), (cols,), n_cls, np.zeros(n_cls), True, binary, sig)
    if kind == "sklearn-gbm":
        stages = np.asarray(model.estimators_)  # (n_stages, K) regression trees
        lr = float(model.learning_rate)
        n_k = stages.shape[1]
        parts = tuple(build_forest([_sklearn_tree_arrays(e.tree_, lr, proba=False) for e in stages[:, c]])
                      for c in range(n_k))
        return _Compiled(parts, tuple((c,) for c in range(n_k)), n_k, np.zeros(n_k), True, False, sig)
    # HistGradientBoosting: raw = baseline + sum of the trees of each output column
    preds = model._predictors
    n_k = len(preds[0])
    parts = tuple(build_forest([_hist_tree_arrays(it[c]) for it in preds]) for c in range(n_k))
    base = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    return _Compiled(parts, tuple((c,) for c in range(n_k)), n_k, base, False, False, sig)


def _compiled(kind: str, model: Any) -> _Compiled:
    """The model's compiled forests, from the per-model cache when its trees have not changed."""
    sig = _signature(model)
    try:
        hit = _CACHE.get(model)
    except TypeError:  # not weak-referenceable / hashable: compile every time
        return _compile(kind, model)
    if hit is not None and hit.signature == sig:
        return hit
    comp = _compile(kind, model)
    with contextlib.suppress(TypeError):
        _CACHE[model] = comp
    return comp


def tree_shap_sklearn_tree(tree: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Path-dependent TreeSHAP of one fitted scikit-learn ``tree_`` on rows x (compared as given).

    Returns:
        ``(phi (N, D, K), expected (K,))``: the Shapley values of ``E[f(x) | x_S]`` for each of the
        tree's K outputs (``value[:, 0, :]``: class fractions or the regression value), and the
        cover-weighted mean leaf output (the value of the empty coalition).
    """
    forest = build_forest([_sklearn_tree_arrays(tree, 1.0, proba=False)])
    phi = forest_shap(forest, torch.as_tensor(np.asarray(x, dtype=np.float64)))
    return phi.numpy(), forest.expected.numpy()


def _kind(model: Any) -> str:
    mod = type(model).__module__
    name = type(model).__name__
    if mod.startswith("xgboost"):
        return "xgboost"
    if mod.startswith("lightgbm"):
        return "lightgbm"
    kind = ""
    if mod.startswith("sklearn.ensemble") and name.startswith("HistGradientBoosting"):
        kind, fitted = "sklearn-hgb", "_predictors"
    elif mod.startswith("sklearn.ensemble") and name.startswith("GradientBoosting"):
        kind, fitted = "sklearn-gbm", "estimators_"
    elif mod.startswith("sklearn.tree") and name.startswith(("DecisionTree", "ExtraTree")):
        kind, fitted = "sklearn-forest", "tree_"
    elif mod.startswith("sklearn.ensemble") and name.startswith(("RandomForest", "ExtraTrees")):
        kind, fitted = "sklearn-forest", "estimators_"
    if not kind:
        raise ModelCapabilityError(
            f"TreeShap: the model must be a fitted XGBoost, LightGBM or scikit-learn tree model "
            f"(DecisionTree, RandomForest, ExtraTrees, GradientBoosting, HistGradientBoosting); got "
            f"{name}. Use KernelShap for other models.")
    if getattr(model, fitted, None) is None:
        raise ModelCapabilityError(f"TreeShap: the {name} is not fitted (no {fitted}). Call fit first.")
    return kind


def is_tree_model(model: object) -> bool:
    """True when TreeShap explains model: a fitted XGBoost, LightGBM or scikit-learn tree model
    (DecisionTree, ExtraTree, RandomForest, ExtraTrees, GradientBoosting, HistGradientBoosting)."""
    try:
        _kind(model)
    except ModelCapabilityError:
        return False
    return True


def _margin_rows(contrib: np.ndarray, n: int, d: int) -> np.ndarray:
    """Library contributions as ``(N, K, D + 1)`` (bias last)."""
    arr = np.asarray(contrib, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == d + 1:
        return arr[:, None, :]
    if arr.ndim == 2:  # LightGBM multiclass: (N, K * (D + 1))
        return arr.reshape(n, -1, d + 1)
    return arr  # XGBoost multiclass: (N, K, D + 1)


def _library_contribs(kind: str, model: Any, xn: np.ndarray) -> tuple[np.ndarray, str]:
    n, d = xn.shape
    if kind == "xgboost":
        import xgboost  # the model's own library: present when such a model is given

        booster = model.get_booster() if hasattr(model, "get_booster") else model
        raw = booster.predict(xgboost.DMatrix(xn), pred_contribs=True)
        return _margin_rows(raw, n, d), "margin (log-odds for binary classifiers)"
    raw = model.predict(xn, pred_contrib=True)
    if isinstance(raw, list):  # sparse multiclass answers: densify
        raw = np.concatenate([np.asarray(r.todense()) for r in raw], axis=1)
    return _margin_rows(raw, n, d), "raw score (log-odds for binary classifiers)"


def _sklearn_contribs(kind: str, model: Any, xn: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, K, D + 1) contributions with the bias last, for scikit-learn trees."""
    comp = _compiled(kind, model)
    # scikit-learn's own trees compare float32 inputs; HistGradientBoosting compares float64 ones
    xs = xn.astype(np.float32).astype(np.float64) if comp.float32 else xn
    xt = torch.as_tensor(xs)
    n, d = xs.shape
    k = comp.n_outputs
    phi = torch.zeros(n, k, d, dtype=torch.float64)
    bias = torch.zeros(n, k, dtype=torch.float64)
    for part, cols in zip(comp.parts, comp.columns, strict=True):
        p = forest_shap(part, xt)  # (N, D, k_part)
        for i, c in enumerate(cols):
            phi[:, c] = p[:, :, i]
            bias[:, c] = float(part.expected[i]) + float(comp.offset[c])
    if comp.binary_proba:  # the two class fractions sum to one
        phi[:, 0] = -phi[:, 1]
        bias[:, 0] = 1.0 - bias[:, 1]
    if kind == "sklearn-gbm":  # the init estimator's raw prediction (a constant for the default init)
        init = getattr(model, "_raw_predict_init", None)
        if init is not None:
            bias += torch.as_tensor(np.asarray(init(xs.astype(np.float32)), dtype=np.float64).reshape(n, k))
        else:
            raw = model.decision_function(xs) if hasattr(model, "decision_function") else model.predict(xs)
            bias = torch.as_tensor(np.asarray(raw, dtype=np.float64).reshape(n, k)) - phi.sum(2)
    out = torch.cat([phi, bias[:, :, None]], dim=2).numpy()
    if kind == "sklearn-forest":
        return out, "probability" if hasattr(model, "classes_") else "prediction"
    return out, "raw score (log-odds for binary classifiers, before any inverse link for regressors)"


def _check_rows(kind: str, model: Any, x: object) -> np.ndarray:
    """x as float64 (N, D) numpy; NaN only where the model takes missing values, one-line errors."""
    if not isinstance(x, Tensor):
        raise InputError(f"TreeShap: x must be a torch.Tensor of shape (N, D); got {type(x).__name__}. "
                         "Convert with torch.as_tensor(x, dtype=torch.float32).")
    if not x.is_floating_point() or x.dim() != 2 or x.shape[0] == 0:
        raise InputError(f"TreeShap: x must be a floating tensor of shape (N, D) with N >= 1; got shape "
                         f"{tuple(x.shape)}, dtype {x.dtype}. Flatten it, add a batch dimension or .float().")
    xn: np.ndarray = x.detach().cpu().double().numpy()
    if np.isinf(xn).any():
        row = int(np.nonzero(np.isinf(xn).any(1))[0][0])
        raise InputError(f"TreeShap: x has {int(np.isinf(xn).sum())} infinite values (first in row {row}). "
                         "Clip or impute them before explaining.")
    return xn


def _check_missing(kind: str, model: Any, xn: np.ndarray) -> None:
    """NaN only where the model takes missing values (probed on one such row)."""
    nan_rows = np.nonzero(np.isnan(xn).any(1))[0]
    if nan_rows.size and kind in ("sklearn-forest", "sklearn-gbm"):
        try:
            model.predict(xn[nan_rows[:1]].astype(np.float32))
        except ValueError:
            raise InputError(
                f"TreeShap: x has NaN values in {nan_rows.size} rows (first row {int(nan_rows[0])}) and this "
                f"{type(model).__name__} cannot take missing values. Impute them first, or use a model that "
                "handles NaN (HistGradientBoosting, XGBoost, LightGBM).") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class TreeShap:
    """Exact TreeSHAP for XGBoost, LightGBM and scikit-learn trees (see the module docstring).

    Output space: the library's margin for XGBoost / LightGBM / GradientBoosting /
    HistGradientBoosting (log-odds of class 1 for binary classifiers: the class-0 attributions are
    their negation; HistGradientBoosting regressors: before any inverse link), the class probability
    for scikit-learn DecisionTree / RandomForest / ExtraTrees classifiers, the prediction for
    regressors (target 0). NaN inputs are explained where the model takes them (XGBoost, LightGBM,
    HistGradientBoosting, scikit-learn trees fitted with missing-value support: each split's
    missing-value direction), and rejected with one line elsewhere. ``details["output"]`` names the
    space. ``score`` is the model's output in that space and ``baseline_score`` the expected output
    (bias; GradientBoosting: plus its init estimator's raw prediction, per row for a custom init;
    HistGradientBoosting: plus its baseline prediction), so ``completeness_gap`` is ~0.

    Speed: the scikit-learn path is :func:`forest_shap` (O(nodes x ceil(depth / 2)) per row, torch,
    vectorised over rows and all nodes of a depth in many trees): see benchmarks/explain_trees.py for
    figures against shap's C++ TreeExplainer (same values to ~1e-14). The trees' structure is compiled
    once per fitted model and cached. XGBoost and LightGBM run in the libraries' own code.

    Example:
        att = TreeShap()(xgb_clf, torch.as_tensor(x_test[:100]))
    """

    def __call__(self, model: Any, x: Tensor, target: Tensor | None = None, *,
                 feature_names: tuple[str, ...] | None = None) -> Attribution:
        """Attributions of rows x ``(N, D)`` to the model's output for ``target`` (default: the
        predicted class); ``feature_names`` (one per column) are put on the result."""
        start = time.perf_counter()
        kind = _kind(model)
        xn = _check_rows(kind, model, x)
        d_model = getattr(model, "n_features_in_", None)
        if d_model is None and kind == "xgboost":
            booster = model.get_booster() if hasattr(model, "get_booster") else model
            d_model = booster.num_features()
        if d_model is not None and int(d_model) != xn.shape[1]:
            raise InputError(f"TreeShap: x must have the model's {int(d_model)} features; got "
                             f"{xn.shape[1]}. Pass rows with the columns the model was trained on.")
        d = xn.shape[1]
        if feature_names is not None and (isinstance(feature_names, str) or len(feature_names) != d):
            got = "a string" if isinstance(feature_names, str) else f"{len(feature_names)} names"
            raise InputError(f"TreeShap: feature_names must name the {xn.shape[1]} columns of x; got {got}. "
                             "Pass a tuple with one name per column.")
        _check_missing(kind, model, xn)
        if kind in ("xgboost", "lightgbm"):
            contrib, space = _library_contribs(kind, model, xn)
        else:
            contrib, space = _sklearn_contribs(kind, model, xn)
        n, k = contrib.shape[0], contrib.shape[1]
        binary_margin = (k == 1 and space != "probability" and hasattr(model, "classes_")) or (
            k == 1 and kind == "xgboost" and "logistic" in str(_xgb_objective(model)))
        if binary_margin:  # one log-odds column for class 1; class 0's log-odds is its negation
            contrib = np.concatenate([-contrib, contrib], axis=1)
            k = 2
        full = torch.as_tensor(contrib)  # (N, K, D + 1)
        score_all = full.sum(2)
        if target is None:
            tgt = score_all.argmax(1) if k > 1 else torch.zeros(n, dtype=torch.long)
        else:
            if not isinstance(target, Tensor) or target.shape != (n,) or target.is_floating_point():
                got = getattr(target, "shape", type(target).__name__)
                raise InputError(f"TreeShap: target must be an int tensor of shape ({n},); got {got}. "
                                 "Pass one class per row.")
            tgt = target.long().cpu()
            if bool(((tgt < 0) | (tgt >= k)).any()):
                raise InputError(f"TreeShap: target must be class indices in [0, {k - 1}]; got "
                                 f"{tgt.tolist()[:5]}. Check the labels match the model's outputs.")
        rows = full[torch.arange(n), tgt]  # (N, D + 1)
        names = None if feature_names is None else tuple(str(f) for f in feature_names)
        return Attribution(
            method="tree-shap", values=rows[:, :-1].to(x.dtype), target=tgt, baseline_score=rows[:, -1],
            score=rows.sum(1), feature_names=names,
            details={"backend": kind, "output": space, "classes": k},
            config=asdict(self), seconds=time.perf_counter() - start)


def _xgb_objective(model: Any) -> str:
    try:
        cfg = model.get_booster().save_config() if hasattr(model, "get_booster") else model.save_config()
    except Exception:  # a booster without a config: treat as regression
        return ""
    return str(cfg)
