"""The tamper-evident audit log: a hash chain of records, a Merkle tree over them, signed checkpoints.

Every record carries the hash of the one before it, and the record hashes are the leaves of an
RFC 6962 Merkle tree whose heads are signed (Ed25519) by :meth:`AuditLog.checkpoint`. So:

- editing any field of a record changes its hash (``edited``); moving records changes the hash
  they give at their new position (``reordered``); deleting records leaves a gap (``deleted``) or,
  at the end of the log, fewer records than a signed checkpoint counts (``truncated``);
- rewriting a record *and* recomputing its hash and every later one (a "consistent" forgery)
  still changes the Merkle root, which no longer matches the signed checkpoints (``rewritten``);
- a checkpoint whose signature does not verify with the log's public key is ``forged``;
- ``prove_inclusion`` and ``prove_consistency`` give Certificate Transparency's proofs, checked
  by pure functions of hashes (:mod:`modelshield.secure.audit.merkle`).

What it cannot detect: records appended after the newest checkpoint can be dropped without trace
until the next checkpoint (``verify`` warns how many are uncovered), and whoever holds the private
key can sign anything. Keep the public key (and, for strong guarantees, copies of recent
checkpoints) where the log's writers cannot change them.

Durability and concurrency: :meth:`AuditLog.append` returns only after the record's transaction
has committed (SQLite: WAL fsynced, ``synchronous=FULL``; PostgreSQL: ``synchronous_commit``).
Threads sharing one ``AuditLog`` are *group-committed*: while one thread's transaction runs, the
others queue, and the next transaction writes the whole queue at once (one fsync for all), each
caller still returning only after its own records are committed. Separate processes serialise on
the database's write lock (``BEGIN IMMEDIATE`` / ``LOCK TABLE``); the append reads the last record
and inserts the next in the same transaction, so no sequence number is lost or duplicated.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelshield.errors import ConfigError, DataError, IntegrityError, ModelShieldError
from modelshield.secure.audit import keys as _keys
from modelshield.secure.audit import merkle
from modelshield.secure.audit._store import FORMAT, Row, Store, is_postgres_url, open_store
from modelshield.secure.audit.keys import Checkpoint
from modelshield.secure.audit.records import (
    GENESIS_HASH,
    Artifact,
    Record,
    canonical_json,
    check_entry,
    is_hex64,
    record_hash,
    utc_now,
)

__all__ = [
    "AuditLog",
    "ConsistencyProof",
    "Entry",
    "InclusionProof",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "default_actor",
    "log_event",
]

LOG_ENV = "MODELSHIELD_AUDIT_LOG"
"""Environment variable naming the audit log (a file path or a postgresql:// URL) that
:func:`log_event` and the ``modelshield audit`` commands use when none is given."""

ProblemKind = Literal["edited", "deleted", "reordered", "chain-break", "truncated", "rewritten", "forged",
                      "malformed", "wrong-key", "no-key", "damaged"]
MAX_BATCH = 2000  # records written by one group commit
COMMIT_DELAY_S = 0.002  # longest a group-commit leader waits for the writers of the previous commit


def default_actor() -> str:
    """``user@host`` of this process (``unknown`` parts when the system cannot say)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname() or 'unknown'}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One record to append (for :meth:`AuditLog.append_many`); ``actor=None`` means default_actor()."""

    action: str
    artifact: Artifact | Path | str
    details: Mapping[str, Any] | None = None
    actor: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One way the log differs from what was written: its kind, the seq or tree size, and a sentence."""

    kind: ProblemKind
    message: str
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message}


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` found. ``ok`` is true when ``problems`` is empty."""

    where: str
    records: int
    tree_size: int
    root_hash: str
    checkpoints: int
    latest_checkpoint: int | None
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "where": self.where, "records": self.records, "tree_size": self.tree_size,
                "root_hash": self.root_hash, "checkpoints": self.checkpoints,
                "latest_checkpoint": self.latest_checkpoint, "problems": [p.to_dict() for p in self.problems],
                "warnings": list(self.warnings), "time_s": self.time_s}


@dataclass(frozen=True, kw_only=True, slots=True)
class InclusionProof:
    """Record ``seq`` is leaf ``seq`` of the tree of ``tree_size`` records with root ``root_hash``."""

    record: Record
    tree_size: int
    root_hash: str
    path: tuple[str, ...]
    checkpoint: Checkpoint | None = None

    def verify(self) -> bool:
        """Pure check: the record hashes to its hash, and the audit path leads from its leaf to the root
        (and to the checkpoint's root when one is attached)."""
        rec = self.record
        if (rec.computed_hash() != rec.hash or not is_hex64(self.root_hash)
                or not all(map(is_hex64, self.path))):
            return False
        if self.checkpoint is not None and (self.checkpoint.root_hash != self.root_hash
                                            or self.checkpoint.tree_size != self.tree_size):
            return False
        return merkle.verify_inclusion(rec.seq, self.tree_size, rec.leaf_hash(),
                                       [bytes.fromhex(p) for p in self.path], bytes.fromhex(self.root_hash))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "inclusion", "seq": self.record.seq, "tree_size": self.tree_size,
                "leaf_hash": self.record.leaf_hash().hex(), "root_hash": self.root_hash,
                "path": list(self.path),
                "record": self.record.to_dict(),
                "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict()}


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsistencyProof:
    """The tree of ``old_size`` records (root ``old_root``) is a prefix of the tree of ``new_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    path: tuple[str, ...]
    old_checkpoint: Checkpoint | None = None
    new_checkpoint: Checkpoint | None = None

    def verify(self) -> bool:
        """Pure check of the proof (RFC 9162 §2.1.4.2) and of any attached checkpoint's root."""
        hexes = (self.old_root, self.new_root, *self.path)
        if not all(map(is_hex64, hexes)):
            return False
        for cp, size, root in ((self.old_checkpoint, self.old_size, self.old_root),
                               (self.new_checkpoint, self.new_size, self.new_root)):
            if cp is not None and (cp.tree_size != size or cp.root_hash != root):
                return False
        return merkle.verify_consistency(self.old_size, self.new_size, bytes.fromhex(self.old_root),
                                         bytes.fromhex(self.new_root), [bytes.fromhex(p) for p in self.path])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "consistency", "old_size": self.old_size, "new_size": self.new_size,
                "old_root": self.old_root, "new_root": self.new_root, "path": list(self.path),
                "old_checkpoint": None if self.old_checkpoint is None else self.old_checkpoint.to_dict(),
                "new_checkpoint": None if self.new_checkpoint is None else self.new_checkpoint.to_dict()}


@dataclass(eq=False)
class _Ticket:
    """Records one caller waits for; the group-commit leader fills in records or error."""

    entries: list[tuple[str, str, Artifact, dict[str, Any]]]
    records: list[Record] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(eq=False)
class _Committer:
    """Leader/follower group commit: the first waiting thread writes everyone's queued records."""

    queue: list[_Ticket] = field(default_factory=list)
    busy: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=16))  # tickets per recent commit


def _parse_row(row: Row) -> Record:
    """A stored row as a Record; ValueError when a JSON column is malformed."""
    seq, t, actor, action, artifact_json, details_json, prev_hash, h = row
    art = json.loads(artifact_json)
    details = json.loads(details_json)
    if not isinstance(art, dict) or not isinstance(details, dict) or set(art) != {"name", "sha256"}:
        raise ValueError("artifact/details are not the expected JSON objects")
    return Record(seq=seq, time=t, actor=actor, action=action,
                  artifact=Artifact(name=art["name"], sha256=art["sha256"]), details=details,
                  prev_hash=prev_hash, hash=h)


def _leaf(stored_hash: str) -> bytes:
    """The Merkle leaf hash of a stored record hash (a malformed one still gives a leaf: it won't match)."""
    data = bytes.fromhex(stored_hash) if is_hex64(stored_hash) else stored_hash.encode("utf-8", "replace")
    return merkle.leaf_hash(data)


class AuditLog:
    """An append-only, hash-chained, Merkle-committed log of who did what to which artifact.

    Open with :meth:`init` (new log and signing key) or :meth:`open` (existing log), from a file path
    (SQLite) or a ``postgresql://`` URL. Thread-safe; share one instance between threads (their
    appends are group-committed). See the module docstring for the guarantees.

    Example:
        log = AuditLog.init("audit.db")            # writes audit.db, audit.db.key (0600), audit.db.pub
        rec = log.append(action="train", artifact=Path("model.pt"),
                         details={"data_root": manifest_root, "epochs": 10})
        log.checkpoint()
        assert log.verify().ok
    """

    def __init__(self, store: Store, meta: Mapping[str, str], *, key: Path | None,
                 public_key: Path | None) -> None:
        self._store = store
        self._meta = dict(meta)
        self.key_path = key
        self.public_key_path = public_key
        self._committer = _Committer()
        self.commit_delay = COMMIT_DELAY_S

    # --- opening ------------------------------------------------------------------------------
    @staticmethod
    def _default_key(target: str | Path, key: str | Path | None) -> Path | None:
        if key is not None:
            return Path(key).expanduser()
        if is_postgres_url(target):
            return None
        return Path(str(Path(target).expanduser()) + ".key")

    @classmethod
    def init(cls, target: str | Path, *, key: str | Path | None = None) -> AuditLog:
        """Create a new, empty log and its Ed25519 signing key pair.

        ``key`` defaults to ``<log file>.key`` for SQLite; a PostgreSQL log needs it. The public key
        is written beside it as ``<key stem>.pub``.

        Raises:
            ConfigError: the log or the key files exist already, or no key path for PostgreSQL.
        """
        key_path = cls._default_key(target, key)
        if key_path is None:
            raise ConfigError("AuditLog.init: a PostgreSQL log needs a signing key path; got key=None. "
                              "Pass key='audit.key' (CLI: --key or MODELSHIELD_AUDIT_KEY).")
        pub_path = _keys.public_key_path(key_path)
        for p in (key_path, pub_path):
            if p.exists():
                raise ConfigError(f"AuditLog.init: the key file must not exist yet; got {str(p)!r}, which "
                                  "exists. "
                                  "Choose another key path, or open the log this key belongs to.")
        if not is_postgres_url(target) and Path(target).expanduser().exists():
            raise ConfigError(f"AuditLog.init: the log must not exist yet; got {str(target)!r}, which "
                              "exists. "
                              "Open it with AuditLog.open (CLI: any other audit command), or choose "
                              "another path.")
        store = open_store(target, create=True)
        made_keys = False
        try:
            _keys.generate_key(key_path)
            made_keys = True
            public = _keys.load_public_key(pub_path)
            meta = {"format": FORMAT, "log_id": uuid.uuid4().hex, "key_id": _keys.key_id(public),
                    "created": utc_now()}
            store.create(meta)
        except BaseException:
            store.close()
            if made_keys:  # a key for a log that was not created would only mislead
                key_path.unlink(missing_ok=True)
                pub_path.unlink(missing_ok=True)
            raise
        return cls(store, meta, key=key_path, public_key=pub_path)

    @classmethod
    def open(cls, target: str | Path, *, key: str | Path | None = None,
             public_key: str | Path | None = None) -> AuditLog:
        """Open an existing log (a file path for SQLite, or a ``postgresql://`` URL).

        ``key`` (the private key, needed only by :meth:`checkpoint`) defaults to ``<log file>.key``;
        ``public_key`` (needed by :meth:`verify` to check checkpoint signatures) defaults to the
        ``.pub`` file beside the key.

        Raises:
            DataError: the target is not an audit log (or the server cannot be reached).
        """
        key_path = cls._default_key(target, key)
        pub_path = (Path(public_key).expanduser() if public_key is not None
                    else None if key_path is None else _keys.public_key_path(key_path))
        store = open_store(target, create=False)
        try:
            meta = store.meta()
        except BaseException:
            store.close()
            raise
        return cls(store, meta, key=key_path, public_key=pub_path)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return self._store.where

    @property
    def origin(self) -> str:
        """The name checkpoints sign: ``modelshield-audit/<log id>``."""
        return f"modelshield-audit/{self._meta.get('log_id', '?')}"

    # --- writing ------------------------------------------------------------------------------
    def append(self, *, action: str, artifact: Artifact | Path | str,
               details: Mapping[str, Any] | None = None, actor: str | None = None) -> Record:
        """Append one record; return it once its transaction has committed (it is then durable).

        ``artifact`` is an :class:`Artifact`, a ``Path`` to a file (its SHA-256 is computed) or a
        name. ``details`` is a JSON object (e.g. data manifest root, settings, code version, the
        resulting model digest). ``actor`` defaults to ``user@host``.

        Raises:
            ConfigError: a field is invalid (the message names it).
            DataError: the database refused the write (nothing was appended).
        """
        return self.append_many([Entry(actor=actor, action=action, artifact=artifact, details=details)])[0]

    def append_many(self, entries: Iterable[Entry]) -> list[Record]:
        """Append several records in one transaction (consecutive seqs); return them once committed."""
        prepared = [check_entry(default_actor() if e.actor is None else e.actor, e.action, e.artifact,
                                e.details) for e in entries]
        if not prepared:
            return []
        ticket = _Ticket(prepared)
        c = self._committer
        with c.cond:
            c.queue.append(ticket)
            c.cond.notify_all()  # a leader gathering its batch may be waiting for this ticket
            while not ticket.done:
                if c.busy:
                    c.cond.wait()
                    continue
                c.busy = True
                self._gather(c)
                batch: list[_Ticket] = []
                size = 0
                while c.queue and (not batch or size + len(c.queue[0].entries) <= MAX_BATCH):
                    t = c.queue.pop(0)
                    batch.append(t)
                    size += len(t.entries)
                c.recent.append(len(batch))
                c.cond.release()
                try:
                    self._write(batch)
                finally:
                    for t in batch:  # an interrupt inside _write must not leave followers waiting forever
                        if not t.done:
                            t.error, t.done = DataError("AuditLog.append: interrupted before the commit was "
                                                        "confirmed; check the log with verify."), True
                    c.cond.acquire()
                    c.busy = False
                    c.cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        if ticket.records is None:  # cannot happen: _write gives every ticket it marks done one of the two
            raise RuntimeError("AuditLog.append_many: a committed batch returned no records")
        return ticket.records

    def _gather(self, c: _Committer) -> None:
        """Hold the commit up to ``commit_delay`` seconds while fewer tickets are queued than recent
        commits carried (the callers that just returned are about to append again), so that their
        records share one fsync. A lone writer (recent commits of one ticket) never waits."""
        want = max(c.recent, default=1)
        deadline = time.monotonic() + self.commit_delay
        while len(c.queue) < want:
            left = deadline - time.monotonic()
            if left <= 0 or not c.cond.wait(left):
                return

    def _write(self, batch: list[_Ticket]) -> None:
        """Write the tickets' entries in one transaction and hand each ticket its records or the error."""
        entries = [e for t in batch for e in t.entries]
        made: list[Record] = []

        def build(next_seq: int, prev: str) -> list[Row]:
            made.clear()
            rows: list[Row] = []
            now = utc_now()
            for i, (actor, action, art, details) in enumerate(entries):
                seq = next_seq + i
                art_dict = art.to_dict()
                h = record_hash(seq=seq, time=now, actor=actor, action=action, artifact=art_dict,
                                details=details, prev_hash=prev)
                rows.append((seq, now, actor, action, canonical_json(art_dict).decode("utf-8"),
                             canonical_json(details).decode("utf-8"), prev, h))
                made.append(Record(seq=seq, time=now, actor=actor, action=action, artifact=art,
                                   details=details, prev_hash=prev, hash=h))
                prev = h
            return rows

        error: BaseException | None = None
        try:
            self._store.append(build)
        except ModelShieldError as exc:
            error = exc
        except Exception as exc:  # sqlite3 / psycopg errors: nothing was committed
            error = DataError(f"AuditLog.append: the database must accept the write; it refused "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())}). Nothing was appended; "
                              "retry, or check the log's location and permissions.")
            error.__cause__ = exc
        start = 0
        for t in batch:
            n = len(t.entries)
            if error is None:
                t.records = made[start:start + n]
            else:
                t.error = error
            start += n
            t.done = True

    def checkpoint(self) -> Checkpoint:
        """Sign the current tree head (size, Merkle root, time) with the private key and store it.

        Returns the stored checkpoint (an existing one when the log has not grown since).

        Raises:
            ConfigError: no private key (or it cannot be read).
            DataError: the log is damaged (a gap in the sequence): run verify.
        """
        if self.key_path is None:
            raise ConfigError("AuditLog.checkpoint: a signing key is needed; got none. Open the log with "
                              "key='...' (CLI: --key or MODELSHIELD_AUDIT_KEY).")
        private = _keys.load_private_key(self.key_path)
        if self._meta.get("key_id") not in (None, _keys.key_id(private.public_key())):
            raise ConfigError(f"AuditLog.checkpoint: the key must be the one this log was created with "
                              f"(key id {self._meta.get('key_id')}); got {str(self.key_path)!r} with key id "
                              f"{_keys.key_id(private.public_key())}. Pass the log's own key.")
        size = self._store.size()
        leaves = self._leaves(size, owner="AuditLog.checkpoint")
        root = merkle.root_hash(leaves).hex()
        cp = _keys.sign_checkpoint(private, origin=self.origin, tree_size=size, root_hash=root,
                                   time=utc_now())
        self._store.add_checkpoint((cp.tree_size, cp.root_hash, cp.time, cp.key_id, cp.signature))
        stored = self._checkpoint_at(size)
        return cp if stored is None else stored

    # --- reading ------------------------------------------------------------------------------
    def size(self) -> int:
        """Number of records the log claims (last seq + 1)."""
        return self._store.size()

    def records(self, start: int = 0, stop: int | None = None, *, actor: str | None = None,
                action: str | None = None, artifact: str | None = None,
                limit: int | None = None) -> list[Record]:
        """Records with start <= seq < stop, optionally filtered by actor, action or artifact name/digest.

        Raises:
            DataError: a stored record is malformed (run verify to see all problems).
        """
        out: list[Record] = []
        for row in self._store.rows(start, stop):
            try:
                rec = _parse_row(row)
            except (ValueError, ConfigError) as exc:
                raise DataError(f"AuditLog.records: record {row[0]} must be well-formed JSON; it is not "
                                f"({exc}). "
                                "Run `modelshield audit verify` to see every problem.") from exc
            if ((actor is None or rec.actor == actor) and (action is None or rec.action == action)
                    and (artifact is None or artifact in (rec.artifact.name, rec.artifact.sha256))):
                out.append(rec)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def record(self, seq: int) -> Record:
        found = self.records(seq, seq + 1)
        if not found:
            raise ConfigError(f"AuditLog.record: 'seq' must name a record of the log (0..{self.size() - 1}); "
                              f"got {seq!r}. List them with `modelshield audit show`.")
        return found[0]

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(origin=self.origin, tree_size=s, root_hash=r, time=t, key_id=k, signature=sig)
                for s, r, t, k, sig in self._store.checkpoints()]

    def _checkpoint_at(self, size: int) -> Checkpoint | None:
        return next((cp for cp in self.checkpoints() if cp.tree_size == size), None)

    def _leaves(self, size: int, *, owner: str) -> list[bytes]:
        rows = self._store.leaf_rows(size)
        for i, (seq, _) in enumerate(rows):
            if seq != i:
                raise DataError(f"{owner}: the log must hold records 0..{size - 1} without gaps; record "
                                f"{i} is "
                                "missing. Run `modelshield audit verify` to see every problem.")
        if len(rows) != size:
            raise DataError(f"{owner}: the log must hold {size} records; it holds {len(rows)}. "
                            "Run `modelshield audit verify`.")
        return [_leaf(h) for _, h in rows]

    # --- proofs -------------------------------------------------------------------------------
    def _check_size(self, name: str, value: object, low: int, high: int, owner: str, *, held: int) -> int:
        """``value`` as an int in [low, high]; ``held``: the records of the tree the bound comes from."""
        if held == 0 and low > high:
            raise ConfigError(f"{owner}: the log must hold records to prove a record; it is empty. Append "
                              "one first (`modelshield audit log`).")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{owner}: {name!r} must be an int in [{low}, {high}] (the tree holds {held} "
                              f"record{'s' if held != 1 else ''}); got {value!r}.")
        return value

    def prove_inclusion(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        """RFC 6962 inclusion proof (audit path) of record ``seq`` in the tree of ``tree_size`` records
        (default: the whole log), with the signed checkpoint of that size when there is one."""
        size = self.size()
        n = self._check_size("tree_size", size if tree_size is None else tree_size, 1, size,
                             "AuditLog.prove_inclusion", held=size)
        self._check_size("seq", seq, 0, n - 1, "AuditLog.prove_inclusion", held=n)
        leaves = self._leaves(n, owner="AuditLog.prove_inclusion")
        path = merkle.inclusion_proof(leaves, seq, n)
        return InclusionProof(record=self.record(seq), tree_size=n, root_hash=merkle.root_hash(leaves).hex(),
                              path=tuple(p.hex() for p in path), checkpoint=self._checkpoint_at(n))

    def prove_consistency(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """RFC 6962 consistency proof that the tree of ``old_size`` records is a prefix of the tree of
        ``new_size`` (default: the whole log), with the signed checkpoints of those sizes when present."""
        size = self.size()
        n = self._check_size("new_size", size if new_size is None else new_size, 0, size,
                             "AuditLog.prove_consistency", held=size)
        m = self._check_size("old_size", old_size, 0, n, "AuditLog.prove_consistency", held=n)
        leaves = self._leaves(n, owner="AuditLog.prove_consistency")
        path = merkle.consistency_proof(leaves, m, n)
        return ConsistencyProof(old_size=m, new_size=n, old_root=merkle.root_hash(leaves[:m]).hex(),
                                new_root=merkle.root_hash(leaves).hex(), path=tuple(p.hex() for p in path),
                                old_checkpoint=self._checkpoint_at(m), new_checkpoint=self._checkpoint_at(n))

    # --- verification -------------------------------------------------------------------------
    def verify(self, *, trusted: Iterable[Checkpoint] = ()) -> VerifyReport:
        """Re-check the whole log: every record's hash, the chain, the sequence, every checkpoint's
        signature and root. Each problem is named (see :data:`ProblemKind`); nothing is repaired.

        ``trusted``: checkpoints kept outside the log (e.g. saved from ``modelshield audit checkpoint
        --json`` by a witness). They are checked like stored ones, so cutting the log's tail *and*
        deleting its checkpoints is still found (``truncated``).

        Raises:
            ConfigError: a trusted checkpoint belongs to another log.
        """
        start = time.perf_counter()
        extra = list(trusted)
        for cp in extra:
            if cp.origin != self.origin:
                raise ConfigError(f"AuditLog.verify: a trusted checkpoint must be one of this log "
                                  f"({self.origin}); got one of {cp.origin!r}. Pass this log's checkpoints.")
        problems: list[Problem] = []
        warnings: list[str] = []
        rows: list[Row] = []
        try:
            for row in self._store.rows():
                rows.append(row)
        except IntegrityError as exc:  # a damaged database file: report it, check what could be read
            problems.append(Problem(kind="damaged", seq=len(rows), message=(
                f"damaged: the records from about seq {len(rows)} on cannot be read ({exc})")))
        pos_of_hash = {r[7]: r[0] for r in rows}
        leaves: list[bytes] = []
        expected, prev_hash, prev_flag = 0, GENESIS_HASH, ""
        for row in rows:
            seq = row[0]
            flag = ""
            if seq != expected:
                what = f"record {expected}" if seq == expected + 1 else f"records {expected}..{seq - 1}"
                problems.append(Problem(kind="deleted", seq=expected, message=(
                    f"deleted: {what} missing (a gap in the sequence before seq {seq})")))
                flag = "gap"
            try:
                rec = _parse_row(row)
            except (ValueError, ConfigError, KeyError) as exc:
                problems.append(Problem(kind="malformed", seq=seq, message=(
                    f"malformed: record at seq {seq} cannot be parsed ({exc}); it was edited")))
                rec, flag = None, "edited"
            if rec is not None and rec.computed_hash() != row[7]:
                origin = self._original_seq(rec, pos_of_hash)
                if origin is not None and origin != seq:
                    problems.append(Problem(kind="reordered", seq=seq, message=(
                        f"reordered: the record stored at seq {seq} was written as seq {origin}")))
                    flag = "reordered"
                else:
                    problems.append(Problem(kind="edited", seq=seq, message=(
                        f"edited: hash mismatch at seq {seq} (stored {row[7][:16]}..., its fields give "
                        f"{rec.computed_hash()[:16]}...)")))
                    flag = "edited"
            if row[6] != prev_hash and not flag and prev_flag not in ("reordered", "gap"):
                problems.append(Problem(kind="chain-break", seq=seq, message=(
                    f"chain break at seq {seq}: its prev_hash {row[6][:16]}... is not the hash of seq "
                    f"{seq - 1} "
                    f"({prev_hash[:16]}...); an earlier record was rewritten with a new hash")))
            prev_hash, prev_flag, expected = row[7], flag, seq + 1
            leaves.append(_leaf(row[7]))
        tree_size = rows[-1][0] + 1 if rows else 0
        gaps = [p.seq for p in problems if p.kind == "deleted" and p.seq is not None]
        try:
            stored = self.checkpoints()
        except IntegrityError as exc:
            problems.append(Problem(kind="damaged",
                                    message=f"damaged: the checkpoints cannot be read ({exc})"))
            stored = []
        known = {(cp.tree_size, cp.root_hash, cp.signature) for cp in stored}
        cps = [*stored, *(cp for cp in extra if (cp.tree_size, cp.root_hash, cp.signature) not in known)]
        cps.sort(key=lambda cp: cp.tree_size)
        for cp in extra:
            if (cp.tree_size, cp.root_hash, cp.signature) not in known and cp.tree_size <= tree_size:
                warnings.append(f"the trusted checkpoint at tree size {cp.tree_size} is not stored in the "
                                "log (checkpoints were deleted, or it was never stored here)")
        self._verify_checkpoints(cps, leaves, tree_size, min(gaps) if gaps else None, problems)
        latest = cps[-1].tree_size if cps else None
        if latest is None and tree_size:
            warnings.append("no signed checkpoint: deleting records from the end would go unnoticed; "
                            "run `modelshield audit checkpoint`")
        elif latest is not None and latest < tree_size:
            warnings.append(f"records {latest}..{tree_size - 1} are not yet covered by a signed checkpoint "
                            "(deleting them would go unnoticed); run `modelshield audit checkpoint`")
        return VerifyReport(where=self.where, records=len(rows), tree_size=tree_size,
                            root_hash=merkle.root_hash(leaves).hex(), checkpoints=len(cps),
                            latest_checkpoint=latest, problems=tuple(problems), warnings=tuple(warnings),
                            time_s=time.perf_counter() - start)

    @staticmethod
    def _original_seq(rec: Record, pos_of_hash: Mapping[str, int]) -> int | None:
        """The seq a moved record was written at: one after the record its prev_hash names."""
        if rec.prev_hash == GENESIS_HASH:
            guess = 0
        elif rec.prev_hash in pos_of_hash:
            guess = pos_of_hash[rec.prev_hash] + 1
        else:
            return None
        return guess if rec.computed_hash(seq=guess) == rec.hash else None

    def _verify_checkpoints(self, cps: Sequence[Checkpoint], leaves: Sequence[bytes], tree_size: int,
                            first_gap: int | None, problems: list[Problem]) -> None:
        """Check each checkpoint's signature, that the log reaches its size, and (up to the first gap,
        which is reported already) that the records still give its root."""
        if not cps:
            return
        public: Ed25519PublicKey | None = None
        if self.public_key_path is None or not self.public_key_path.is_file():
            problems.append(Problem(kind="no-key", message=(
                f"no-key: {len(cps)} checkpoint signature(s) cannot be checked without the public key "
                f"(looked for {str(self.public_key_path)!r}); pass --public-key")))
        else:
            public = _keys.load_public_key(self.public_key_path)
            if _keys.key_id(public) != self._meta.get("key_id"):
                problems.append(Problem(kind="wrong-key", message=(
                    f"wrong-key: the public key {str(self.public_key_path)!r} (id {_keys.key_id(public)}) "
                    "is not "
                    f"the key this log was created with (id {self._meta.get('key_id')})")))
        roots = _roots_at(leaves, sorted({cp.tree_size for cp in cps if cp.tree_size <= len(leaves)}))
        good = 0
        for cp in cps:
            if public is not None and not _keys.verify_checkpoint(cp, public):
                problems.append(Problem(kind="forged", seq=cp.tree_size, message=(
                    f"forged checkpoint signature at tree size {cp.tree_size}: it does not verify with the "
                    "log's public key")))
                continue
            if cp.tree_size > tree_size:
                problems.append(Problem(kind="truncated", seq=cp.tree_size, message=(
                    f"truncated: a checkpoint was signed at tree size {cp.tree_size} but the log ends at "
                    f"tree size {tree_size} (records {tree_size}..{cp.tree_size - 1} deleted)")))
            elif first_gap is not None and cp.tree_size > first_gap:
                continue  # the records under it are misaligned by the gap, reported as 'deleted'
            elif roots[cp.tree_size] != cp.root_hash:
                problems.append(Problem(kind="rewritten", seq=cp.tree_size, message=(
                    f"rewritten: the records before seq {cp.tree_size} no longer give the root signed at "
                    "tree "
                    f"size {cp.tree_size} (a record in {good}..{cp.tree_size - 1} was changed, and its hash "
                    "recomputed, after the checkpoint)")))
            else:
                good = cp.tree_size


def _roots_at(leaves: Sequence[bytes], sizes: Sequence[int]) -> dict[int, str]:
    """Merkle roots (hex) of the prefixes of leaves with the given sizes, in one O(n) pass."""
    out: dict[int, str] = {}
    wanted = set(sizes)
    if 0 in wanted:
        out[0] = merkle.EMPTY_ROOT.hex()
    stack: list[tuple[int, bytes]] = []
    for i, h in enumerate(leaves, start=1):
        size, node = 1, h
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, node = left_size + size, merkle.node_hash(left, node)
        stack.append((size, node))
        if i in wanted:
            acc = stack[-1][1]
            for _, left in reversed(stack[:-1]):
                acc = merkle.node_hash(left, acc)
            out[i] = acc.hex()
    return out


def log_event(*, action: str, artifact: Artifact | Path | str, details: Mapping[str, Any] | None = None,
              actor: str | None = None, target: str | Path | None = None) -> Record | None:
    """Append one record to the configured log, for entry points (training, scanning, assessment).

    The log is ``target``, else ``$MODELSHIELD_AUDIT_LOG``; when neither is set nothing is written
    and None is returned. The record is durable when this returns.

    Raises:
        ConfigError / DataError: a log is configured but the record cannot be written.
    """
    where = target if target is not None else os.environ.get(LOG_ENV) or None
    if where is None:
        return None
    with AuditLog.open(where) as log:
        return log.append(action=action, artifact=artifact, details=details, actor=actor)
