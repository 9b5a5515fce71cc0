"""ONNX models: graph checks, an onnxruntime predictor (query access) and a small PyTorch interpreter.

The interpreter covers the operators of common classifier graphs (dense, convolutional, batch
norm, pooling, shape plumbing). It is trusted for gradients only after its outputs match
onnxruntime's on a probe batch (see ``models.refs``); anything else stays black-box.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "STANDARD_DOMAINS",
    "OnnxPredictor",
    "OnnxTorchModule",
    "UnsupportedGraph",
    "custom_ops",
    "external_data_paths",
    "score_output_kind",
]

# Operator domains onnxruntime implements itself: no custom-op library (native code) is needed.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})

OutputKind = Literal["proba", "logits", "log_proba", "sigmoid", "zipmap", "labels", "auto"]


class UnsupportedGraph(Exception):
    """The graph uses something the PyTorch interpreter does not implement (internal)."""


def _graphs(graph: Any) -> Iterator[Any]:
    """graph and every sub-graph held in node attributes (If / Loop / Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def custom_ops(model: Any) -> list[str]:
    """``domain:op`` of every node whose domain is neither standard nor a model-local function."""
    local = {(f.domain, f.name) for f in model.functions}
    found: set[str] = set()
    graphs = list(_graphs(model.graph))
    bodies = [n for f in model.functions for n in f.node]
    for node in [n for g in graphs for n in g.node] + bodies:
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            found.add(f"{node.domain}:{node.op_type}")
    return sorted(found)


def external_data_paths(model: Any) -> list[str]:
    """The 'location' of every tensor stored outside the model file (initializers, constants)."""
    import onnx

    tensors: list[Any] = []
    for g in _graphs(model.graph):
        tensors.extend(g.initializer)
        for node in g.node:
            tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    out = []
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            out.append(entries.get("location", ""))
    return out


def _producer(graph: Any, name: str) -> Any | None:
    """The node that writes name, looking through Identity nodes."""
    by_output = {o: n for n in graph.node for o in n.output}
    node = by_output.get(name)
    while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
        node = by_output.get(node.input[0])
    return node


def score_output_kind(graph: Any, name: str) -> OutputKind:
    """How to read a float output from the node that produces it (auto: decide from values)."""
    node = _producer(graph, name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return "auto"
    return {"Softmax": "proba", "LogSoftmax": "log_proba", "Sigmoid": "sigmoid"}.get(
        node.op_type, "auto"
    )  # type: ignore[return-value]  # the dict's values are OutputKind literals


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


class OnnxPredictor:
    """An onnxruntime session seen as ``x (N, ...) -> probabilities (N, C)`` or labels ``(N,)``.

    Inputs are cast to the model's input type and, when the model declares a static shape with
    the same number of values per row, reshaped to it (flat rows for an image model).
    """

    def __init__(
        self,
        session: Any,
        *,
        input_name: str,
        input_dtype: np.dtype[Any],
        input_shape: tuple[int, ...] | None,
        output_name: str,
        kind: OutputKind,
    ) -> None:
        self._session = session
        self._input = input_name
        self._dtype = input_dtype
        self.input_shape = input_shape
        self._output = output_name
        self.kind: OutputKind = kind

    def __repr__(self) -> str:
        return f"OnnxPredictor(output={self._output!r}, kind={self.kind!r})"

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x).astype(self._dtype, copy=False)
        shape = self.input_shape
        if shape is not None and arr.ndim >= 1 and tuple(arr.shape[1:]) != shape:
            per_row = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            if per_row == math.prod(shape):
                arr = arr.reshape((arr.shape[0], *shape))
        return np.ascontiguousarray(arr)

    def raw(self, x: np.ndarray) -> Any:
        """The session's answer for the chosen output, unconverted."""
        return self._session.run([self._output], {self._input: self._prepare(x)})[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.raw(x)
        if self.kind == "zipmap":
            keys = sorted(out[0]) if len(out) else []
            return np.asarray([[row[k] for k in keys] for row in out], dtype=np.float32)
        arr = np.asarray(out)
        if self.kind == "labels" or not np.issubdtype(arr.dtype, np.floating):
            return arr.astype(np.int64).reshape(-1)
        arr = arr.reshape(arr.shape[0], -1).astype(np.float32)
        if self.kind == "auto":
            self.kind = self._decide(arr)
        if arr.shape[1] == 1:
            p = arr[:, 0] if self.kind in ("proba", "sigmoid") else 1.0 / (1.0 + np.exp(-arr[:, 0]))
            return np.stack([1.0 - p, p], axis=1).astype(np.float32)
        if self.kind == "logits":
            return _softmax(arr).astype(np.float32)
        if self.kind == "log_proba":
            return np.asarray(np.exp(arr), dtype=np.float32)
        return arr

    @staticmethod
    def _decide(arr: np.ndarray) -> OutputKind:
        """proba when every row is a probability vector (one column: values in [0, 1]), else logits."""
        finite = arr[np.isfinite(arr).all(1)]
        if finite.size == 0:
            return "auto"
        in_unit = bool((finite >= -1e-6).all() and (finite <= 1 + 1e-6).all())
        if finite.shape[1] == 1:
            return "proba" if in_unit else "logits"
        sums_one = bool(np.abs(finite.sum(1) - 1.0).max() < 1e-4)
        return "proba" if in_unit and sums_one else "logits"


_TORCH_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64,
                 9: torch.bool, 10: torch.float16, 11: torch.float64}

_OPS = frozenset({
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
    "Softmax", "LogSoftmax", "Flatten", "Reshape", "Conv", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Identity", "Dropout", "Constant",
    "Transpose", "Concat", "Unsqueeze", "Squeeze", "Shape", "Gather", "Cast", "Clip",
})


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _to_tensor(proto: Any) -> Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(proto), copy=True))


def _pads(pads: Sequence[int], dims: int) -> tuple[list[int], list[int]]:
    pads = list(pads) if pads else [0] * (2 * dims)
    return pads[:dims], pads[dims:]


def _flatten2d(x: Tensor, axis: int) -> Tensor:
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _axes(x: Tensor, node_inputs: list[Tensor | None], attrs: dict[str, Any], rank: int) -> list[int]:
    raw = attrs.get("axes")
    if raw is None and len(node_inputs) > 1 and node_inputs[1] is not None:
        raw = node_inputs[1].tolist()
    return sorted(int(a) % rank for a in (raw or []))


def _need(a: list[Tensor | None], i: int, op: str) -> Tensor:
    """Input i of an operator, which must be present."""
    t = a[i] if i < len(a) else None
    if t is None:
        raise UnsupportedGraph(f"{op} without input {i}")
    return t


def _run(op: str, a: list[Tensor | None], attrs: dict[str, Any], opset: int) -> Tensor:
    """One ONNX operator on torch tensors (ONNX semantics; see the ONNX operator spec)."""
    x = _need(a, 0, op)
    if op in ("Identity", "Dropout"):
        return x  # inference: dropout is the identity
    if op == "Gemm":
        w = _need(a, 1, op)
        lhs = x.t() if attrs.get("transA", 0) else x
        rhs = w.t() if attrs.get("transB", 0) else w
        y: Tensor = float(attrs.get("alpha", 1.0)) * (lhs @ rhs)
        c = a[2] if len(a) > 2 else None
        return y if c is None else y + float(attrs.get("beta", 1.0)) * c
    if op in ("MatMul", "Add", "Sub", "Mul", "Div"):
        b = _need(a, 1, op)
        if op == "MatMul":
            return torch.matmul(x, b)
        if op == "Div" and not x.is_floating_point() and not b.is_floating_point():
            return torch.div(x, b, rounding_mode="trunc")
        if op == "Add":
            return x + b
        if op == "Sub":
            return x - b
        return x * b if op == "Mul" else x / b
    if op == "Relu":
        return F.relu(x)
    if op == "LeakyRelu":
        return F.leaky_relu(x, attrs.get("alpha", 0.01))
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op in ("Softmax", "LogSoftmax"):
        fn = F.softmax if op == "Softmax" else F.log_softmax
        axis = attrs.get("axis", -1 if opset >= 13 else 1)
        if opset >= 13:
            return fn(x, dim=axis)
        return fn(_flatten2d(x, axis), dim=1).reshape(x.shape)
    if op == "Flatten":
        return _flatten2d(x, attrs.get("axis", 1))
    if op == "Reshape":
        shape = _need(a, 1, op)
        dims = [int(s) for s in shape.tolist()]
        if not attrs.get("allowzero", 0):
            dims = [x.shape[i] if s == 0 else s for i, s in enumerate(dims)]
        return x.reshape(dims)
    if op == "Transpose":
        perm = attrs.get("perm") or list(reversed(range(x.dim())))
        return x.permute(*perm)
    if op == "Concat":
        return torch.cat([t for t in a if t is not None], dim=attrs["axis"])
    if op == "Unsqueeze":
        rank = x.dim() + len(attrs.get("axes") or (a[1].tolist() if len(a) > 1 and a[1] is not None else []))
        for ax in _axes(x, a, attrs, rank):
            x = x.unsqueeze(ax)
        return x
    if op == "Squeeze":
        axes = _axes(x, a, attrs, x.dim())
        return x.squeeze() if not axes else x.squeeze(tuple(axes))
    if op == "Shape":
        shape = torch.tensor(list(x.shape), dtype=torch.int64)
        return shape[attrs.get("start", 0): attrs.get("end", len(shape))]
    if op == "Gather":
        idx = _need(a, 1, op)
        axis = attrs.get("axis", 0) % x.dim()
        idx = idx.long() % x.shape[axis]
        picked = torch.index_select(x, axis, idx.reshape(-1))
        return picked.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))
    if op == "Cast":
        dtype = _TORCH_DTYPES.get(int(attrs["to"]))
        if dtype is None:
            raise UnsupportedGraph(f"Cast to ONNX type {attrs['to']}")
        return x.to(dtype)
    if op == "Clip":
        lo = a[1] if len(a) > 1 else None
        hi = a[2] if len(a) > 2 else None
        lo_v = lo if lo is not None else attrs.get("min")
        hi_v = hi if hi is not None else attrs.get("max")
        return torch.clamp(x, min=lo_v, max=hi_v)
    if op == "BatchNormalization":
        scale, bias, mean, var = a[1], a[2], a[3], a[4]
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        spatial = tuple(range(2, x.dim()))
        if op == "GlobalAveragePool":
            return x.mean(dim=spatial, keepdim=True)
        return x.amax(dim=spatial, keepdim=True)
    return _run_window(op, x, a, attrs)


def _run_window(op: str, x: Tensor, a: list[Tensor | None], attrs: dict[str, Any]) -> Tensor:
    """Conv, MaxPool and AveragePool (1-D to 3-D) with explicit padding."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedGraph(f"{op} with auto_pad={attrs['auto_pad']!r}")
    dims = x.dim() - 2
    if dims not in (1, 2, 3):
        raise UnsupportedGraph(f"{op} on a {x.dim()}-D input")
    begin, end = _pads(attrs.get("pads", []), dims)
    strides = attrs.get("strides") or [1] * dims
    dilations = attrs.get("dilations") or [1] * dims
    padding: list[int] | int = begin
    if begin != end:
        flat: list[int] = []
        for b, e in zip(reversed(begin), reversed(end), strict=True):
            flat += [b, e]
        fill = -math.inf if op == "MaxPool" else 0.0
        if op == "AveragePool":
            raise UnsupportedGraph("AveragePool with asymmetric pads")
        x = F.pad(x, flat, value=fill)
        padding = 0
    if op == "Conv":
        conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
        bias = a[2] if len(a) > 2 else None
        out: Tensor = conv(x, _need(a, 1, op), bias, strides, padding, dilations, attrs.get("group", 1))
        return out
    kernel = attrs["kernel_shape"]
    ceil = bool(attrs.get("ceil_mode", 0))
    if op == "MaxPool":
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
        pooled: Tensor = pool(x, kernel, strides, padding, dilations, ceil_mode=ceil)
        return pooled
    if op == "AveragePool":
        if any(d != 1 for d in dilations):
            raise UnsupportedGraph("AveragePool with dilations")
        avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        include = bool(attrs.get("count_include_pad", 0))
        averaged: Tensor = avg(x, kernel, strides, padding, ceil, include)
        return averaged
    raise UnsupportedGraph(op)


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


class OnnxTorchModule(nn.Module):
    """An ONNX classifier graph run with torch operators, returning logits (N, C).

    Initializers become buffers (so ``state_dict`` and ``weights_sha256`` see them). When the
    score output comes from a final Softmax or Sigmoid, the module returns that node's input
    (logits); when it is a probability vector from elsewhere, the module returns its log.

    Raises:
        UnsupportedGraph: an operator, attribute or output this interpreter does not handle.
    """

    def __init__(self, model: Any, *, input_name: str, output_name: str, kind: OutputKind) -> None:
        super().__init__()
        graph = model.graph
        self._opset = _opset(model)
        self._input = input_name
        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            buf = f"w{i}"
            self.register_buffer(buf, _to_tensor(init))
            self._names[init.name] = buf
        producer = _producer(graph, output_name)
        self._post: Literal["none", "log"] = "none"
        final = producer.op_type if producer is not None else ""
        if producer is not None and kind in ("proba", "sigmoid") and final in ("Softmax", "Sigmoid"):
            output_name = producer.input[0]  # the logits the final activation reads
        elif kind == "proba":
            self._post = "log"
        elif kind not in ("logits", "log_proba"):
            raise UnsupportedGraph(f"score output of kind {kind!r}")
        self._output = output_name
        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for node in _needed_nodes(graph, output_name):
            if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
                where = f"{node.domain}:" if node.domain else ""
                raise UnsupportedGraph(f"operator {where}{node.op_type}")
            attrs = _attrs(node)
            if node.op_type == "Constant":
                value = _constant(attrs)
                buf = f"c{len(self._names)}"
                self.register_buffer(buf, value)
                self._names[node.output[0]] = buf
                continue
            if node.op_type in ("MaxPool", "BatchNormalization", "Dropout") and any(node.output[1:]):
                raise UnsupportedGraph(f"{node.op_type} with more than one output")
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {name: getattr(self, buf) for name, buf in self._names.items()}
        env[self._input] = x
        for op, inputs, outputs, attrs in self._nodes:
            args = [env[n] if n else None for n in inputs]
            env[outputs[0]] = _run(op, args, attrs, self._opset)
        out = env[self._output]
        out = out.reshape(out.shape[0], -1)
        return torch.log(out.clamp_min(1e-12)) if self._post == "log" else out


def _needed_nodes(graph: Any, output_name: str) -> list[Any]:
    """The nodes output_name depends on, in graph (topological) order."""
    needed = {output_name}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def _constant(attrs: dict[str, Any]) -> Tensor:
    """The value of a Constant node."""
    if "value" in attrs:
        return _to_tensor(attrs["value"])
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise UnsupportedGraph(f"Constant with {sorted(attrs)}")


def model_dir_contains(folder: Path, location: str) -> bool:
    """True when location (relative to folder) resolves inside folder."""
    target = (folder / location).resolve()
    return target.is_relative_to(folder.resolve())
