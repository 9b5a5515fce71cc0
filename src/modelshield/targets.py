"""Targets: a model reference and a data reference resolved into one object, with provenance.

``load_target(model, data=...)`` takes a zoo name, a model file (any format
``modelshield.models.load_model_ref`` reads: modelshield-v1, a state dict with ``arch`` (a zoo
architecture or your own ``package.module:function``), TorchScript or ``torch.export`` (opt-in),
skops, XGBoost, LightGBM, ONNX) or a ``package.module:function`` callable, and a data reference
(a built-in name, ``.npz``, CSV / Parquet with ``label_col``, an image folder, a label/text TSV:
``modelshield.data.load_data``), and returns a ``Target``: the model, the evaluation points, the
modality (image / tabular / text), the access (white-box / black-box), bounds, class names and the
provenance (file digests, formats, versions). The CLI, ``assess``, and later the gateway and the
runner all start from it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._checks import exception_head
from modelshield._typing import Progress
from modelshield.errors import ConfigError, DataError, InputError, ModelCapabilityError, ModelShieldError
from modelshield.models import CallableModel, TorchModel, as_black_box, as_model, eval_mode, resolve_device

__all__ = [
    "Target",
    "TargetOptions",
    "as_query_model",
    "check_model_answers",
    "check_model_fits",
    "load_target",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetOptions:
    """How to read a user's model and data (the CLI's --label-col, --trust-pickle, ... options).

    Attributes:
        label_col: CSV / Parquet column of the labels.
        feature_cols: CSV / Parquet feature columns (default: every other column).
        text_col: CSV column of the texts (makes the data text).
        modality: ``"image"``, ``"tabular"`` or ``"text"`` to override detection.
        trust_export: load ``torch.export`` archives (may unpickle code from the file).
        trust_pickle: load pickle / joblib files (runs code from the file).
        skops_trusted: type names to trust in a skops file beyond skops' defaults.
    """

    label_col: str | None = None
    feature_cols: tuple[str, ...] | None = None
    text_col: str | None = None
    modality: Literal["image", "tabular", "text"] | None = None
    trust_export: bool = False
    trust_pickle: bool = False
    skops_trusted: tuple[str, ...] = ()


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
    access: str = "white-box"
    class_names: tuple[str, ...] | None = None
    data: Any = None

    @property
    def image(self) -> bool:
        """True for image models (``kind == "torch"``; ``access`` says whether gradients exist)."""
        return self.kind == "torch"

    @property
    def white_box(self) -> bool:
        """True when the model is an ``nn.Module`` whose input gradients attacks may use."""
        return self.access == "white-box" and isinstance(self.module, nn.Module)

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

            answer = est.predict_proba if callable(getattr(est, "predict_proba", None)) else est

            def over_rows(rows: np.ndarray) -> np.ndarray:
                picked = [texts[round(float(i))] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]]
                return np.asarray(answer(picked), dtype=np.float64)

            return CallableModel(over_rows, bounds=self.bounds, output="proba", n_classes=2)
        return as_model(self.module, bounds=self.bounds)


def as_query_model(target: Target, *, labels_only: bool = False) -> CallableModel:
    """The target seen strictly through its outputs: a black-box ``CallableModel``.

    Torch modules answer softmax probabilities (or, with ``labels_only``, the predicted labels)
    through ``modelshield.models.as_black_box``, so a query-only attack cannot reach gradients or
    logits. Estimators are wrapped through ``predict_proba`` (``predict`` with labels_only).
    """
    output: Literal["proba", "labels"] = "labels" if labels_only else "proba"
    if target.kind == "sklearn":
        est = target.module
        return as_black_box(est, bounds=target.bounds, output=output, n_classes=len(est.classes_))
    white = TorchModel(target.module, bounds=target.bounds)
    probe = target.x[:1] if white.device is None else target.x[:1].to(white.device)
    with torch.no_grad(), eval_mode(white):  # one probe row: the exact class count
        n_classes = int(white.scores(probe).shape[1])
    return as_black_box(white, output=output, n_classes=n_classes)


def load_target(
    model: str,
    *,
    data: str | None,
    data_dir: Path | None,
    arch: str | None,
    n: int | None,
    progress: Progress | None = None,
    trust_torchscript: bool = False,
    options: TargetOptions | None = None,
    device: str | torch.device = "cpu",
) -> Target:
    """Load a zoo model (training it if not cached) or a model file, and the first n test points.

    A TorchScript model file is refused unless trust_torchscript (``--trust-torchscript``): loading
    it runs code from the file. Zoo models never load TorchScript.

    A white-box torch model and its points ``x``, ``y`` are moved to ``device`` (``cpu``, ``cuda``,
    ``cuda:N``, ``mps`` or ``auto``: see ``modelshield.models.resolve_device``); the attacks then
    follow the model's device. Black-box models (callables, estimators) stay where they are and
    see numpy inputs. ``model_info["device"]`` records where the model runs.

    Raises:
        ConfigError: model is neither a zoo name nor an existing file, or a file model has no
            data set (pass ``--data``), or device is unknown or absent on this machine.
    """
    dev = resolve_device(device)  # a bad --device fails before any loading or training
    target = _load_target(model, data=data, data_dir=data_dir, arch=arch, n=n, progress=progress,
                          trust_torchscript=trust_torchscript, options=options)
    if isinstance(target.module, nn.Module) and target.kind == "torch":
        return replace(target, module=target.module.to(dev), x=target.x.to(dev), y=target.y.to(dev),
                       model_info={**target.model_info, "device": str(dev)})
    return replace(target, model_info={**target.model_info, "device": "cpu"})


def _load_target(
    model: str,
    *,
    data: str | None,
    data_dir: Path | None,
    arch: str | None,
    n: int | None,
    progress: Progress | None,
    trust_torchscript: bool,
    options: TargetOptions | None,
) -> Target:
    """``load_target`` on the CPU."""
    from modelshield import zoo
    from modelshield.data import load_dataset

    options = options or TargetOptions()
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
    return _user_target(model, data=data, data_dir=data_dir, arch=arch, n=n, options=options,
                        trust_torchscript=trust_torchscript)


def _user_target(model: str, *, data: str | None, data_dir: Path | None, arch: str | None, n: int | None,
                 options: TargetOptions, trust_torchscript: bool) -> Target:
    """A model file or callable (``load_model_ref``) on a data reference (``load_data``)."""
    from modelshield import zoo
    from modelshield.data import BUILTIN_DATA, load_data
    from modelshield.models.load import load_model, weights_sha256
    from modelshield.models.refs import IMPORT_PATH, load_model_ref

    path = Path(model).expanduser()
    if not path.exists() and not IMPORT_PATH.match(model):
        close = difflib.get_close_matches(model, zoo.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"modelshield: '--model' must be a zoo name ({', '.join(zoo.names())}), an existing "
            f"model file or a 'package.module:function' path; got {model!r}.{hint} Run "
            "'modelshield zoo list' to see the zoo."
        )
    if data is None and path.is_file():  # a modelshield-v1 file (e.g. from `defend`) names its data set
        try:
            data = load_model(path, arch=arch, trust_torchscript=trust_torchscript)[1].get("dataset")
        except ModelShieldError:  # not a modelshield-v1 file: load_model_ref below says what it is
            data = None
    if data is None:
        raise ConfigError(
            f"modelshield: '--data' must name the data of {model!r}: a built-in name "
            f"({', '.join(BUILTIN_DATA)}), an .npz file, a CSV/Parquet file with --label-col, an image "
            "folder (one sub-folder per class) or a label<TAB>text file; got nothing. Pass e.g. "
            "--data digits."
        )
    ref = load_model_ref(model, arch=arch, trust_torchscript=trust_torchscript,
                         trust_export=options.trust_export, trust_pickle=options.trust_pickle,
                         skops_trusted=options.skops_trusted, modality=options.modality)
    ud = load_data(str(data), kind=options.modality or ref.modality or "auto", label_col=options.label_col,
                   feature_cols=options.feature_cols, text_col=options.text_col, data_root=data_dir)
    if ref.modality is not None and ref.modality != ud.kind and options.modality is None:
        raise ConfigError(
            f"modelshield: '--data' must be {ref.modality} data for the {ref.modality} model {model!r}; "
            f"got {ud.kind} data {str(data)!r}. Pass the data the model was trained on."
        )
    name = path.name if ref.format != "callable" else model
    model_info: dict[str, Any] = {
        "name": name, "source": "callable" if ref.format == "callable" else "file",
        "path": ref.provenance.path, "format": ref.format, "access": ref.access, "modality": ud.kind,
        "arch": arch, "file_sha256": ref.provenance.sha256, "runtime": dict(ref.provenance.runtime),
        "notes": list(ref.notes),
        "weights_sha256": weights_sha256(ref.model) if isinstance(ref.model, nn.Module) else None,
    }
    prov = ud.provenance
    data_info: dict[str, Any] = {
        "name": ud.name, "sha256": prov.sha256, "split": "test", "classes": list(ud.class_names),
        "source": prov.ref, "format": prov.format, "path": prov.path, "split_rule": prov.split,
    }
    y = ud.y_test[:n].to(torch.long)
    if ud.kind == "text":
        texts = tuple(ud.x_test[:n])  # text data holds strings
        data_info["points"] = "row indices into the test split"
        return Target(
            module=ref.model, x=torch.arange(len(texts), dtype=torch.float32).unsqueeze(1), y=y,
            bounds=(0.0, float(max(len(texts) - 1, 1))), kind="text", texts=texts,
            model_info={**model_info, "kind": "text"}, data_info=data_info, access="black-box",
            class_names=ud.class_names, data=ud,
        )
    if ud.bounds is None:
        raise DataError(f"modelshield: the data {ud.name!r} must have bounds; got none.")
    x = ud.x_test[:n].to(torch.float32)  # type: ignore[union-attr]  # image and tabular data are tensors
    check_model_fits(ref.model, x, y, bounds=ud.bounds, model=name, data=ud.name)
    check_model_answers(ref.model, x, bounds=ud.bounds, n_classes=ud.n_classes, model=name, data=ud.name)
    if ud.kind == "tabular":
        data_info["feature_names"] = list(ud.feature_names)
        return Target(
            module=ref.model, x=x, y=y, bounds=ud.bounds, kind="sklearn", feature_names=ud.feature_names,
            model_info={**model_info, "kind": "tabular"}, data_info=data_info, access=ref.access,
            class_names=ud.class_names, data=ud,
        )
    return Target(module=ref.model, x=x, y=y, bounds=ud.bounds, model_info=model_info, data_info=data_info,
                  access=ref.access, class_names=ud.class_names, data=ud)


def check_model_answers(module: Any, x: Tensor, *, bounds: tuple[float, float], n_classes: int, model: str,
                        data: str) -> None:
    """One probe query of a black-box model on x[:2]: it must answer (N, C) scores or (N,) labels.

    Raises:
        InputError: the model fails on the data's rows, or answers in another shape.
    """
    if isinstance(module, nn.Module) or x.shape[0] == 0:
        return
    probe = as_model(module, bounds=bounds, n_classes=n_classes)
    try:
        out = probe.predict(x[:2])
    except (ModelCapabilityError, InputError):
        raise
    except Exception as exc:  # the user's model is foreign code: any failure means "wrong data"
        raise InputError(
            f"modelshield: the model {model!r} must accept rows of {data} (shape {tuple(x.shape[1:])}); "
            f"got {type(exc).__name__} on two of them ({exception_head(exc)}). Pass the data the model was "
            "trained on."
        ) from exc
    if out.shape[0] != min(2, int(x.shape[0])):
        raise InputError(
            f"modelshield: the model {model!r} must answer one label per row; got {tuple(out.shape)}."
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
        raise InputError(
            f"modelshield: the model {model!r} must accept inputs of {data} (shape {shape}); got "
            f"{type(exc).__name__} on one of them ({exception_head(exc)}). {fix}."
        ) from exc
    n_labels = int(y.max()) + 1 if y.numel() else 0
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < max(n_labels, 2):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"modelshield: the model {model!r} must output (N, C) class scores with C >= {max(n_labels, 2)} "
            f"for the {n_labels} classes of {data}; got {got} for one input of shape {shape}. {fix}."
        )
