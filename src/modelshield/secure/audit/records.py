"""Audit records: what one entry holds, its canonical encoding and its chained hash.

A record says who (``actor``) did what (``action``) to which artifact (a name or path and its
SHA-256), when (UTC, ISO 8601), with free-form ``details`` (a JSON object: the data manifest root,
settings, code version, the resulting model digest...). Each record carries the hash of the one
before it (``prev_hash``; 64 zeros for the first), and its own ``hash`` is the SHA-256 of the
canonical JSON encoding of all other fields, so editing any field of any record, or moving it,
breaks the chain. The record's hash (32 bytes) is also the data of its leaf in the log's Merkle
tree (RFC 6962 §2.1: leaf hash = SHA-256(0x00 || record hash)).

Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, no NaN or infinity (the JSON
Canonicalization Scheme of RFC 8785 for the values a record holds: strings, ints, floats, bools,
null, lists, objects).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelshield._io import hash_file
from modelshield.errors import ConfigError, DataError

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "Artifact",
    "Record",
    "canonical_json",
    "record_hash",
    "utc_now",
]

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record (seq 0)."""
ACTIONS = ("train", "scan", "assess", "sign", "verify", "manifest", "load", "attack", "defend", "other")
"""Actions modelshield itself writes; any other lower-case name matching ``[a-z][a-z0-9_.-]*`` is allowed."""
_ACTION_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_DETAILS_BYTES = 1 << 20


def canonical_json(value: object) -> bytes:
    """UTF-8 JSON with sorted keys, no whitespace and no NaN/inf (``ValueError`` on those)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds and a ``Z`` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True, slots=True)
class Artifact:
    """The thing an action was done to: a name or path and, when known, its SHA-256 (hex)."""

    name: str
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 4096:
            raise ConfigError(f"Artifact: 'name' must be a non-empty string of at most 4096 characters; "
                              f"got {self.name!r}. Give the artifact's path or name.")
        if self.sha256 is not None and (not isinstance(self.sha256, str) or not _HEX64_RE.match(self.sha256)):
            raise ConfigError("Artifact: 'sha256' must be 64 lower-case hex digits or None; got "
                              f"{self.sha256!r}. "
                              "Pass hashlib.sha256(data).hexdigest(), or use Artifact.of_file(path).")

    @classmethod
    def of_file(cls, path: str | Path) -> Artifact:
        """The artifact for a file on disk: its path as given and the SHA-256 of its bytes.

        Raises:
            DataError: the file cannot be read.
        """
        p = Path(path)
        try:
            digest = hash_file(p)
        except OSError as exc:
            raise DataError(f"Artifact.of_file: the artifact must be a readable file; got {str(p)!r} "
                            f"({exc.strerror or exc}). Check the path, or log a name without a "
                            "digest.") from exc
        return cls(name=str(p), sha256=digest.hexdigest())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256}


def _check_details(details: object) -> dict[str, Any]:
    """details as a plain JSON object (round-tripped through canonical JSON), or ConfigError."""
    if not isinstance(details, Mapping):
        raise ConfigError(f"AuditLog.append: 'details' must be a JSON object (a dict); got "
                          f"{type(details).__name__}. Wrap the value: details={{'value': ...}}.")
    try:
        encoded = canonical_json(dict(details))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"AuditLog.append: 'details' must hold only JSON values (str, int, finite float, "
                          f"bool, None, lists, dicts with str keys); got {exc}. Convert it first, "
                          "e.g. str() for paths, float() for numpy numbers.") from exc
    if len(encoded) > MAX_DETAILS_BYTES:
        raise ConfigError(f"AuditLog.append: 'details' must encode to at most {MAX_DETAILS_BYTES} bytes; "
                          f"got {len(encoded)}. Log a digest of large content instead of the content.")
    parsed: dict[str, Any] = json.loads(encoded)
    return parsed


def check_entry(actor: object, action: object, artifact: object, details: object) -> tuple[str, str, Artifact,
                                                                                         dict[str, Any]]:
    """Validate the user-supplied fields of a record; return them normalised.

    ``artifact`` may be an :class:`Artifact`, a ``Path`` to an existing file (hashed) or a ``str``
    name (no digest).
    """
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 256:
        raise ConfigError(f"AuditLog.append: 'actor' must be a non-empty string of at most 256 characters; "
                          f"got {actor!r}. Pass who acted, e.g. 'alice@build-01' or a service name.")
    if not isinstance(action, str) or not _ACTION_RE.match(action):
        raise ConfigError(f"AuditLog.append: 'action' must be a lower-case name matching [a-z][a-z0-9_.-]* "
                          f"(e.g. {', '.join(ACTIONS[:5])}); got {action!r}.")
    if isinstance(artifact, Path):
        art = Artifact.of_file(artifact)
    elif isinstance(artifact, str):
        art = Artifact(name=artifact)
    elif isinstance(artifact, Artifact):
        art = artifact
    else:
        raise ConfigError(f"AuditLog.append: 'artifact' must be an Artifact, a Path to a file or a name; got "
                          f"{type(artifact).__name__}. Use Artifact(name=..., sha256=...).")
    return actor, action, art, _check_details({} if details is None else details)


def record_hash(*, seq: int, time: str, actor: str, action: str, artifact: Mapping[str, Any],
                details: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical JSON of a record's fields, ``prev_hash`` included."""
    body = {"v": 1, "seq": seq, "time": time, "actor": actor, "action": action,
            "artifact": dict(artifact), "details": dict(details), "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One entry of the audit log, as written (``hash`` is what the log stores)."""

    seq: int
    time: str
    actor: str
    action: str
    artifact: Artifact
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def computed_hash(self, *, seq: int | None = None) -> str:
        """The hash the fields give (with another ``seq`` when asked: used to name reordering)."""
        return record_hash(seq=self.seq if seq is None else seq, time=self.time, actor=self.actor,
                           action=self.action, artifact=self.artifact.to_dict(), details=self.details,
                           prev_hash=self.prev_hash)

    def leaf_hash(self) -> bytes:
        """This record's Merkle leaf hash: SHA-256(0x00 || bytes of its stored hash)."""
        return hashlib.sha256(b"\x00" + bytes.fromhex(self.hash)).digest()

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "actor": self.actor, "action": self.action,
                "artifact": self.artifact.to_dict(), "details": self.details, "prev_hash": self.prev_hash,
                "hash": self.hash}


def is_hex64(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX64_RE.match(value))
