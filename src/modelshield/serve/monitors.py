"""Live monitors of each key's queries for the gateway: built from ``monitors:``, calibrated at start.

:func:`build_monitors` turns the config's ``monitors:`` section into a :class:`MonitorBank` for the
served target. Each monitor is a library detector (``modelshield.defenses``) whose threshold is
set, at start, from the configured false-positive rate on benign *reference* rows: the target's
training split (a user model's data, or the zoo model's data set), never the test points the
gateway's benign streams use. When only test points exist, the second half of them calibrates and
the start-up log says so.

The monitors and what they watch (each key is one client):

==============  =========================================================================  =========
name            detector (paper)                                                           text
==============  =========================================================================  =========
``stateful``    ``StatefulDetector``: k-NN distance over the key's history (Chen, Carlini   yes
                and Wagner, 2020)
``blacklight``  ``Blacklight``: content fingerprints (Li et al., USENIX Security 2022), one   no
                table per key by default (``scope: global`` for the paper's shared table)
``prada``       ``PRADA``: successive-distance normality (Juuti et al., EuroS&P 2019)        yes
``coverage``    ``CoverageMonitor`` (Kesarwani et al., 2018; Knockoff Nets)                 no
``squeezing``   ``SqueezingMonitor``: feature squeezing (Xu, Evans and Qi, NDSS 2018)       no
``strip``       ``StripMonitor``: STRIP (Gao et al., ACSAC 2019)                             no
``drift``       ``DriftMonitor``: input drift against the reference                         no
==============  =========================================================================  =========

Text models: their queries are raw strings, embedded for the monitors as L2-normalised hashed
character 3-gram counts (``embed_texts``; near-duplicate messages, the queries of a text evasion
attack, lie close), which serves the distance-based ``stateful`` and ``prada``; the others read
pixels or the model's input tensor and are refused for text models with a ConfigError.

Cost per query and memory are bounded: every detector keeps bounded per-client state (ring buffers,
LRU client tables of ``MAX_CLIENTS`` keys; Blacklight, whose tables are heavy, ``BLACKLIGHT_HISTORY``
fingerprints for each of ``BLACKLIGHT_CLIENTS`` keys); PRADA's per-client history is restarted every
``PRADA_WINDOW`` queries and its clients are capped at ``MAX_CLIENTS``, since PRADA keeps everything.

Decisions: each alert is stored in the shared state, counted and logged. A monitor's action applies
once a key has raised ``act_after`` of its alerts: ``throttle`` divides the key's rate limit,
``block`` refuses the key (403) until an admin unblocks it; the request that triggers a block is
refused too, its answer withheld (the query that completes a probe is not answered).

Example:
    bank = build_monitors(target, config.monitors, model=served)
    outcome = bank.observe("k1", x, probs, labels)   # MonitorOutcome(scores, alerts, action)
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import secrets
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from modelshield.defenses.extraction import PRADA, Alert
from modelshield.defenses.monitoring import (
    Blacklight,
    CoverageMonitor,
    DriftMonitor,
    SqueezingMonitor,
    StatefulDetector,
    StripMonitor,
)
from modelshield.errors import ConfigError, ModelCapabilityError, ModelShieldError
from modelshield.serve.config import MONITOR_NAMES, MonitorsConfig, MonitorSpec
from modelshield.targets import Target

__all__ = [
    "BLACKLIGHT_CLIENTS",
    "BLACKLIGHT_HISTORY",
    "MAX_CLIENTS",
    "PRADA_WINDOW",
    "LiveMonitor",
    "MonitorBank",
    "MonitorBuilder",
    "MonitorContext",
    "MonitorOutcome",
    "available_monitors",
    "build_monitors",
    "embed_texts",
    "reference_rows",
    "register_monitor",
]

logger = logging.getLogger(__name__)

Outcome = Literal["none", "throttle", "block"]
MAX_CLIENTS = 1000
"""Keys whose state a monitor keeps at once (least recently seen forgotten first); a monitor's own
``max_clients`` parameter overrides it."""
BLACKLIGHT_HISTORY = 1000
BLACKLIGHT_CLIENTS = 128
"""Blacklight's per-key tables: fingerprints kept per key and keys kept (a stored query costs about
4.5 KB at top_n=50, so the default worst case is about 580 MB; raise with care)."""
PRADA_WINDOW = 2_000
"""PRADA's per-key history restarts after this many queries, so its Shapiro-Wilk test stays bounded."""
TEXT_DIM = 256
"""Width of the hashed character 3-gram embedding of text queries."""
_STREAM = 500  # calibration streams: reference rows are replayed as benign clients of this length
_SEVERITY: dict[str, int] = {"none": 0, "alert": 0, "throttle": 1, "block": 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorOutcome:
    """What the monitors made of one request.

    Attributes:
        scores: each monitor's latest statistic(s) for the key, as ``"<monitor>.<statistic>"``
            (finite values only), for the audit record.
        alerts: the alerts this request raised (JSON-able dicts: key_id, monitor, detector,
            score, threshold, queries, action, acted, recent_alerts, message).
        action: what the gateway must do to the key: ``"none"``, ``"throttle"`` or ``"block"``
            (the most severe action of the alerts that reached their monitor's ``act_after``).
        seconds: the monitors' wall time for this request.
    """

    scores: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    action: Outcome = "none"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "alerts": [a["monitor"] for a in self.alerts],
                "action": self.action, "ms": round(self.seconds * 1e3, 3)}


class LiveMonitor(Protocol):
    """One calibrated detector over a stream of (key, batch) observations; not thread-safe itself."""

    detector: str

    def observe(self, key_id: str, x: Tensor, probs: Tensor | None, labels: Tensor) -> list[Alert]:
        """Feed one key's batch (in arrival order); the alerts it raised."""

    def scores(self, key_id: str) -> dict[str, float]:
        """The key's latest statistic(s) (empty when none)."""

    def calibration(self) -> dict[str, Any]:
        """The threshold and how it was set, for the start-up log."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorContext:
    """What a builder gets: the target, the served model, and the benign reference rows.

    Attributes:
        target: the served target.
        model: the model the monitors may query (an ``nn.Module`` for torch targets, else the
            gateway's black-box query model).
        x: ``(N, *input_shape)`` float32 benign reference rows (text: their embeddings).
        labels: ``(N,)`` the model's labels for them.
        probs: ``(N, C)`` its probabilities, or None for a label-only model.
        source: where the rows come from (for the log).
    """

    target: Target
    model: Any
    x: Tensor
    labels: Tensor
    probs: Tensor | None
    source: str

    def streams(self, rows: Tensor | None = None) -> list[Tensor]:
        """The rows cut into benign client streams of up to 500 queries (at least one)."""
        rows = self.x if rows is None else rows
        n = max(1, math.ceil(rows.shape[0] / _STREAM))
        return [s for s in rows.tensor_split(n) if s.shape[0]]

    def halves(self) -> tuple[Tensor, list[Tensor]]:
        """The first half of the rows as a reference set and the second half as calibration streams."""
        half = max(1, self.x.shape[0] // 2)
        return self.x[:half], self.streams(self.x[half:] if self.x.shape[0] > half else self.x)


MonitorBuilder = Callable[[MonitorSpec, MonitorContext], LiveMonitor]


@dataclass(frozen=True, slots=True)
class _Kind:
    builder: MonitorBuilder
    text: bool


_REGISTRY: dict[str, _Kind] = {}


def register_monitor(name: str, builder: MonitorBuilder, *, text: bool = False) -> None:
    """Register (or replace) the builder of the monitor ``name`` (one of ``MONITOR_NAMES``).

    ``text``: whether it applies to text models (their queries reach it as ``embed_texts`` rows).
    """
    if name not in MONITOR_NAMES:
        raise ConfigError(f"register_monitor: 'name' must be one of {', '.join(MONITOR_NAMES)}; got "
                          f"{name!r}. Add the name to modelshield.serve.config.MONITOR_NAMES first.")
    _REGISTRY[name] = _Kind(builder, text)


def available_monitors(*, text: bool = False) -> tuple[str, ...]:
    """The monitors that can be built (for text models when ``text``), in ``MONITOR_NAMES`` order."""
    return tuple(n for n in MONITOR_NAMES if n in _REGISTRY and (_REGISTRY[n].text or not text))


# --- the bank -----------------------------------------------------------------------------------


class _Recent:
    """Per key: queries seen by the bank; per (monitor, key): the query numbers of its latest alerts.

    Both LRU-capped, so memory stays bounded whatever the number of keys.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._queries: OrderedDict[str, int] = OrderedDict()
        self._alerts: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()

    def seen(self, key_id: str, rows: int) -> int:
        """Count the key's rows; its query count afterwards."""
        n = self._queries.pop(key_id, 0) + rows
        self._queries[key_id] = n
        while len(self._queries) > self.cap:
            self._queries.popitem(last=False)
        return n

    def add(self, spec: MonitorSpec, key_id: str, at: int) -> int:
        """Record an alert of spec's monitor at the key's query ``at``; the alerts within its window."""
        k = (spec.name, key_id)
        recent = self._alerts.pop(k, None) or deque(maxlen=spec.alerts_to_act)
        recent.append(at)
        self._alerts[k] = recent
        while len(self._alerts) > self.cap:
            self._alerts.popitem(last=False)
        return sum(1 for q in recent if spec.act_window <= 0 or at - q < spec.act_window)

    def reset(self, key_id: str) -> None:
        for k in [k for k in self._alerts if k[1] == key_id]:
            del self._alerts[k]


class MonitorBank:
    """The gateway's calibrated monitors; ``observe`` is thread-safe (one lock per monitor).

    Attributes:
        specs: the enabled monitors' settings, in order.
        text: whether queries are strings (embedded with ``embed_texts`` before the monitors).
        calibration: per monitor, its threshold and calibration summary.
        startup_s: seconds spent building and calibrating at start.
        reference_source: where the reference rows came from.
    """

    def __init__(self, monitors: Sequence[tuple[MonitorSpec, LiveMonitor]], *, text: bool,
                 startup_s: float = 0.0, reference_source: str = "") -> None:
        self._monitors = list(monitors)
        self._locks = [threading.Lock() for _ in self._monitors]
        self._recent = _Recent(MAX_CLIENTS * max(1, len(self._monitors)))
        self._count_lock = threading.Lock()
        self.specs = tuple(spec for spec, _ in self._monitors)
        self.text = text
        self.startup_s = startup_s
        self.reference_source = reference_source
        self.calibration = {spec.name: mon.calibration() for spec, mon in self._monitors}

    def __bool__(self) -> bool:
        return bool(self._monitors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def observe(self, key_id: str, x: np.ndarray | Sequence[str], probs: np.ndarray | None,
                labels: np.ndarray) -> MonitorOutcome:
        """Run every monitor on one answered batch of the key.

        Args:
            key_id: the key (the monitors' client id).
            x: the batch, ``(N, *input_shape)`` float32 (or N strings for a text model).
            probs: ``(N, C)`` the model's probabilities, or None for a label-only model.
            labels: ``(N,)`` the model's labels.
        """
        if not self._monitors:
            return MonitorOutcome()
        start = time.perf_counter()
        xt = (embed_texts(list(x)) if self.text
              else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        pt = None if probs is None else torch.from_numpy(np.asarray(probs, dtype=np.float64))
        lt = torch.from_numpy(np.asarray(labels).astype(np.int64))
        scores: dict[str, float] = {}
        alerts: list[dict[str, Any]] = []
        action: Outcome = "none"
        with self._count_lock:
            at = self._recent.seen(key_id, int(xt.shape[0]))
        for (spec, mon), lock in zip(self._monitors, self._locks, strict=True):
            with lock:
                raised = mon.observe(key_id, xt, pt, lt)
                latest = mon.scores(key_id)
            scores.update({f"{spec.name}.{k}": float(v) for k, v in latest.items() if math.isfinite(v)})
            for a in raised:
                with self._count_lock:
                    count = self._recent.add(spec, key_id, at)
                acted = spec.action != "alert" and count >= spec.alerts_to_act
                if acted and _SEVERITY[spec.action] > _SEVERITY[action]:
                    action = "block" if spec.action == "block" else "throttle"
                alerts.append({"key_id": key_id, "monitor": spec.name, "detector": a.detector,
                               "score": a.score, "threshold": a.threshold, "queries": a.queries,
                               "action": spec.action, "acted": acted, "recent_alerts": count,
                               "message": a.message})
        return MonitorOutcome(scores=scores, alerts=alerts, action=action,
                              seconds=time.perf_counter() - start)

    def forget(self, key_id: str) -> None:
        """Forget a key's alert counts (after an admin unblocks it); detectors keep their state."""
        with self._count_lock:
            self._recent.reset(key_id)

    def describe(self) -> dict[str, Any]:
        return {"monitors": [spec.to_dict() for spec in self.specs], "calibration": self.calibration,
                "startup_s": round(self.startup_s, 3), "reference": self.reference_source}


# --- building --------------------------------------------------------------------------------------


def build_monitors(target: Target, config: MonitorsConfig, *, model: Any,
                   predict: Callable[[Any], tuple[np.ndarray | None, np.ndarray]]) -> MonitorBank:
    """Build and calibrate the monitors of ``config`` for ``target``.

    Args:
        target: the served target.
        config: the ``monitors:`` section.
        model: what monitors that query the model get (``nn.Module`` for torch targets, else the
            gateway's query model).
        predict: the gateway's ``batch -> (probs or None, labels)`` (float32 rows, or strings for
            text), used once on the reference rows.

    Raises:
        ConfigError: a monitor not available for this kind of model, or a parameter its detector
            does not take or refuses (one line, naming ``monitors.<name>.<field>`` and the fix).
    """
    start = time.perf_counter()
    if not config.entries:
        return MonitorBank([], text=target.text)
    _check_applicable(target, config)
    rows, source = reference_rows(target, config.reference)
    probs, labels = _predict_chunked(predict, rows)
    x = embed_texts(list(rows)) if target.text else torch.as_tensor(rows, dtype=torch.float32)
    ctx = MonitorContext(target=target, model=model, x=x, labels=torch.from_numpy(labels.astype(np.int64)),
                         probs=None if probs is None else torch.from_numpy(probs.astype(np.float64)),
                         source=source)
    built: list[tuple[MonitorSpec, LiveMonitor]] = []
    for spec in config.entries:
        t0 = time.perf_counter()
        try:
            mon = _REGISTRY[spec.name].builder(spec, ctx)
        except ConfigError:
            raise
        except ModelCapabilityError as exc:  # e.g. squeezing or STRIP on a label-only model
            line = " ".join(str(exc).split())
            raise ConfigError(f"gateway config: 'monitors.{spec.name}' needs a model that answers "
                              f"probabilities; got: {line} Remove it from monitors for this model.") from None
        except ModelShieldError as exc:  # e.g. too few reference rows for this fpr
            line = " ".join(str(exc).split())
            raise ConfigError(f"gateway config: 'monitors.{spec.name}' cannot be calibrated for this model "
                              f"({ctx.x.shape[0]} reference rows, fpr {spec.fpr:g}); got: {line} Set its "
                              "parameters in monitors, raise monitors.reference, or remove it.") from None
        built.append((spec, mon))
        logger.info("monitor %s (%s, action %s) calibrated in %.2f s on %d reference rows: %s", spec.name,
                    mon.detector, spec.action, time.perf_counter() - t0, ctx.x.shape[0], mon.calibration())
    bank = MonitorBank(built, text=target.text, startup_s=time.perf_counter() - start,
                       reference_source=source)
    logger.info("monitors %s ready in %.2f s (reference: %s)", ", ".join(bank.names), bank.startup_s, source)
    return bank


def _check_applicable(target: Target, config: MonitorsConfig) -> None:
    usable = available_monitors(text=target.text)
    kind = "text" if target.text else "tabular" if target.tabular else "image"
    for spec in config.entries:
        if spec.name in usable:
            continue
        if spec.name not in _REGISTRY:
            raise ConfigError(
                f"gateway config: 'monitors.{spec.name}' is not available in this installation (its detector "
                f"is missing); got {spec.name}: {spec.to_dict()}. Remove it, or use one of "
                f"{', '.join(available_monitors()) or 'none'}.")
        raise ConfigError(
            f"gateway config: 'monitors.{spec.name}' is not available for {kind} models (it reads the "
            f"model's input tensor, and {kind} queries are strings); got {spec.name} for the model "
            f"{target.model_info.get('name')!r}. Remove it; for {kind} models use "
            f"{', '.join(usable) or 'no monitors'}.")


def reference_rows(target: Target, n: int) -> tuple[np.ndarray | tuple[str, ...], str]:
    """Up to n benign reference rows for calibration, and where they come from.

    The target's training split when known (a user model's data, or a zoo model's data set, read
    from ``$MODELSHIELD_DATA``); else the second half of its test points (then the first half is
    left to benign test streams). Rows are a seeded (seed 0) random subset, in that random order.
    """
    rows, source = _training_rows(target)
    if rows is None:
        texts = target.texts if target.text else None
        total = len(texts) if texts is not None else int(target.x.shape[0])
        half = total // 2
        if total - half < 2:
            raise ConfigError(
                f"gateway config: 'monitors' needs benign reference rows; got {total} test points and no "
                f"training split for the model {target.model_info.get('name')!r}. Serve it with its --data "
                "(a data set with a training split), or drop the monitors section.")
        rows = texts[half:] if texts is not None else target.x[half:].detach().cpu().numpy()
        source = (f"test points {half}..{total - 1} of {target.data_info.get('name')!r} (no training split "
                  f"is known; benign test streams should use test points 0..{half - 1})")
        logger.warning("monitors: calibrating on %s", source)
    size = len(rows)
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(size, generator=gen)[: min(n, size)].tolist()
    if isinstance(rows, tuple):
        return tuple(rows[i] for i in pick), f"{len(pick)} rows of {source}"
    return np.ascontiguousarray(rows[pick], dtype=np.float32), f"{len(pick)} rows of {source}"


def _training_rows(target: Target) -> tuple[np.ndarray | tuple[str, ...] | None, str]:
    data = target.data
    x_train = getattr(data, "x_train", None)
    if isinstance(x_train, tuple) and x_train:
        return tuple(str(t) for t in x_train), f"the training split of {getattr(data, 'name', 'the data')!r}"
    if isinstance(x_train, Tensor) and x_train.shape[0]:
        return x_train.detach().cpu().numpy(), f"the training split of {getattr(data, 'name', 'the data')!r}"
    name = target.model_info.get("name")
    if target.model_info.get("source") != "zoo" or not isinstance(name, str):
        return None, ""
    from modelshield import zoo
    from modelshield.data import load_dataset, load_sms_spam, load_tabular_dataset

    s = zoo.spec(name)
    if target.text:
        texts = load_sms_spam(None, deduplicate=s.deduplicate).texts_train
        return texts, f"the training split of {s.dataset!r}"
    if s.kind == "sklearn":
        tab = load_tabular_dataset(s.dataset, None, deduplicate=s.deduplicate)
        return tab.x_train.numpy(), f"the training split of {s.dataset!r}"
    return load_dataset(s.dataset).x_train.numpy(), f"the training split of {s.dataset!r}"


def _predict_chunked(predict: Callable[[Any], tuple[np.ndarray | None, np.ndarray]],
                     rows: np.ndarray | tuple[str, ...],
                     chunk: int = 512) -> tuple[np.ndarray | None, np.ndarray]:
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for i in range(0, len(rows), chunk):
        p, lab = predict(list(rows[i:i + chunk]) if isinstance(rows, tuple) else rows[i:i + chunk])
        labels.append(np.asarray(lab))
        if p is not None:
            probs.append(np.asarray(p))
    return (np.concatenate(probs) if len(probs) == len(labels) else None), np.concatenate(labels)


def embed_texts(texts: Sequence[str], dim: int = TEXT_DIM) -> Tensor:
    """(N, dim) float32: each text's character 3-gram counts hashed (CRC-32) into dim bins, L2-normalised.

    The hashing trick (Weinberger et al., ICML 2009) over lower-cased character 3-grams: a message
    and a lightly edited copy (swapped characters, inserted words) share most 3-grams, so they lie
    close; different messages lie far apart. Stable across processes (no salted ``hash``).
    """
    out = torch.zeros(len(texts), dim)
    for i, text in enumerate(texts):
        t = f"  {text.lower()}  "
        idx = [zlib.crc32(t[j:j + 3].encode("utf-8")) % dim for j in range(len(t) - 2)]
        if idx:
            out[i] = torch.bincount(torch.tensor(idx), minlength=dim).float()
    normed: Tensor = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return normed


# --- the adapters ----------------------------------------------------------------------------------


def _construct(cls: Callable[..., Any], spec: MonitorSpec, fixed: dict[str, Any],
               defaults: dict[str, Any] | None = None, *, args: tuple[Any, ...] = ()) -> Any:
    """cls(*args, **defaults, **spec.params, **fixed), with unknown or refused parameters as a ConfigError."""
    owner = getattr(cls, "__name__", str(cls))
    sig = inspect.signature(cls)
    if dataclasses.is_dataclass(cls):
        allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    else:
        allowed = {p.name for p in sig.parameters.values()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    reserved = set(fixed) | {"model"}
    settable = sorted(allowed - reserved)
    params = dict(spec.params)
    for name, value in params.items():
        if name not in allowed or name in reserved:
            raise ConfigError(
                f"gateway config: 'monitors.{spec.name}.{name}' is not a parameter of {owner}; got "
                f"{name}: {value!r}. Remove it or use one of {', '.join(settable) or 'none'} (and action, "
                "fpr, act_after).")
    usable = {k: v for k, v in (defaults or {}).items() if k in allowed}
    try:
        return cls(*args, **{**usable, **params, **fixed})
    except (ModelShieldError, TypeError, ValueError) as exc:
        line = " ".join(str(exc).split())
        raise ConfigError(f"gateway config: 'monitors.{spec.name}' has a value {owner} refuses: "
                          f"{line}") from None


class _Stateful:
    def __init__(self, det: StatefulDetector) -> None:
        self.det = det
        self.detector = "StatefulDetector"

    def observe(self, key_id: str, x: Tensor, probs: Tensor | None, labels: Tensor) -> list[Alert]:
        return self.det.update(key_id, x)

    def scores(self, key_id: str) -> dict[str, float]:
        return self.det.last_scores(key_id)

    def calibration(self) -> dict[str, Any]:
        return dict(self.det.calibration_ or {})


class _Blacklight:
    def __init__(self, det: Blacklight) -> None:
        self.det = det
        self.detector = "Blacklight"

    def observe(self, key_id: str, x: Tensor, probs: Tensor | None, labels: Tensor) -> list[Alert]:
        return self.det.update(key_id, x)

    def scores(self, key_id: str) -> dict[str, float]:
        return self.det.last_scores(key_id)

    def calibration(self) -> dict[str, Any]:
        return dict(self.det.calibration_ or {})


class _Prada:
    """PRADA with bounded per-key cost: its history restarts every PRADA_WINDOW queries, LRU keys."""

    def __init__(self, det: PRADA) -> None:
        self.det = det
        self.detector = "PRADA"
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def observe(self, key_id: str, x: Tensor, probs: Tensor | None, labels: Tensor) -> list[Alert]:
        if self.det.queries(key_id) + x.shape[0] > PRADA_WINDOW:
            self.det.reset(key_id)
        self._seen[key_id] = None
        self._seen.move_to_end(key_id)
        while len(self._seen) > MAX_CLIENTS:
            gone, _ = self._seen.popitem(last=False)
            self.det.reset(gone)
        alerts = self.det.update(key_id, x, labels)
        self.det.flagged_.discard(key_id)  # the bank, not PRADA, remembers who was flagged
        return alerts

    def scores(self, key_id: str) -> dict[str, float]:
        w = self.det.shapiro_.get(key_id)
        return {} if w is None else {"shapiro_w": float(w)}

    def calibration(self) -> dict[str, Any]:
        return {k: v for k, v in (self.det.calibration_ or {}).items() if k != "min_w"}


class _Generic:
    """A monitor of the #18 convention: ``update(client_id, x, probs=None)`` and ``last_scores``."""

    def __init__(self, det: Any, detector: str) -> None:
        self.det = det
        self.detector = detector

    def observe(self, key_id: str, x: Tensor, probs: Tensor | None, labels: Tensor) -> list[Alert]:
        alerts: list[Alert] = self.det.update(key_id, x, probs=probs)
        return alerts

    def scores(self, key_id: str) -> dict[str, float]:
        latest = self.det.last_scores(key_id)
        return {str(k): float(v) for k, v in dict(latest).items()}

    def calibration(self) -> dict[str, Any]:
        cal = getattr(self.det, "calibration_", None)
        out = dict(cal) if isinstance(cal, dict) else {}
        threshold = getattr(self.det, "threshold_", None)
        if threshold is not None:
            out.setdefault("threshold", threshold)
        return out


def _build_stateful(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    k = dict(spec.params).get("k", 10)
    # min_history = k as in the authors' code: a client's first retry of an input is not an alert
    # clear_on_alert False: a probing key keeps alerting on every near-duplicate query (Chen et al.
    # clear the history at each detection, which spaces alerts k + 1 queries apart), so the burst
    # rule of act_after sees the attack at once while a benign key's isolated false alerts stay rare
    defaults: dict[str, Any] = {"k": 10, "history": 1000, "max_clients": MAX_CLIENTS, "min_history": k,
                                "clear_on_alert": False}
    if ctx.target.text:
        defaults["encoder"] = "pixels"  # the 3-gram embedding is already a small, metric space
    det = _construct(StatefulDetector, spec, {"fpr": spec.fpr}, defaults)
    return _Stateful(det.fit(ctx.streams()))


def _build_blacklight(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    dim = math.prod(ctx.x.shape[1:])
    lo, hi = ctx.target.bounds
    # scope "client": the monitors are per client, and a global table would block the second
    # client to send a popular input (set scope: global for the paper's cross-account table)
    defaults: dict[str, Any] = {"window": max(4, min(20, dim // 8)), "step": 0.2 * (hi - lo),
                                "scope": "client", "history": BLACKLIGHT_HISTORY,
                                "max_clients": BLACKLIGHT_CLIENTS,
                                # a secret hash key per gateway process, so a client cannot predict
                                # which windows of its query are sampled (see Blacklight.key)
                                "key": secrets.randbits(63)}
    det = _construct(Blacklight, spec, {"fpr": spec.fpr}, defaults)
    return _Blacklight(det.fit(ctx.streams()))


PRADA_STREAMS = 200
PRADA_STREAM_LEN = 250


def _build_prada(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    """PRADA with δ calibrated on ``PRADA_STREAMS`` simulated benign clients: each a seeded random
    draw (without replacement) of ``PRADA_STREAM_LEN`` reference rows. The reference cut into a few
    500-query streams gives δ = the lowest of about 4 statistics (floor(fpr * 4) = 0 streams may be
    flagged), which held-out clients undercut about once in 5 (1.25% of MNIST test queries alerted);
    200 draws put δ at the benign statistic's fpr-quantile."""
    det = _construct(PRADA, spec, {}, {"check_every": 10})
    n = ctx.x.shape[0]
    length = min(PRADA_STREAM_LEN, n)
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randperm(n, generator=gen)[:length] for _ in range(PRADA_STREAMS)] if n > length else [
        torch.arange(n)]
    streams = [(ctx.x[idx], ctx.labels[idx]) for idx in draws]
    return _Prada(det.calibrate(streams, max_fpr=spec.fpr))


def _build_coverage(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    det = _construct(CoverageMonitor, spec, {"fpr": spec.fpr}, {"max_clients": MAX_CLIENTS})
    ref, streams = ctx.halves()
    if ctx.probs is None:  # a label-only model: the input-space statistic alone
        return _Generic(det.fit(ref, streams), "CoverageMonitor")
    half, sizes = ref.shape[0], [s.shape[0] for s in streams]
    if sum(sizes) != ctx.probs.shape[0] - half:  # too few rows to split: the input statistic alone
        return _Generic(det.fit(ref, streams), "CoverageMonitor")
    probs = list(torch.split(ctx.probs[half:].float(), sizes))
    return _Generic(det.fit(ref, streams, reference_probs=ctx.probs[:half].float(), benign_probs=probs),
                    "CoverageMonitor")


def _build_drift(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    det = _construct(DriftMonitor, spec, {"fpr": spec.fpr}, {"max_clients": MAX_CLIENTS})
    ref, streams = ctx.halves()
    return _Generic(det.fit(ref, streams), "DriftMonitor")


def _build_squeezing(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    defaults: dict[str, Any] = {"max_clients": MAX_CLIENTS, "bounds": ctx.target.bounds}
    if ctx.x.dim() != 4:  # median filters need images: bit-depth squeezing only for tabular rows
        defaults["median_sizes"] = ()
    det = _construct(SqueezingMonitor, spec, {"fpr": spec.fpr}, defaults, args=(ctx.model,))
    return _Generic(det.fit(ctx.x), "SqueezingMonitor")


def _build_strip(spec: MonitorSpec, ctx: MonitorContext) -> LiveMonitor:
    det = _construct(StripMonitor, spec, {"fpr": spec.fpr},
                     {"max_clients": MAX_CLIENTS, "bounds": ctx.target.bounds}, args=(ctx.model,))
    # STRIP scores each row through n_overlays blends (model calls): calibrate on 2/fpr rows (>= 400),
    # enough for the fpr quantile, so start-up stays seconds on MNIST-sized models
    rows = min(ctx.x.shape[0], max(400, math.ceil(2.0 / spec.fpr)))
    return _Generic(det.fit(ctx.x[:rows]), "StripMonitor")


register_monitor("stateful", _build_stateful, text=True)
register_monitor("blacklight", _build_blacklight)
register_monitor("prada", _build_prada, text=True)
register_monitor("coverage", _build_coverage)
register_monitor("squeezing", _build_squeezing)
register_monitor("strip", _build_strip)
register_monitor("drift", _build_drift)
