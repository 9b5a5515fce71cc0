"""``modelshield explain``: attributions of a model's decisions, as PNGs and a summary JSON."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelshield._checks import check_range
from modelshield.cli import _render as render
from modelshield.cli._target import Target, load_target
from modelshield.cli.attack import (
    MODEL_HELP,
    ArchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
)
from modelshield.errors import ConfigError

__all__ = ["GRADIENT_METHODS", "METHODS", "explain", "usable_methods"]

OWNER = "modelshield explain"
GRADIENT_METHODS = ("ig", "saliency", "smoothgrad", "gradxinput", "occlusion")
"""Methods for white-box PyTorch models (occlusion needs forward passes only, through the module)."""
METHODS = (*GRADIENT_METHODS, "kernel-shap", "tree-shap", "permutation")
"""Every ``--method`` name."""
STEP_METHODS = ("ig", "smoothgrad")
"""Methods that take ``--steps`` (IG's integration points, SmoothGrad's noisy samples)."""
BACKGROUND = 100
"""Default rows after the explained ones used as Kernel SHAP's background (and by permutation)."""


def usable_methods(target: Target) -> tuple[str, ...]:
    """The ``--method`` names that apply to the target's kind, the default first."""
    if target.text:
        return ("occlusion", "kernel-shap")
    if target.tabular or not target.white_box:
        from modelshield.explain.trees import is_tree_model

        if is_tree_model(target.module):
            return ("tree-shap", "kernel-shap", "permutation")
        return ("kernel-shap", "permutation")
    return GRADIENT_METHODS


def _check_zoo_method(model: str, key: str | None) -> None:
    """Refuse, before loading, a method that cannot apply to a zoo model's kind (torch, tabular, text)."""
    from modelshield import zoo

    if key is None or model not in zoo.names():
        return
    if zoo.is_text(model):
        usable: tuple[str, ...] = ("occlusion", "kernel-shap")
    elif zoo.spec(model).kind == "torch":
        usable = GRADIENT_METHODS
    else:
        usable = ("tree-shap", "kernel-shap", "permutation")
    if key not in usable:
        raise ConfigError(f"{OWNER}: '--method' must be one of {', '.join(usable)} for {model!r}; got "
                          f"{key!r}. Use --method {usable[0]}.")


def _check_method(method: str | None) -> str | None:
    if method is None:
        return None
    key = method.strip().lower()
    if key in METHODS:
        return key
    close = difflib.get_close_matches(key, METHODS, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{OWNER}: '--method' must be one of {', '.join(METHODS)}; got {method!r}.{hint}")


def _explainer(method: str, steps: int | None, seed: int, shape: tuple[int, ...]) -> Any:
    """The explainer behind a gradient --method name (occlusion: a square patch about 1/7 of the side)."""
    from modelshield import explain as ex

    if method == "ig":
        return ex.IntegratedGradients(steps=50 if steps is None else steps, seed=seed)
    if method == "saliency":
        return ex.Saliency(absolute=False)  # signed: the pictures show direction
    if method == "smoothgrad":
        return ex.SmoothGrad(samples=50 if steps is None else steps, base=ex.Saliency(absolute=False),
                             seed=seed)
    if method == "gradxinput":
        return ex.GradientTimesInput()
    side = min(shape[-2:]) if len(shape) >= 2 else shape[-1]
    return ex.Occlusion(window=max(1, min(side, max(2, side // 7))))


def _target_tensor(target_class: int | None, n: int, n_classes: int | None) -> Any:
    import torch

    if target_class is None:
        return None
    if n_classes is not None:
        check_range("--target", target_class, owner=OWNER, low=0, high=n_classes - 1, integer=True,
                    fix=f"Pick a class in 0..{n_classes - 1}, or omit --target for the predicted class.")
    return torch.full((n,), target_class, dtype=torch.long)


def _run(target: Target, method: str, *, n: int, steps: int | None, seed: int, target_class: int | None,
         ) -> tuple[Any, dict[str, Any]]:
    """(Attribution or PermutationResult, extra JSON) of the first n points."""
    from modelshield import explain as ex

    x = target.x
    n_classes = target.n_classes
    if target.text:
        texts = list((target.texts or ())[:n])
        tgt = _target_tensor(target_class, len(texts), n_classes or 2)
        explainer: Any = ex.TextOcclusion() if method == "occlusion" else ex.TextKernelShap(seed=seed)
        return explainer(target.module, texts, tgt), {"config": _config(explainer)}
    if method in GRADIENT_METHODS:
        explainer = _explainer(method, steps, seed, tuple(x.shape[1:]))  # it checks --target itself
        tgt = _target_tensor(target_class, min(n, x.shape[0]), None)
        if tgt is not None:
            tgt = tgt.to(x.device)
        return explainer(target.module, x[:n], tgt), {"config": _config(explainer)}
    model = target.module if method == "tree-shap" else target.adapted()
    if method == "permutation":
        explainer = ex.PermutationImportance(seed=seed)
        res = explainer(model, x.cpu(), target.y.cpu(), feature_names=target.feature_names)
        return res, {"config": _config(explainer), "rows": int(x.shape[0])}
    tgt = _target_tensor(target_class, min(n, x.shape[0]), n_classes)
    if method == "tree-shap":
        explainer = ex.TreeShap()
        att = explainer(model, x[:n].cpu(), tgt, feature_names=target.feature_names)
        return att, {"config": _config(explainer)}
    background = x[n:] if x.shape[0] > n else x
    explainer = ex.KernelShap(seed=seed)
    att = explainer(model, x[:n].cpu(), tgt, background=background.cpu(), feature_names=target.feature_names)
    return att, {"config": _config(explainer), "background": ("test rows after the explained ones"
                                                                if x.shape[0] > n else "the explained rows")}


def _config(explainer: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(explainer), default=str))  # type: ignore[no-any-return]


def _class_name(target: Target, k: int) -> str:
    names = target.class_names or target.data_info.get("classes")
    return str(names[k]) if names and 0 <= k < len(names) else str(k)


def _pictures(target: Target, result: Any, method: str, out: Path, force: bool) -> list[dict[str, Any]]:
    """Write one PNG per explained input (permutation: one chart); rows for the table and the JSON."""
    from modelshield.explain import PermutationResult, plots

    if isinstance(result, PermutationResult):
        path = plots.bars_png(result.importances_mean, result.feature_names, out / "permutation.png",
                              title=f"permutation importance ({result.metric} drop)",
                              xlabel=f"{result.metric} drop when shuffled", overwrite=force)
        top = _top(result.importances_mean, result.feature_names)
        return [{"index": "all", "file": path.name, "top": top}]
    rows = []
    gap = result.completeness_gap
    for i in range(int(result.values.shape[0])):
        k = int(result.target[i])
        cls = _class_name(target, k)
        label = _class_name(target, int(target.y[i]))
        title = f"{method} on {target.model_info.get('name')}: input {i}, label {label}, explaining {cls}"
        name = f"input-{i:03d}.png"
        values = result.values[i].detach().cpu()
        if target.text:
            toks = result.tokens[i]
            path = plots.tokens_png(toks, values, out / name, title=title, target=cls, overwrite=force)
            top = _top(values[: len(toks)], toks)
        elif target.tabular or values.dim() == 1:
            path = plots.bars_png(values.flatten(), target.feature_names, out / name, title=title, target=cls,
                                  overwrite=force)
            top = _top(values.flatten(), target.feature_names)
        else:
            path = plots.heatmap_png(target.x[i].detach().cpu(), values, out / name, title=title, target=cls,
                                     bounds=target.bounds, overwrite=force)
            top = f"max |a| {float(values.abs().max()):.3g}"
        rows.append({"index": i, "label": label, "target": cls,
                     "score": None if result.score is None else float(result.score[i]),
                     "completeness_gap": None if gap is None else float(gap[i]), "top": top,
                     "file": path.name})
    if target.text:
        body = "\n".join(plots.tokens_html(t, result.values[i]) for i, t in enumerate(result.tokens))
        from modelshield._io import write_atomic

        write_atomic(out / "tokens.html", f"<!doctype html><meta charset=utf-8>\n{body}\n", force=force)
    return rows


def _top(values: Any, names: Any) -> str:
    flat = values.flatten()
    if flat.numel() == 0:
        return "n/a"
    j = int(flat.abs().argmax())
    name = str(names[j]) if names is not None and j < len(names) else f"feature {j}"
    return f"{name} {float(flat[j]):+.3g}"


def _table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title, header_style="bold")
    for col in ("input", "label", "target", "score", "gap", "strongest", "file"):
        table.add_column(col)

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    for r in rows:
        table.add_row(str(r["index"]), str(r.get("label", "")), str(r.get("target", "")),
                      num(r.get("score")), num(r.get("completeness_gap")), escape(str(r["top"])), r["file"])
    render.out().print(table)


def explain(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", help="New or empty folder for the PNGs and summary.json.")],
    method: Annotated[str | None, typer.Option(
        help=f"One of: {', '.join(METHODS)}. Default by model: ig (PyTorch), tree-shap (tree models), "
             "kernel-shap (other tabular), occlusion of tokens (text).")] = None,
    n: Annotated[int, typer.Option(help="Explain the first n test points (one PNG each).")] = 8,
    target_class: Annotated[int | None, typer.Option(
        "--target", help="Class index to explain (default: each input's predicted class).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="ig: integration points (default 50); smoothgrad: noisy samples (default 50).")] = None,
    seed: Annotated[int, typer.Option(help="Seed (SmoothGrad noise, Kernel SHAP coalitions, shuffles).")] = 0,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that holds files.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Explain the model's decisions on the first n test points: one PNG each, plus summary.json."""
    from modelshield.assess import write_json
    from modelshield.models import resolve_device

    resolve_device(device, owner=OWNER)
    key = _check_method(method)
    check_range("--n", n, owner=OWNER, low=1, integer=True, fix="Use e.g. --n 8.")
    if steps is not None:
        check_range("--steps", steps, owner=OWNER, low=1, integer=True, fix="Use e.g. --steps 50.")
        if key not in (*STEP_METHODS, None):
            raise ConfigError(f"{OWNER}: '--steps' is used by {', '.join(STEP_METHODS)}; got --method {key}. "
                              "Drop --steps.")
    render.check_out_folder(out, force, owner=OWNER)
    _check_zoo_method(model, key)
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = load_target(model, data=data, data_dir=data_dir, arch=arch, n=n + BACKGROUND,
                             progress=progress, device=device)
        usable = usable_methods(target)
        key = key or usable[0]
        if key not in usable:
            raise ConfigError(f"{OWNER}: '--method' must be one of {', '.join(usable)} for "
                              f"{target.model_info.get('name')!r}; got {key!r}. Use --method {usable[0]}.")
        if steps is not None and key not in STEP_METHODS:
            raise ConfigError(f"{OWNER}: '--steps' is used by {', '.join(STEP_METHODS)}; got --method {key} "
                              "(the default here). Drop --steps or pick ig.")
        progress(0, 1, f"{key} on {n} inputs")
        result, extra = _run(target, key, n=n, steps=steps, seed=seed, target_class=target_class)
        progress(1, 1, f"{key} on {n} inputs")
        out.mkdir(parents=True, exist_ok=True)
        rows = _pictures(target, result, key, out, force)
    gap = getattr(result, "completeness_gap", None)
    summary = {
        "method": key, "model": target.model_info,
        "data": {**target.data_info, "n": extra.get("rows", len(rows))},
        "result": result.to_dict(), **extra,
        "completeness_gap": None if gap is None else [float(g) for g in gap],
        "inputs": rows,
    }
    write_json(out / "summary.json", summary, overwrite=force)
    _table(rows, f"{key} on {target.model_info.get('name')}")
    render.say(f"{len(rows)} picture(s) and summary.json written to {escape(str(out))}")
