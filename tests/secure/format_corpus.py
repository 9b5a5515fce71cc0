"""Builders of benign and hostile safetensors, Keras and ONNX files for the format-scanner tests
(not a test module; loaded by path, since pytest runs with --import-mode=importlib).

Every file is built here, in memory or under a temporary folder; nothing is ever loaded with its
framework. Hostile payloads are harmless (``true``, ``echo``) and are never unmarshalled or run.
Each hostile case names the advisory, issue or spec clause it reproduces.
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import os
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelshield.secure.scan.findings import Finding, Location, ScanLimits
from modelshield.secure.scan.keras import scan_hdf5, scan_keras
from modelshield.secure.scan.onnx import scan_onnx
from modelshield.secure.scan.safetensors import scan_safetensors

LIMITS = ScanLimits(max_seconds=20.0)
_DTYPES = {"float32": "F32", "float16": "F16", "int64": "I64", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


# ----------------------------------------------------------------------------------------- runner

def scan_file(fmt: str, path: Path) -> list[Finding]:
    """Run the format's scanner on a file the way the dispatcher would."""
    where = Location(path=str(path))
    if fmt == "hdf5":
        return scan_hdf5(str(path), where=where, limits=LIMITS)
    data = path.read_bytes()
    if fmt == "safetensors":
        return scan_safetensors(data, where=where, limits=LIMITS)
    if fmt == "keras":
        return scan_keras(data, where=where, limits=LIMITS)
    if fmt == "onnx":
        return scan_onnx(data, where=where, limits=LIMITS)
    raise ValueError(f"unknown format {fmt!r}")


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.blocking]


# ----------------------------------------------------------------------------------- safetensors

def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file written by hand per the spec (8-byte length, JSON padded with spaces, data)."""
    header: dict[str, Any] = {}
    data = b""
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": _DTYPES[str(arr.dtype)], "shape": list(arr.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_raw(header: bytes | str | dict[str, Any], data: bytes, *, length: int | None = None,
                    after_header: bytes = b"") -> bytes:
    """A file with exactly this header text (no checks), for malformed cases."""
    text = header if isinstance(header, bytes) else (
        header.encode() if isinstance(header, str) else json.dumps(header).encode())
    text += after_header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def benign_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"linear.weight": rng.normal(size=(3, 4)).astype(np.float32),
            "linear.bias": np.zeros(3, np.float32),
            "steps": np.array([7], np.int64),
            "mask": np.array([True, False, True]),
            "empty": np.zeros((0, 5), np.float16)}


# ----------------------------------------------------------------------------------------- Keras

def _obj(module: str, cls: str, config: Any, registered: str | None = None) -> dict[str, Any]:
    return {"module": module, "class_name": cls, "config": config, "registered_name": registered}


_DTYPE_POLICY = _obj("keras", "DTypePolicy", {"name": "float32"})


def keras_dense_layer(name: str = "dense", units: int = 3) -> dict[str, Any]:
    """A Dense layer as Keras 3.x ``Layer.get_config`` + ``serialize_keras_object`` writes it."""
    return {**_obj("keras.layers", "Dense", {
        "name": name, "trainable": True, "dtype": _DTYPE_POLICY, "units": units, "activation": "relu",
        "use_bias": True, "kernel_initializer": _obj("keras.initializers", "GlorotUniform", {"seed": None}),
        "bias_initializer": _obj("keras.initializers", "Zeros", {}),
        "kernel_regularizer": _obj("keras.regularizers", "L2", {"l2": 0.01}),
        "bias_regularizer": None, "kernel_constraint": None, "bias_constraint": None}),
        "build_config": {"input_shape": [None, 4]}}


def keras_sequential(layers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Keras 3 ``config.json`` for Sequential([Input((4,)), Dense(3)]) compiled with Adam + MSE."""
    input_layer = _obj("keras.layers", "InputLayer", {"batch_shape": [None, 4], "dtype": "float32",
                                                      "sparse": False, "name": "input_layer"})
    return {**_obj("keras", "Sequential", {
        "name": "sequential", "trainable": True, "dtype": _DTYPE_POLICY,
        "layers": [input_layer, *(layers if layers is not None else [keras_dense_layer()])]}),
        "build_config": {"input_shape": [None, 4]},
        "compile_config": {
            "optimizer": _obj("keras.optimizers", "Adam", {"name": "adam", "learning_rate": 0.001}),
            "loss": _obj("keras.losses", "function", "mean_squared_error", "mean_squared_error"),
            "metrics": [_obj("keras.metrics", "MeanAbsoluteError", {"name": "mae"})],
            "loss_weights": None, "jit_compile": False}}


def keras_functional() -> dict[str, Any]:
    """A Keras 3 Functional config (inbound nodes hold ``__keras_tensor__`` markers)."""
    def tensor(src: str) -> dict[str, Any]:
        return {"class_name": "__keras_tensor__",
                "config": {"shape": [None, 4], "dtype": "float32", "keras_history": [src, 0, 0]}}
    inp = {**_obj("keras.layers", "InputLayer", {"batch_shape": [None, 4], "dtype": "float32",
                                                 "name": "x"}), "name": "x", "inbound_nodes": []}
    hidden = {**keras_dense_layer("hidden", 8), "name": "hidden",
              "inbound_nodes": [{"args": [tensor("x")], "kwargs": {}}]}
    norm = {**_obj("keras.layers", "LayerNormalization", {"name": "norm", "axis": -1, "epsilon": 1e-3}),
            "name": "norm", "inbound_nodes": [{"args": [tensor("hidden")], "kwargs": {}}]}
    drop = {**_obj("keras.layers", "Dropout", {"name": "drop", "rate": 0.1}), "name": "drop",
            "inbound_nodes": [{"args": [tensor("norm")], "kwargs": {"training": False}}]}
    # What Keras 3.15 (torch backend) writes for keras.ops calls in a graph and for AdamW.
    expand = {**_obj("keras.src.ops.numpy", "ExpandDims", {"name": "expand_dims", "axis": 1}, "ExpandDims"),
              "name": "expand_dims", "inbound_nodes": [{"args": [tensor("drop")], "kwargs": {}}]}
    model = _obj("keras", "Functional", {"name": "functional", "trainable": True,
                                         "layers": [inp, hidden, norm, drop, expand],
                                         "input_layers": [["x", 0, 0]],
                                         "output_layers": [["expand_dims", 0, 0]]})
    model["compile_config"] = {
        "optimizer": _obj("keras.src.backend.torch.optimizers.torch_adamw", "AdamW",
                          {"name": "adamw", "learning_rate": 0.001, "weight_decay": 0.004}, "AdamW"),
        "loss": _obj("builtins", "function", "categorical_crossentropy", "function"),
        "metrics": [_obj("builtins", "function", "top_k_categorical_accuracy", "function")]}
    return model


def lambda_code() -> str:
    """base64 of marshalled bytecode of a lambda that would call os.system('true'); never loaded."""
    code = compile("lambda x: __import__('os').system('true') or x", "<payload>", "eval")
    return base64.b64encode(marshal.dumps(code)).decode()


def keras_lambda_layer() -> dict[str, Any]:
    """A Keras 3 Lambda layer as ``keras.layers.Lambda.get_config`` writes it (CVE-2024-3660)."""
    return _obj("keras.layers", "Lambda", {
        "name": "lambda", "trainable": True, "dtype": _DTYPE_POLICY,
        "function": {"class_name": "__lambda__",
                     "config": {"code": lambda_code(), "defaults": None, "closure": None}},
        "arguments": {}})


def keras_zip(config: dict[str, Any] | str | bytes, *, extra: tuple[tuple[str, bytes], ...] = (),
              keras_version: str = "3.8.0") -> bytes:
    """A ``.keras`` archive as ``keras.saving.save_model`` lays it out (weights are a stub HDF5)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names some cases write
        zf.writestr("metadata.json", json.dumps({"keras_version": keras_version,
                                                 "date_saved": "2025-01-01@12:00:00"}))
        text = config if isinstance(config, str | bytes) else json.dumps(config)
        zf.writestr("config.json", text)
        zf.writestr("model.weights.h5", hdf5_bytes(None))
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


def keras2_model_config(layers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A tf.keras 2.x ``model_config`` attribute (no ``module`` keys)."""
    dense = {"class_name": "Dense", "config": {
        "name": "dense", "trainable": True, "dtype": "float32", "units": 3, "activation": "linear",
        "use_bias": True, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None}}
    first = {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32",
                                                    "sparse": False, "ragged": False, "name": "dense_input"}}
    return {"class_name": "Sequential",
            "config": {"name": "sequential", "layers": [first, *(layers if layers is not None else [dense])]},
            "keras_version": "2.15.0", "backend": "tensorflow"}


KERAS2_TRAINING_CONFIG = {"loss": "mse", "metrics": None, "weighted_metrics": None, "loss_weights": None,
                          "optimizer_config": {"class_name": "Custom>Adam", "config": {
                              "name": "Adam", "learning_rate": 0.001, "beta_1": 0.9},
                              "is_legacy_optimizer": False}}


def _attribute(name: str, value: bytes) -> bytes:
    """An HDF5 version-1 attribute message (type 0x000C) holding a fixed-length string."""
    name_b = name.encode() + b"\0"
    name_p = name_b + b"\0" * (-len(name_b) % 8)
    dtype = bytes([0x13, 0, 0, 0]) + struct.pack("<I", len(value))  # class 3 (string), version 1
    dspace = bytes([1, 0, 0, 0, 0, 0, 0, 0])                           # scalar
    body = (bytes([1, 0]) + struct.pack("<HHH", len(name_b), len(dtype), len(dspace))
            + name_p + dtype + dspace + value)
    body += b"\0" * (-len(body) % 8)
    return struct.pack("<HHB3x", 0x000C, len(body), 0) + body


def hdf5_bytes(model_config: dict[str, Any] | str | None, *,
               training_config: dict[str, Any] | None = None, user_block: int = 0,
               weights: int = 4096, lead: int = 0) -> bytes:
    """A small HDF5-like file laid out as h5py does for a Keras ``.h5``: superblock v0, a root object
    header with the Keras attributes, then weight bytes. (h5py is not a dependency; this is not a
    complete HDF5 tree, but every field a byte-level reader consults is where HDF5 puts it.)"""
    attrs = b""
    if model_config is not None:
        text = model_config if isinstance(model_config, str) else json.dumps(model_config)
        attrs += _attribute("model_config", text.encode())
        attrs += _attribute("keras_version", b"2.15.0") + _attribute("backend", b"tensorflow")
    if training_config is not None:
        attrs += _attribute("training_config", json.dumps(training_config).encode())
    header = struct.pack("<BBHII", 1, 0, 4, 1, len(attrs)) + b"\0" * 4 + attrs
    rng = np.random.default_rng(1)
    filler = rng.integers(0, 256, lead, dtype=np.uint8).tobytes()  # e.g. datasets written first
    tail = rng.integers(0, 256, weights, dtype=np.uint8).tobytes()
    body = filler + header + b"\0" * (-len(header) % 8) + tail
    undefined = b"\xff" * 8
    sb_len = 8 + 16 + 8 * 4 + 40
    eof = sb_len + len(body)
    superblock = (b"\x89HDF\r\n\x1a\n" + bytes([0, 0, 0, 0, 0, 8, 8, 0]) + struct.pack("<HHI", 4, 16, 0)
                  + struct.pack("<Q", 0) + undefined + struct.pack("<Q", eof) + undefined
                  + struct.pack("<QQI4x", 0, sb_len, 1) + b"\0" * 16)
    assert len(superblock) == sb_len
    return b"\0" * user_block + superblock + body


# ------------------------------------------------------------------------------------------ ONNX

def onnx_sklearn(kind: str = "logreg") -> bytes:
    """A real ONNX model converted by skl2onnx (uses the ai.onnx.ml domain)."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = (LogisticRegression() if kind == "logreg"
             else RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)).fit(x, y)
    return bytes(to_onnx(model, x[:1], target_opset=17).SerializeToString())


def onnx_torch() -> bytes:
    """A real ONNX model exported by torch.onnx (the TorchScript exporter; offline, no onnxscript)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), buf, dynamo=False)
    return buf.getvalue()


def onnx_model(nodes: list[Any], *, opsets: dict[str, int] | None = None, initializers: list[Any] = (),
               functions: list[Any] = (), outputs: tuple[str, ...] = ("Y",)) -> bytes:
    """A small model built with onnx.helper: input X [1, 4] float, the given nodes, outputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4]) for o in outputs],
        initializer=list(initializers))
    opset_ids = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()]
    model = helper.make_model(graph, opset_imports=opset_ids, functions=list(functions))
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_external(location: str, *, extra_key: str | None = None) -> bytes:
    """A model whose initializer W keeps its data in an external file named by ``location``."""
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("W", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    if extra_key is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = extra_key, "1"
    return onnx_model([helper.make_node("Add", ["X", "W"], ["Y"])], initializers=[tensor])


def onnx_nested_if(depth: int, *, leaf_domain: str = "") -> bytes:
    """If nodes nested ``depth`` deep in then-branches; the innermost node is in ``leaf_domain``."""
    from onnx import TensorProto, helper

    def branch(level: int) -> Any:
        out = helper.make_tensor_value_info(f"o{level}", TensorProto.FLOAT, [1, 4])
        if level == depth:
            node = helper.make_node("Evil" if leaf_domain else "Identity", ["X"], [f"o{level}"],
                                    domain=leaf_domain)
        else:
            node = helper.make_node("If", ["C"], [f"o{level}"], then_branch=branch(level + 1),
                                    else_branch=branch(depth))
        return helper.make_graph([node], f"b{level}", [], [out])

    cond = helper.make_tensor("C", TensorProto.BOOL, [], [True])
    top = helper.make_node("If", ["C"], ["Y"], then_branch=branch(1), else_branch=branch(depth))
    opsets = {"": 17, **({leaf_domain: 1} if leaf_domain else {})}
    return onnx_model([top], opsets=opsets, initializers=[cond])


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(num: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: a varint for ints, length-delimited otherwise."""
    if isinstance(payload, int):
        return _pb_varint(num << 3) + _pb_varint(payload)
    raw = payload.encode() if isinstance(payload, str) else payload
    return _pb_varint(num << 3 | 2) + _pb_varint(len(raw)) + raw


def onnx_deep_raw(depth: int) -> bytes:
    """If nodes nested ``depth`` deep, encoded by hand: protobuf's own parser refuses to build it
    (upb's 100-message depth limit), which is exactly what an unbounded reader would not do."""
    graph = _pb(1, _pb(1, "X") + _pb(2, "o") + _pb(4, "Identity")) + _pb(2, "leaf")
    for level in range(depth):
        attr = _pb(1, "then_branch") + _pb(20, 5) + _pb(6, graph)
        graph = _pb(1, _pb(1, "C") + _pb(2, "o" if level < depth - 1 else "Y") + _pb(4, "If") + _pb(5, attr))
        graph += _pb(2, f"g{level}")
    value = _pb(1, "Y")
    graph += _pb(11, _pb(1, "C")) + _pb(12, value)
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17))


# ------------------------------------------------------------------------------------ the corpus

@dataclass(frozen=True)
class Case:
    """One hostile file: the format, how to write it under a folder, the finding code it must raise."""

    name: str
    fmt: str
    build: Callable[[Path], Path]
    code: str
    source: str


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return build


def _lazy(name: str, make: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(make())
        return path
    return build


def _symlink_case(folder: Path) -> Path:
    outside = folder / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\0" * 16)
    model_dir = folder / "model"
    model_dir.mkdir()
    os.symlink(outside / "secret.bin", model_dir / "weights.bin")
    path = model_dir / "model.onnx"
    path.write_bytes(onnx_external("weights.bin"))
    return path


def _st_hidden_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", PICKLE_OS_SYSTEM)
    return safetensors_bytes(benign_tensors()) + buf.getvalue()


def _keras_nested(inner_layer: dict[str, Any]) -> dict[str, Any]:
    inner = keras_sequential([keras_dense_layer("inner_dense"), inner_layer])
    inner.pop("compile_config")
    return keras_sequential([keras_dense_layer(), inner])


def _keras_dup_key_text() -> str:
    """Two "layers" keys: Python's json (and Keras) keep the last, a first-wins parser the benign one."""
    lam = json.dumps(keras_lambda_layer())
    text = json.dumps(keras_sequential())
    marker = '"layers": ['
    at = text.index(marker)
    return text[:at] + f'"layers": [{lam}], ' + text[at:]


def _deep_json(depth: int) -> str:
    return '{"class_name": "Sequential", "config": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


PICKLE_OS_SYSTEM = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
"""A protocol-2 pickle that would call posix.system('true'); only ever scanned, never loaded."""

_W = np.arange(16, dtype=np.float32).reshape(4, 4).tobytes()


def hostile_cases() -> list[Case]:
    """Every hostile file, with the finding code it must produce (all codes are blocking)."""
    from onnx import helper

    cases = [
        # --- safetensors -------------------------------------------------------------------------
        # safetensors#586 (maintainer: "a single name must own each data location") and
        # ohdearquant/lattice#752 (aliased k_proj/v_proj ranges): two names over one byte range.
        Case("st-overlap", "safetensors", _write("overlap.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
             "b": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, _W)),
            "safetensors.offsets.overlap", "safetensors PR #586; lattice issue #752"),
        # safetensors#401: a header with duplicate keys (the spec forbids them; serde keeps the last).
        Case("st-duplicate-key", "safetensors", _write("dup.safetensors", safetensors_raw(
            '{"a":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]},'
            '"a":{"dtype":"U8","shape":[64],"data_offsets":[0,64]}}', _W)),
            "safetensors.header.duplicate-key", "safetensors issue #401; QuintinShaw/openasr PR #73"),
        # ml-explore/mlx#3364, leejet/stable-diffusion.cpp#1754: offsets past the data buffer.
        Case("st-offsets-out-of-range", "safetensors", _write("oob.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 4096]}}, _W)),
            "safetensors.offsets.out-of-range", "mlx PR #3364; stable-diffusion.cpp PR #1754"),
        # mlx#3364: a declared shape far larger than the bytes its offsets give (OOB read on eval).
        Case("st-size-mismatch", "safetensors", _write("size.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 64]}}, _W)),
            "safetensors.offsets.size-mismatch", "mlx PR #3364; run-ai/runai-model-streamer PR #121"),
        # openasr#73 S1: an 8-byte length prefix of u64::MAX sizing an allocation; spec cap 100 MB.
        Case("st-huge-header-length", "safetensors", _write("huge.safetensors", safetensors_raw(
            b"{}", b"", length=2**64 - 1)),
            "safetensors.header.too-large", "openasr PR #73; safetensors spec (100 MB header limit)"),
        # A header length that runs past the end of the file (runai-model-streamer#121: truncated data).
        Case("st-header-past-eof", "safetensors", _write("short.safetensors", safetensors_raw(
            b'{"a":1}', b"", length=10_000)),
            "safetensors.truncated", "runai-model-streamer PR #121"),
        # Spec: "the byte buffer needs to be entirely indexed ... to prevent polyglot files"; a pickle
        # appended after the last tensor.
        Case("st-pickle-after-data", "safetensors", _write("tail.safetensors",
             safetensors_bytes(benign_tensors()) + PICKLE_OS_SYSTEM),
             "safetensors.hidden-pickle", "safetensors spec (no holes: polyglot files); h3.c PR #48"),
        # A zip (a torch checkpoint) appended: torch.load finds the end record and opens it.
        Case("st-zip-polyglot", "safetensors", _lazy("zip.safetensors", _st_hidden_zip),
             "safetensors.hidden-zip", "safetensors spec (polyglot files); issue #17 (a zip named .pt)"),
        # Pickle bytes in the header's padding, where the spec allows only spaces.
        Case("st-pickle-in-padding", "safetensors", _write("pad.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, _W,
            after_header=PICKLE_OS_SYSTEM)),
            "safetensors.hidden-pickle", "safetensors spec (header padding is 0x20 only)"),
        # A hole between two tensors that holds a protocol-0 GLOBAL.
        Case("st-global-in-hole", "safetensors", _write("hole.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [4], "data_offsets": [48, 64]}},
            _W[:16] + b"cos\nsystem\n(S'true'\ntR." + b"\0" * 9 + _W[:16])),
            "safetensors.hidden-pickle", "safetensors spec (no holes); h3.c PR #48"),
        # An unknown dtype (Comfy-Org/ComfyUI#15722: dtype looked up without validation).
        Case("st-unknown-dtype", "safetensors", _write("dtype.safetensors", safetensors_raw(
            {"a": {"dtype": "PICKLE", "shape": [64], "data_offsets": [0, 64]}}, _W)),
            "safetensors.dtype.unknown", "ComfyUI PR #15722"),
        # Negative offsets (ComfyUI#14657 review: reversed/negative offsets accepted).
        Case("st-reversed-offsets", "safetensors", _write("rev.safetensors", safetensors_raw(
            {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [64, 0]}}, _W)),
            "safetensors.offsets.invalid", "ComfyUI PR #14657"),
        # --- Keras --------------------------------------------------------------------------------
        # CVE-2024-3660: a Lambda layer with marshalled bytecode in config.json.
        Case("keras-lambda", "keras", _lazy("lambda.keras", lambda: keras_zip(
            keras_sequential([keras_dense_layer(), keras_lambda_layer()]))),
            "keras.lambda", "CVE-2024-3660; protectai/modelscan #44"),
        # CVE-2025-1550 (GHSA-48g7-3x6r-xfhp): config names a function in an arbitrary module.
        Case("keras-builtins-function", "keras", _lazy("exec.keras", lambda: keras_zip(keras_sequential([
            {**keras_dense_layer(), "config": {**keras_dense_layer()["config"],
                                               "activation": _obj("builtins", "function", "exec")}}]))),
            "keras.function.denied", "CVE-2025-1550 / GHSA-48g7-3x6r-xfhp"),
        # CVE-2025-1550: a layer class imported from a module outside Keras.
        Case("keras-custom-module", "keras", _lazy("custom.keras", lambda: keras_zip(keras_sequential([
            _obj("os", "system", {"name": "x"})]))),
            "keras.module.custom", "CVE-2025-1550; promptfoo/modelaudit PR #1558"),
        # CVE-2025-9906 (io-no/CVE-Reports#5, GHSA-36fq-jgmw-4r9c): the config itself calls
        # keras.config.enable_unsafe_deserialization, then a Lambda runs.
        Case("keras-enable-unsafe", "keras", _lazy("unsafe.keras", lambda: keras_zip(keras_sequential([
            _obj("keras.layers", "Dense", {"name": "d", "units": 1, "activation": _obj(
                "keras.config", "function", "enable_unsafe_deserialization")})]))),
            "keras.unsafe-deserialization", "CVE-2025-9906; io-no/CVE-Reports issue #5"),
        # CVE-2025-8747 (GHSA-c9rc-mg46-23w3): keras.utils.get_file reached from the config.
        Case("keras-get-file", "keras", _lazy("getfile.keras", lambda: keras_zip(keras_sequential([
            {**keras_dense_layer(), "config": {**keras_dense_layer()["config"], "kernel_initializer":
                                               _obj("keras.utils", "function", "get_file")}}]))),
            "keras.function.denied", "CVE-2025-8747 / GHSA-c9rc-mg46-23w3"),
        # CVE-2026-1462: TFSMLayer loads an attacker-named SavedModel even with safe_mode=True.
        Case("keras-tfsmlayer", "keras", _lazy("tfsm.keras", lambda: keras_zip(keras_sequential([
            _obj("keras.layers", "TFSMLayer", {"name": "t", "filepath": "/tmp/evil_savedmodel",
                                               "call_endpoint": "serve"})]))),
            "keras.layer.risky", "CVE-2026-1462"),
        # protectai/modelscan PR #351: a Lambda nested inside an inner model is missed by top-level checks.
        Case("keras-nested-lambda", "keras", _lazy("nested.keras", lambda: keras_zip(
            _keras_nested(keras_lambda_layer()))),
            "keras.lambda", "protectai/modelscan PR #351"),
        # protectai/modelscan PR #359: builtins.exec hidden in a kernel_initializer.
        Case("keras-module-in-initializer", "keras", _lazy("init.keras", lambda: keras_zip(keras_sequential([
            {**keras_dense_layer(), "config": {**keras_dense_layer()["config"],
                                               "kernel_initializer": _obj("builtins", "exec", {})}}]))),
            "keras.module.custom", "protectai/modelscan PR #359"),
        # A custom registered object (register_keras_serializable): code the file asks the user to run.
        Case("keras-registered-custom", "keras", _lazy("reg.keras", lambda: keras_zip(keras_sequential([
            _obj("keras.layers", "Dense", {"name": "d", "units": 1}, "EvilPkg>Backdoor")]))),
            "keras.object.custom", "CVE-2025-1550 (custom objects); Keras serialization_lib"),
        # A parser differential: two config.json members; zipfile reads the last, others the first.
        Case("keras-duplicate-member", "keras", _lazy("dupmember.keras", lambda: keras_zip(
            keras_sequential(), extra=(("config.json", json.dumps(keras_sequential(
                [keras_lambda_layer()])).encode()),))),
            "keras.zip.duplicate-member", "issue #17 (name mismatch / duplicate members)"),
        # Duplicate JSON keys hide a Lambda from first-wins parsers (Keras uses Python's last-wins json).
        Case("keras-duplicate-json-key", "keras", _lazy("dupkey.keras", lambda: keras_zip(
            _keras_dup_key_text())),
            "keras.lambda", "safetensors issue #401 (same differential, JSON headers)"),
        # A deeply nested config (modelaudit PR #1558: bounded nested-config traversal).
        Case("keras-deep-config", "keras", _lazy("deep.keras", lambda: keras_zip(_deep_json(300))),
             "keras.config.too-deep", "promptfoo/modelaudit PR #1558"),
        # --- legacy HDF5 -------------------------------------------------------------------------
        # CVE-2024-3660 in a tf.keras 2 .h5 (protectai/modelscan PR #61: Lambda layers in H5).
        Case("h5-lambda", "hdf5", _lazy("lambda.h5", lambda: hdf5_bytes(keras2_model_config([
            {"class_name": "Lambda", "config": {"name": "lambda", "function": [lambda_code(), None, None],
                                                "function_type": "lambda", "module": "__main__",
                                                "arguments": {}}}]))),
            "keras.lambda", "CVE-2024-3660; protectai/modelscan PR #61"),
        # TFOpLambda naming __import__ (tf.keras 2 functional models record TF ops this way).
        Case("h5-tfoplambda", "hdf5", _lazy("tfop.h5", lambda: hdf5_bytes(keras2_model_config([
            {"class_name": "TFOpLambda", "config": {"name": "tf.x", "function": "__import__('os').system",
                                                    "trainable": True, "dtype": "float32"}}]))),
            "keras.tfoplambda.denied", "issue #17 brief; modelscan issue #44"),
        # An unknown layer class in a legacy config (a custom layer the user must supply).
        Case("h5-unknown-layer", "hdf5", _lazy("custom.h5", lambda: hdf5_bytes(keras2_model_config([
            {"class_name": "BackdoorLayer", "config": {"name": "b"}}]))),
            "keras.layer.unknown", "promptfoo/modelaudit PR #1558 (H5 custom objects)"),
        # A custom module reference in an .h5 (modelscan PR #359, modelaudit PR #1558: CVE-2025-1550 in H5).
        Case("h5-custom-module", "hdf5", _lazy("mod.h5", lambda: hdf5_bytes(keras2_model_config([
            {"module": "subprocess", "class_name": "Popen", "config": {}}]))),
            "keras.module.custom", "protectai/modelscan PR #359; modelaudit PR #1558"),
        # A model_config attribute whose JSON is broken: unreadable must not pass.
        Case("h5-broken-config", "hdf5", _lazy("broken.h5", lambda: hdf5_bytes(
            '{"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda", "config": ')),
            "hdf5.config-unreadable", "modelscan PR #61 review (JSONDecodeError handling)"),
        # A truncated .h5 (the superblock's end-of-file address lies past the end).
        Case("h5-truncated", "hdf5", _lazy("trunc.h5", lambda: hdf5_bytes(keras2_model_config())[:-512]),
             "hdf5.truncated", "issue #17 item 7 (truncated files)"),
        # --- ONNX ---------------------------------------------------------------------------------
        Case("onnx-custom-domain", "onnx", _lazy("custom.onnx", lambda: onnx_model(
            [helper.make_node("EvilOp", ["X"], ["Y"], domain="evil.ops")], opsets={"": 17, "evil.ops": 1})),
            "onnx.domain.custom", "issue #17 (ONNX custom operators); onnxruntime custom-op libraries"),
        # CVE-2022-25882 (GHSA-whh8-fjgc-qp73 lineage): external data location '../'.
        Case("onnx-traversal", "onnx", _lazy("trav.onnx", lambda: onnx_external("../../../etc/passwd")),
             "onnx.external-data.traversal", "CVE-2022-25882; modelaudit PR #606"),
        # CVE-2024-27318: nested traversal that beat the lstrip-based fix.
        Case("onnx-nested-traversal", "onnx", _lazy("nest.onnx", lambda: onnx_external("sub/../../secret")),
             "onnx.external-data.traversal", "CVE-2024-27318; onnx PR #5917; modelaudit PR #607"),
        # CVE-2022-25882: an absolute location.
        Case("onnx-absolute", "onnx", _lazy("abs.onnx", lambda: onnx_external("/etc/passwd")),
             "onnx.external-data.absolute", "CVE-2022-25882"),
        # CVE-2026-27489: a symlink inside the model folder pointing outside it.
        Case("onnx-symlink", "onnx", _symlink_case, "onnx.external-data.symlink", "CVE-2026-27489"),
        # CVE-2026-34445: external_data keys set with setattr (ExternalDataInfo attribute injection).
        Case("onnx-external-key", "onnx", _lazy("key.onnx", lambda: onnx_external(
            "w.bin", extra_key="__class__")),
            "onnx.external-data.unknown-key", "CVE-2026-34445"),
        # A model-local function posing as the standard Relu.
        Case("onnx-shadow-relu", "onnx", _lazy("shadow.onnx", lambda: onnx_model(
            [helper.make_node("Relu", ["X"], ["Y"])],
            functions=[helper.make_function("", "Relu", ["x"], ["y"], [helper.make_node("Neg", ["x"], ["y"])],
                                            [helper.make_opsetid("", 17)])])),
            "onnx.function.shadows-standard", "issue #17 brief (function definitions shadowing)"),
        # A custom op hidden three subgraphs deep (If then_branch).
        Case("onnx-custom-in-subgraph", "onnx", _lazy("sub.onnx", lambda: onnx_nested_if(
            3, leaf_domain="evil.ops")),
            "onnx.domain.custom", "protectai/modelscan PR #351 (same nesting blind spot, ONNX)"),
        # Subgraphs nested beyond the bound (a recursion bomb for unbounded readers).
        Case("onnx-deep", "onnx", _lazy("deep.onnx", lambda: onnx_deep_raw(60)),
             "onnx.too-deep", "issue #17 item 7 (deeply nested files)"),
        # Malformed protobuf: a group wire type at the top level.
        Case("onnx-malformed", "onnx", _write("bad.onnx", b"\x08\x08\x3b\x00\x00"),
             "onnx.malformed", "issue #17 item 7 (corrupt files)"),
    ]
    return cases
