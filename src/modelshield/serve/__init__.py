"""The inference gateway: access control, quotas and audit in front of one model.

``create_app(target, config)`` builds the FastAPI app (the ``serve`` extra: FastAPI, uvicorn);
:class:`Gateway` is its framework-free core; :class:`KeyStore` holds the API keys (hashes only);
``load_config`` reads ``gateway.yaml``; :class:`MonitorBank` (``build_monitors``) holds the live
monitors of each key's queries (``monitors:``), calibrated at start on benign reference rows. Text
models take ``{"inputs": ["message", ...]}`` (``parse_texts``).

Example:
    target = load_target("digits-cnn", data=None, data_dir=None, arch=None, n=100)
    app = create_app(target, load_config("gateway.yaml"))
"""

from __future__ import annotations

from modelshield.serve.app import create_app
from modelshield.serve.config import GatewayConfig, MonitorsConfig, MonitorSpec, load_config
from modelshield.serve.gateway import Decision, Gateway
from modelshield.serve.inputs import FieldError, InputSpec, TextSpec, parse_predict, parse_texts, shape_answer
from modelshield.serve.keys import ENDPOINTS, OUTPUTS, ROLES, ApiKey, KeyStore, Policy, default_policy
from modelshield.serve.monitors import MonitorBank, MonitorOutcome, build_monitors, register_monitor
from modelshield.serve.quota import Metrics, TokenBuckets

__all__ = [
    "ENDPOINTS",
    "OUTPUTS",
    "ROLES",
    "ApiKey",
    "Decision",
    "FieldError",
    "Gateway",
    "GatewayConfig",
    "InputSpec",
    "KeyStore",
    "Metrics",
    "MonitorBank",
    "MonitorOutcome",
    "MonitorSpec",
    "MonitorsConfig",
    "Policy",
    "TextSpec",
    "TokenBuckets",
    "build_monitors",
    "create_app",
    "default_policy",
    "load_config",
    "parse_predict",
    "parse_texts",
    "register_monitor",
    "shape_answer",
]
