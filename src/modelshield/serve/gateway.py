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

from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.models import CallableModel
from modelshield.secure.audit import Artifact, AuditLog, Entry
from modelshield.serve.config import GatewayConfig
from modelshield.serve.inputs import InputSpec, shape_answer
from modelshield.serve.keys import ApiKey, KeyStore
from modelshield.serve.quota import Metrics, TokenBuckets
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

    def __init__(self, *, target: Target, config: GatewayConfig, keys: KeyStore, audit: AuditLog) -> None:
        if target.text:
            raise ConfigError("modelshield serve: '--model' must be an image or tabular model for now; got "
                              f"the text model {target.model_info.get('name')!r}. Serving text models is not "
                              "implemented yet.")
        self.target = target
        self.config = config
        self.keys = keys
        self.audit = audit
        self.buckets = TokenBuckets()
        self.metrics = Metrics()
        self.spec = InputSpec(shape=tuple(int(d) for d in target.x.shape[1:]),
                              bounds=config.bounds or target.bounds, max_batch=config.max_batch)
        self.model, self.labels_only = _query_model(target)
        self.class_names: tuple[str, ...] | None = target.class_names or _data_classes(target)
        name = str(target.model_info.get("name") or "model")
        digest = target.model_info.get("weights_sha256") or target.model_info.get("file_sha256")
        self.artifact = Artifact(name=name, sha256=digest if _is_hex64(digest) else None)
        self._model_lock = threading.Lock()
        self._since_checkpoint = 0
        self._checkpoint_lock = threading.Lock()

    @classmethod
    def open(cls, target: Target, config: GatewayConfig) -> Gateway:
        """Open the key store and the audit log of ``config`` (creating them when absent).

        Raises:
            DataError: the state folder or the audit log cannot be opened.
        """
        keys = KeyStore.open(config.key_store)
        try:
            audit = open_audit_log(config.audit_target)
        except BaseException:
            keys.close()
            raise
        return cls(target=target, config=config, keys=keys, audit=audit)

    def close(self) -> None:
        """Sign a final audit checkpoint (when the signing key is at hand) and close the stores."""
        try:
            if self.audit.key_path is not None and self.audit.key_path.exists() and self.audit.size():
                self.audit.checkpoint()
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
        wait = self.buckets.take(key.key_id, rate_per_s=key.policy.rate_per_s, burst=key.policy.burst)
        if wait > 0:
            return Decision(status=429, decision="rate-limited", retry_after_s=wait,
                            detail=f"rate limit of {key.policy.rate_per_s:g} requests/s (burst "
                                   f"{key.policy.burst}) exceeded; retry after the Retry-After seconds")
        return ALLOW

    def charge(self, key: ApiKey, rows: int) -> Decision:
        """Charge ``rows`` queries to the key's budget (shared by every process on the key store)."""
        if self.keys.charge(key.key_id, rows):
            return ALLOW
        return Decision(status=429, decision="budget-exhausted",
                        retry_after_s=self.config.budget_retry_after_s,
                        detail=f"the query budget of key {key.key_id} ({key.policy.budget} queries) cannot "
                               f"cover {rows} more; ask an admin to raise it")

    # --- work ---------------------------------------------------------------------------------
    def predict(self, key: ApiKey, x: np.ndarray, *, input_sha256: str, endpoint: str) -> dict[str, Any]:
        """Answer a validated batch as the key's policy allows, after its audit record is committed.

        ``x``: (N, *spec.shape) float32 inside the bounds (``parse_predict``'s output).
        """
        probs, labels = self.infer(x)
        answer = shape_answer(probs, labels, policy=key.policy, round_digits=self.config.round_digits,
                              class_names=self.class_names)
        self.record(key, endpoint=endpoint, status=200, decision="answered", input_sha256=input_sha256,
                    extra={"rows": len(x), "output": answer})
        return answer

    def infer(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The model's (probabilities or None when it answers labels only, labels) for a batch."""
        xt = torch.from_numpy(x)
        with self._model_lock, torch.no_grad():
            if self.labels_only:
                return None, self.model.predict(xt).cpu().numpy()
            scores = self.model.scores(xt).detach().cpu().to(torch.float64)
            return scores.numpy(), scores.argmax(dim=1).numpy()

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
    model = as_query_model(target, labels_only=target.n_outputs is None)
    labels_only = target.n_outputs is None or model.score_kind == "margins"
    try:
        if not labels_only:
            model.scores(target.x[:1])
    except ModelCapabilityError:
        labels_only = True
    return model, labels_only


def _data_classes(target: Target) -> tuple[str, ...] | None:
    classes = target.data_info.get("classes")
    return tuple(str(c) for c in classes) if isinstance(classes, list) and classes else None


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)

