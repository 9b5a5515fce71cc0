"""The gateway's settings (``gateway.yaml``): validated once at start, one line per error.

Validation uses pydantic (the ``serve`` extra, imported only when a config is read); the result is
a frozen :class:`GatewayConfig`, so nothing downstream depends on pydantic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelshield.errors import ConfigError

__all__ = ["LOG_LEVELS", "MAX_CONFIG_BYTES", "MAX_CONFIG_NODES", "MONITOR_ACTIONS", "MONITOR_NAMES",
           "GatewayConfig", "MonitorSpec", "MonitorsConfig", "load_config"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["json", "text"]
MONITOR_NAMES = ("stateful", "blacklight", "prada", "coverage", "squeezing", "strip", "drift")
"""The live monitors ``gateway.yaml``'s ``monitors:`` section may enable (see modelshield.serve.monitors)."""
MONITOR_ACTIONS = ("alert", "throttle", "block")
"""What a monitor's alert does to the key: record it only, divide its rate limit, or refuse it (403)."""
MonitorAction = Literal["alert", "throttle", "block"]
MAX_CONFIG_BYTES = 1 << 20
"""The largest ``gateway.yaml`` read (a real one is a few kilobytes)."""
MAX_CONFIG_NODES = 100_000
"""The most values a ``gateway.yaml`` may hold once its YAML aliases are expanded."""
_MONITOR_SECTION = ("fpr", "reference", "throttle_s", "throttle_factor")
_MONITOR_ENTRY = ("action", "fpr", "act_after", "act_window")

_FIXES = {
    "state_dir": "Give a folder the gateway may write (its key store and audit log live there), "
                 "e.g. state_dir: ./gateway-state",
    "audit_log": "Give a file path (SQLite) or a postgresql:// URL, or drop it for <state_dir>/audit.db",
    "max_body_bytes": "Give a size in bytes between 1024 and 67108864, e.g. max_body_bytes: 1048576",
    "max_batch": "Give the most rows one request may hold, between 1 and 100000, e.g. max_batch: 256",
    "max_text_chars": "Give the longest message a text model accepts, between 1 and 1000000 characters, "
                      "e.g. max_text_chars: 5000",
    "round_digits": "Give the decimals kept in returned probabilities, between 0 and 8, e.g. round_digits: 4",
    "budget_retry_after_s": "Give seconds between 1 and 31536000, e.g. budget_retry_after_s: 3600",
    "log_level": f"Use one of {', '.join(LOG_LEVELS)}",
    "bounds": "Give [low, high] with low < high, e.g. bounds: [0.0, 1.0], or drop it to use the data's",
    "checkpoint_every": "Give a record count >= 0 (0: never), e.g. checkpoint_every: 10000",
    "state_store": "Give a redis://host:port/db URL shared by the replicas, e.g. state_store: "
                   "redis://127.0.0.1:6379/0, or drop it to keep rate limits and alerts in this process",
    "batch_max_rows": "Give the most rows one micro-batched model call may hold, between 1 and 100000, e.g. "
                      "batch_max_rows: 256",
    "batch_wait_ms": "Give the milliseconds a micro-batch waits for company, between 0 (off) and 1000, e.g. "
                     "batch_wait_ms: 2.0",
    "log_format": "Use json (one JSON object per line) or text",
    "monitors": f"Give a mapping of monitors ({', '.join(MONITOR_NAMES)}) and section settings "
                f"({', '.join(_MONITOR_SECTION)}), e.g. monitors: {{fpr: 0.005, stateful: "
                "{action: block}}",
    "monitors.action": f"Use one of {', '.join(MONITOR_ACTIONS)}, e.g. action: block",
    "monitors.fpr": "Give a false-positive rate strictly between 0 and 1, e.g. fpr: 0.005",
    "monitors.reference": "Give the benign reference rows, between 10 and 100000, e.g. reference: 2000",
    "monitors.throttle_s": "Give the seconds a throttle lasts, between 1 and 31536000, e.g. throttle_s: 600",
    "monitors.throttle_factor": "Give the divisor of a throttled key's rate, between 1 and 1000000, e.g. "
                                "throttle_factor: 10",
    "monitors.act_after": "Give the alerts of this monitor a key may raise before its action applies, "
                          "between 1 and 1000, e.g. act_after: 5, or drop it for the automatic count",
    "monitors.act_window": "Give the key's queries within which act_after alerts must fall, between 0 "
                           "(no window) and 1000000, e.g. act_window: 100",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorSpec:
    """One enabled monitor of ``monitors:``.

    Attributes:
        name: one of ``MONITOR_NAMES``.
        action: what its alerts do: ``"alert"`` (record and expose), ``"throttle"`` (divide the key's
            rate limit by ``throttle_factor`` for ``throttle_s``) or ``"block"`` (403 until an admin
            unblocks the key).
        fpr: the false-positive rate its threshold is chosen for on benign reference traffic.
        act_after: alerts of this monitor a key raises before the action applies (1: the first);
            None (the default): for ``stateful`` and ``blacklight``, the smallest count that a benign
            key, raising false alerts independently at rate ``fpr``, reaches within ``act_window``
            queries with probability at most ``ACT_FPR`` (the binomial tail); 1 for the others
            (see :attr:`alerts_to_act`). Query attacks raise
            alerts in bursts, so this costs them a few queries; a single false alarm never acts.
        act_window: when > 0, those ``act_after`` alerts must fall within the key's last
            ``act_window`` queries; 0: alerts count since the key was last unblocked (then the
            automatic ``act_after`` is 1, since a long benign stream reaches any count).
        params: the monitor's own constructor parameters, as given (checked when the monitors are built).
    """

    name: str
    action: MonitorAction = "alert"
    fpr: float = 0.005
    act_after: int | None = None
    act_window: int = 100
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def alerts_to_act(self) -> int:
        """``act_after``; when None, for the per-query monitors (``PER_QUERY_MONITORS``) the smallest m
        with P(Binomial(act_window, fpr) >= m) <= ACT_FPR, and 1 for the others, whose thresholds
        already bound a benign client's chance of any alert (coverage, squeezing, STRIP: per client;
        PRADA and drift: per test of the client's history or window)."""
        if self.act_after is not None:
            return self.act_after
        if self.name in PER_QUERY_MONITORS and self.act_window > 0:
            return binomial_count(self.act_window, self.fpr, ACT_FPR)
        return 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "fpr": self.fpr, "act_after": self.alerts_to_act,
                "act_window": self.act_window, "params": dict(self.params)}


PER_QUERY_MONITORS = frozenset({"stateful", "blacklight"})
"""Monitors whose threshold is a per-query false-positive rate (their benign false alerts are
isolated queries; an attack's come one after another)."""
ACT_FPR = 0.001
"""Chance per ``act_window`` queries that a benign key's independent false alerts reach the
automatic ``act_after`` of a monitor (so its action, e.g. a block, applies to an honest client)."""


def binomial_count(n: int, p: float, tail: float) -> int:
    """The smallest m >= 1 with P(X >= m) <= tail for X ~ Binomial(n, p) (n when none is smaller)."""
    below = 0.0  # P(X < m)
    log_q = math.log1p(-p)
    for m in range(1, n + 1):
        i = m - 1
        below += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * math.log(p) + (n - i) * log_q)
        if 1.0 - below <= tail:
            return m
    return n


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorsConfig:
    """The ``monitors:`` section: which live monitors watch each key's queries (none by default).

    Attributes:
        fpr: the section's false-positive rate (a monitor's own ``fpr`` overrides it).
        reference: benign reference rows (from the target's training data, never its test points)
            that calibrate every threshold at start.
        throttle_s: how long a ``throttle`` action lasts.
        throttle_factor: a throttled key's rate limit is divided by this.
        entries: the enabled monitors, in ``MONITOR_NAMES`` order.

    Example (``gateway.yaml``; a monitor is enabled by its presence, its other keys are its
    detector's parameters, see modelshield.serve.monitors)::

        monitors:
          fpr: 0.005
          reference: 2000
          stateful:   {action: block, act_after: 2, act_window: 100, k: 10}
          blacklight: {action: block, act_after: 2, act_window: 100}
          prada:      {action: alert}
          coverage:   {action: alert}
          squeezing:  {action: alert}
          strip:      {action: alert, sample: 0.1}
          drift:      {action: alert, window: 500}
    """

    fpr: float = 0.005
    reference: int = 2000
    throttle_s: float = 600.0
    throttle_factor: float = 10.0
    entries: tuple[MonitorSpec, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"fpr": self.fpr, "reference": self.reference, "throttle_s": self.throttle_s,
                "throttle_factor": self.throttle_factor, "monitors": [e.to_dict() for e in self.entries]}


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """What ``gateway.yaml`` sets.

    Attributes:
        state_dir: folder of the key store (``keys.db``) and, by default, the audit log.
        audit_log: the audit log (SQLite path or ``postgresql://`` URL); None: ``<state_dir>/audit.db``.
        max_body_bytes: largest request body; bigger ones get 413 before any parsing.
        max_batch: most rows in one ``/v1/predict`` request (more: 422).
        max_text_chars: longest string a text model's request may hold (more: 422 naming its index).
        round_digits: decimals kept in returned probabilities (rounding blunts extraction attacks
            that read low-order digits; Tramèr et al., USENIX Security 2016).
        budget_retry_after_s: the ``Retry-After`` sent with a 429 for an exhausted query budget.
        log_level: uvicorn's log level.
        bounds: the accepted input range; None: the target's bounds.
        checkpoint_every: sign an audit checkpoint every this many records (0: never while serving).
        state_store: a ``redis://`` URL holding rate limits, budgets, blocks and alerts shared by
            replicas (see modelshield.serve.store); None: this process (budgets in the key store).
        batch_max_rows: most rows in one micro-batched model call.
        batch_wait_ms: how long concurrent requests wait to share one model call (0: no batching;
            a request alone never waits).
        log_format: ``json`` (one JSON object per line) or ``text``.
        monitors: the live monitors of attack traffic (``monitors:``; none by default).
    """

    state_dir: Path
    audit_log: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch: int = 256
    max_text_chars: int = 5000
    round_digits: int = 4
    budget_retry_after_s: int = 3600
    log_level: LogLevel = "warning"
    bounds: tuple[float, float] | None = None
    checkpoint_every: int = 0
    state_store: str | None = None
    batch_max_rows: int = 256
    batch_wait_ms: float = 2.0
    log_format: LogFormat = "json"
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)

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
                   max_text_chars=parsed.max_text_chars,
                   round_digits=parsed.round_digits, budget_retry_after_s=parsed.budget_retry_after_s,
                   log_level=parsed.log_level,
                   bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
                   checkpoint_every=parsed.checkpoint_every, state_store=parsed.state_store,
                   batch_max_rows=parsed.batch_max_rows, batch_wait_ms=parsed.batch_wait_ms,
                   log_format=parsed.log_format, monitors=_monitors(parsed.monitors))


def _monitors(parsed: Any) -> MonitorsConfig:
    """The frozen MonitorsConfig of the validated ``monitors:`` section (None: no monitors).

    A monitor is enabled by its presence, even as ``stateful:`` with no settings.
    """
    if parsed is None:
        return MonitorsConfig()
    entries = []
    for name in MONITOR_NAMES:
        if name not in parsed.model_fields_set:
            continue
        entry = getattr(parsed, name)
        extra = dict(entry.model_extra or {}) if entry is not None else {}
        entries.append(MonitorSpec(
            name=name, action=entry.action if entry is not None else "alert",
            fpr=float(entry.fpr if entry is not None and entry.fpr is not None else parsed.fpr),
            act_after=entry.act_after if entry is not None else None,
            act_window=entry.act_window if entry is not None else 100,
            params=tuple(sorted(extra.items()))))
    return MonitorsConfig(fpr=parsed.fpr, reference=parsed.reference, throttle_s=parsed.throttle_s,
                          throttle_factor=parsed.throttle_factor, entries=tuple(entries))


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml`` (YAML, read with ``yaml.safe_load``).

    Raises:
        ConfigError: the file is missing or unreadable, not YAML, or a setting is invalid (one
            line per problem, each naming the field, the value and the fix).
    """
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

    p = Path(path).expanduser()
    try:
        with p.open("rb") as fh:  # bounded: /dev/zero or a huge file must not fill the memory
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"modelshield serve: '--config' must be a readable YAML file; got {str(p)!r} "
                          f"({exc.strerror or exc}). Write one (see modelshield.serve.config).") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p.name}: the config must be at most {MAX_CONFIG_BYTES} bytes; got a larger file "
                          f"({str(p)!r}). Pass the gateway.yaml itself (a few dozen lines).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p.name}: the config must be UTF-8 text (YAML); got a byte it cannot decode at "
                          f"offset {exc.start} (a binary file?). Pass the gateway.yaml, saved as UTF-8."
                          ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        head = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{p.name}: the config must be valid YAML; got a parse error ({head}). "
                          "Fix the syntax at the line named.") from exc
    if _expanded_size(data, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"{p.name}: the config must expand to at most {MAX_CONFIG_NODES} values; got more "
                          "(YAML aliases expanding exponentially, a 'billion laughs'). Write the settings "
                          "out without nested aliases.")
    return GatewayConfig.from_mapping({} if data is None else data, source=p.name)


def _expanded_size(data: object, limit: int) -> int:
    """How many values ``data`` holds once YAML aliases are expanded, counting stops past ``limit``.

    ``yaml.safe_load`` shares an aliased node's object, so a file of a few hundred bytes can stand
    for 10**9 values (the 'billion laughs'); anything walking it (validation, an error message's
    repr) would then run for hours.
    """
    seen = 0
    stack = [data]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return seen


def _error_line(source: str, err: Mapping[str, Any]) -> str:
    """One pydantic error as ``<source>: 'field' <problem>; got <value>. <fix>.``"""
    loc = [str(part) for part in err.get("loc", ())]
    field = ".".join(loc) or "(top level)"
    top = loc[0] if loc else ""
    if len(loc) > 1 and f"{top}.{loc[-1]}" in _FIXES:  # a nested setting with its own fix
        top = f"{top}.{loc[-1]}"
    elif len(loc) == 2 and top == "monitors" and loc[1] in MONITOR_NAMES:  # a monitor's own check
        top = "monitors.act_window"
    if err.get("type") == "extra_forbidden":
        known = ", ".join(sorted(k for k in _FIXES if "." not in k))
        if loc[:1] == ["monitors"] and len(loc) == 2:
            return (f"{source}: {field!r} is not a monitor or a monitors setting; got {field}: "
                    f"{_shown(err.get('input'))}. Use one of the monitors {', '.join(MONITOR_NAMES)} or the "
                    f"settings {', '.join(_MONITOR_SECTION)}.")
        return (f"{source}: {field!r} is not a setting; got {field}: {_shown(err.get('input'))}. Remove it "
                f"or fix its spelling (settings: {known}).")
    if err.get("type") == "missing":
        return f"{source}: {field!r} is required; got nothing. {_FIXES.get(top, 'Add it')}."
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    got = _shown(err.get("input"))
    if top == "state_store" and isinstance(err.get("input"), str):  # never print its password
        from modelshield.serve.store import redact_url

        got = _shown(redact_url(err["input"]))
    return f"{source}: {field!r} {msg}; got {got}. {_FIXES.get(top, 'Fix the value')}."


def _shown(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (a pasted blob must not flood the error line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _schema() -> Any:
    """The pydantic model of gateway.yaml (built on first use: pydantic is the serve extra's)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class _MonitorYaml(BaseModel):
        model_config = ConfigDict(extra="allow", strict=False)  # extras: the monitor's own parameters

        action: MonitorAction = "alert"
        fpr: float | None = Field(default=None, gt=0.0, lt=1.0)
        act_after: int | None = Field(default=None, ge=1, le=1000)
        act_window: int = Field(default=100, ge=0, le=1_000_000)

        @model_validator(mode="after")
        def _reachable(self) -> _MonitorYaml:
            # act_after alerts within a window of fewer queries can never happen: the action never fires
            if self.act_after is not None and 0 < self.act_window < self.act_after:
                raise ValueError(f"act_after ({self.act_after}) must be at most act_window "
                                 f"({self.act_window}), else the action never applies")
            return self

    class _MonitorsYaml(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)

        fpr: float = Field(default=0.005, gt=0.0, lt=1.0)
        reference: int = Field(default=2000, ge=10, le=100_000)
        throttle_s: float = Field(default=600.0, ge=1.0, le=31_536_000.0)
        throttle_factor: float = Field(default=10.0, ge=1.0, le=1_000_000.0)
        stateful: _MonitorYaml | None = None
        blacklight: _MonitorYaml | None = None
        prada: _MonitorYaml | None = None
        coverage: _MonitorYaml | None = None
        squeezing: _MonitorYaml | None = None
        strip: _MonitorYaml | None = None
        drift: _MonitorYaml | None = None

    class _GatewayYaml(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)

        state_dir: str = Field(min_length=1)
        audit_log: str | None = None
        max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
        max_batch: int = Field(default=256, ge=1, le=100_000)
        max_text_chars: int = Field(default=5000, ge=1, le=1_000_000)
        round_digits: int = Field(default=4, ge=0, le=8)
        budget_retry_after_s: int = Field(default=3600, ge=1, le=31_536_000)
        log_level: LogLevel = "warning"
        bounds: tuple[float, float] | None = None
        checkpoint_every: int = Field(default=0, ge=0)
        state_store: str | None = Field(default=None, min_length=1)
        batch_max_rows: int = Field(default=256, ge=1, le=100_000)
        batch_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
        log_format: LogFormat = "json"
        monitors: _MonitorsYaml | None = None

        @field_validator("state_store")
        @classmethod
        def _redis_db(cls, value: str | None) -> str | None:
            # redis-py ignores a path that is not a number and uses db 0: another gateway's data
            if value is not None and value.startswith(("redis://", "rediss://")):
                from urllib.parse import urlsplit

                try:
                    parts = urlsplit(value)
                    parts.port  # noqa: B018  # raises ValueError when out of range or not a number
                except ValueError as exc:
                    raise ValueError(f"must be a valid redis:// URL ({exc})") from None
                db = parts.path.removeprefix("/")
                if db and not (db.isdigit() and db.isascii()):
                    raise ValueError(f"must end with a database number (redis://host:port/0); its path is "
                                     f"{db!r}")
            return value

        @field_validator("bounds")
        @classmethod
        def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
            if value is not None and not value[0] < value[1]:
                raise ValueError("must be [low, high] with low < high")
            return value

    return _GatewayYaml
