"""Validation of ``/v1/predict`` bodies and shaping of the answers a key's policy allows.

Pure functions of bytes and arrays (no web framework), so every rule is unit-testable: the body
must be a JSON object ``{"inputs": [...], "dtype": "float32"}`` whose ``inputs`` is a rectangular
array of finite numbers of shape ``(N, *input_shape)`` inside the model's bounds, with
``1 <= N <= max_batch``. A problem comes back as a :class:`FieldError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshield.serve.keys import Policy

__all__ = ["DTYPES", "FieldError", "InputSpec", "TextSpec", "body_digest", "parse_predict", "parse_texts",
           "retry_after", "shape_answer", "unique_keys"]

DTYPES = ("float32", "float64")
"""The ``dtype`` a request may declare (its values are JSON numbers either way)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class InputSpec:
    """What one request may hold: rows of ``shape`` with values in ``bounds``, at most ``max_batch``."""

    shape: tuple[int, ...]
    bounds: tuple[float, float]
    max_batch: int

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "bounds": list(self.bounds), "max_batch": self.max_batch,
                "dtypes": list(DTYPES)}


@dataclass(frozen=True, kw_only=True, slots=True)
class TextSpec:
    """What one request to a text model may hold: at most ``max_batch`` non-empty strings of at most
    ``max_chars`` characters each (the whole body is bounded by ``max_body_bytes`` before parsing)."""

    max_batch: int
    max_chars: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", "max_chars": self.max_chars, "max_batch": self.max_batch}


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldError:
    """Why a request was refused (HTTP 422): the field (``loc``), a sentence, and a short kind."""

    loc: tuple[str, ...]
    message: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        """FastAPI's 422 shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
        return {"detail": [{"loc": ["body", *self.loc], "msg": self.message, "type": self.kind}]}


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFinite(name)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook`` refusing repeated keys (ValueError): parsers disagree on
    which copy wins (RFC 8259 §4), so a proxy and the gateway could read different requests."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def body_digest(body: bytes) -> str:
    """SHA-256 (hex) of a request body: what the audit log records of the input."""
    return hashlib.sha256(body).hexdigest()


def parse_predict(body: bytes, spec: InputSpec) -> np.ndarray | FieldError:
    """The ``(N, *shape)`` float32 batch of a ``/v1/predict`` body, or why it is refused."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except _NonFinite as exc:
        return FieldError(loc=("inputs",), kind="value_error.not_finite",
                          message=f"inputs must hold finite numbers; got {exc.args[0]}. Replace NaN and "
                                  "infinities with values inside the bounds.")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: deep nesting
        return FieldError(loc=(), kind="json_invalid",
                          message=f"the body must be a JSON object; got invalid JSON ({exc}). Send "
                                  '{"inputs": [[...], ...]} with Content-Type: application/json.')
    if not isinstance(payload, dict):
        return FieldError(loc=(), kind="type_error.object",
                          message=f"the body must be a JSON object; got a {type(payload).__name__}. Send "
                                  '{"inputs": [[...], ...]}.')
    extra = sorted(set(payload) - {"inputs", "dtype"})
    if extra:
        return FieldError(loc=(extra[0],), kind="extra_forbidden",
                          message=f"the body may hold only 'inputs' and 'dtype'; got {extra!r}. Remove them.")
    dtype = payload.get("dtype", "float32")
    if dtype not in DTYPES:
        return FieldError(loc=("dtype",), kind="value_error.dtype",
                          message=f"dtype must be one of {list(DTYPES)}; got {dtype!r}. Send numbers as "
                                  "float32 (or float64) values.")
    if "inputs" not in payload:
        return FieldError(loc=("inputs",), kind="missing",
                          message="inputs is required; got nothing. Send {\"inputs\": [[...], ...]}.")
    rows = payload["inputs"]
    if not isinstance(rows, list) or not rows:
        return FieldError(loc=("inputs",), kind="type_error.list",
                          message=f"inputs must be a non-empty list of rows; got "
                                  f"{_brief(rows)}. Send a batch: [[...], ...].")
    if len(rows) > spec.max_batch:
        return FieldError(loc=("inputs",), kind="value_error.batch_size",
                          message=f"inputs must hold at most {spec.max_batch} rows; got {len(rows)}. Split "
                                  "the batch into several requests.")
    try:
        arr = np.asarray(rows)
    except ValueError:  # ragged nesting
        return FieldError(loc=("inputs",), kind="value_error.shape",
                          message=f"inputs must be a rectangular array of shape (N, {_dims(spec.shape)}); "
                                  "got rows of different lengths. Send equal-sized rows.")
    if arr.dtype.kind not in "iuf":
        got = "strings" if arr.dtype.kind in "US" else "booleans" if arr.dtype.kind == "b" else "non-numbers"
        return FieldError(loc=("inputs",), kind="type_error.number",
                          message=f"inputs must hold only JSON numbers ({dtype}); got {got}. Send numbers, "
                                  "not strings, booleans or null.")
    if arr.shape[1:] != spec.shape:
        return FieldError(loc=("inputs",), kind="value_error.shape",
                          message=f"inputs must have shape (N, {_dims(spec.shape)}); got "
                                  f"{tuple(arr.shape)}. Reshape each row to {spec.shape}.")
    x = arr.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        idx = int(np.argwhere(~finite.reshape(len(x), -1))[0][0])
        return FieldError(loc=("inputs", str(idx)), kind="value_error.not_finite",
                          message=f"inputs must hold finite numbers; got a non-finite value in row {idx}. "
                                  "Replace it with a value inside the bounds.")
    lo, hi = spec.bounds
    outside = (x < lo) | (x > hi)
    if outside.any():
        flat = x.reshape(len(x), -1)
        row = int(np.argwhere(outside.reshape(len(x), -1))[0][0])
        return FieldError(loc=("inputs", str(row)), kind="value_error.bounds",
                          message=f"inputs must lie in the bounds [{lo}, {hi}]; got {int(outside.sum())} "
                                  f"values outside (row {row}: min {float(flat[row].min())!r}, max "
                                  f"{float(flat[row].max())!r}). Rescale the inputs to [{lo}, {hi}].")
    return x.astype(np.float32)


def parse_texts(body: bytes, spec: TextSpec) -> list[str] | FieldError:
    """The messages of a text model's ``/v1/predict`` body ``{"inputs": ["message", ...]}``, or why not.

    Each item must be a non-empty string (not only whitespace) of at most ``spec.max_chars``
    characters; a bad item is named by its index (``inputs.<i>``).
    """
    try:
        payload = json.loads(body, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except _NonFinite as exc:
        return FieldError(loc=("inputs",), kind="type_error.string",
                          message=f"inputs must hold strings; got {exc.args[0]}. Send {{\"inputs\": "
                                  '["message", ...]}.')
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: deep nesting
        return FieldError(loc=(), kind="json_invalid",
                          message=f"the body must be a JSON object; got invalid JSON ({exc}). Send "
                                  '{"inputs": ["message", ...]} with Content-Type: application/json.')
    if not isinstance(payload, dict):
        return FieldError(loc=(), kind="type_error.object",
                          message=f"the body must be a JSON object; got a {type(payload).__name__}. Send "
                                  '{"inputs": ["message", ...]}.')
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        return FieldError(loc=(extra[0],), kind="extra_forbidden",
                          message=f"the body of a text model may hold only 'inputs'; got {extra!r}. "
                                  "Remove them.")
    if "inputs" not in payload:
        return FieldError(loc=("inputs",), kind="missing",
                          message='inputs is required; got nothing. Send {"inputs": ["message", ...]}.')
    rows = payload["inputs"]
    if not isinstance(rows, list) or not rows:
        return FieldError(loc=("inputs",), kind="type_error.list",
                          message=f"inputs must be a non-empty list of strings; got {_brief(rows)}. Send "
                                  '["message", ...].')
    if len(rows) > spec.max_batch:
        return FieldError(loc=("inputs",), kind="value_error.batch_size",
                          message=f"inputs must hold at most {spec.max_batch} messages; got {len(rows)}. "
                                  "Split the batch into several requests.")
    for i, item in enumerate(rows):
        if not isinstance(item, str):
            return FieldError(loc=("inputs", str(i)), kind="type_error.string",
                              message=f"inputs[{i}] must be a string; got {_brief(item)} "
                                      f"({type(item).__name__}). Send each message as a JSON string.")
        if not item.strip():
            return FieldError(loc=("inputs", str(i)), kind="value_error.empty",
                              message=f"inputs[{i}] must be a non-empty message; got {item!r}. Drop it or "
                                      "send its text.")
        if len(item) > spec.max_chars:
            return FieldError(loc=("inputs", str(i)), kind="value_error.too_long",
                              message=f"inputs[{i}] must have at most {spec.max_chars} characters; got "
                                      f"{len(item)}. Shorten it or split it into several messages.")
    return list(rows)


def shape_answer(probs: np.ndarray | None, labels: np.ndarray, *, policy: Policy, round_digits: int,
                 class_names: Sequence[str] | None) -> dict[str, Any]:
    """The JSON answer a policy allows: labels always; rounded top-k or all probabilities on request.

    ``probs``: (N, C) probabilities, or None for a label-only model (then only labels are given).
    """
    out: dict[str, Any] = {"labels": [int(v) for v in labels.tolist()]}
    if class_names is not None:
        out["classes"] = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in out["labels"]]
    if probs is None or policy.output == "label":
        return out
    rounded = np.round(probs.astype(np.float64), round_digits)
    if policy.output == "probabilities":
        out["probabilities"] = rounded.tolist()
        return out
    k = min(policy.top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out["top_k"] = [[{"label": int(c), "probability": float(rounded[i, c])} for c in row]
                    for i, row in enumerate(order.tolist())]
    return out


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds if seconds < 31_536_000 else 31_536_000)))  # inf, nan: a year
