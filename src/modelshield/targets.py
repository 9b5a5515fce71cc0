"""Resolve the CLI's ``--model`` (a zoo name or a model file) and its evaluation points."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._typing import Norm
from modelshield.assess import Progress
from modelshield.errors import ConfigError, InputError
from modelshield.models import CallableModel, TorchModel, as_model, eval_mode
from modelshield.models.zoo._train import torch_threads

__all__ = ["Target", "as_query_model", "check_model_fits", "load_target", "parse_norm", "torch_threads"]


@dataclass(frozen=True, slots=True)
class Target:
    """A model with its test points and provenance, ready for an attack or an assessment.

    ``module`` is an ``nn.Module`` (``kind == "torch"``) or a fitted scikit-learn estimator
    (``kind == "sklearn"``, tabular zoo models; ``feature_names`` then names the columns).
    Text models (``kind == "text"``, spam-*): ``module`` is a pipeline over raw strings,
    ``texts`` the test messages, and ``x`` their ``(N, 1)`` row indices into the test split
    (float32), so the tensor-based assessment runner can carry them; ``adapted()`` maps index
    rows to the pipeline's probabilities.
    """

    module: Any
    x: Tensor
    y: Tensor
    bounds: tuple[float, float]
    model_info: dict[str, Any]
    data_info: dict[str, Any]
    kind: str = "torch"
    feature_names: tuple[str, ...] | None = None
    texts: tuple[str, ...] | None = None

    @property
    def tabular(self) -> bool:
        """True for tabular (scikit-learn) models."""
        return self.kind == "sklearn"

    @property
    def text(self) -> bool:
        """True for text models (inputs are strings; ``x`` holds row indices)."""
        return self.kind == "text"

    def adapted(self) -> TorchModel | CallableModel:
        """The model adapted with its bounds (white-box for torch, black-box for estimators;
        for text models a black box over ``(N, 1)`` row indices into ``texts``)."""
        if self.text and self.texts is not None:
            texts, est = self.texts, self.module

            def over_rows(rows: np.ndarray) -> np.ndarray:
                picked = [texts[round(float(i))] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]]
                return np.asarray(est.predict_proba(picked), dtype=np.float64)

            return CallableModel(over_rows, bounds=self.bounds, output="proba", n_classes=2)
        return as_model(self.module, bounds=self.bounds)


def as_query_model(target: Target, *, labels_only: bool = False) -> CallableModel:
    """The target seen strictly through its outputs: a black-box ``CallableModel``.

    Torch modules are wrapped as a numpy callable returning softmax probabilities (or, with
    ``labels_only``, the predicted labels), so a query-only attack cannot reach gradients or
    logits. Estimators are wrapped through ``predict_proba`` (``predict`` with labels_only).
    """
    n_classes: int
    if target.kind == "sklearn":
        est = target.module
        n_classes = len(est.classes_)
        return CallableModel(est, bounds=target.bounds, output="labels" if labels_only else "proba",
                             n_classes=n_classes)
    module: nn.Module = target.module
    white = TorchModel(module, bounds=target.bounds)  # only for eval_mode's save/restore
    with torch.no_grad(), eval_mode(white):
        n_classes = int(module(target.x[:1]).shape[1])

    def answer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), eval_mode(white):
            logits = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        out = logits.argmax(1) if labels_only else torch.softmax(logits.double(), 1)
        return out.numpy()

    return CallableModel(answer, bounds=target.bounds, output="labels" if labels_only else "proba",
                         n_classes=n_classes)


def load_target(
    model: str,
    *,
    data: str | None,
    data_dir: Path | None,
    arch: str | None,
    n: int | None,
    progress: Progress | None = None,
    trust_torchscript: bool = False,
) -> Target:
    """Load a zoo model (training it if not cached) or a model file, and the first n test points.

    A TorchScript model file is refused unless trust_torchscript (``--trust-torchscript``): loading
    it runs code from the file. Zoo models never load TorchScript.

    Raises:
        ConfigError: model is neither a zoo name nor an existing file, or a file model has no
            data set (pass ``--data``).
    """
    from modelshield.data import DATASETS, load_dataset
    from modelshield.models import zoo
    from modelshield.models.load import load_model, weights_sha256

    if n is not None and n < 1:
        raise ConfigError(f"modelshield: '--n' must be an int >= 1; got {n!r}. Use e.g. --n 500.")
    if model in zoo.names() and data is not None and data != zoo.spec(model).dataset:
        raise ConfigError(
            f"modelshield: '--data' must be omitted (or {zoo.spec(model).dataset!r}) for the zoo model "
            f"{model!r}, which knows its data set; got {data!r}. Drop --data, or pick a zoo model for {data}."
        )
    if model in zoo.names() and zoo.is_text(model):
        zm = zoo.load(model, data_root=data_dir, progress=progress)
        texts, y = zoo.text_split(model, n=n, data_root=data_dir)
        meta = dict(zm.meta)
        return Target(
            module=zm.module, x=torch.arange(len(texts), dtype=torch.float32).unsqueeze(1), y=y,
            bounds=(0.0, float(max(len(texts) - 1, 1))), kind="text", texts=texts,
            model_info={"name": model, "source": "zoo", "kind": "sklearn", "modality": "text",
                        "arch": zm.spec.arch, "estimator": meta.get("estimator_class"),
                        "weights_sha256": None, "fingerprint": meta.get("spam_fingerprint"),
                        "sklearn_version": meta.get("sklearn_version"), "path": meta.get("path"),
                        "test_accuracy": meta.get("test_accuracy"),
                        "spam_precision": meta.get("spam_precision"),
                        "spam_recall": meta.get("spam_recall"), "spam_f1": meta.get("spam_f1")},
            data_info={"name": zm.spec.dataset, "sha256": meta.get("data_sha256"), "split": "test",
                       "classes": ["ham", "spam"], "points": "row indices into the test split"},
        )
    if model in zoo.names():
        zm = zoo.load(model, data_root=data_dir, progress=progress)
        x, y = zoo.test_split(model, n=n, data_root=data_dir)
        meta = dict(zm.meta)
        if zm.kind == "sklearn":
            from modelshield.data import load_tabular_dataset

            tab = load_tabular_dataset(zm.spec.dataset, data_dir, deduplicate=zm.spec.deduplicate)
            return Target(
                module=zm.module, x=x, y=y, bounds=zm.spec.bounds, kind="sklearn",
                feature_names=tab.feature_names,
                model_info={"name": model, "source": "zoo", "kind": "sklearn", "arch": zm.spec.arch,
                            "estimator": meta.get("estimator_class"), "weights_sha256": None,
                            "fingerprint": meta.get("phishing_fingerprint"),
                            "sklearn_version": meta.get("sklearn_version"), "path": meta.get("path"),
                            "test_accuracy": meta.get("test_accuracy"),
                            "malicious_recall": meta.get("malicious_recall")},
                data_info={"name": zm.spec.dataset, "sha256": meta.get("data_sha256") or tab.sha256,
                           "split": "test", "classes": list(tab.class_names),
                           "feature_names": list(tab.feature_names),
                           "deduplicated": zm.spec.deduplicate},
            )
        ds = load_dataset(zm.spec.dataset, root=data_dir)
        return Target(
            module=zm.module, x=x, y=y, bounds=zm.spec.bounds,
            model_info={"name": model, "source": "zoo", "arch": zm.spec.arch,
                        "weights_sha256": meta.get("weights_sha256"), "path": meta.get("path"),
                        "test_accuracy": meta.get("test_accuracy")},
            data_info={"name": zm.spec.dataset, "sha256": meta.get("data_sha256") or ds.sha256,
                       "split": "test", "classes": list(ds.classes)},
        )
    path = Path(model).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(model, zoo.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"modelshield: '--model' must be a zoo name ({', '.join(zoo.names())}) or an existing "
            f"model file; got {model!r}.{hint} Run 'modelshield zoo list' to see the zoo."
        )
    module, meta = load_model(path, arch=arch, trust_torchscript=trust_torchscript)
    name = data or meta.get("dataset")
    if name is None:
        raise ConfigError(
            f"modelshield: '--data' must name the data set of {str(path)!r} (one of "
            f"{', '.join(DATASETS)}); got nothing. Pass e.g. --data digits."
        )
    ds = load_dataset(str(name), root=data_dir)
    x, y = ds.x_test[:n].to(torch.float32), ds.y_test[:n].to(torch.long)
    check_model_fits(module, x, y, bounds=ds.bounds, model=path.name, data=ds.name)
    return Target(
        module=module, x=x, y=y, bounds=ds.bounds,
        model_info={"name": path.name, "source": "file", "path": str(meta.get("path", path)),
                    "arch": meta.get("arch"), "file_sha256": meta.get("sha256"),
                    "weights_sha256": weights_sha256(module)},
        data_info={"name": ds.name, "sha256": ds.sha256, "split": "test", "classes": list(ds.classes)},
    )


def check_model_fits(module: Any, x: Tensor, y: Tensor, *, bounds: tuple[float, float], model: str,
                     data: str, fix: str | None = None) -> None:
    """One probe forward on x[:1] before any work: the model must map the data's inputs to
    ``(1, C)`` scores with a score for every label in y.

    Raises:
        InputError: the model fails on the data's input shape, or its output does not fit the labels.
    """
    if not isinstance(module, nn.Module) or x.shape[0] == 0:
        return
    shape = tuple(x.shape[1:])
    fix = fix or (f"Pass the --data the model was trained on (digits: (1, 8, 8); mnist and fashion-mnist: "
                  f"(1, 28, 28)), or a model for {data}")
    white = TorchModel(module, bounds=bounds)  # only for eval_mode's save/restore
    # The user's model is foreign code: whatever its forward raises on these inputs means "this model
    # does not take this data" (typically a RuntimeError from a shape mismatch).
    try:
        with torch.no_grad(), eval_mode(white):
            out = module(x[:1])
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise InputError(
            f"modelshield: the model {model!r} must accept inputs of {data} (shape {shape}); got "
            f"{type(exc).__name__} on one of them ({first}). {fix}."
        ) from exc
    n_labels = int(y.max()) + 1 if y.numel() else 0
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < max(n_labels, 2):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"modelshield: the model {model!r} must output (N, C) class scores with C >= {max(n_labels, 2)} "
            f"for the {n_labels} classes of {data}; got {got} for one input of shape {shape}. {fix}."
        )


def parse_norm(text: str) -> Norm:
    """The CLI's norm spellings ('inf', 'linf', '2', 'l2') as a Norm; others go on to be rejected."""
    key = text.strip().lower().removeprefix("l")
    return key if key in ("inf", "2") else text  # type: ignore[return-value]  # the attack/plan rejects it
