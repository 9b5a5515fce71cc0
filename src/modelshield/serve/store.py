"""The gateway's shared state: rate limits, query budgets, blocks, throttles and alerts.

Two backends implement :class:`SharedState`:

* :class:`LocalState` (no ``state_store`` set): one gateway process. Token buckets and throttles
  live in memory; query budgets are charged in the key store (``<state_dir>/keys.db``, one
  conditional ``UPDATE``, so processes sharing that file cannot overspend either); blocks and
  alerts live in ``<state_dir>/alerts.db`` (SQLite, WAL), so a restart keeps a block.
* :class:`RedisState` (``state_store: redis://host:port/db``): any number of replicas on any hosts.
  Every operation is atomic on the Redis server: the token bucket and the budget charge are Lua
  scripts (run with ``EVALSHA``, reloaded if the server lost them), using the server's clock
  (``TIME``) so that replicas with skewed clocks agree; an alert takes its id from ``INCR`` and is
  stored in the same script. Blocks and throttles are keys with an optional TTL.

Redis keys are ``modelshield:<namespace>:<kind>:<key id>`` where ``namespace`` names the served
model (the gateway passes the first 16 hex digits of its weights' SHA-256, else its name): two
gateways serving *different* models from one Redis do not share rate limits, budgets, blocks or
alerts by accident, while replicas of *one* model share all of them. To share state across models,
pass the same ``namespace`` explicitly.

With Redis, the query counter of record is Redis's (``used``); the key store's ``used`` column
is then not updated.

Example:
    state = open_state("redis://127.0.0.1:6379/0", state_dir=Path("state"), namespace="3fa9c0d1")
    if state.take_token("k1", rate_per_s=10, burst=20) == 0.0 and state.charge("k1", 8, budget=1000):
        ...  # answer
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from modelshield.errors import ConfigError, DataError
from modelshield.serve.keys import KeyStore
from modelshield.serve.quota import TokenBuckets

__all__ = ["KEY_PREFIX", "LocalState", "RedisState", "SharedState", "open_state", "redact_url", "throttled"]

KEY_PREFIX = "modelshield"
MAX_ALERTS = 100_000
"""Alerts kept (the oldest are dropped beyond this), per store and, in Redis, per key too."""
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@runtime_checkable
class SharedState(Protocol):
    """What the gateway keeps per key beyond its policy; shared by replicas when the backend is."""

    def take_token(self, key_id: str, *, rate_per_s: float, burst: int) -> float:
        """Take one token from the key's bucket: 0.0 when granted, else the seconds to wait."""
        ...

    def gate(self, key_id: str, *, rate_per_s: float, burst: int) -> tuple[str | None, float, float]:
        """``blocked``, ``throttle_factor`` and ``take_token`` in one step (one round trip with Redis).

        Returns ``(block reason or None, throttle factor, wait)``: a blocked key takes no token
        (wait 0.0); else a token is taken at ``rate_per_s / factor`` with a bucket of
        ``max(1, int(burst / factor))``.
        """
        ...

    def charge(self, key_id: str, rows: int, *, budget: int | None) -> bool:
        """Add ``rows`` queries to the key's use if ``budget`` (None: unlimited) allows all; False if not."""
        ...

    def used(self, key_id: str) -> int:
        """Queries charged to the key so far."""
        ...

    def block(self, key_id: str, *, reason: str, seconds: float | None = None) -> None:
        """Block the key for ``seconds`` (None: until unblocked)."""
        ...

    def unblock(self, key_id: str) -> bool:
        """Lift a block; True when the key was blocked."""
        ...

    def blocked(self, key_id: str) -> str | None:
        """The reason while the key is blocked, else None."""
        ...

    def throttle(self, key_id: str, *, factor: float, seconds: float) -> None:
        """Divide the key's rate limit by ``factor`` for ``seconds``."""
        ...

    def throttle_factor(self, key_id: str) -> float:
        """The key's current throttle factor (1.0 when not throttled)."""
        ...

    def add_alert(self, alert: Mapping[str, Any]) -> int:
        """Store a JSON-able alert (with ``key_id`` and ``monitor`` fields); return its id (increasing)."""
        ...

    def alerts(self, *, key_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts with id > ``after`` (of one key, or all), oldest first, at most ``limit`` (<= 1000)."""
        ...

    def alert_counts(self) -> dict[str, int]:
        """Alerts stored so far, by monitor name."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...


def open_state(url: str | None, *, state_dir: Path, namespace: str = "default",
               keys: KeyStore | None = None) -> SharedState:
    """The gateway's state store: :class:`LocalState` for ``url=None``, else :class:`RedisState`.

    ``keys``: the gateway's open key store (LocalState charges budgets in it; one is opened on
    ``<state_dir>/keys.db`` when None). ``namespace``: see the module docstring (Redis only).

    Raises:
        ConfigError: an unsupported or unreachable URL (the message names it, password redacted).
        DataError: the state folder cannot be written.
    """
    if url is None or url == "":
        return LocalState(state_dir, keys=keys)
    return RedisState(url, namespace=namespace)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for error messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


# --- checks and helpers shared by both backends ---------------------------------------------------


def _check_key(key_id: str) -> str:
    if not isinstance(key_id, str) or not key_id or len(key_id) > 128 or any(c in key_id for c in ": \n"):
        raise ConfigError(f"SharedState: 'key_id' must be a non-empty id without ':', spaces or newlines; "
                          f"got {key_id!r}. Pass ApiKey.key_id.")
    return key_id


def _check_positive(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{owner}: {name!r} must be a finite number > 0; got {value!r}. "
                          f"Use e.g. {name}=10.")
    return float(value)


def _check_burst(burst: int) -> None:
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(f"SharedState: 'burst' must be an int >= 1; got {burst!r}. Pass key.policy.burst.")


def throttled(rate_per_s: float, burst: int, factor: float) -> tuple[float, int]:
    """The (rate, burst) of a key throttled by ``factor``: ``rate / factor``, ``max(1, int(burst / factor))``.
    """
    return rate_per_s / factor, max(1, int(burst / factor))


def _check_rows(rows: int, budget: int | None) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ConfigError(f"SharedState.charge: 'rows' must be an int >= 0; got {rows!r}. Pass len(x).")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise ConfigError(f"SharedState.charge: 'budget' must be an int >= 0 or None; got {budget!r}. "
                          "Pass key.policy.budget.")


def _jsonable(value: Any) -> Any:
    """A strict-JSON copy of ``value``: non-finite floats -> None, numpy/torch scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _alert_body(alert: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The alert as strict JSON (``time`` added when absent), its key id and monitor name."""
    if not isinstance(alert, Mapping):
        raise ConfigError(f"SharedState.add_alert: 'alert' must be a mapping; got {type(alert).__name__}. "
                          "Pass a dict with key_id, monitor, score, threshold, message.")
    body = _jsonable(alert)
    body.pop("id", None)
    body.setdefault("time", time.time())
    key_id = str(body.get("key_id") or body.get("client_id") or "")
    monitor = str(body.get("monitor") or body.get("detector") or "unknown")
    return body, key_id, monitor


def _clamp_limit(limit: int) -> int:
    return max(1, min(int(limit), 1000))


# --- one process ----------------------------------------------------------------------------------

_LOCAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL, "
    "monitor TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alerts_key ON alerts (key_id, id)",
    "CREATE TABLE IF NOT EXISTS blocks (key_id TEXT PRIMARY KEY, reason TEXT NOT NULL, until REAL)",
)


class LocalState:
    """State of one gateway process: buckets and throttles in memory, blocks and alerts in SQLite.

    Budgets are charged in the key store (its stored policy's budget is authoritative, which is
    ``key.policy.budget`` for a key read from it; keys absent from the store cannot be charged).
    Thread-safe.
    """

    def __init__(self, state_dir: str | Path, *, keys: KeyStore | None = None) -> None:
        root = Path(state_dir).expanduser()
        self.path = root / "alerts.db"
        try:
            root.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _LOCAL_SCHEMA:
                conn.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"LocalState: the state folder must hold a writable SQLite file; got "
                            f"{str(self.path)!r} ({type(exc).__name__}: {exc}). Check state_dir and its "
                            "permissions.") from exc
        self._conn = conn
        self._lock = threading.Lock()
        self._own_keys = keys is None
        self.keys = KeyStore.open(root / "keys.db") if keys is None else keys
        self.buckets = TokenBuckets()
        self._throttles: dict[str, tuple[float, float]] = {}  # key id -> (factor, until monotonic)
        self._closed = False

    def take_token(self, key_id: str, *, rate_per_s: float, burst: int) -> float:
        return self.buckets.take(key_id, rate_per_s=rate_per_s, burst=burst)

    def gate(self, key_id: str, *, rate_per_s: float, burst: int) -> tuple[str | None, float, float]:
        reason = self.blocked(key_id)
        if reason is not None:
            return reason, 1.0, 0.0
        factor = self.throttle_factor(key_id)
        rate, size = throttled(rate_per_s, burst, factor)
        return None, factor, self.buckets.take(key_id, rate_per_s=rate, burst=size)

    def charge(self, key_id: str, rows: int, *, budget: int | None) -> bool:
        _check_rows(rows, budget)
        return self.keys.charge(key_id, rows)

    def used(self, key_id: str) -> int:
        key = self.keys.get(key_id)
        return 0 if key is None else key.used

    def block(self, key_id: str, *, reason: str, seconds: float | None = None) -> None:
        _check_key(key_id)
        until = None if seconds is None else time.time() + _check_positive("LocalState.block", "seconds",
                                                                            seconds)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO blocks (key_id, reason, until) VALUES (?, ?, ?)",
                               (key_id, str(reason), until))

    def unblock(self, key_id: str) -> bool:
        was = self.blocked(key_id) is not None
        with self._lock:
            self._conn.execute("DELETE FROM blocks WHERE key_id = ?", (key_id,))
        return was

    def blocked(self, key_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT reason, until FROM blocks WHERE key_id = ?",
                                     (key_id,)).fetchone()
            if row is None:
                return None
            if row[1] is not None and row[1] <= time.time():
                self._conn.execute("DELETE FROM blocks WHERE key_id = ? AND until = ?", (key_id, row[1]))
                return None
        return str(row[0])

    def throttle(self, key_id: str, *, factor: float, seconds: float) -> None:
        _check_key(key_id)
        f = _check_positive("LocalState.throttle", "factor", factor)
        s = _check_positive("LocalState.throttle", "seconds", seconds)
        with self._lock:
            self._throttles[key_id] = (f, time.monotonic() + s)

    def throttle_factor(self, key_id: str) -> float:
        with self._lock:
            found = self._throttles.get(key_id)
            if found is None:
                return 1.0
            if found[1] <= time.monotonic():
                del self._throttles[key_id]
                return 1.0
            return found[0]

    def add_alert(self, alert: Mapping[str, Any]) -> int:
        body, key_id, monitor = _alert_body(alert)
        text = json.dumps(body, allow_nan=False)
        with self._lock:
            cur = self._conn.execute("INSERT INTO alerts (key_id, monitor, body) VALUES (?, ?, ?)",
                                     (key_id, monitor, text))
            alert_id = int(cur.lastrowid or 0)
            if alert_id % 1000 == 0:  # keep the newest MAX_ALERTS
                self._conn.execute("DELETE FROM alerts WHERE id <= ?", (alert_id - MAX_ALERTS,))
        return alert_id

    def alerts(self, *, key_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        n = _clamp_limit(limit)
        with self._lock:
            if key_id is None:
                rows = self._conn.execute("SELECT id, body FROM alerts WHERE id > ? ORDER BY id LIMIT ?",
                                          (int(after), n)).fetchall()
            else:
                rows = self._conn.execute("SELECT id, body FROM alerts WHERE key_id = ? AND id > ? ORDER BY "
                                          "id LIMIT ?", (key_id, int(after), n)).fetchall()
        return [{**json.loads(body), "id": int(i)} for i, body in rows]

    def alert_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT monitor, COUNT(*) FROM alerts GROUP BY monitor").fetchall()
        return {str(m): int(n) for m, n in rows}

    def ping(self) -> bool:
        """True when the SQLite file answers."""
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        if self._own_keys:
            self.keys.close()


# --- Redis: shared by replicas --------------------------------------------------------------------

# Token bucket on the server's clock: take(bucket hash {tokens, ts}, rate/s, burst) -> wait in s.
# Numbers go back as strings (Lua numbers become integers in Redis replies).
_BUCKET = """
local function take(key, rate, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local s = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(s[1])
  local ts = tonumber(s[2])
  if tokens == nil or ts == nil then tokens = burst; ts = now end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return wait
end
"""
# KEYS[1]: bucket; ARGV: rate/s, burst. Returns the wait.
_TAKE_TOKEN = _BUCKET + """
return string.format('%.17g', take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])))
"""
# KEYS: block, throttle, bucket; ARGV: rate/s, burst. Returns {blocked 0/1, reason, factor, wait}.
_GATE = _BUCKET + """
local reason = redis.call('GET', KEYS[1])
if reason then return {1, reason, '1', '0'} end
local f = tonumber(redis.call('GET', KEYS[2]) or '1')
local rate = tonumber(ARGV[1]) / f
local burst = math.max(1, math.floor(tonumber(ARGV[2]) / f))
return {0, '', string.format('%.17g', f), string.format('%.17g', take(KEYS[3], rate, burst))}
"""

# Budget charge. KEYS[1]: counter; ARGV: rows, budget (-1: unlimited). Returns the new use, or -1.
_CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local rows = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
if budget >= 0 and used + rows > budget then return -1 end
return redis.call('INCRBY', KEYS[1], rows)
"""

# Alert. KEYS: seq, all (zset), per-key (zset), counts (hash); ARGV: body JSON (a non-empty
# object), monitor, cap, has key (0/1). The id is spliced in as the body's first field.
_ADD_ALERT = """
local id = redis.call('INCR', KEYS[1])
local body = '{"id":' .. id .. ',' .. string.sub(ARGV[1], 2)
local cap = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], id, body)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -cap - 1)
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], id, body)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -cap - 1)
end
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
return id
"""


class RedisState:
    """State shared by gateway replicas through one Redis server (redis-py, imported here only).

    Every call is one round trip (a script or a single command), atomic on the server; redis-py's
    client is thread-safe (a connection pool). Errors reaching Redis while serving propagate
    (the request fails closed with a 500) rather than letting traffic through unmetered.
    """

    def __init__(self, url: str, *, namespace: str = "default", timeout_s: float = 5.0) -> None:
        shown = redact_url(url)
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"gateway config: 'state_store' must be a redis://, rediss:// or unix:// URL; "
                              f"got {shown!r}. Use e.g. state_store: redis://127.0.0.1:6379/0, or drop it to "
                              "keep state in this process.")
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ConfigError(f"RedisState: 'namespace' must be 1-64 letters, digits or ._- ; got "
                              f"{namespace!r}. Pass the model digest's first 16 hex digits.")
        try:
            import redis
        except ImportError as exc:  # the serve extra's
            raise ConfigError(f"gateway config: 'state_store' {shown!r} needs the redis client; got it not "
                              "installed. Install the extra: pip install 'modelshield[serve]'.") from exc
        try:
            client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout_s,
                                          socket_timeout=timeout_s)
            client.ping()
        except (redis.RedisError, ValueError, OSError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ConfigError(f"gateway config: 'state_store' must be a reachable Redis server; got "
                              f"{shown!r} ({type(exc).__name__}: {detail}). Start one (e.g. `redis-server "
                              "--port 6379`), fix the URL, or drop state_store to keep state in this "
                              "process.") from None
        self.url = shown
        self.namespace = namespace
        self.prefix = f"{KEY_PREFIX}:{namespace}:"
        self._redis = client
        self._take = client.register_script(_TAKE_TOKEN)
        self._gate = client.register_script(_GATE)
        self._charge = client.register_script(_CHARGE)
        self._add_alert = client.register_script(_ADD_ALERT)

    def _k(self, kind: str, key_id: str) -> str:
        return f"{self.prefix}{kind}:{_check_key(key_id)}"

    def take_token(self, key_id: str, *, rate_per_s: float, burst: int) -> float:
        rate = _check_positive("RedisState.take_token", "rate_per_s", rate_per_s)
        _check_burst(burst)
        return float(self._take(keys=[self._k("bucket", key_id)], args=[repr(rate), burst]))

    def gate(self, key_id: str, *, rate_per_s: float, burst: int) -> tuple[str | None, float, float]:
        rate = _check_positive("RedisState.gate", "rate_per_s", rate_per_s)
        _check_burst(burst)
        flag, reason, factor, wait = self._gate(
            keys=[self._k("block", key_id), self._k("throttle", key_id), self._k("bucket", key_id)],
            args=[repr(rate), burst])
        if int(flag):
            return str(reason), 1.0, 0.0
        return None, float(factor), float(wait)

    def charge(self, key_id: str, rows: int, *, budget: int | None) -> bool:
        _check_rows(rows, budget)
        result = self._charge(keys=[self._k("used", key_id)], args=[rows, -1 if budget is None else budget])
        return int(result) >= 0

    def used(self, key_id: str) -> int:
        value = self._redis.get(self._k("used", key_id))
        return 0 if value is None else int(value)

    def block(self, key_id: str, *, reason: str, seconds: float | None = None) -> None:
        px = None if seconds is None else max(1, math.ceil(
            _check_positive("RedisState.block", "seconds", seconds) * 1000))
        self._redis.set(self._k("block", key_id), str(reason), px=px)

    def unblock(self, key_id: str) -> bool:
        return int(self._redis.delete(self._k("block", key_id))) > 0

    def blocked(self, key_id: str) -> str | None:
        value = self._redis.get(self._k("block", key_id))
        return None if value is None else str(value)

    def throttle(self, key_id: str, *, factor: float, seconds: float) -> None:
        f = _check_positive("RedisState.throttle", "factor", factor)
        px = max(1, math.ceil(_check_positive("RedisState.throttle", "seconds", seconds) * 1000))
        self._redis.set(self._k("throttle", key_id), repr(f), px=px)

    def throttle_factor(self, key_id: str) -> float:
        value = self._redis.get(self._k("throttle", key_id))
        return 1.0 if value is None else float(value)

    def add_alert(self, alert: Mapping[str, Any]) -> int:
        body, key_id, monitor = _alert_body(alert)
        text = json.dumps(body, allow_nan=False)  # has "time": a non-empty object
        has_key = bool(key_id) and _valid_key(key_id)
        per_key = self._k("alerts", key_id) if has_key else self.prefix + "alerts"  # unused when no key
        result = self._add_alert(keys=[self.prefix + "alert-seq", self.prefix + "alerts", per_key,
                                       self.prefix + "alert-counts"],
                                 args=[text, monitor, MAX_ALERTS, 1 if has_key else 0])
        return int(result)

    def alerts(self, *, key_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        if key_id is not None and not _valid_key(key_id):
            return []  # no alert can be stored under such an id
        zset = self.prefix + "alerts" if key_id is None else self._k("alerts", key_id)
        rows = self._redis.zrangebyscore(zset, f"({int(after)}", "+inf", start=0, num=_clamp_limit(limit))
        return [json.loads(str(r)) for r in rows]

    def alert_counts(self) -> dict[str, int]:
        counts = self._redis.hgetall(self.prefix + "alert-counts")
        return {str(m): int(n) for m, n in counts.items()}

    def ping(self) -> bool:
        """True when the Redis server answers."""
        try:
            return bool(self._redis.ping())
        except Exception:  # any failure means not ready; callers only need the boolean
            return False

    def close(self) -> None:
        self._redis.close()


def _valid_key(key_id: str) -> bool:
    try:
        _check_key(key_id)
    except ConfigError:
        return False
    return True
