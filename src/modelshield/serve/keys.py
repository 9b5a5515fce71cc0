"""API keys of the gateway: generated with 256 bits of entropy, stored only as SHA-256 hashes.

A key reads ``msk_<key id>_<secret>``: the key id (public, 64 bits) finds the row, and the SHA-256
of the whole key is compared with the stored hash by :func:`hmac.compare_digest` (constant time).
A stolen ``keys.db`` gives hashes of 256-bit random strings, which cannot be inverted, so a plain
hash is enough here (slow hashes such as scrypt protect low-entropy passwords; OWASP Password
Storage Cheat Sheet). Each key has a role (client, analyst, admin) and a :class:`Policy`: the
endpoints it may call (within its role's), the detail of its answers, a token-bucket rate limit
and a total query budget. The store is SQLite in WAL mode; query budgets are charged with one
conditional ``UPDATE``, so processes sharing the file cannot overspend a budget between them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from modelshield.errors import ConfigError, DataError

__all__ = [
    "ENDPOINTS",
    "NAME_PATTERN",
    "OUTPUTS",
    "ROLES",
    "ApiKey",
    "KeyStore",
    "Policy",
    "default_policy",
    "hash_key",
]

Role = Literal["client", "analyst", "admin"]
Output = Literal["label", "top-k", "probabilities"]
ROLES: tuple[Role, ...] = ("client", "analyst", "admin")
OUTPUTS: tuple[Output, ...] = ("label", "top-k", "probabilities")
ENDPOINTS = ("predict", "audit", "alerts", "keys.list", "keys.manage")
"""What a key may call: ``predict`` (POST /v1/predict), ``audit`` (read the audit log), ``alerts``
(read the monitors' alerts), ``keys.list`` and ``keys.manage`` (create and revoke keys, list and
lift blocks)."""
ROLE_ENDPOINTS: dict[str, frozenset[str]] = {
    "client": frozenset({"predict"}),
    "analyst": frozenset({"predict", "audit", "alerts", "keys.list"}),
    "admin": frozenset(ENDPOINTS),
}
"""The most each role may call; a key's policy may allow less, never more."""
_KEY_RE = re.compile(r"^msk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$")
NAME_PATTERN = _NAME_RE.pattern
"""What a key's name must match (1-64 letters, digits, spaces or ``_.@-``; the API schema states it)."""
_DUMMY_HASH = hashlib.sha256(b"modelshield: no such key").hexdigest()


def hash_key(key: str) -> str:
    """SHA-256 (hex) of a key's UTF-8 bytes: what the store keeps."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """What one key may do.

    Attributes:
        endpoints: endpoint names it may call (a subset of its role's; see ``ENDPOINTS``).
        output: ``"label"`` (labels only), ``"top-k"`` (the k best classes with rounded
            probabilities) or ``"probabilities"`` (all, rounded).
        top_k: k for ``"top-k"``.
        rate_per_s: token-bucket refill rate, in requests per second.
        burst: token-bucket size (requests that may arrive at once).
        budget: total queries (input rows) the key may ever send; None: unlimited.
    """

    endpoints: tuple[str, ...] = ("predict",)
    output: Output = "label"
    top_k: int = 3
    rate_per_s: float = 10.0
    burst: int = 20
    budget: int | None = 10_000

    def __post_init__(self) -> None:
        unknown = [e for e in self.endpoints if e not in ENDPOINTS]
        if unknown or not self.endpoints:
            raise ConfigError(f"Policy: 'endpoints' must be a non-empty subset of {list(ENDPOINTS)}; got "
                              f"{list(self.endpoints)!r}. Use e.g. endpoints=('predict',).")
        if self.output not in OUTPUTS:
            raise ConfigError(f"Policy: 'output' must be one of {list(OUTPUTS)}; got {self.output!r}. "
                              "Use 'label' for clients that need only the class.")
        for name, value, low in (("top_k", self.top_k, 1), ("burst", self.burst, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"Policy: {name!r} must be an int >= {low}; got {value!r}. "
                                  f"Use e.g. {name}=3.")
        if self.burst > 1_000_000_000:  # the token bucket holds it as a float
            raise ConfigError(f"Policy: 'burst' must be at most 1000000000; got {self.burst!r}. "
                              "Use e.g. burst=100.")
        if (not isinstance(self.rate_per_s, int | float) or isinstance(self.rate_per_s, bool)
                or not 0 < self.rate_per_s < float("inf")):
            raise ConfigError(f"Policy: 'rate_per_s' must be a number > 0; got {self.rate_per_s!r}. "
                              "Use e.g. rate_per_s=10 (requests per second).")
        if self.budget is not None and (not isinstance(self.budget, int) or isinstance(self.budget, bool)
                                        or self.budget < 0):
            raise ConfigError(f"Policy: 'budget' must be an int >= 0 or None (unlimited); got "
                              f"{self.budget!r}. Use e.g. budget=10000 (queries).")

    def to_dict(self) -> dict[str, Any]:
        return {"endpoints": list(self.endpoints), "output": self.output, "top_k": self.top_k,
                "rate_per_s": self.rate_per_s, "burst": self.burst, "budget": self.budget}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """The policy of a ``to_dict`` mapping; unknown fields raise ConfigError."""
        known = {"endpoints", "output", "top_k", "rate_per_s", "burst", "budget"}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"Policy: fields must be among {sorted(known)}; got {extra!r}. Remove them.")
        fields = dict(data)
        for name in ("top_k", "burst", "budget"):
            value = fields.get(name)
            if isinstance(value, float) and value.is_integer():  # JSON's 3.0 is the integer 3 (JSON Schema)
                fields[name] = int(value)
        if "endpoints" in fields:
            if not isinstance(fields["endpoints"], list | tuple):
                raise ConfigError(f"Policy: 'endpoints' must be a list of endpoint names; got "
                                  f"{fields['endpoints']!r}. Use e.g. ['predict'].")
            fields["endpoints"] = tuple(fields["endpoints"])
        return cls(**fields)


def default_policy(role: str) -> Policy:
    """The policy a new key of ``role`` gets when none is given.

    Raises:
        ConfigError: unknown role.
    """
    if role == "client":
        return Policy()
    if role == "analyst":
        return Policy(endpoints=("predict", "audit", "alerts", "keys.list"), output="top-k", rate_per_s=20.0,
                      burst=40, budget=100_000)
    if role == "admin":
        return Policy(endpoints=ENDPOINTS, output="probabilities", rate_per_s=50.0, burst=100, budget=None)
    raise ConfigError(f"KeyStore: 'role' must be one of {list(ROLES)}; got {role!r}. Use 'client' for "
                      "applications, 'analyst' to read the audit log, 'admin' to manage keys.")


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKey:
    """One stored key (never its secret): id, name, role, policy, queries used, times, revoked."""

    key_id: str
    name: str
    role: Role
    policy: Policy
    used: int
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def allows(self, endpoint: str) -> bool:
        """True when both the role and the policy allow ``endpoint``."""
        return endpoint in ROLE_ENDPOINTS[self.role] and endpoint in self.policy.endpoints

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "name": self.name, "role": self.role, "policy": self.policy.to_dict(),
                "used": self.used, "created": self.created, "revoked": self.revoked, "active": self.active}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    policy TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    revoked REAL
)
"""
_COLUMNS = frozenset({"key_id", "key_hash", "name", "role", "policy", "used", "created", "revoked"})


class KeyStore:
    """The gateway's API keys in one SQLite file (WAL mode), safe to share between threads.

    Example:
        store = KeyStore.open(Path("state/keys.db"))
        key_id, secret = store.create(name="app", role="client")   # show the secret once
        store.authenticate(secret)                                  # -> ApiKey, or None
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> KeyStore:
        """Open (creating when absent, with its folder) the key store at ``path``.

        Raises:
            DataError: the file cannot be opened or is not a key store.
        """
        p = Path(path).expanduser()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None, timeout=10.0)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
            foreign = bool(tables) and ("keys" not in tables or not columns >= _COLUMNS)
            if not foreign:  # an SQLite file of something else is refused before anything is written to it
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across crashes, not power loss
                conn.execute(_SCHEMA)
                p.chmod(0o600)
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"KeyStore: the key store must be a writable SQLite file; got {str(p)!r} "
                            f"({type(exc).__name__}: {exc}). Check the state folder (state_dir, --state) and "
                            "its permissions.") from exc
        if foreign:
            conn.close()
            got = (f"a 'keys' table without the columns {sorted(_COLUMNS - columns)}" if "keys" in tables
                   else f"an SQLite file of other tables ({', '.join(sorted(tables)[:5])})")
            raise DataError(f"KeyStore: {str(p)!r} must be a modelshield key store; got {got}. Point "
                            "state_dir (--state) at the gateway's own folder, or move that file away.")
        return cls(conn, p)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, *, name: str, role: str, policy: Policy | None = None) -> tuple[str, str]:
        """Make a new key; return ``(key_id, key)``. The key is shown only now: the store keeps its hash.

        Raises:
            ConfigError: bad name or role, or a policy allowing endpoints beyond the role's.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):  # match's $ allows a final newline
            raise ConfigError(f"KeyStore: 'name' must be 1-64 letters, digits, spaces or _.@- ; got "
                              f"{name!r}. Name the client, e.g. 'billing-app'.")
        pol = policy if policy is not None else default_policy(role)
        if role not in ROLES:
            default_policy(role)  # raises the role error
        beyond = sorted(set(pol.endpoints) - ROLE_ENDPOINTS[role])
        if beyond:
            raise ConfigError(f"KeyStore: the policy's endpoints must be within the {role} role's "
                              f"{sorted(ROLE_ENDPOINTS[role])}; got {beyond!r} beyond them. Use a role that "
                              "allows them, or drop them.")
        key_id = secrets.token_hex(8)
        key = f"msk_{key_id}_{secrets.token_urlsafe(32)}"  # 32 bytes: 256 bits of entropy
        with self._lock:
            self._conn.execute("INSERT INTO keys (key_id, key_hash, name, role, policy, used, created) "
                               "VALUES (?, ?, ?, ?, ?, 0, ?)",
                               (key_id, hash_key(key), name, role, json.dumps(pol.to_dict()), time.time()))
        return key_id, key

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); return it.

        Raises:
            ConfigError: no key has this id.
        """
        with self._lock:
            self._conn.execute("UPDATE keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                               (time.time(), key_id))
        found = self.get(key_id)
        if found is None:
            raise ConfigError(f"KeyStore: 'key_id' must name a key; got {key_id!r}. List keys with "
                              "`modelshield serve keys list --state DIR`.")
        return found

    def get(self, key_id: str) -> ApiKey | None:
        with self._lock:
            row = self._conn.execute("SELECT key_id, name, role, policy, used, created, revoked FROM keys "
                                     "WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _row(row)

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute("SELECT key_id, name, role, policy, used, created, revoked FROM keys "
                                      "ORDER BY created").fetchall()
        return [_row(r) for r in rows]

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key whose hash matches ``key`` (compared in constant time), else None."""
        match = _KEY_RE.match(key) if isinstance(key, str) and len(key) < 256 else None
        key_id = match.group(1) if match else ""
        with self._lock:
            row = self._conn.execute("SELECT key_hash FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        stored = row[0] if row is not None else _DUMMY_HASH
        supplied = hash_key(key) if isinstance(key, str) else ""
        if not hmac.compare_digest(stored.encode(), supplied.encode()) or row is None:
            return None
        found = self.get(key_id)
        return found if found is not None and found.active else None

    def charge(self, key_id: str, queries: int) -> bool:
        """Add ``queries`` to the key's use if its budget allows them all (atomically); True if charged."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE keys SET used = used + ? WHERE key_id = ? AND revoked IS NULL AND "
                "(json_extract(policy, '$.budget') IS NULL OR used + ? <= json_extract(policy, '$.budget'))",
                (queries, key_id, queries))
            return cur.rowcount == 1

    def set_policy(self, key_id: str, policy: Policy) -> ApiKey:
        """Replace a key's policy (within its role); return the key.

        Raises:
            ConfigError: no such key, or endpoints beyond its role.
        """
        key = self.get(key_id)
        if key is None:
            raise ConfigError(f"KeyStore: 'key_id' must name a key; got {key_id!r}. List keys first.")
        beyond = sorted(set(policy.endpoints) - ROLE_ENDPOINTS[key.role])
        if beyond:
            raise ConfigError(f"KeyStore: the policy's endpoints must be within the {key.role} role's; got "
                              f"{beyond!r}. Drop them.")
        with self._lock:
            self._conn.execute("UPDATE keys SET policy = ? WHERE key_id = ?",
                               (json.dumps(policy.to_dict()), key_id))
        return replace(key, policy=policy)


def _row(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, role, policy, used, created, revoked = row
    return ApiKey(key_id=key_id, name=name, role=role, policy=Policy.from_dict(json.loads(policy)),
                  used=int(used), created=float(created), revoked=None if revoked is None else float(revoked))
