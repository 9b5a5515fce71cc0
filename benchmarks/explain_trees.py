"""TreeSHAP speed and exactness: modelshield's ``TreeShap`` against shap's C++ ``TreeExplainer``.

One function, :func:`treeshap`, used as a part of ``benchmarks/explain.py`` (which saves and resumes
parts); run alone, ``python benchmarks/explain_trees.py [--quick] [--seed S]`` prints its JSON.

Cases (full settings; ``quick`` shrinks every size so the whole run takes well under 30 s):

- ``random_forest``: ``RandomForestClassifier(n_estimators=500, max_depth=12)`` on 20,000 synthetic
  rows x 50 features (an interaction-heavy label), explaining 1,000 rows, class 1 probability.
  modelshield runs :func:`modelshield.explain.trees.forest_shap` (Owen-formula / Linear-TreeSHAP
  style, O(nodes x ceil(depth / 2)) per row, torch); shap runs Lundberg et al. 2020 Algorithm 2 in C++.
- ``hist_gradient_boosting``: ``HistGradientBoostingClassifier(max_iter=200)`` on the same table with
  10% of the values missing (NaN), explaining 1,000 rows (log-odds).
- ``xgboost`` / ``lightgbm`` (when installed): 300 trees of depth 6 / 31 leaves; modelshield hands
  these to the libraries' own ``pred_contribs`` / ``pred_contrib``, so the figures compare shap's
  C++ against the library's C++ through modelshield's wrapper.

For each case: ``ours_seconds`` (the first call on the model: compiling the tree structure, which is
then cached per model, plus explaining), ``compile_seconds``, ``explain_seconds`` (the call once
compiled), ``shap_seconds`` (``TreeExplainer(model)`` construction plus ``shap_values``), ``ratio``
(ours_seconds / shap_seconds: below 1 is faster), ``max_abs_diff`` between the two attributions,
``local_accuracy_max`` (|sum of attributions + expected value - the model's own output|) and the
settings. Timings use one thread everywhere (torch.set_num_threads(1), the boosters' n_jobs=1;
shap's TreeExplainer is single-threaded): on a shared machine they carry the other load too.
Fitting the models is not timed. Full run: about 3-4 minutes, mostly fitting the forest and shap.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from typing import Any

import numpy as np
import torch


def _table(n: int, d: int, seed: int, missing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    logit = x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + np.sin(2 * x[:, 4]) + 0.5 * rng.normal(size=n)
    y = (logit > 0).astype(np.int64)
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
    return x, y


def _time_ours(model: Any, rows: np.ndarray, target: int) -> tuple[Any, dict[str, float]]:
    from modelshield.explain import TreeShap, trees

    kind = trees._kind(model)
    start = time.perf_counter()
    if kind.startswith("sklearn"):
        trees._compiled(kind, model)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    att = TreeShap()(model, torch.as_tensor(rows), target=torch.full((rows.shape[0],), target))
    explain_s = time.perf_counter() - start
    return att, {"ours_seconds": round(compile_s + explain_s, 3), "compile_seconds": round(compile_s, 3),
                 "explain_seconds": round(explain_s, 3)}


def _time_shap(model: Any, rows: np.ndarray, column: int | None) -> tuple[np.ndarray, float]:
    import shap  # type: ignore[import-untyped]

    start = time.perf_counter()
    with warnings.catch_warnings():  # shap's notice that LightGBM binary output changed shape
        warnings.simplefilter("ignore", UserWarning)
        values = np.asarray(shap.TreeExplainer(model).shap_values(rows))
    seconds = time.perf_counter() - start
    if values.ndim == 3:
        values = values[:, :, column if column is not None else 0]
    return values, seconds


def _case(model: Any, rows: np.ndarray, *, target: int, shap_column: int | None, output: np.ndarray,
          settings: dict[str, Any]) -> dict[str, Any]:
    att, ours = _time_ours(model, rows, target)
    out: dict[str, Any] = {"settings": settings, **ours}
    out["local_accuracy_max"] = float(np.abs(att.values.double().sum(1).numpy()
                                             + att.baseline_score.numpy() - output).max())
    if importlib.util.find_spec("shap") is None:
        out["shap"] = "not installed"
        return out
    ref, shap_s = _time_shap(model, rows, shap_column)
    out["shap_seconds"] = round(shap_s, 3)
    out["ratio"] = round(ours["ours_seconds"] / shap_s, 3)
    out["explain_ratio"] = round(ours["explain_seconds"] / shap_s, 3)
    out["max_abs_diff"] = float(np.abs(att.values.double().numpy() - ref).max())
    return out


def treeshap(quick: bool, seed: int) -> dict[str, Any]:
    """TreeSHAP timings and exactness, JSON-able (see the module docstring)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n_train, d, n_explain = (4000, 20, 200) if quick else (20000, 50, 1000)
        result: dict[str, Any] = {"quick": quick, "seed": seed, "threads": 1, "train_rows": n_train,
                                  "features": d, "explained_rows": n_explain}
        x, y = _table(n_train, d, seed)
        trees_, depth = (100, 10) if quick else (500, 12)
        rf = RandomForestClassifier(n_estimators=trees_, max_depth=depth, random_state=seed, n_jobs=2)
        rf.fit(x, y)
        rows = x[:n_explain]
        result["random_forest"] = _case(
            rf, rows, target=1, shap_column=1, output=rf.predict_proba(rows)[:, 1],
            settings={"model": f"RandomForestClassifier(n_estimators={trees_}, max_depth={depth})",
                      "nodes": int(sum(e.tree_.node_count for e in rf.estimators_)), "output": "P(class 1)"})

        xm, ym = _table(n_train, d, seed + 1, missing=0.1)
        iters = 50 if quick else 200
        hgb = HistGradientBoostingClassifier(max_iter=iters, early_stopping=False, random_state=seed)
        hgb.fit(xm, ym)
        rows = xm[:n_explain]
        result["hist_gradient_boosting"] = _case(
            hgb, rows, target=1, shap_column=None, output=hgb.decision_function(rows),
            settings={"model": f"HistGradientBoostingClassifier(max_iter={iters})", "missing_share": 0.1,
                      "output": "log-odds of class 1"})

        n_boost = 60 if quick else 300
        if importlib.util.find_spec("xgboost") is not None:
            import xgboost

            xgb = xgboost.XGBClassifier(n_estimators=n_boost, max_depth=6, n_jobs=1, random_state=seed)
            xgb.fit(xm, ym)
            rows = xm[:n_explain]
            result["xgboost"] = _case(
                xgb, rows, target=1, shap_column=None, output=xgb.predict(rows, output_margin=True),
                settings={"model": f"XGBClassifier(n_estimators={n_boost}, max_depth=6)",
                          "ours": "xgboost pred_contribs", "output": "log-odds of class 1"})
        else:
            result["xgboost"] = "not installed"
        if importlib.util.find_spec("lightgbm") is not None:
            import lightgbm

            lgb = lightgbm.LGBMClassifier(n_estimators=n_boost, num_leaves=31, n_jobs=1, verbose=-1,
                                          random_state=seed).fit(xm, ym)
            rows = xm[:n_explain]
            result["lightgbm"] = _case(
                lgb, rows, target=1, shap_column=None, output=np.asarray(lgb.predict(rows, raw_score=True)),
                settings={"model": f"LGBMClassifier(n_estimators={n_boost}, num_leaves=31)",
                          "ours": "lightgbm pred_contrib", "output": "log-odds of class 1"})
        else:
            result["lightgbm"] = "not installed"
        return result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(treeshap(args.quick, args.seed), indent=2))
