"""Model references: a model file or ``package.module:function``, loaded without running the file's code.

``load_model_ref`` recognises the format from the file's content (not its name) and returns a
``ModelRef``: the loaded model, white-box or black-box access, its format, modality and class
count when known, and provenance (path, SHA-256, runtime library versions). Zoo names are
resolved elsewhere (``modelshield.zoo``).

What each format may run while loading, and what modelshield does about it:

* ``modelshield-v1`` / bare state dict: tensors only (``torch.load(weights_only=True)``); the
  architecture is a zoo name or the user's own ``package.module:function`` (their code, their
  choice).
* TorchScript: runs code from the file; only with ``trust_torchscript=True``.
* ``torch.export`` (``.pt2``): ``torch.export.load`` unpickles parts of the archive with
  ``weights_only=False`` (pickled weights and constants, ``pickle.loads`` of custom objects; see
  ``torch/export/pt2_archive/_package.py``), so it can run code too; only with
  ``trust_export=True``.
* skops: loads only the types skops trusts by default plus those listed in ``skops_trusted``.
* XGBoost JSON/UBJSON, LightGBM text, ONNX (protobuf): data, read by the library's own loader.
  ONNX models using custom-operator domains, or external data outside the model's folder,
  are refused.
* pickle / joblib (and pickled ``nn.Module`` files): only with ``trust_pickle=True``.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from modelshield._checks import check_bounds, exception_head
from modelshield.errors import ConfigError, DataError, MissingDataError, ModelCapabilityError
from modelshield.models._callable import has_margins
from modelshield.models.load import (
    UnsafeModelFileError,
    check_before_load,
    confirm_unchanged,
    file_sha256,
    is_torchscript,
    load_model,
)
from modelshield.models.safetensors import is_safetensors

if TYPE_CHECKING:
    from modelshield.models._callable import CallableModel
    from modelshield.models._torch import TorchModel

__all__ = ["IMPORT_PATH", "ModelFormat", "ModelProvenance", "ModelRef", "load_model_ref"]

ModelFormat: TypeAlias = Literal[
    "modelshield-v1", "state_dict", "torch.export", "torchscript", "skops", "xgboost", "lightgbm",
    "onnx", "callable", "pickle", "safetensors",
]
Access: TypeAlias = Literal["white-box", "black-box"]
Modality: TypeAlias = Literal["image", "tabular", "text"]

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""A ``package.module:attribute`` import path (a user's callable or architecture builder)."""
_OWNER = "load_model_ref"
_EXTRA = "pip install 'modelshield[formats]'"
_FORMATS_HELP = (
    "modelshield reads modelshield-v1 / state-dict .pt files, safetensors, TorchScript and torch.export "
    "archives (opt-in), skops, XGBoost JSON/UBJSON, LightGBM text and ONNX files, or a "
    "package.module:function"
)
# First bytes of the compressed files joblib writes (zlib, gzip, bz2, xz, lzma, lz4).
_COMPRESSED = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b", b"BZh", b"\xfd7zXZ",
               b"\x5d\x00\x00", b"\x04\x22\x4d\x18")
# Legacy (non-zip) torch.save files open with a protocol-2 pickle of torch's magic number.
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# ONNX white-box access is offered only if the PyTorch interpreter matches onnxruntime this well.
ONNX_TOLERANCE = 1e-4
_TEXT_VECTORISERS = ("CountVectorizer", "TfidfVectorizer", "HashingVectorizer")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelProvenance:
    """Where a model came from.

    Attributes:
        ref: the reference as given (a path or ``package.module:function``).
        path: the resolved file, or None for a callable.
        sha256: the file's SHA-256, or None for a callable.
        format: the detected format.
        runtime: versions of the libraries that load and run the model, e.g. ``{"torch": "2.13.0"}``.
        scan: the static scan's summary (``blocked``, ``findings``, ``formats``, ``seconds``), or
            None for a callable.
    """

    ref: str
    path: str | None
    sha256: str | None
    format: ModelFormat
    runtime: Mapping[str, str]
    scan: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {"ref": self.ref, "path": self.path, "sha256": self.sha256, "format": self.format,
                "runtime": dict(self.runtime), "scan": None if self.scan is None else dict(self.scan)}


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ModelRef:
    """A loaded model reference.

    Attributes:
        model: an ``nn.Module`` returning logits (white-box) or an object with ``predict_proba``
            / a callable ``x -> probabilities or labels`` (black-box); for text models it takes a
            list of strings.
        access: ``"white-box"`` (gradients available) or ``"black-box"`` (queries only).
        format: the file format (see ``ModelFormat``).
        modality: ``"text"`` for text pipelines, ``"tabular"`` for tree models, or None if unknown.
        n_classes: number of classes when the file says, else None.
        input_shape: one input's shape (no batch dimension) when the file declares it.
        bounds: the natural input range, when given; None leaves it to the data.
        provenance: path, digest, format and runtime versions.
        oracle: for a converted model (ONNX run as PyTorch), the original runtime as a
            black-box callable ``x -> probabilities``; re-verify findings on it. Else None.
        notes: facts worth reporting, e.g. why an ONNX model stayed black-box.
    """

    model: Any
    access: Access
    format: ModelFormat
    modality: Modality | None
    n_classes: int | None
    input_shape: tuple[int, ...] | None
    bounds: tuple[float, float] | None
    provenance: ModelProvenance
    oracle: Any | None = None
    notes: tuple[str, ...] = field(default=())

    def as_model(
        self, *, bounds: tuple[float, float] | None = None, budget: int | None = None
    ) -> TorchModel | CallableModel:
        """The model behind the protocol attacks use (``modelshield.models.as_model``).

        Args:
            bounds: input range; defaults to the reference's bounds, else (0.0, 1.0).
            budget: maximum number of forward queries, or None for no limit.

        Raises:
            ModelCapabilityError: the model is a text model (it reads strings, not tensors).
        """
        from modelshield.models import as_model

        if self.modality == "text":
            raise ModelCapabilityError(
                f"ModelRef: the model must read tensors to be wrapped by as_model; got a text model "
                f"({self.provenance.ref!r}) that reads lists of strings. Pass ref.model to "
                "modelshield.models.as_text_model instead."
            )
        lo_hi = bounds if bounds is not None else (self.bounds or (0.0, 1.0))
        return as_model(self.model, bounds=lo_hi, n_classes=self.n_classes, budget=budget)


def _versions(*names: str) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones left out)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _require(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise ModelCapabilityError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelCapabilityError(
            f"{_OWNER}: reading {what} needs the optional package {module!r}; got an environment "
            f"without it. Install it with {_EXTRA}."
        ) from exc


def import_object(path: str, *, param: str) -> Any:
    """The object named by ``package.module:attr`` (attr may be dotted), imported with importlib.

    Raises:
        ConfigError: the path is malformed, the module cannot be imported, or the attribute is missing.
    """
    if not isinstance(path, str) or not IMPORT_PATH.match(path):
        raise ConfigError(
            f"{_OWNER}: {param!r} must be an import path 'package.module:function'; got {path!r}. "
            "Name a module importable from the current Python path and an attribute in it."
        )
    mod_name, attr_path = path.split(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{_OWNER}: {param!r} must name an importable module; got {path!r}, and module "
            f"{exc.name!r} was not found. Install the package, or put the folder that holds it on "
            "PYTHONPATH (the modelshield command does not search the working folder), e.g. "
            "PYTHONPATH=. modelshield ..."
        ) from exc
    except ImportError as exc:
        raise ConfigError(
            f"{_OWNER}: {param!r} must name a module that imports cleanly; got {path!r}, which "
            f"failed ({exc}). Fix the import error in that module."
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"{_OWNER}: {param!r} must name an attribute of module {mod_name!r}; got {path!r}, "
                f"and {type(obj).__name__} {getattr(obj, '__name__', '?')!r} has no {part!r}. Check "
                "the spelling after the ':'."
            )
        obj = getattr(obj, part)
    return obj


def _build_arch(arch: str) -> nn.Module:
    """Call the user's ``package.module:function`` with no arguments; it must return an nn.Module."""
    builder = import_object(arch, param="arch")
    if not callable(builder):
        raise ConfigError(
            f"{_OWNER}: 'arch' must name a callable that builds the model; got {arch!r}, a "
            f"{type(builder).__name__}. Point it at a function taking no arguments that returns an "
            "nn.Module."
        )
    module = builder()
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"{_OWNER}: 'arch' must return a torch.nn.Module when called with no arguments; got "
            f"{type(module).__name__} from {arch!r}. Return the (untrained) network from that function."
        )
    return module


def _head(path: Path, n: int = 512) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _detect(path: Path) -> str:
    """The format family of a file from its first bytes or its zip table of contents."""
    head = _head(path)
    if zipfile.is_zipfile(path):
        names = _zip_names(path)
        if "schema.json" in names:
            return "skops"
        if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names) or (
            "archive_format" in names
        ):
            return "torch.export"
        if is_torchscript(path):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "unknown"
    if head.startswith(_LEGACY_TORCH) or is_safetensors(path):
        return "torch"
    if head.startswith(b"\x80"):
        return "pickle"
    if head.startswith(_COMPRESSED):
        return "compressed"
    if head.lstrip().startswith(b"{"):
        return "json"
    if head.startswith(b"tree\n") or (b"version=v" in head[:64] and b"num_class=" in head):
        return "lightgbm"
    if head[:1] == b"\x08":  # protobuf tag of ModelProto.ir_version
        return "onnx"
    return "unknown"


def _refuse_pickle(path: Path, what: str) -> UnsafeModelFileError:
    return UnsafeModelFileError(
        f"{_OWNER}: {str(path)!r} must be a format that loads without running code; it is {what}, "
        "and unpickling can call any Python function the file names. Save scikit-learn models with "
        "skops (skops.io.dump(model, 'model.skops')), XGBoost/LightGBM models with their own "
        "save_model, PyTorch models as a state dict; or, only if you trust where the file came "
        "from, pass trust_pickle=True (CLI: --trust-pickle)."
    )


def load_model_ref(
    ref: str | Path,
    *,
    arch: str | None = None,
    trust_torchscript: bool = False,
    trust_export: bool = False,
    trust_pickle: bool = False,
    skops_trusted: Sequence[str] = (),
    n_classes: int | None = None,
    bounds: tuple[float, float] | None = None,
    modality: Modality | None = None,
    onnx_white_box: bool = True,
) -> ModelRef:
    """Load a model file or a ``package.module:function`` reference without running the file's code.

    The format is read from the file's content. Loaders never run code brought by the file
    unless you opt in (``trust_torchscript``, ``trust_export``, ``trust_pickle``).

    Args:
        ref: a model file (see the module docstring for the formats) or an import path
            ``package.module:function`` / ``package.module:object`` naming a callable
            ``x -> probabilities (N, C) or labels (N,)`` or an object with ``predict_proba``.
        arch: for a bare state dict, a zoo architecture name or ``package.module:function``,
            your own function that builds the untrained ``nn.Module`` (called with no arguments).
        trust_torchscript: load TorchScript (runs code from the file).
        trust_export: load a ``torch.export`` archive (may unpickle code from the file).
        trust_pickle: load pickle / joblib files and pickled modules (runs code from the file);
            a warning is issued.
        skops_trusted: type names to trust in a skops file beyond skops' defaults, e.g.
            ``["mypkg.features.Scaler"]``.
        n_classes: the class count, when the file does not say.
        bounds: the natural input range, stored on the reference (and used to probe ONNX graphs).
        modality: ``"image"``, ``"tabular"`` or ``"text"``, overriding the detected hint.
        onnx_white_box: try to run an ONNX classifier as PyTorch for gradients (checked
            against onnxruntime; on any mismatch the model stays black-box).

    Returns:
        A ``ModelRef``; ``ref.as_model()`` gives the ``Model`` attacks use.

    Raises:
        MissingDataError: the file does not exist (and ref is not an import path).
        UnsafeModelFileError: the file would run code while loading and was not trusted.
        ConfigError: a bad ``arch`` or import path, untrusted skops types, an ONNX custom
            operator or external data outside the model's folder, bad options.
        DataError: the file is corrupt or in no supported format.
        ModelCapabilityError: the format's optional package is missing.

    Example:
        ref = load_model_ref("fraud.json")                       # XGBoost, black-box
        ref = load_model_ref("net.pt", arch="mypkg.nets:make_model")  # white-box
        model = ref.as_model(bounds=(0.0, 1.0))
    """
    for name, flag in (("trust_torchscript", trust_torchscript), ("trust_export", trust_export),
                       ("trust_pickle", trust_pickle), ("onnx_white_box", onnx_white_box)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{_OWNER}: {name!r} must be a bool; got {flag!r}. Pass True or False.")
    if isinstance(skops_trusted, str) or not all(isinstance(t, str) for t in skops_trusted):
        raise ConfigError(
            f"{_OWNER}: 'skops_trusted' must be a list of type names; got {skops_trusted!r}. "
            "Pass e.g. ['mypkg.features.Scaler']."
        )
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)
                                  or n_classes < 2):
        raise ConfigError(f"{_OWNER}: 'n_classes' must be an int >= 2 or None; got {n_classes!r}. "
                          "Give the number of classes the model predicts.")
    lo_hi = None if bounds is None else check_bounds(bounds, owner=_OWNER)
    if modality is not None and modality not in ("image", "tabular", "text"):
        raise ConfigError(f"{_OWNER}: 'modality' must be 'image', 'tabular', 'text' or None; got "
                          f"{modality!r}. Omit it to use the detected kind.")
    text = str(ref)
    path = Path(text).expanduser()
    if not path.exists() and IMPORT_PATH.match(text):
        made = _load_callable(text)
    else:
        if not path.is_file():
            raise MissingDataError(
                f"{_OWNER}: the model must be an existing file or a 'package.module:function' path; "
                f"got {text!r}, which is {'a folder' if path.is_dir() else 'missing'}. Check the "
                "path, or use a zoo name (`modelshield zoo list`)."
            )
        made = _load_file(path, arch=arch, trust_torchscript=trust_torchscript,
                          trust_export=trust_export, trust_pickle=trust_pickle,
                          skops_trusted=tuple(skops_trusted), bounds=lo_hi,
                          onnx_white_box=onnx_white_box)
    # the digest taken before the checks, confirmed unchanged after the load (no third read)
    digest = None if made.fmt == "callable" else (made.scan or {}).get("sha256") or file_sha256(path)
    provenance = ModelProvenance(
        ref=text, path=None if made.fmt == "callable" else str(path.resolve()), sha256=digest,
        format=made.fmt, runtime=_versions("modelshield", "numpy", *made.libraries), scan=made.scan,
    )
    return ModelRef(
        model=made.model, access=made.access, format=made.fmt,
        modality=modality if modality is not None else made.modality,
        n_classes=n_classes if n_classes is not None else made.n_classes,
        input_shape=made.input_shape, bounds=lo_hi, provenance=provenance, oracle=made.oracle,
        notes=tuple(made.notes),
    )


@dataclass(kw_only=True)
class _Loaded:
    """What a format loader found (internal)."""

    model: Any
    access: Access
    fmt: ModelFormat
    libraries: tuple[str, ...]
    modality: Modality | None = None
    n_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    oracle: Any | None = None
    notes: list[str] = field(default_factory=list)
    scan: dict[str, Any] | None = None


def _load_file(
    path: Path, *, arch: str | None, trust_torchscript: bool, trust_export: bool, trust_pickle: bool,
    skops_trusted: tuple[str, ...], bounds: tuple[float, float] | None, onnx_white_box: bool,
) -> _Loaded:
    kind = _detect(path)
    # The format's own refusal first (it names the opt-in), then the static scan of everything else.
    if kind == "torchscript" and not trust_torchscript:
        load_model(path, scan=False)  # raises load_model's refusal of untrusted TorchScript
    if kind == "torch.export" and not trust_export:
        raise _refuse_export(path)
    if kind in ("pickle", "compressed") and not trust_pickle:
        raise _refuse_pickle(path, "a pickle (pickle.dump / joblib.dump)" if kind == "pickle"
                             else "a compressed (joblib) pickle")
    scanned = check_before_load(path, owner=_OWNER, trusted=trust_pickle or trust_torchscript or trust_export,
                               allow=skops_trusted)
    loaded = _load_format(path, arch=arch, trust_torchscript=trust_torchscript, trust_export=trust_export,
                          trust_pickle=trust_pickle, skops_trusted=skops_trusted, bounds=bounds,
                          onnx_white_box=onnx_white_box)
    confirm_unchanged(path, scanned, owner=_OWNER)
    loaded.scan = scanned
    return loaded


def _load_format(
    path: Path, *, arch: str | None, trust_torchscript: bool, trust_export: bool, trust_pickle: bool,
    skops_trusted: tuple[str, ...], bounds: tuple[float, float] | None, onnx_white_box: bool,
) -> _Loaded:
    kind = _detect(path)
    if kind in ("torch", "torchscript"):
        return _load_torch(path, arch=arch, trust_torchscript=trust_torchscript, trust_pickle=trust_pickle)
    if kind == "pickle":
        if not trust_pickle:
            raise _refuse_pickle(path, "a pickle (pickle.dump / joblib.dump)")
        return _load_pickle(path)
    if kind == "torch.export":
        return _load_export(path, trust_export=trust_export)
    if kind == "skops":
        return _load_skops(path, skops_trusted)
    if kind == "compressed":
        if not trust_pickle:
            raise _refuse_pickle(path, "a compressed (joblib) pickle")
        return _load_pickle(path)
    if kind == "json":
        return _load_xgboost(path)
    if kind == "lightgbm":
        return _load_lightgbm(path)
    if kind == "onnx":
        return _load_onnx(path, bounds=bounds, white_box=onnx_white_box)
    raise DataError(
        f"{_OWNER}: {str(path)!r} must be a supported model file; its content matches none. "
        f"{_FORMATS_HELP}."
    )


def _module_n_classes(module: nn.Module) -> int | None:
    last = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            last = sub.out_features
    return last


def _load_torch(path: Path, *, arch: str | None, trust_torchscript: bool, trust_pickle: bool) -> _Loaded:
    into = _build_arch(arch) if arch is not None and ":" in arch else None
    try:
        module, meta = load_model(path, arch=arch, trust_torchscript=trust_torchscript, into=into,
                                  scan=False)  # _load_file has just scanned it
    except UnsafeModelFileError as exc:
        if is_torchscript(path):
            raise
        if not trust_pickle:
            raise _refuse_pickle(path, "a torch.save file holding pickled Python objects") from exc
        return _load_pickle(path)
    fmt: ModelFormat = meta["format"]
    return _Loaded(model=module, access="white-box", fmt=fmt, libraries=("torch",),
                   n_classes=None if into is None else _module_n_classes(module))


def _refuse_export(path: Path) -> UnsafeModelFileError:
    return UnsafeModelFileError(
        f"{_OWNER}: {str(path)!r} must be a weights file unless torch.export archives are "
        "trusted; it is a torch.export archive, and torch.export.load unpickles parts of it with "
        "weights_only=False (pickled weights, constants and custom objects), which can run code "
        "from the file. Save a state dict instead (torch.save(model.state_dict(), path)) and "
        "pass arch='package.module:function', or, only if you trust where the file came from, "
        "pass trust_export=True (CLI: --trust-export)."
    )


def _load_export(path: Path, *, trust_export: bool) -> _Loaded:
    if not trust_export:
        raise _refuse_export(path)
    try:
        program = torch.export.load(str(path))
    except (RuntimeError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        head = exception_head(exc)
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a torch.export archive this torch can read; it cannot "
            f"be loaded ({head}). Re-export it with torch.export.save under torch {torch.__version__}."
        ) from exc
    module = program.module()
    # ep.module() forbids train()/eval() on the instance; the graph's behaviour (dropout, batch
    # norm) was fixed at export, so flags are harmless and the house eval_mode needs them.
    for name in ("train", "eval"):
        vars(module).pop(name, None)
    return _Loaded(model=module, access="white-box", fmt="torch.export", libraries=("torch",))


def _load_pickle(path: Path) -> _Loaded:
    warnings.warn(
        f"{_OWNER}: loading {str(path)!r} with pickle because trust_pickle=True; this runs any code "
        "the file contains. Do this only for files from a source you trust, and prefer skops.",
        UserWarning, stacklevel=4,
    )
    if zipfile.is_zipfile(path):  # torch.save of a whole object (e.g. a pickled nn.Module)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        joblib = _require("joblib", "pickle / joblib files")
        obj = joblib.load(path)
    if isinstance(obj, nn.Module):
        return _Loaded(model=obj.eval(), access="white-box", fmt="pickle", libraries=("torch",))
    return _estimator(obj, fmt="pickle", libraries=("scikit-learn", "joblib"), path=path)


def _estimator(obj: Any, *, fmt: ModelFormat, libraries: tuple[str, ...], path: Path) -> _Loaded:
    """A loaded scikit-learn-style object as a black-box model."""
    if not (callable(getattr(obj, "predict_proba", None)) or callable(getattr(obj, "predict", None))):
        raise DataError(
            f"{_OWNER}: {str(path)!r} must hold a fitted estimator with predict_proba or predict; "
            f"got {type(obj).__name__}. Save the fitted classifier or pipeline itself."
        )
    classes = getattr(obj, "classes_", None)
    n_features = getattr(obj, "n_features_in_", None)
    notes: list[str] = []
    if has_margins(obj):  # LinearSVC, SVC(probability=False), RidgeClassifier, ...: margins as scores
        notes.append(
            f"{type(obj).__name__} has no predict_proba: its decision_function margins are used as the "
            "model's scores (not probabilities; their argmax is checked against predict on every query, "
            "and the model is read as label-only if they ever disagree)."
        )
    elif not callable(getattr(obj, "predict_proba", None)):
        notes.append(
            f"{type(obj).__name__} has neither predict_proba nor decision_function: it is assessed as a "
            "label-only black box (predict), so score-based attacks (Square) are skipped."
        )
    return _Loaded(
        model=obj, access="black-box", fmt=fmt, libraries=libraries,
        modality="text" if _is_text_pipeline(obj) else None,
        n_classes=len(classes) if classes is not None else None,
        input_shape=(int(n_features),) if isinstance(n_features, int | np.integer) else None,
        notes=notes,
    )


def _is_text_pipeline(obj: Any) -> bool:
    """True for a scikit-learn Pipeline whose first step is a text vectoriser."""
    steps = getattr(obj, "steps", None)
    if not isinstance(steps, list) or not steps:
        return type(obj).__name__ in _TEXT_VECTORISERS
    first = steps[0][1] if isinstance(steps[0], tuple) and len(steps[0]) == 2 else None
    return type(first).__name__ in _TEXT_VECTORISERS


def _load_skops(path: Path, trusted: tuple[str, ...]) -> _Loaded:
    sio = _require("skops.io", "skops files")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a skops file; it cannot be read ({exc}). Re-save it "
            "with skops.io.dump(model, path)."
        ) from exc
    refused = [t for t in untrusted if t not in trusted]
    if refused:
        raise ConfigError(
            f"{_OWNER}: every type in skops file {str(path)!r} must be trusted; got untrusted types "
            f"{refused}. Inspect them (skops.io.get_untrusted_types(file=...)) and, if you trust "
            "them, pass skops_trusted=[...] naming each (CLI: --skops-trust TYPE)."
        )
    try:
        obj = sio.load(path, trusted=[t for t in untrusted if t in trusted])
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a skops file this environment can load; it failed "
            f"({type(exc).__name__}: {exc}). Re-save it with the installed scikit-learn "
            f"{_versions('scikit-learn').get('scikit-learn', '?')}."
        ) from exc
    return _estimator(obj, fmt="skops", libraries=("skops", "scikit-learn"), path=path)


class XGBoostClassifier:
    """An XGBoost ``Booster`` as ``predict_proba(x) -> (N, C)`` (read-only, data-only model file)."""

    def __init__(self, booster: Any, *, objective: str, n_classes: int) -> None:
        self.booster = booster
        self.objective = objective
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = int(booster.num_features())

    def __repr__(self) -> str:
        return f"XGBoostClassifier(objective={self.objective!r}, n_classes={len(self.classes_)})"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import xgboost

        arr = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        margin = np.asarray(self.booster.predict(xgboost.DMatrix(arr), output_margin=True), dtype=np.float64)
        if len(self.classes_) == 2:
            p = 1.0 / (1.0 + np.exp(-margin.reshape(-1)))
            return np.stack([1.0 - p, p], axis=1)
        z = margin.reshape(len(arr), -1)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(1, keepdims=True))


def _load_xgboost(path: Path) -> _Loaded:
    xgboost = _require("xgboost", "XGBoost model files")
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be an XGBoost JSON/UBJSON model (or another supported "
            f"format); XGBoost cannot read it ({str(exc).splitlines()[0]}). {_FORMATS_HELP}."
        ) from exc
    config = json.loads(booster.save_config())
    objective = str(config["learner"]["objective"]["name"])
    n_cls = int(config["learner"]["learner_model_param"].get("num_class", "0") or 0)
    if objective in ("binary:logistic", "binary:logitraw"):
        n_cls = 2
    elif objective not in ("multi:softprob", "multi:softmax") or n_cls < 2:
        raise ConfigError(
            f"{_OWNER}: the XGBoost model in {str(path)!r} must be a classifier (objective "
            f"binary:logistic, binary:logitraw, multi:softprob or multi:softmax); got {objective!r}. "
            "modelshield assesses classifiers; retrain with a classification objective."
        )
    wrapped = XGBoostClassifier(booster, objective=objective, n_classes=n_cls)
    return _Loaded(model=wrapped, access="black-box", fmt="xgboost", libraries=("xgboost", "xgboost-cpu"),
                   modality="tabular", n_classes=n_cls, input_shape=(wrapped.n_features_in_,))


class LightGBMClassifier:
    """A LightGBM ``Booster`` as ``predict_proba(x) -> (N, C)`` (read-only, text model file)."""

    def __init__(self, booster: Any, *, objective: str, n_classes: int) -> None:
        self.booster = booster
        self.objective = objective
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = int(booster.num_feature())

    def __repr__(self) -> str:
        return f"LightGBMClassifier(objective={self.objective!r}, n_classes={len(self.classes_)})"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        out = np.asarray(self.booster.predict(arr))
        if out.ndim == 1:
            return np.stack([1.0 - out, out], axis=1)
        return out


def _load_lightgbm(path: Path) -> _Loaded:
    lightgbm = _require("lightgbm", "LightGBM model files")
    try:
        booster = lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as exc:
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a LightGBM text model; LightGBM cannot read it "
            f"({str(exc).splitlines()[0]}). Save it with booster.save_model(path)."
        ) from exc
    objective = ""
    for line in path.read_text(errors="replace").splitlines()[:64]:
        if line.startswith("objective="):
            objective = line.split("=", 1)[1].split()[0]
            break
    if objective in ("binary", "cross_entropy", "xentropy"):
        n_cls = 2
    elif objective in ("multiclass", "softmax", "multiclassova", "ova", "ovr"):
        n_cls = int(booster.num_model_per_iteration())
    else:
        raise ConfigError(
            f"{_OWNER}: the LightGBM model in {str(path)!r} must be a classifier (objective binary, "
            f"multiclass or multiclassova); got {objective or 'none'!r}. modelshield assesses "
            "classifiers; retrain with a classification objective."
        )
    wrapped = LightGBMClassifier(booster, objective=objective, n_classes=n_cls)
    return _Loaded(model=wrapped, access="black-box", fmt="lightgbm", libraries=("lightgbm",),
                   modality="tabular", n_classes=n_cls, input_shape=(wrapped.n_features_in_,))


_ONNX_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _load_onnx(path: Path, *, bounds: tuple[float, float] | None, white_box: bool) -> _Loaded:
    onnx = _require("onnx", "ONNX files")
    ort = _require("onnxruntime", "ONNX files")
    from modelshield.models import _onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError; nothing from the file runs
        raise DataError(
            f"{_OWNER}: {str(path)!r} must be a supported model file; it is not readable ONNX "
            f"({type(exc).__name__}). {_FORMATS_HELP}."
        ) from exc
    custom = _onnx.custom_ops(proto)
    if custom:
        raise ConfigError(
            f"{_OWNER}: the ONNX model {str(path)!r} must use only standard operator domains "
            f"({', '.join(repr(d) for d in sorted(_onnx.STANDARD_DOMAINS))}); got custom operators "
            f"{custom}. Custom operators need a native library modelshield will not load; export "
            "the model with standard operators."
        )
    for location in _onnx.external_data_paths(proto):
        if not location or not _onnx.model_dir_contains(path.parent, location):
            raise ConfigError(
                f"{_OWNER}: external data of the ONNX model {str(path)!r} must lie in the model's "
                f"folder; got location {location!r}. Keep the weights file beside the model "
                "(onnx.save_model(..., save_as_external_data=True, location='weights.bin'))."
            )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise DataError(
            f"{_OWNER}: the ONNX model {str(path)!r} must load in onnxruntime; it failed "
            f"({exception_head(exc)}). Check the export."
        ) from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ConfigError(
            f"{_OWNER}: the ONNX model {str(path)!r} must take exactly one input; got "
            f"{[i.name for i in inputs]}. Export a model with a single input batch."
        )
    inp = inputs[0]
    dtype = _ONNX_FLOATS.get(inp.type)
    if dtype is None:
        raise ConfigError(
            f"{_OWNER}: the ONNX model's input must be a float tensor; got {inp.name!r} of type "
            f"{inp.type}. Export the model with a float input (text models: wrap them as a callable)."
        )
    dims = list(inp.shape)[1:]
    shape = tuple(int(d) for d in dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
    out_name, kind = _pick_output(session, proto, path)
    predictor = _onnx.OnnxPredictor(session, input_name=inp.name, input_dtype=np.dtype(dtype),
                                    input_shape=shape, output_name=out_name, kind=kind)
    loaded = _Loaded(model=predictor, access="black-box", fmt="onnx", libraries=("onnx", "onnxruntime"),
                     input_shape=shape)
    if shape is None:
        loaded.notes.append("ONNX white-box access not tried: the input shape is not static.")
        return loaded
    probe = _probe(shape, bounds or (0.0, 1.0))
    try:
        proba = predictor(probe.numpy())
    except Exception as exc:  # onnxruntime's own error types
        raise DataError(
            f"{_OWNER}: the ONNX model {str(path)!r} must run on a batch of shape {tuple(probe.shape)}; "
            f"it failed ({exception_head(exc)}). Check the export."
        ) from exc
    if proba.ndim == 2:
        loaded.n_classes = int(proba.shape[1])
    if not white_box:
        loaded.notes.append("ONNX white-box access not tried (onnx_white_box=False).")
        return loaded
    module, reason = _convert_onnx(proto, inp.name, out_name, predictor, probe, proba)
    if module is None:
        loaded.notes.append(f"ONNX model kept black-box: {reason}.")
        return loaded
    loaded.model, loaded.access, loaded.oracle = module, "white-box", predictor
    loaded.libraries = (*loaded.libraries, "torch")
    loaded.notes.append(reason)
    return loaded


def _pick_output(session: Any, proto: Any, path: Path) -> tuple[str, Any]:
    """The output holding class scores and how to read it."""
    from modelshield.models._onnx import score_output_kind

    outputs = session.get_outputs()
    for out in outputs:
        if str(out.type).startswith("seq(map("):
            return out.name, "zipmap"
    floats = [o for o in outputs if o.type in _ONNX_FLOATS]
    if floats:
        named = [o for o in floats if "prob" in o.name.lower()]
        chosen = (named or floats)[-1]
        return chosen.name, score_output_kind(proto.graph, chosen.name)
    ints = [o for o in outputs if str(o.type).startswith("tensor(int")]
    if ints:
        return ints[0].name, "labels"
    raise ConfigError(
        f"{_OWNER}: the ONNX model {str(path)!r} must output class scores or labels; got outputs "
        f"{[(o.name, o.type) for o in outputs]}. Export a classifier."
    )


def _probe(shape: tuple[int, ...], bounds: tuple[float, float]) -> torch.Tensor:
    """A seeded batch of 16 points uniform in bounds."""
    gen = torch.Generator().manual_seed(0)
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand((16, *shape), generator=gen)


def _convert_onnx(
    proto: Any, input_name: str, output_name: str, predictor: Any, probe: torch.Tensor, proba: np.ndarray
) -> tuple[nn.Module | None, str]:
    """(module, note) when the PyTorch graph matches onnxruntime on the probe, else (None, reason)."""
    from modelshield.models._onnx import OnnxTorchModule, UnsupportedGraph

    if predictor.kind in ("zipmap", "labels", "auto"):
        return None, f"its scores ({predictor.kind}) cannot be expressed as logits"
    try:
        module = OnnxTorchModule(proto, input_name=input_name, output_name=output_name, kind=predictor.kind)
        module.eval()
        x = probe.to(next(iter(module.buffers())).dtype) if any(True for _ in module.buffers()) else probe
        with torch.no_grad():
            logits = module(x.reshape(len(x), *predictor.input_shape))
    except UnsupportedGraph as exc:
        return None, f"no PyTorch conversion ({exc})"
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        return None, f"the PyTorch conversion failed to run ({type(exc).__name__}: {exc})"
    if logits.dim() != 2 or logits.shape[0] != len(probe):
        return None, f"the PyTorch conversion returned shape {tuple(logits.shape)}"
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0].double())
        mine = torch.stack([1 - p1, p1], dim=1)
    else:
        mine = torch.softmax(logits.double(), dim=1)
    if mine.shape != proba.shape:
        return None, f"the PyTorch conversion gives {tuple(mine.shape)} scores, onnxruntime {proba.shape}"
    diff = float((mine - torch.as_tensor(proba, dtype=torch.float64)).abs().max())
    if not diff <= ONNX_TOLERANCE:
        return None, f"the PyTorch conversion differs from onnxruntime by {diff:.2e} (> {ONNX_TOLERANCE:g})"
    return module, (
        f"ONNX model run as PyTorch for gradients; matches onnxruntime on a 16-point probe "
        f"(max probability difference {diff:.1e}); re-verify findings on ref.oracle."
    )


def _load_callable(path: str) -> _Loaded:
    obj = import_object(path, param="ref")
    if isinstance(obj, type | ModuleType):
        raise ConfigError(
            f"{_OWNER}: 'ref' must name a function or a fitted model object; got {path!r}, the "
            f"{'class' if isinstance(obj, type) else 'module'} {obj.__name__}. Point it at an "
            "instance or a function x -> probabilities (N, C)."
        )
    if not (callable(getattr(obj, "predict_proba", None)) or callable(obj)):
        raise ConfigError(
            f"{_OWNER}: 'ref' must name a callable returning probabilities or labels, or an object "
            f"with predict_proba; got {path!r}, a {type(obj).__name__}. Point it at a function "
            "x -> probabilities (N, C)."
        )
    if isinstance(obj, nn.Module):
        return _Loaded(model=obj.eval(), access="white-box", fmt="callable", libraries=("torch",))
    classes = getattr(obj, "classes_", None)
    modality: Modality | None = "text" if _is_text_pipeline(obj) else getattr(obj, "modality", None)
    if modality not in ("image", "tabular", "text"):
        modality = None
    return _Loaded(model=obj, access="black-box", fmt="callable", libraries=(),
                   modality=modality, n_classes=len(classes) if classes is not None else None)

