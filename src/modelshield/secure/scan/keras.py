"""Static checks of Keras model configs: ``.keras`` zips (Keras 3) and legacy HDF5 ``.h5`` files.

A Keras model file holds no pickle, but its JSON config names what to build, and building runs
code:

- ``Lambda`` layers carry marshalled Python bytecode (base64) that Keras runs on load or on the
  first call: CVE-2024-3660 (Keras < 2.13, and any version with ``safe_mode=False``).
- Any ``module`` / ``class_name`` / ``registered_name`` triple is imported by name. Before Keras 3.9
  any module was allowed, so ``{"module": "builtins", "class_name": "function", "config": "exec"}``
  ran code even with ``safe_mode=True`` (CVE-2025-1550, GHSA-48g7-3x6r-xfhp). After the fix the
  module must start with ``keras``, and gadgets inside Keras did the rest:
  ``keras.config.enable_unsafe_deserialization`` switched safe mode off from the config itself
  (CVE-2025-9906) and ``keras.utils.get_file`` downloaded and wrote files (CVE-2025-8747).
  ``TFSMLayer`` loads a TensorFlow SavedModel from a path the config names (CVE-2026-1462) and
  ``TorchModuleWrapper`` restores a ``torch.save`` pickle.
- Custom objects (classes outside Keras) only load when the user supplies their code, but they are
  exactly what a planted model asks for.

So the rule here is an allow-list: Keras' own layer, initializer, optimizer, loss, metric and
dtype-policy classes from Keras modules, functions only from ``keras.activations``, ``keras.losses``
and ``keras.metrics``; everything else is a finding. Nothing is unmarshalled or imported; Lambda
bytecode is decoded from base64 only to list the names it mentions.

HDF5 files are read without h5py (see :func:`scan_hdf5` for the approach and its limits).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import io
import json
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Iterable
from typing import Any, BinaryIO

from modelshield.secure.scan._collect import Collector
from modelshield.secure.scan.findings import Finding, Location, ScanLimits, Severity

__all__ = ["scan_hdf5", "scan_keras", "scan_keras_config", "sniff_hdf5", "sniff_keras_zip"]

MAX_CONFIG_BYTES = 64 << 20   # a config.json / model_config larger than this is not read
MAX_CONFIG_DEPTH = 256        # nested objects and lists in one config
MAX_CONFIG_NODES = 2_000_000  # objects, lists and scalars visited in one config
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LAYERS = _words("""
Activation ActivityRegularization Add AdditiveAttention AlphaDropout Attention AugMix AutoContrast Average
AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization
Bidirectional CategoryEncoding CenterCrop Concatenate Conv1D Conv1DTranspose Conv2D Conv2DTranspose Conv3D
Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D Convolution1D Convolution1DTranspose Convolution2D
Convolution2DTranspose Convolution3D Convolution3DTranspose Cropping1D Cropping2D Cropping3D CutMix Dense
DepthwiseConv1D DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding Equalization Flatten
GaussianDropout GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D
GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GroupNormalization GroupQueryAttention GRU GRUCell
HashedCrossing Hashing Identity Input InputLayer IntegerLookup LayerNormalization LeakyReLU LSTM LSTMCell
Masking MaxPool1D MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Maximum MelSpectrogram Minimum
MixUp MultiHeadAttention Multiply Normalization Permute Pipeline PReLU RandAugment RandomBrightness
RandomColorDegeneration RandomColorJitter RandomContrast RandomCrop RandomElasticTransform RandomErasing
RandomFlip RandomGaussianBlur RandomGrayscale RandomHeight RandomHue RandomInvert RandomPerspective
RandomPosterization RandomRotation RandomSaturation RandomSharpness RandomShear RandomTranslation RandomWidth
RandomZoom ReLU RepeatVector Rescaling Reshape Resizing RMSNormalization RNN SeparableConv1D SeparableConv2D
SeparableConvolution1D SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax Solarization SpatialDropout1D
SpatialDropout2D SpatialDropout3D SpectralNormalization StackedRNNCells STFTSpectrogram StringLookup Subtract
TextVectorization TimeDistributed UnitNormalization UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D
ZeroPadding2D ZeroPadding3D
Sequential Functional Model
CuDNNGRU CuDNNLSTM ThresholdedReLU LocallyConnected1D LocallyConnected2D DenseFeatures PeepholeLSTMCell
RandomFourierFeatures TFOpLambda SlicingOpLambda
Abs Absolute Amax Amin Append Arange Arccos Arcsin Arctan Argmax Argmin Argsort Average BroadcastTo Cast Ceil
Clip Concatenate Cos Cumprod Cumsum Diag Divide Einsum Equal Exp ExpandDims Flip Floor GetItem Greater
Linspace Log Log1p Logsumexp Matmul Max Maximum Mean Min Minimum Moveaxis Multiply Negative NotEqual OneHot
Pad Power Prod Repeat Reshape Round Sigmoid Sign Sin Slice Softplus Sort Split Sqrt Square Squeeze Stack Std
Subtract Sum Take TakeAlongAxis Tanh Tile TopK Transpose Tril Triu TrueDivide Var Where
""")
"""Built-in layers and models of Keras 3 and of tf.keras 2 (``keras.layers``, ``keras.models``)."""

_OBJECTS = _words("""
Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer LecunNormal LecunUniform
Ones Orthogonal OrthogonalInitializer RandomNormal RandomUniform TruncatedNormal VarianceScaling Zeros STFT
STFTInitializer
L1 L2 L1L2 OrthogonalRegularizer MaxNorm MinMaxNorm NonNeg UnitNorm RadialConstraint
Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion LossScaleOptimizer Muon Nadam RMSprop SGD
CosineDecay CosineDecayRestarts ExponentialDecay InverseTimeDecay PiecewiseConstantDecay PolynomialDecay
BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy CategoricalFocalCrossentropy
CategoricalHinge Circle CosineSimilarity CTC Dice Hinge Huber KLDivergence LogCosh MeanAbsoluteError
MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson
SparseCategoricalCrossentropy SquaredHinge Tversky LossFunctionWrapper
Accuracy AUC BinaryAccuracy BinaryIoU CategoricalAccuracy ConcordanceCorrelation F1Score FBetaScore
FalseNegatives FalsePositives IoU LogCoshError Mean MeanIoU MeanMetricWrapper OneHotIoU OneHotMeanIoU
PearsonCorrelation Precision PrecisionAtRecall R2Score Recall RecallAtPrecision RootMeanSquaredError
SensitivityAtSpecificity SparseCategoricalAccuracy SparseTopKCategoricalAccuracy SpecificityAtSensitivity Sum
TopKCategoricalAccuracy TrueNegatives TruePositives
DTypePolicy FloatDTypePolicy QuantizedDTypePolicy QuantizedFloat8DTypePolicy DTypePolicyMap GPTQDTypePolicy
Policy InputSpec TensorShape
__keras_tensor__ __tensor__ __numpy__ __bytes__ __typespec__ __slice__ __ellipsis__ __complex__ __tuple__
""")
"""Other Keras classes a config names: initializers, regularizers, constraints, optimizers, schedules,
losses, metrics, dtype policies and the serialization markers of ``keras.saving.serialization_lib``."""

_RISKY_LAYERS: dict[str, tuple[Severity, str]] = {
    "TFSMLayer": ("high", "loads a TensorFlow SavedModel from a path the config names (CVE-2026-1462)"),
    "TorchModuleWrapper": ("high", "restores a torch.save pickle stored in the config"),
    "JaxLayer": ("high", "calls Python functions that must be supplied as custom objects"),
    "FlaxLayer": ("high", "calls a Flax module that must be supplied as a custom object"),
    "KerasLayer": ("high", "loads a TensorFlow Hub module from the handle (URL or path) in its config"),
    "TensorFlowOpLayer": ("medium", "runs the raw TensorFlow op (NodeDef) stored in its config"),
}

_SAFE_MODULES = ("keras.layers", "keras.models", "keras.initializers", "keras.regularizers",
                 "keras.constraints", "keras.optimizers", "keras.losses", "keras.metrics",
                 "keras.activations", "keras.dtype_policies", "keras.mixed_precision", "keras.src.layers",
                 "keras.src.models", "keras.src.initializers", "keras.src.regularizers",
                 "keras.src.constraints", "keras.src.optimizers", "keras.src.losses", "keras.src.metrics",
                 "keras.src.activations", "keras.src.dtype_policies", "keras.src.engine",
                 "keras.engine")
_OPS_MODULES = ("keras.src.ops", "keras.ops")  # Keras operations (Cast, ExpandDims, ...) in Functional graphs
_BACKEND_OPTIMIZERS = re.compile(r"keras\.src\.backend\.\w+\.optimizers?(\.|$)")
_FUNCTION_MODULES = ("keras.activations", "keras.losses", "keras.metrics", "keras.src.activations",
                     "keras.src.losses", "keras.src.metrics")
_GADGET_MODULES = ("keras.config", "keras.utils", "keras.saving", "keras.backend", "keras.src.utils",
                   "keras.src.saving", "keras.src.backend", "keras.src.export", "keras.export")
_DANGER_ROOTS = _words("""os posix nt sys subprocess builtins __builtin__ __builtins__ shutil socket
importlib runpy pickle marshal ctypes code codeop pty webbrowser commands platform tempfile pathlib io
urllib requests http ftplib smtplib multiprocessing threading signal asyncio types inspect functools
operator pdb timeit cProfile profile pydoc zipimport pkgutil site sysconfig""")
_DANGER_NAMES = _words("""os sys subprocess system popen Popen spawn spawnv execv execve exec eval compile
__import__ open builtins getattr setattr globals locals import_module socket shutil rmtree remove unlink
pickle marshal loads load requests urllib urlopen pty connect check_output run call fork kill chmod
write_file read_file gfile get_file enable_unsafe_deserialization""")
_FUNCTION_TOKENS = re.compile(r"__import__|\bos\.|subprocess|\beval\b|\bexec\b|\bsystem\b|builtins|\bopen\b"
                              r"|io\.write_file|io\.read_file|gfile|py_function|numpy_function|get_file")
_PY_BUILTINS = frozenset(vars(builtins))
_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{1,63}")


def sniff_keras_zip(names: Iterable[str]) -> bool:
    """True when a zip's member names are those of a Keras 3 ``.keras`` archive."""
    found = set(names)
    return "config.json" in found and bool(
        found & {"metadata.json", "model.weights.h5", "model.weights.npz"})


def sniff_hdf5(head: bytes) -> bool:
    """True when the HDF5 signature sits at offset 0 or at a user-block boundary (512 * 2**k) in head."""
    return any(head.startswith(HDF5_SIGNATURE, at) for at in _superblock_offsets(len(head)))


def _superblock_offsets(size: int) -> Iterable[int]:
    yield 0
    at = 512
    while at + 8 <= size:
        yield at
        at *= 2


# ---------------------------------------------------------------------------------------------
# The config walker, shared by .keras and .h5


class _Dup:
    """object_pairs_hook: keeps the last value (as json and Keras do) and remembers the shadowed."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.shadowed: list[object] = []

    def __call__(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                self.keys.append(key)
                self.shadowed.append(out[key])
            out[key] = value
        return out


def _load_json(text: str | bytes, out: Collector, what: str) -> tuple[object, list[object]] | None:
    if len(text) > MAX_CONFIG_BYTES:
        out.add("medium", "keras.config.too-large",
                f"{what} has {len(text)} bytes, more than the {MAX_CONFIG_BYTES}-byte limit; not checked")
        return None
    dup = _Dup()
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=dup)
    except RecursionError:
        out.add("medium", "keras.config.too-deep", f"{what} nests too deeply to read")
        return None
    except (UnicodeDecodeError, ValueError) as exc:
        out.add("medium", "keras.config.malformed",
                f"{what} is not valid JSON ({exc}); it cannot be verified")
        return None
    if dup.keys:
        out.add("medium", "keras.config.duplicate-key",
                f"{what} repeats keys {sorted(set(dup.keys))[:5]}; parsers disagree on which value wins")
    return obj, dup.shadowed


def scan_keras_config(config: dict[str, Any] | str | bytes, *, where: Location, limits: ScanLimits,
                      what: str = "config.json") -> list[Finding]:
    """Judge a Keras model config (the parsed object or its JSON text) against the allow-list.

    Works for Keras 3 configs (``module``/``class_name``/``config``/``registered_name``) and for
    tf.keras 2 configs (``class_name``/``config`` only). Bounded: depth, node count and time.
    """
    out = Collector(where=where)
    _scan_config(config, out, limits, what)
    return out.items


def _scan_config(config: object, out: Collector, limits: ScanLimits, what: str) -> None:
    roots: list[object] = [config]
    if isinstance(config, str | bytes):
        loaded = _load_json(config, out, what)
        if loaded is None:
            return
        roots = [loaded[0], *loaded[1]]
    if not isinstance(roots[0], dict):
        out.add("medium", "keras.config.malformed",
                f"{what} is a JSON {type(roots[0]).__name__}, not an object; it cannot be verified")
        return
    walker = _ConfigWalk(out=out, what=what, deadline=time.monotonic() + limits.max_seconds)
    for root in roots:
        walker.walk(root)


class _ConfigWalk:
    def __init__(self, *, out: Collector, what: str, deadline: float) -> None:
        self.out, self.what, self.deadline = out, what, deadline
        self.nodes = 0
        self.stopped = False

    def walk(self, root: object) -> None:
        # (value, depth, role, inside_lambda) with role "layer" | "model" | "object"
        stack: list[tuple[object, int, str, bool]] = [(root, 0, "model", False)]
        while stack and not self.stopped:
            value, depth, role, in_lambda = stack.pop()
            self.nodes += 1
            if depth > MAX_CONFIG_DEPTH:
                self.out.add("medium", "keras.config.too-deep",
                             f"{self.what} nests deeper than {MAX_CONFIG_DEPTH} levels; "
                             "the rest is not checked")
                self.stopped = True
                return
            if self.nodes > MAX_CONFIG_NODES or (self.nodes % 8192 == 0 and time.monotonic() > self.deadline):
                self.out.add("medium", "keras.config.too-large",
                             f"{self.what} has more than {self.nodes - 1} values (or took too long); "
                             "the rest is not checked")
                self.stopped = True
                return
            if isinstance(value, str):
                if "enable_unsafe_deserialization" in value:
                    self.out.add("critical", "keras.unsafe-deserialization",
                                 f"{self.what} names keras.config.enable_unsafe_deserialization, which turns "
                                 "safe_mode off while the model loads (CVE-2025-9906)",
                                 callable="keras.config.enable_unsafe_deserialization")
                continue
            if isinstance(value, list):
                stack.extend((item, depth + 1, "object", in_lambda) for item in value)
                continue
            if not isinstance(value, dict):
                continue
            if value.get("safe_mode") is False:
                self.out.add("high", "keras.safe-mode-off",
                             f"{self.what} sets safe_mode to false, asking the loader to run embedded code")
            in_lambda = self.judge(value, role, in_lambda) or in_lambda
            for key, item in value.items():
                if key in ("layers",) and isinstance(item, list):
                    stack.extend((layer, depth + 2, "layer", in_lambda) for layer in item)
                elif key in ("layer", "backward_layer", "forward_layer", "cell") and isinstance(item, dict):
                    stack.append((item, depth + 1, "layer", in_lambda))
                elif key in ("cells",) and isinstance(item, list):
                    stack.extend((cell, depth + 2, "layer", in_lambda) for cell in item)
                else:
                    stack.append((item, depth + 1, "object", in_lambda))

    def judge(self, obj: dict[str, Any], role: str, in_lambda: bool) -> bool:
        """Findings for one object; True when it is a Lambda layer (its code is already reported)."""
        cls = obj.get("class_name")
        if not isinstance(cls, str):
            if "class_name" in obj:
                self.out.add("medium", "keras.config.malformed",
                             f"{self.what}: class_name {str(cls)[:60]} is not a string")
            return False
        module = obj.get("module")
        registered = obj.get("registered_name")
        config = obj.get("config")
        label = f"{module}.{cls}" if isinstance(module, str) and module else cls
        if cls == "Lambda":
            self.lambda_layer(config)
            return True
        if cls == "__lambda__":
            if not in_lambda:
                code = config.get("code") if isinstance(config, dict) else None
                self.out.add("critical", "keras.lambda",
                             f"{self.what}: a serialized Python lambda{_code_summary(code)} is rebuilt "
                             "with marshal.loads when the model loads (CVE-2024-3660)", callable="__lambda__")
            return False
        if cls == "function":
            self.function_ref(module, config, registered)
            return False
        if cls in ("TFOpLambda", "SlicingOpLambda"):
            fn = config.get("function") if isinstance(config, dict) else None
            if isinstance(fn, str) and _FUNCTION_TOKENS.search(fn):
                self.out.add("critical", "keras.tfoplambda.denied",
                             f"{self.what}: {cls} calls {fn[:80]!r}, which reaches the file system or "
                             "code execution", callable=fn[:200])
        if isinstance(config, dict):
            fn = config.get("function")
            if isinstance(fn, str) and cls not in ("TFOpLambda", "SlicingOpLambda") and re.search(
                    r"__import__|\bos\.|subprocess", fn):
                self.out.add("critical", "keras.function.denied",
                             f"{self.what}: {cls} names the function {fn[:80]!r}", callable=fn[:200])
        if cls in _RISKY_LAYERS:
            severity, why = _RISKY_LAYERS[cls]
            self.out.add(severity, "keras.layer.risky",
                         f"{self.what}: layer {cls} {why}", callable=label)
            return False
        custom = self.module_ref(module, cls, label)
        if isinstance(registered, str) and ">" in registered and not custom:
            self.out.add("high", "keras.object.custom",
                         f"{self.what}: {label} is registered as the custom object {registered[:80]!r}; "
                         "loading it runs code from outside Keras", callable=registered[:200])
            custom = True
        if custom or (isinstance(module, str) and module.startswith(_OPS_MODULES) and cls.isidentifier()):
            return False
        base = cls.removeprefix("Custom>")  # tf.keras 2.11+ names its own optimizers "Custom>Adam"
        if (cls.startswith("__") and cls not in _OBJECTS) or not base.isidentifier():
            self.out.add("high", "keras.class.invalid",
                         f"{self.what}: class name {cls[:80]!r} is not a Keras class (a dunder or a dotted "
                         "name reaches module internals when looked up by name)", callable=label)
            return False
        # The root of a config read from an .h5 byte search may be a training_config's optimizer.
        known = base in _LAYERS or (role == "model" and base in _OBJECTS)
        if role in ("layer", "model") and not known:
            self.out.add("medium", "keras.layer.unknown",
                         f"{self.what}: layer class {cls[:80]!r} is not a built-in Keras layer "
                         "(a custom layer runs code the user must supply)", callable=label)
        elif role == "object" and base not in _LAYERS and base not in _OBJECTS:
            self.out.add("low", "keras.class.unknown",
                         f"{self.what}: class {cls[:80]!r} is not one Keras ships", callable=label)
        return False

    def module_ref(self, module: object, cls: str, label: str) -> bool:
        """A finding when ``module`` leaves the allow-list; True when it was reported."""
        if module is None:
            return False
        if not isinstance(module, str):
            self.out.add("medium", "keras.config.malformed",
                         f"{self.what}: module {str(module)[:60]} is not a string")
            return True
        if (module == "keras" or module.startswith(_SAFE_MODULES + _OPS_MODULES)
                or _BACKEND_OPTIMIZERS.match(module)):
            return False
        root = module.split(".")[0]
        if module.startswith(_GADGET_MODULES):
            self.out.add("high", "keras.module.gadget",
                         f"{self.what}: {label} comes from {module!r}, Keras' own utilities, which the "
                         "safe_mode bypasses CVE-2025-8747 and CVE-2025-9906 used", callable=label)
        elif root == "keras":
            self.out.add("medium", "keras.module.unknown",
                         f"{self.what}: {label} comes from {module!r}, not a Keras module that holds "
                         "layers or training objects", callable=label)
        else:
            self.out.add("critical" if root in _DANGER_ROOTS else "high", "keras.module.custom",
                         f"{self.what}: {cls!r} is imported from module {module!r}, outside Keras; before "
                         "Keras 3.9 this ran even with safe_mode=True (CVE-2025-1550)", callable=label)
        return True

    def function_ref(self, module: object, config: object, registered: object) -> None:
        name = config if isinstance(config, str) else None
        mod = module if isinstance(module, str) else ""
        label = f"{mod}.{name}" if mod and name else str(name or registered)[:120]
        if name and mod.startswith(_FUNCTION_MODULES) and name.isidentifier() and name not in _DANGER_NAMES:
            return
        if mod == "builtins" and name and name.isidentifier() and name not in _PY_BUILTINS:
            # Keras 3 writes its own functions (losses, metrics, activations) as module "builtins"
            # and resolves them by name in its built-in modules; only Python's builtins are a threat.
            return
        if not mod or mod.split(".")[0] != "keras":
            self.out.add("critical", "keras.function.denied",
                         f"{self.what}: the config calls the function {label!r} from outside Keras when it "
                         "loads (CVE-2025-1550)", callable=label)
        else:
            self.out.add("high", "keras.function.denied",
                         f"{self.what}: the config calls {label!r}, a Keras function outside activations, "
                         "losses and metrics (safe_mode bypass gadgets: CVE-2025-8747, CVE-2025-9906)",
                         callable=label)

    def lambda_layer(self, config: object) -> None:
        name = config.get("name", "?") if isinstance(config, dict) else "?"
        fn = config.get("function") if isinstance(config, dict) else None
        code: object = None
        detail = ""
        if isinstance(fn, dict):  # Keras 3: {"class_name": "__lambda__", "config": {"code": ...}}
            inner = fn.get("config")
            if fn.get("class_name") == "__lambda__" and isinstance(inner, dict):
                code = inner.get("code")
            elif fn.get("class_name") == "function":
                detail = f"; it calls {fn.get('module')}.{fn.get('config')}"
        elif isinstance(fn, list) and fn:  # tf.keras 2: [code, defaults, closure]
            code = fn[0]
        elif isinstance(fn, str):
            ftype = config.get("function_type") if isinstance(config, dict) else None
            if ftype == "lambda":
                code = fn
            else:
                module = config.get("module") if isinstance(config, dict) else None
                detail = f"; it calls the function {fn[:60]!r} looked up in module {module!r}"
        self.out.add("critical", "keras.lambda",
                     f"{self.what}: Lambda layer {str(name)[:60]!r}{_code_summary(code)}{detail}; "
                     "Keras runs it when the model loads or first runs (CVE-2024-3660)",
                     callable="keras.layers.Lambda")


def _code_summary(code: object) -> str:
    """' carrying N bytes of marshalled bytecode (names: ...)' without unmarshalling anything."""
    if not isinstance(code, str) or not code:
        return ""
    try:
        raw = base64.b64decode(code[: 4 << 20].encode("ascii", "ignore"), validate=False)
    except (binascii.Error, ValueError):
        return " carrying code that is not valid base64"
    names = sorted({m.decode() for m in _IDENT.findall(raw)} & _DANGER_NAMES)
    listed = f" (names: {', '.join(names[:10])})" if names else ""
    return f" carrying {len(raw)} bytes of marshalled Python bytecode{listed}"


# ---------------------------------------------------------------------------------------------
# .keras zips


def scan_keras(data: bytes | bytearray | memoryview, *, where: Location, limits: ScanLimits) -> list[Finding]:
    """Check a Keras 3 ``.keras`` zip given as bytes: its ``config.json`` and ``metadata.json``.

    Members are read with bounded reads (size, compression ratio); the weights file and other
    members are left to the archive scanner. Returns findings; never raises on any input.
    """
    out = Collector(where=where)
    try:
        with zipfile.ZipFile(io.BytesIO(data if isinstance(data, bytes) else bytes(data))) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                out.add("medium", "keras.zip.too-many-members",
                        f"the archive has {len(infos)} members, more than {limits.max_members}")
            configs = [i for i in infos if i.filename == "config.json"]
            metas = [i for i in infos if i.filename == "metadata.json"]
            for name, group in (("config.json", configs), ("metadata.json", metas)):
                if len(group) > 1:
                    out.add("high", "keras.zip.duplicate-member",
                            f"the archive holds {len(group)} members named {name}; Python's zipfile reads "
                            "the last, other tools the first")
            if not configs:
                out.add("medium", "keras.zip.no-config",
                        "the archive has no config.json; it is not a Keras 3 model and cannot be verified")
            for info in configs:
                text = _read_member(zf, info, out, limits)
                if text is not None:
                    sub = Collector(where=where.inner(info.filename))
                    _scan_config(text, sub, limits, "config.json")
                    out.items.extend(sub.items)
            for info in metas:
                text = _read_member(zf, info, out, limits)
                if text is not None:
                    _check_metadata(text, Collector(where=where.inner(info.filename)), out)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError,
            OSError, struct.error, KeyError, UnicodeDecodeError) as exc:
        out.add("medium", "keras.zip.malformed",
                f"the .keras archive cannot be read ({exc}); it cannot be verified")
    return out.items


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Collector,
                 limits: ScanLimits) -> bytes | None:
    if info.flag_bits & 0x1:
        out.add("medium", "keras.zip.encrypted", f"{info.filename} is encrypted; it cannot be verified")
        return None
    if info.file_size > MAX_CONFIG_BYTES:
        out.add("medium", "keras.config.too-large",
                f"{info.filename} declares {info.file_size} bytes, more than {MAX_CONFIG_BYTES}; not checked")
        return None
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        out.add("medium", "keras.zip.ratio",
                f"{info.filename} inflates {info.file_size / info.compress_size:.0f}x (limit "
                f"{limits.max_ratio:g}x); not checked")
        return None
    with zf.open(info) as fh:
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        out.add("medium", "keras.config.too-large",
                f"{info.filename} inflates past {MAX_CONFIG_BYTES} bytes; not checked")
        return None
    return raw


def _check_metadata(raw: bytes, sub: Collector, out: Collector) -> None:
    loaded = _load_json(raw, sub, "metadata.json")
    if loaded is not None and not isinstance(loaded[0], dict):
        sub.add("low", "keras.metadata.invalid", "metadata.json is not a JSON object")
    elif loaded is not None and isinstance(loaded[0], dict):
        for key, value in loaded[0].items():
            if isinstance(value, str) and "enable_unsafe_deserialization" in value:
                sub.add("critical", "keras.unsafe-deserialization",
                        f"metadata.json key {key!r} names enable_unsafe_deserialization (CVE-2025-9906)")
    out.items.extend(sub.items)


# ---------------------------------------------------------------------------------------------
# Legacy HDF5


def scan_hdf5(source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, where: Location,
              limits: ScanLimits) -> list[Finding]:
    """Check a legacy Keras HDF5 file's ``model_config`` and ``training_config`` without h5py.

    ``source`` is a path (read in bounded chunks, never whole) or the file's bytes.

    Approach: the superblock is parsed far enough to learn the end-of-file address (a file shorter
    than it is truncated); then the file is searched, in bounded chunks, for the attribute names
    ``model_config`` / ``training_config`` and for ``"class_name"``, and the JSON object that starts
    at (or just before) each is decoded with a bounded, growing window and judged like a
    ``config.json``. Keras writes both attributes as plain (fixed or variable length) strings,
    which HDF5 stores uncompressed in the root group's object header, in dense attribute storage
    (a fractal heap) or in the global heap; all three keep the bytes contiguous.

    Limits: a fractal heap with an I/O filter (compressed dense attribute storage, which Keras
    never writes) hides attribute bytes from a byte search, so its presence is a finding that
    says the file cannot be verified; JSON split across non-contiguous heap blocks is reported as
    unreadable; the HDF5 object tree itself is not validated.
    """
    out = Collector(where=where)
    deadline = time.monotonic() + limits.max_seconds
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source).cast("B")
            with io.BytesIO(view) as mem:
                _scan_hdf5_file(mem, len(view), out, limits, deadline)
        else:
            with open(source, "rb") as fh:
                _scan_hdf5_file(fh, os.fstat(fh.fileno()).st_size, out, limits, deadline)
    except OSError as exc:
        out.add("medium", "hdf5.unreadable",
                f"the file cannot be read ({exc.strerror or exc}); it cannot be verified")
    return out.items


def _scan_hdf5_file(fh: BinaryIO, size: int, out: Collector, limits: ScanLimits,
                    deadline: float) -> None:
    sb = _find_superblock(fh, size)
    if sb is None:
        out.add("medium", "hdf5.malformed", "no HDF5 signature at offset 0 or at a user-block boundary")
        return
    _check_superblock(fh, sb, size, out)
    chunk_size, overlap = 8 << 20, 64
    pos = 0
    covered: list[tuple[int, int]] = []
    named = found = 0
    filtered_heap = False
    while pos < size:
        if time.monotonic() > deadline:
            out.add("medium", "hdf5.timeout", "the scan ran out of time; the rest of the file is not checked")
            return
        fh.seek(pos)
        chunk = fh.read(chunk_size + overlap)
        if not chunk:
            break
        for rel, token in _anchors(chunk):
            if rel >= chunk_size:
                break  # starts in the overlap: the next chunk sees it whole
            at = pos + rel
            if any(lo <= at < hi for lo, hi in covered):
                continue
            if token == b"FRHP":
                filt = chunk[rel + 7:rel + 9]
                if len(filt) == 2 and struct.unpack("<H", filt)[0] > 0 and not filtered_heap:
                    filtered_heap = True
                    out.add("medium", "hdf5.filtered-heap",
                            "the file keeps attributes in a filtered (compressed) fractal heap that a byte "
                            "search cannot read; its model config cannot be verified", at)
                continue
            if token in (b"model_config", b"training_config"):
                named += 1
                start = _find_brace(fh, at + len(token), forward=True)
                what = token.decode()
            else:
                start = _find_brace(fh, at, forward=False)
                what = "model_config"
            if start is None:
                continue
            text, end = _decode_at(fh, start, size)
            if text is None:
                continue
            found += 1
            covered.append((start, end))
            sub = Collector(where=out.where)
            _scan_config(text, sub, limits, f"{what}@{start}")  # parsed again: duplicate keys count
            out.items.extend(sub.items)
        pos += chunk_size
    if found < named:
        out.add("medium", "hdf5.config-unreadable",
                f"the file names {named} model_config/training_config attribute(s) but holds {found} "
                "readable JSON config(s); the rest cannot be verified")
    elif not found:
        out.add("info", "hdf5.no-model-config",
                "no Keras model_config in the file (a weights-only file, or not a Keras model)")


_ANCHORS = (b"model_config", b"training_config", b'"class_name"', b"FRHP")


def _anchors(chunk: bytes) -> list[tuple[int, bytes]]:
    """Positions of the anchor tokens in chunk, in order (bytes.find: several times faster than re)."""
    hits: list[tuple[int, bytes]] = []
    for token in _ANCHORS:
        at = chunk.find(token)
        while at >= 0:
            hits.append((at, token))
            at = chunk.find(token, at + 1)
    hits.sort()
    return hits


def _find_superblock(fh: BinaryIO, size: int) -> int | None:
    for at in _superblock_offsets(size):
        fh.seek(at)
        if fh.read(8) == HDF5_SIGNATURE:
            return at
    return None


def _check_superblock(fh: BinaryIO, at: int, size: int, out: Collector) -> None:
    fh.seek(at)
    head = fh.read(128)
    if len(head) < 16:
        out.add("medium", "hdf5.truncated", "the file ends inside the HDF5 superblock", at)
        return
    version = head[8]
    if version in (0, 1):
        width = head[13]
        fields_at = 24 if version == 0 else 28
        eof_index = 2
    elif version in (2, 3):
        width = head[9]
        fields_at = 12
        eof_index = 2
    else:
        out.add("medium", "hdf5.malformed", f"unknown HDF5 superblock version {version}", at)
        return
    if width not in (2, 4, 8):
        out.add("medium", "hdf5.malformed", f"HDF5 superblock gives offsets of {width} bytes", at)
        return
    need = fields_at + width * (eof_index + 1)
    if len(head) < need:
        out.add("medium", "hdf5.truncated", "the file ends inside the HDF5 superblock", at)
        return
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[width]
    base = struct.unpack_from(fmt, head, fields_at)[0]
    eof = struct.unpack_from(fmt, head, fields_at + width * eof_index)[0]
    undefined = (1 << (8 * width)) - 1
    if eof == undefined or base == undefined:
        return
    if base + eof > size:
        out.add("medium", "hdf5.truncated",
                f"the HDF5 superblock says the file ends at byte {base + eof}, it has {size} bytes "
                "(truncated)", at)


def _find_brace(fh: BinaryIO, at: int, *, forward: bool) -> int | None:
    """The ``{`` that starts the JSON text around ``at``.

    Forward (after an attribute name): the first ``{`` in the next 512 bytes. Backward (from a
    ``"class_name"`` inside the text): the first ``{`` after the last NUL before ``at`` (JSON text
    holds no NUL, and HDF5 puts binary headers with NULs right before a string: the attribute's
    dataspace, or the global-heap object header of a variable-length string), so the whole
    object is found rather than an inner one; else the nearest ``{``.
    """
    span = 512 if forward else 64 << 10
    lo = at if forward else max(0, at - span)
    fh.seek(lo)
    window = fh.read(span if forward else at - lo)
    if forward:
        idx = window.find(b"{")
        return None if idx < 0 else lo + idx
    nul = window.rfind(b"\0")
    if nul >= 0:
        idx = window.find(b"{", nul)
        if idx >= 0 and not window[nul + 1:idx].strip():
            return lo + idx
    idx = window.rfind(b"{")
    return None if idx < 0 else lo + idx


def _decode_at(fh: BinaryIO, start: int, size: int) -> tuple[str | None, int]:
    """The JSON object text at ``start`` and its end: read up to the first NUL (JSON text has none),
    at most 64 MiB."""
    window = 64 << 10
    while True:
        fh.seek(start)
        raw = fh.read(window)
        nul = raw.find(b"\0")
        if nul < 0 and len(raw) == window and start + window < size:
            if window >= MAX_CONFIG_BYTES:
                return None, start
            window *= 8
            continue
        raw = raw if nul < 0 else raw[:nul]
        text = raw.decode("utf-8", "replace")
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except (RecursionError, ValueError):
            return None, start
        if not isinstance(obj, dict):
            return None, start
        return text[:end], start + len(text[:end].encode("utf-8", "replace"))
