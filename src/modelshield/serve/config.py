"""The gateway's settings (``gateway.yaml``): validated once at start, one line per error.

Validation uses pydantic (the ``serve`` extra, imported only when a config is read); the result is
a frozen :class:`GatewayConfig`, so nothing downstream depends on pydantic.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelshield.errors import ConfigError

__all__ = ["LOG_LEVELS", "GatewayConfig", "load_config"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LogLevel = Literal["critical", "error", "warning", "info", "debug"]

_FIXES = {
    "state_dir": "Give a folder the gateway may write (its key store and audit log live there), "
                 "e.g. state_dir: ./gateway-state",
    "audit_log": "Give a file path (SQLite) or a postgresql:// URL, or drop it for <state_dir>/audit.db",
    "max_body_bytes": "Give a size in bytes between 1024 and 67108864, e.g. max_body_bytes: 1048576",
    "max_batch": "Give the most rows one request may hold, between 1 and 100000, e.g. max_batch: 256",
    "round_digits": "Give the decimals kept in returned probabilities, between 0 and 8, e.g. round_digits: 4",
    "budget_retry_after_s": "Give seconds between 1 and 31536000, e.g. budget_retry_after_s: 3600",
    "log_level": f"Use one of {', '.join(LOG_LEVELS)}",
    "bounds": "Give [low, high] with low < high, e.g. bounds: [0.0, 1.0], or drop it to use the data's",
    "checkpoint_every": "Give a record count >= 0 (0: never), e.g. checkpoint_every: 10000",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """What ``gateway.yaml`` sets.

    Attributes:
        state_dir: folder of the key store (``keys.db``) and, by default, the audit log.
        audit_log: the audit log (SQLite path or ``postgresql://`` URL); None: ``<state_dir>/audit.db``.
        max_body_bytes: largest request body; bigger ones get 413 before any parsing.
        max_batch: most rows in one ``/v1/predict`` request (more: 422).
        round_digits: decimals kept in returned probabilities (rounding blunts extraction attacks
            that read low-order digits; Tramèr et al., USENIX Security 2016).
        budget_retry_after_s: the ``Retry-After`` sent with a 429 for an exhausted query budget.
        log_level: uvicorn's log level.
        bounds: the accepted input range; None: the target's bounds.
        checkpoint_every: sign an audit checkpoint every this many records (0: never while serving).
    """

    state_dir: Path
    audit_log: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch: int = 256
    round_digits: int = 4
    budget_retry_after_s: int = 3600
    log_level: LogLevel = "warning"
    bounds: tuple[float, float] | None = None
    checkpoint_every: int = 0

    @property
    def audit_target(self) -> str:
        """The audit log's location: ``audit_log`` or ``<state_dir>/audit.db``."""
        return self.audit_log if self.audit_log else str(self.state_dir / "audit.db")

    @property
    def key_store(self) -> Path:
        return self.state_dir / "keys.db"

    @classmethod
    def from_mapping(cls, data: object, *, source: str = "gateway config") -> GatewayConfig:
        """Validate a parsed config (a mapping); relative ``state_dir`` is taken as given.

        Raises:
            ConfigError: one line per problem (``<source>: 'field' ...; got value. Fix.``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the config must be a mapping of settings; got "
                              f"{type(data).__name__}. Write e.g. 'state_dir: ./gateway-state'.")
        from pydantic import ValidationError

        schema = _schema()
        try:
            parsed = schema.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError("\n".join(_error_line(source, err) for err in exc.errors())) from None
        bounds = parsed.bounds
        return cls(state_dir=Path(parsed.state_dir).expanduser(), audit_log=parsed.audit_log,
                   max_body_bytes=parsed.max_body_bytes, max_batch=parsed.max_batch,
                   round_digits=parsed.round_digits, budget_retry_after_s=parsed.budget_retry_after_s,
                   log_level=parsed.log_level,
                   bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
                   checkpoint_every=parsed.checkpoint_every)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml`` (YAML, read with ``yaml.safe_load``).

    Raises:
        ConfigError: the file is missing or unreadable, not YAML, or a setting is invalid (one
            line per problem, each naming the field, the value and the fix).
    """
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"modelshield serve: '--config' must be a readable YAML file; got {str(p)!r} "
                          f"({exc.strerror or exc}). Write one (see modelshield.serve.config).") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        head = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{p.name}: the config must be valid YAML; got a parse error ({head}). "
                          "Fix the syntax at the line named.") from exc
    return GatewayConfig.from_mapping({} if data is None else data, source=p.name)


def _error_line(source: str, err: Mapping[str, Any]) -> str:
    """One pydantic error as ``<source>: 'field' <problem>; got <value>. <fix>.``"""
    loc = [str(part) for part in err.get("loc", ())]
    field = ".".join(loc) or "(top level)"
    top = loc[0] if loc else ""
    if err.get("type") == "extra_forbidden":
        known = ", ".join(sorted(_FIXES))
        return (f"{source}: {field!r} is not a setting; got {field}: {err.get('input')!r}. Remove it or fix "
                f"its spelling (settings: {known}).")
    if err.get("type") == "missing":
        return f"{source}: {field!r} is required; got nothing. {_FIXES.get(top, 'Add it')}."
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    return f"{source}: {field!r} {msg}; got {err.get('input')!r}. {_FIXES.get(top, 'Fix the value')}."


@functools.cache
def _schema() -> Any:
    """The pydantic model of gateway.yaml (built on first use: pydantic is the serve extra's)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class _GatewayYaml(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)

        state_dir: str = Field(min_length=1)
        audit_log: str | None = None
        max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
        max_batch: int = Field(default=256, ge=1, le=100_000)
        round_digits: int = Field(default=4, ge=0, le=8)
        budget_retry_after_s: int = Field(default=3600, ge=1, le=31_536_000)
        log_level: LogLevel = "warning"
        bounds: tuple[float, float] | None = None
        checkpoint_every: int = Field(default=0, ge=0)

        @field_validator("bounds")
        @classmethod
        def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
            if value is not None and not value[0] < value[1]:
                raise ValueError("must be [low, high] with low < high")
            return value

    return _GatewayYaml
