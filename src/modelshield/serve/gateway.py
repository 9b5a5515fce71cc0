"""The gateway's core, free of any web framework: model, keys, quotas, audit and metrics.

:class:`Gateway` is what every endpoint calls: it authenticates a key, applies its policy (endpoints,
rate limit, query budget), runs the model, and appends one audit record per request before the
answer is released (``AuditLog`` group-commits concurrent requests into one transaction, so the
cost of durability is shared). ``modelshield.serve.app`` maps HTTP onto it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelshield.errors import ModelCapabilityError
from modelshield.models import CallableModel, TextAnswers
from modelshield.secure.audit import Artifact, AuditLog, Entry
from modelshield.serve.batching import MicroBatcher
from modelshield.serve.config import GatewayConfig
from modelshield.serve.inputs import FieldError, InputSpec, TextSpec, parse_predict, parse_texts, shape_answer
from modelshield.serve.keys import ApiKey, KeyStore
from modelshield.serve.monitors import MonitorBank, MonitorOutcome, build_monitors
from modelshield.serve.quota import Metrics
from modelshield.serve.store import SharedState, open_state, throttled
from modelshield.targets import Target, as_query_model

__all__ = ["Decision", "Gateway", "open_audit_log"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """What the gateway decided about one request: HTTP status, decision name, detail, Retry-After."""

    status: int
    decision: str
    detail: str = ""
    retry_after_s: float | None = None

    @property
    def allowed(self) -> bool:
        return self.status < 400


ALLOW = Decision(status=200, decision="allowed")


def open_audit_log(target: str) -> AuditLog:
    """Open the audit log at ``target`` (SQLite path or ``postgresql://`` URL), creating a SQLite one
    (with its signing key beside it) when absent."""
    if not target.startswith(("postgresql://", "postgres://")) and not Path(target).expanduser().exists():
        Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return AuditLog.init(target)
    return AuditLog.open(target)


class Gateway:
    """One served model with its key store, token buckets, audit log and metrics; thread-safe.

    Example:
        gw = Gateway.open(target, config)
        key = gw.authenticate("msk_...")
        answer = gw.predict(key, x, input_sha256=digest)
    """

    def __init__(self, *, target: Target, config: GatewayConfig, keys: KeyStore | None = None,
                 audit: AuditLog | None = None, state: SharedState | None = None) -> None:
        self.target = target
        self.config = config
        self.metrics = Metrics()
        self.text = target.text
        self.spec: InputSpec | TextSpec = (
            TextSpec(max_batch=config.max_batch, max_chars=config.max_text_chars) if self.text else
            InputSpec(shape=tuple(int(d) for d in target.x.shape[1:]), bounds=config.bounds or target.bounds,
                      max_batch=config.max_batch))
        self.model, self.labels_only = _query_model(target)
        self._text_answers = _text_answers(target) if self.text else None
        if self._text_answers is not None:
            self.labels_only = self._text_answers.output == "labels"
        self.class_names: tuple[str, ...] | None = target.class_names or _data_classes(target)
        name = str(target.model_info.get("name") or "model")
        digest = target.model_info.get("weights_sha256") or target.model_info.get("file_sha256")
        self.artifact = Artifact(name=name, sha256=digest if _is_hex64(digest) else None)
        self._model_lock = threading.Lock()
        # one model call for the rows of concurrent requests (serve.batching); None: batching off
        self.batcher: MicroBatcher | None = None if config.batch_wait_ms <= 0 or self.text else MicroBatcher(
            self._answers, max_rows=config.batch_max_rows, wait_s=config.batch_wait_ms / 1000.0)
        self._since_checkpoint = 0
        self._checkpoint_lock = threading.Lock()
        # live monitors, calibrated now on benign reference rows: before any store is opened or
        # created, so a monitor's config error leaves the state folder as it was
        self.monitors: MonitorBank = build_monitors(
            target, config.monitors, predict=self._answers,
            model=self.model if self.text else target.module)
        self.keys = keys if keys is not None else KeyStore.open(config.key_store)
        try:
            self.audit = audit if audit is not None else open_audit_log(config.audit_target)
            try:
                # rate limits, budgets, blocks, throttles, alerts: this process's, or Redis's shared by
                # replicas (namespaced by the model's digest: two models on one Redis keep separate quotas)
                self.state: SharedState = state if state is not None else open_state(
                    config.state_store, state_dir=config.state_dir, keys=self.keys,
                    namespace=self.artifact.sha256[:16] if self.artifact.sha256 else _namespace(name))
            except BaseException:
                self.audit.close()
                raise
        except BaseException:
            self.keys.close()
            raise

    @classmethod
    def open(cls, target: Target, config: GatewayConfig) -> Gateway:
        """Calibrate the monitors, then open the key store, the audit log and the shared state of
        ``config`` (creating them when absent).

        Raises:
            ConfigError: a monitor's setting is refused (nothing has been written then).
            DataError: the state folder or the audit log cannot be opened.
        """
        return cls(target=target, config=config)

    def close(self) -> None:
        """Sign a final audit checkpoint (when the signing key is at hand) and close the stores."""
        try:
            if self.audit.key_path is not None and self.audit.key_path.exists() and self.audit.size():
                self.audit.checkpoint()
        finally:
            try:
                self.state.close()
            finally:
                self.audit.close()
                self.keys.close()

    # --- access control -----------------------------------------------------------------------
    def authenticate(self, key: str | None) -> ApiKey | None:
        """The active key matching ``key``, or None (missing, unknown or revoked)."""
        return None if not key else self.keys.authenticate(key)

    def admit(self, key: ApiKey | None, endpoint: str) -> Decision:
        """401 for no key, 403 for an endpoint its role or policy forbids, 429 over its rate."""
        if key is None:
            return Decision(status=401, decision="unauthenticated",
                            detail="a valid API key is required (missing, unknown or revoked); send "
                                   "'Authorization: Bearer <key>'")
        if not key.allows(endpoint):
            return Decision(status=403, decision="forbidden",
                            detail=f"the key {key.key_id} ({key.role}) may not call {endpoint!r}; ask an "
                                   "admin for a key whose policy allows it")
        # blocked? throttled? a token? -- one step (one Redis round trip)
        reason, factor, wait = self.state.gate(key.key_id, rate_per_s=key.policy.rate_per_s,
                                               burst=key.policy.burst)
        if reason is not None:
            return Decision(status=403, decision="blocked",
                            detail=f"the key {key.key_id} is blocked ({reason}); an admin unblocks it with "
                                   f"DELETE /v1/admin/blocks/{key.key_id} or `modelshield serve keys unblock "
                                   f"{key.key_id}`")
        if wait > 0:
            rate, burst = throttled(key.policy.rate_per_s, key.policy.burst, factor)
            why = f" (throttled {factor:g}x after a monitor's alert)" if factor > 1.0 else ""
            return Decision(status=429, decision="rate-limited", retry_after_s=wait,
                            detail=f"rate limit of {rate:g} requests/s (burst {burst}){why} exceeded; "
                                   "retry after the Retry-After seconds")
        return ALLOW

    def charge(self, key: ApiKey, rows: int) -> Decision:
        """Charge ``rows`` queries to the key's budget (shared by every process on the state store)."""
        if self.state.charge(key.key_id, rows, budget=key.policy.budget):
            if self.batcher is not None:
                self.batcher.announce()  # this request is on its way to infer(): a waiting batch may wait
            return ALLOW
        return Decision(status=429, decision="budget-exhausted",
                        retry_after_s=self.config.budget_retry_after_s,
                        detail=f"the query budget of key {key.key_id} ({key.policy.budget} queries) cannot "
                               f"cover {rows} more; ask an admin to raise it")

    # --- work ---------------------------------------------------------------------------------
    def parse(self, body: bytes) -> np.ndarray | list[str] | FieldError:
        """A ``/v1/predict`` body as a validated batch (rows, or strings for a text model), or why not."""
        if isinstance(self.spec, TextSpec):
            return parse_texts(body, self.spec)
        return parse_predict(body, self.spec)

    def predict(self, key: ApiKey, x: np.ndarray | list[str], *, input_sha256: str,
                endpoint: str) -> dict[str, Any] | Decision:
        """Answer a validated batch as the key's policy allows, after its audit record is committed.

        ``x``: (N, *spec.shape) float32 inside the bounds (``parse_predict``'s output), or N strings
        for a text model (``parse_texts``'s). The monitors see the batch after inference; their
        scores and decision go into the audit record, their alerts into the shared state. When they
        block the key, this request's answer is withheld too (a 403 ``Decision`` is returned): the
        query that completes a probe must not be answered.
        """
        probs, labels = self._answers(x) if self.text else self.infer(np.asarray(x))
        outcome = self.monitors.observe(key.key_id, x, probs, labels) if self.monitors else None
        monitored: dict[str, Any] = {}
        if outcome is not None:
            monitored = {"monitors": {**outcome.to_dict(), "alert_ids": self._raise_alerts(
                key, outcome, input_sha256=input_sha256, endpoint=endpoint)}}
        if outcome is not None and outcome.action == "block":
            blocked = Decision(status=403, decision="blocked", detail=(
                f"the key {key.key_id} is blocked ({self.state.blocked(key.key_id) or 'by a monitor'}); this "
                f"answer is withheld. An admin unblocks it with DELETE /v1/admin/blocks/{key.key_id} or "
                f"`modelshield serve keys unblock {key.key_id} --config gateway.yaml`"))
            self.record(key, endpoint=endpoint, status=403, decision="blocked", input_sha256=input_sha256,
                        extra={"rows": len(x), **monitored})
            return blocked
        answer = shape_answer(probs, labels, policy=key.policy, round_digits=self.config.round_digits,
                              class_names=self.class_names)
        self.record(key, endpoint=endpoint, status=200, decision="answered", input_sha256=input_sha256,
                    extra={"rows": len(x), "output": answer, **monitored})
        return answer

    def _raise_alerts(self, key: ApiKey, outcome: MonitorOutcome, *, input_sha256: str,
                      endpoint: str) -> list[int]:
        """Store, count and log the outcome's alerts; block or throttle the key as it says."""
        ids: list[int] = []
        for alert in outcome.alerts:
            ids.append(self.state.add_alert({**alert, "endpoint": endpoint, "input_sha256": input_sha256,
                                             "role": key.role, "time": time.time()}))
            self.metrics.alert(str(alert["monitor"]))
            pending = alert["action"] != "alert" and not alert["acted"]
            logger.warning("monitor alert %d: key %s, %s (action %s%s): %s", ids[-1], key.key_id,
                           alert["monitor"], alert["action"], ", not yet acted on" if pending else "",
                           alert["message"])
        acted = [a for a in outcome.alerts if a["acted"] and a["action"] == outcome.action]
        if outcome.action == "block" and acted:
            first = acted[0]
            alert_id = ids[outcome.alerts.index(first)]
            self.state.block(key.key_id, reason=(
                f"monitor {first['monitor']!r} ({first['detector']}) raised alert {alert_id} at query "
                f"{first['queries']}: score {first['score']:.4g} against threshold "
                f"{first['threshold']:.4g}"))
            logger.warning("key %s blocked by monitor %s", key.key_id, first["monitor"])
        elif outcome.action == "throttle" and acted:
            cfg = self.config.monitors
            self.state.throttle(key.key_id, factor=cfg.throttle_factor, seconds=cfg.throttle_s)
            logger.warning("key %s throttled %gx for %g s by monitor %s", key.key_id, cfg.throttle_factor,
                           cfg.throttle_s, acted[0]["monitor"])
        return ids

    def _answers(self, x: np.ndarray | list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """The model's (probabilities or None, labels) for a batch, called directly (no batching)."""
        if self._text_answers is not None:
            with self._model_lock:
                probs = np.asarray(self._text_answers([str(t) for t in x]), dtype=np.float64)
            return (None if self.labels_only else probs), probs.argmax(axis=1)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with self._model_lock, torch.no_grad():
            if self.labels_only:
                return None, self.model.predict(xt).cpu().numpy()
            scores = self.model.scores(xt).detach().cpu().to(torch.float64)
            return scores.numpy(), scores.argmax(dim=1).numpy()

    # --- monitors' alerts and blocks (admin) --------------------------------------------------
    def alerts(self, *, key_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Stored alerts (every replica's with a shared store), oldest first, ids above ``after``."""
        return self.state.alerts(key_id=key_id, after=after, limit=limit)

    def blocks(self) -> list[dict[str, Any]]:
        """The keys blocked now, with the reason of each."""
        out = []
        for k in self.keys.list():
            reason = self.state.blocked(k.key_id)
            if reason is not None:
                out.append({"key_id": k.key_id, "name": k.name, "role": k.role, "reason": reason})
        return out

    def unblock(self, key_id: str) -> bool:
        """Lift a block (and the key's alert counts); False when the key was not blocked."""
        self.monitors.forget(key_id)
        return self.state.unblock(key_id)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The model's (probabilities or None when it answers labels only, labels) for a batch.

        Concurrent calls share one model call through the micro-batcher (``batch_wait_ms`` > 0).
        """
        if self.batcher is None:
            return self._answers(x)
        probs, labels = self.batcher.submit(x)
        if labels is None:
            raise RuntimeError("Gateway.infer: the model answered no labels; this is a bug")
        return probs, labels

    def record(self, key: ApiKey | None, *, endpoint: str, status: int, decision: str,
               input_sha256: str | None, extra: dict[str, Any] | None = None) -> None:
        """Append the audit record of one request; returns once it is committed."""
        details: dict[str, Any] = {"endpoint": endpoint, "status": status, "decision": decision,
                                   "key_id": None if key is None else key.key_id,
                                   "role": None if key is None else key.role, "input_sha256": input_sha256,
                                   "wall_time": time.time(), **(extra or {})}
        actor = "anonymous" if key is None else f"key:{key.key_id}"
        self.audit.append_many([Entry(action="serve.request", artifact=self.artifact, details=details,
                                      actor=actor)])
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        every = self.config.checkpoint_every
        if every <= 0 or self.audit.key_path is None:
            return
        with self._checkpoint_lock:
            self._since_checkpoint += 1
            if self._since_checkpoint < every:
                return
            self._since_checkpoint = 0
        self.audit.checkpoint()

    def ready(self) -> dict[str, bool]:
        """Readiness checks: the model answers, the key store and the audit log respond."""
        checks: dict[str, bool] = {}
        try:
            self.keys.list()
            checks["keys"] = True
        except Exception:  # any failure of the store means not ready; the reason goes to the log
            logger.exception("key store not ready")
            checks["keys"] = False
        try:
            self.audit.size()
            checks["audit"] = True
        except Exception:  # same: report not ready rather than crash the probe
            logger.exception("audit log not ready")
            checks["audit"] = False
        checks["model"] = self.model is not None
        return checks

    def describe(self) -> dict[str, Any]:
        """What clients may send (shape, bounds, batch size) and which model answers."""
        return {"model": self.artifact.to_dict(), "input": self.spec.to_dict(),
                "classes": None if self.class_names is None else list(self.class_names),
                "output": "labels" if self.labels_only else "probabilities"}


def _query_model(target: Target) -> tuple[CallableModel, bool]:
    """The target as a black box, and whether it answers labels only."""
    if isinstance(target.module, nn.Module):
        return as_query_model(target), False
    # n_outputs is the probe's answer width for user models; zoo estimators leave it None but
    # answer probabilities through predict_proba
    probabilistic = target.n_outputs is not None or callable(getattr(target.module, "predict_proba", None))
    model = as_query_model(target, labels_only=not probabilistic)
    labels_only = not probabilistic or model.score_kind == "margins"
    try:
        if not labels_only:
            model.scores(target.x[:1])
    except ModelCapabilityError:
        labels_only = True
    return model, labels_only


def _text_answers(target: Target) -> TextAnswers:
    """A text target's pipeline as ``list[str] -> (N, C)`` probabilities (one-hot for label answers)."""
    answers = TextAnswers(target.module, class_names=target.class_names or _data_classes(target),
                          n_classes=target.n_classes or 2)
    answers(list(target.texts[:1]) if target.texts else ["hello"])  # the probe sets answers.output
    return answers


def _data_classes(target: Target) -> tuple[str, ...] | None:
    classes = target.data_info.get("classes")
    return tuple(str(c) for c in classes) if isinstance(classes, list) and classes else None


def _namespace(name: str) -> str:
    """A Redis namespace from a model name: its safe characters, else a digest of it."""
    import hashlib

    safe = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "._-"))[:64].lstrip("._-")
    return safe or hashlib.sha256(name.encode()).hexdigest()[:16]


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)

