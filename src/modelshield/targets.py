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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelshield._checks import exception_head
from modelshield._typing import Progress
from modelshield.errors import ConfigError, DataError, InputError, ModelCapabilityError, ModelShieldError
from modelshield.models import (
    CallableModel,
    TextAnswers,
    TorchModel,
    as_black_box,
    as_model,
    eval_mode,
    resolve_device,
)

if TYPE_CHECKING:
    from modelshield.data import DataProvenance, UserData

__all__ = [
    "Target",
    "TargetOptions",
    "TargetRef",
    "as_query_model",
    "check_digests",
    "check_model_answers",
    "check_model_fits",
    "check_text_model_answers",
    "load_target",
    "model_class_names",
    "target_digests",
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

    ``n_outputs`` is the width of a black-box model's probability answer, seen by the probe at
    load time (None for torch modules and label-only models); with ``class_names`` it gives the
    class count a black box is adapted with (``n_classes``).
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
    n_outputs: int | None = None

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

    @property
    def n_classes(self) -> int | None:
        """The class count a black box is adapted with: the largest of the data's class count, the
        model's declared classes (``classes_``) and its probe answer's width; None if none is known."""
        counts = [len(self.class_names)] if self.class_names else []
        if self.n_outputs is not None:
            counts.append(self.n_outputs)
        declared = getattr(self.module, "classes_", None)
        if declared is not None:
            counts.append(len(declared))
        return max(counts) if counts else None

    def adapted(self) -> TorchModel | CallableModel:
        """The model adapted with its bounds (white-box for torch, black-box for estimators and
        callables, with the class count ``n_classes``; for text models a black box over ``(N, 1)``
        row indices into ``texts``, label answers read as one-hot over ``class_names``)."""
        if self.text and self.texts is not None:
            texts, n_classes = self.texts, self.n_classes or 2
            answer = TextAnswers(self.module, class_names=self.class_names, n_classes=n_classes)

            def over_rows(rows: np.ndarray) -> np.ndarray:
                picked = [texts[round(float(i))] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]]
                return answer(picked)

            return CallableModel(over_rows, bounds=self.bounds, output="proba", n_classes=n_classes)
        if isinstance(self.module, nn.Module):
            return as_model(self.module, bounds=self.bounds)
        return as_model(self.module, bounds=self.bounds, n_classes=self.n_classes,
                        class_names=self.class_names)


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetRef:
    """A target by reference: names, paths and flags only (JSON-safe), resolved with ``load()``.

    What a job sends to a worker instead of a model: the worker loads the target itself, through
    ``load_target`` (zoo digests checked on load), and compares its digests with those the driver
    recorded (``digests`` / ``check_digests``), so a model or data file changed between the two
    loads is refused instead of silently assessed.

    Attributes:
        model, data, data_dir, arch, n, trust_torchscript, device: as ``load_target`` takes them.
        options: the ``TargetOptions`` (label column, trust flags, ...).
    """

    model: str
    data: str | None = None
    data_dir: str | None = None
    arch: str | None = None
    n: int | None = None
    trust_torchscript: bool = False
    device: str = "cpu"
    options: TargetOptions = TargetOptions()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict`` reads it back)."""
        o = self.options
        return {"model": self.model, "data": self.data, "data_dir": self.data_dir, "arch": self.arch,
                "n": self.n, "trust_torchscript": self.trust_torchscript, "device": self.device,
                "options": {"label_col": o.label_col,
                            "feature_cols": None if o.feature_cols is None else list(o.feature_cols),
                            "text_col": o.text_col, "modality": o.modality, "trust_export": o.trust_export,
                            "trust_pickle": o.trust_pickle, "skops_trusted": list(o.skops_trusted)}}

    @classmethod
    def from_dict(cls, d: Any) -> TargetRef:
        """The reference ``to_dict`` wrote.

        Raises:
            ConfigError: d is not such a mapping (a missing ``model``, an unknown key).
        """
        keys = {"model", "data", "data_dir", "arch", "n", "trust_torchscript", "device", "options"}
        if not isinstance(d, dict) or not isinstance(d.get("model"), str) or set(d) - keys:
            raise ConfigError(f"TargetRef: the reference must be a mapping with 'model' and only the keys "
                              f"{sorted(keys)}; got {d!r}. Build it with TargetRef(...).to_dict().")
        o = dict(d.get("options") or {})
        for k in ("feature_cols", "skops_trusted"):
            if o.get(k) is not None:
                o[k] = tuple(o[k])
        o["skops_trusted"] = o.get("skops_trusted") or ()
        try:
            options = TargetOptions(**o)
        except TypeError as exc:
            raise ConfigError(f"TargetRef: 'options' must hold TargetOptions fields; got {sorted(o)} "
                              f"({exc}). Build it with TargetRef(...).to_dict().") from None
        return cls(model=d["model"], data=d.get("data"), data_dir=d.get("data_dir"), arch=d.get("arch"),
                   n=d.get("n"), trust_torchscript=bool(d.get("trust_torchscript", False)),
                   device=str(d.get("device", "cpu")), options=options)

    def load(self, progress: Progress | None = None) -> Target:
        """``load_target`` with this reference's settings."""
        return load_target(self.model, data=self.data,
                           data_dir=None if self.data_dir is None else Path(self.data_dir), arch=self.arch,
                           n=self.n, progress=progress, trust_torchscript=self.trust_torchscript,
                           options=self.options, device=self.device)


def target_digests(target: Target) -> dict[str, Any]:
    """What identifies a loaded target: model weights or fingerprint, data digest, points digest."""
    import hashlib

    h = hashlib.sha256()
    for t in (target.x, target.y):
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes())
    if target.texts is not None:
        for text in target.texts:
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return {"weights_sha256": target.model_info.get("weights_sha256"),
            "fingerprint": target.model_info.get("fingerprint"),
            "file_sha256": target.model_info.get("file_sha256"),
            "data_sha256": target.data_info.get("sha256"), "points_sha256": h.hexdigest()}


def check_digests(target: Target, expected: Any, *, owner: str) -> None:
    """Refuse a target whose digests differ from those the driver recorded (``target_digests``).

    Raises:
        IntegrityError: a digest differs (the model or data changed after the run started).
    """
    from modelshield.errors import IntegrityError

    got = target_digests(target)
    for key, want in dict(expected or {}).items():
        if got.get(key) != want:
            raise IntegrityError(
                f"{owner}: the worker's {key} must equal the driver's; got {str(got.get(key))[:16]}... where "
                f"{str(want)[:16]}... was recorded. The model or data changed during the run (or differs "
                "on this machine): restore it, or start the run again.")


def as_query_model(target: Target, *, labels_only: bool = False) -> CallableModel:
    """The target seen strictly through its outputs: a black-box ``CallableModel``.

    Torch modules answer softmax probabilities (or, with ``labels_only``, the predicted labels)
    through ``modelshield.models.as_black_box``, so a query-only attack cannot reach gradients or
    logits. Estimators are wrapped through ``predict_proba`` (``predict`` with labels_only).
    """
    output: Literal["proba", "labels"] = "labels" if labels_only else "proba"
    if not isinstance(target.module, nn.Module):  # estimators and callables (label answers read by name)
        return as_black_box(target.adapted(), bounds=target.bounds, output=output, n_classes=target.n_classes)
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
    ud, reordered = _unsort_test_split(_align_classes(ud, model_class_names(ref.model), model=name))
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
        "labels": prov.labels, "test_order": _test_order(prov, reordered),
    }
    y = ud.y_test[:n].to(torch.long)
    if ud.kind == "text":
        texts = tuple(ud.x_test[:n])  # text data holds strings
        data_info["points"] = "row indices into the test split"
        module, width, output = check_text_model_answers(ref.model, texts, class_names=ud.class_names,
                                                         model=name, data=ud.name)
        return Target(
            module=module, x=torch.arange(len(texts), dtype=torch.float32).unsqueeze(1), y=y,
            bounds=(0.0, float(max(len(texts) - 1, 1))), kind="text", texts=texts,
            model_info={**model_info, "kind": "text", "output": output}, data_info=data_info,
            access="black-box", class_names=ud.class_names, data=ud, n_outputs=width,
        )
    if ud.bounds is None:
        raise DataError(f"modelshield: the data {ud.name!r} must have bounds; got none.")
    x = ud.x_test[:n].to(torch.float32)  # type: ignore[union-attr]  # image and tabular data are tensors
    fix = (f"The model declares inputs of shape {ref.input_shape}: pass the --data the model was trained "
           "on" if ref.input_shape else None)  # None: the default hint, with the built-in data's shapes
    check_model_fits(ref.model, x, y, bounds=ud.bounds, model=name, data=ud.name, fix=fix)
    width = check_model_answers(ref.model, x, bounds=ud.bounds, n_classes=ud.n_classes, model=name,
                                data=ud.name, class_names=ud.class_names)
    if not isinstance(ref.model, nn.Module):
        model_info["output"] = "proba" if width is not None else "labels"
    if ud.kind == "tabular":
        data_info["feature_names"] = list(ud.feature_names)
        return Target(
            module=ref.model, x=x, y=y, bounds=ud.bounds, kind="sklearn", feature_names=ud.feature_names,
            model_info={**model_info, "kind": "tabular"}, data_info=data_info, access=ref.access,
            class_names=ud.class_names, data=ud, n_outputs=width,
        )
    return Target(module=ref.model, x=x, y=y, bounds=ud.bounds, model_info=model_info, data_info=data_info,
                  access=ref.access, class_names=ud.class_names, data=ud, n_outputs=width)


def model_class_names(module: Any) -> tuple[str, ...] | None:
    """The class names a model declares (a scikit-learn ``classes_``, as strings), or None.

    None for models without ``classes_`` (torch modules, callables, ONNX) and for ``classes_``
    that are just the indices ``0..C-1`` or ``False, True`` (XGBoost / LightGBM boosters, or an
    estimator fitted on class indices): those say nothing about which name each index stands for.
    """
    if isinstance(module, nn.Module):
        return None
    classes = getattr(module, "classes_", None)
    if classes is None:
        return None
    values = np.asarray(classes)
    if values.ndim != 1 or len(values) == 0:
        return None
    if values.dtype == np.bool_ or (np.issubdtype(values.dtype, np.integer)
                                    and np.array_equal(values, np.arange(len(values)))):
        return None  # False/True or 0..C-1: indices, not names
    return tuple(str(v) for v in values.tolist())


def _align_classes(ud: UserData, model_names: tuple[str, ...] | None, *, model: str) -> UserData:
    """The data with their labels encoded in the model's class order (``classes_``).

    A model fitted on names answers column i for ``classes_[i]``; the data's own encoding (sorted
    names) agrees only when both orders happen to be the same. Every label the data use must be
    one of the model's classes (the data may lack some of them).

    Raises:
        InputError: the data use a label the model does not know.
    """
    data_names = tuple(ud.class_names)
    if model_names is None or data_names == model_names:
        return ud
    used = sorted({int(v) for part in (ud.y_train, ud.y_test) for v in torch.unique(part).tolist()})
    unknown = [data_names[i] for i in used if data_names[i] not in model_names]
    if unknown:
        raise InputError(
            f"modelshield: the data's labels must be among the classes of the model {model!r} "
            f"{list(model_names)!r}; got {[data_names[i] for i in used]!r} ({_few(unknown)} unknown to the "
            "model). Pass the data the model was trained on, or relabel it with the model's class names."
        )
    lookup = torch.tensor([model_names.index(c) if c in model_names else -1 for c in data_names],
                          dtype=torch.long)
    prov = replace(ud.provenance, labels=f"{ud.provenance.labels}, mapped to the model's classes_ order")
    return replace(ud, y_train=lookup[ud.y_train], y_test=lookup[ud.y_test], class_names=model_names,
                   provenance=prov)


def _few(values: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (", ..." if len(values) > n else "")


def _unsort_test_split(ud: UserData) -> tuple[UserData, bool]:
    """The data with a test split given by the file in class order (``test/`` image folders are
    read class by class) put in a seeded class-interleaved order, so that the first n points hold
    every class; (data, whether reordered). A split in any other order is the user's and is kept;
    a split made by ``load_data`` is interleaved already, and built-in data sets keep their own."""
    from modelshield.data.refs import interleaved_order

    y = ud.y_test
    if (ud.provenance.split != "from the file" or len(y) < 2 or len(torch.unique(y)) < 2
            or not bool((y[1:] >= y[:-1]).all())):
        return ud, False
    order = torch.from_numpy(interleaved_order(y, 0))
    x_test = tuple(ud.x_test[i] for i in order.tolist()) if isinstance(ud.x_test, tuple) else ud.x_test[order]
    return replace(ud, x_test=x_test, y_test=y[order]), True


def _test_order(prov: DataProvenance, reordered: bool) -> str:
    if prov.split == "from the file":
        return ("the file's test split, sorted by class, in a seeded class-interleaved order (seed 0)"
                if reordered else "the file's own test split, in file order")
    if prov.format == "builtin":
        return "the built-in data set's own"
    return f"seeded class-interleaved (seed {prov.seed})"


def check_text_model_answers(module: Any, texts: tuple[str, ...], *, class_names: tuple[str, ...], model: str,
                             data: str) -> tuple[Any, int | None, str]:
    """One probe query of a text model on two texts, before any section runs.

    The model may answer probabilities or labels (names or indices, read one-hot over the
    class names through ``TextAnswers``).

    Returns:
        (the model to assess: itself, or its ``TextAnswers`` when it answers labels or has no
        ``predict_proba``; the width of its probability answer, None for labels;
        ``"proba"`` or ``"labels"``).

    Raises:
        ModelCapabilityError: the model answers something that is neither probabilities nor labels.
        InputError: the model fails on the texts, or answers fewer columns than the data's classes.
    """
    answers = TextAnswers(module, class_names=class_names)
    probe = list(texts[:2])
    if not probe:
        return module, None, "proba"
    try:
        out = answers(probe)
    except (ModelCapabilityError, InputError):
        raise
    except Exception as exc:  # foreign code: any failure on the data's texts means "wrong data"
        raise InputError(
            f"modelshield: the text model {model!r} must accept a list of texts of {data}; got "
            f"{type(exc).__name__} on two of them ({exception_head(exc)}). Pass a model over raw strings "
            "(list[str] -> probabilities or labels) and the data it was trained on."
        ) from exc
    if answers.output == "labels":
        return answers, None, "labels"
    width = int(out.shape[1])
    if width < len(class_names):
        raise InputError(
            f"modelshield: the text model {model!r} must answer a score for each of the {len(class_names)} "
            f"classes of {data} {list(class_names)!r}; got {width} columns. Pass the data the model was "
            "trained on."
        )
    plain = callable(getattr(module, "predict_proba", None)) or callable(module)
    return (module if plain else answers), width, "proba"


def check_model_answers(module: Any, x: Tensor, *, bounds: tuple[float, float], n_classes: int, model: str,
                        data: str, class_names: tuple[str, ...] | None = None) -> int | None:
    """One probe query of a black-box model on x[:2]: it must answer (N, C) scores with C >=
    n_classes, or (N,) labels (indices, or names looked up in the model's ``classes_`` or in
    ``class_names``).

    Returns:
        The width C of a probability answer; None for labels (and for torch modules, which
        ``check_model_fits`` probes).

    Raises:
        InputError: the model fails on the data's rows, or answers in another shape.
    """
    if isinstance(module, nn.Module) or x.shape[0] == 0:
        return None
    probe = as_model(module, bounds=bounds, class_names=class_names)
    try:
        out = probe.outputs(x[:2])
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
    if out.dim() == 1:
        if bool((out >= n_classes).any()) or bool((out < 0).any()):
            raise InputError(
                f"modelshield: the model {model!r} must answer labels of the {n_classes} classes of {data} "
                f"(indices 0..{n_classes - 1} or class names); got {out.tolist()!r} on two rows. Pass the "
                "data the model was trained on."
            )
        return None
    if out.shape[1] < n_classes:
        raise InputError(
            f"modelshield: the model {model!r} must answer a score for each of the {n_classes} classes of "
            f"{data}; got {int(out.shape[1])} columns. Pass the data the model was trained on."
        )
    return int(out.shape[1])


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
