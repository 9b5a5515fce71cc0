"""Where the audit log lives: SQLite (default) or PostgreSQL, behind one small interface.

Both stores hold the same three tables (``audit_meta``, ``audit_records``, ``audit_checkpoints``)
and serialise writers the same way: an append is one transaction that takes the write lock first,
reads the last record, and inserts the next ones. Nothing is acknowledged before ``COMMIT``
returns.

- SQLite: WAL journal, ``synchronous=FULL`` (the WAL is fsynced at every commit, so an
  acknowledged record survives a power cut, not only a killed process), ``BEGIN IMMEDIATE`` (the
  write lock is taken at the start, so concurrent writers in threads and processes queue on the
  busy timeout instead of failing on a lock upgrade). Writers first take a blocking ``flock`` on
  ``<log>.lock``, so that they queue in the kernel rather than in SQLite's sleeping busy handler.
- PostgreSQL (``psycopg``, the ``postgres`` extra, imported only when a ``postgresql://`` URL is
  opened): ``LOCK TABLE audit_records IN EXCLUSIVE MODE`` inside the transaction (readers are not
  blocked; writers queue), and the server's default ``synchronous_commit=on``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from modelshield.errors import ConfigError, DataError, IntegrityError

__all__ = ["Row", "Store", "is_postgres_url", "open_store"]

Row = tuple[int, str, str, str, str, str, str, str]
"""(seq, time, actor, action, artifact JSON, details JSON, prev_hash, hash), as stored."""
CheckpointRow = tuple[int, str, str, str, str]
"""(tree_size, root_hash hex, time, key_id, signature base64), as stored."""
FORMAT = "modelshield-audit/1"
_COLUMNS = "seq, time, actor, action, artifact, details, prev_hash, hash"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_records (seq {int} PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT "
    "NULL, "
    "action TEXT NOT NULL, artifact TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL, "
    "hash TEXT NOT NULL, UNIQUE (seq))",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (tree_size {int} PRIMARY KEY, root_hash TEXT NOT NULL, "
    "time TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL)",
)


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Store(Protocol):
    """What the log needs from a database."""

    where: str

    def create(self, meta: dict[str, str]) -> None: ...
    def meta(self) -> dict[str, str]: ...
    def append(self, build: Callable[[int, str], list[Row]]) -> list[Row]: ...
    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[Row]: ...
    def leaf_rows(self, stop: int) -> list[tuple[int, str]]: ...
    def size(self) -> int: ...
    def checkpoints(self) -> list[CheckpointRow]: ...
    def add_checkpoint(self, row: CheckpointRow) -> None: ...
    def close(self) -> None: ...


class _SqlStore:
    """The shared SQL of both stores; subclasses supply the connection and the write lock."""

    where: str
    _param = "?"
    _int = "INTEGER"

    def __init__(self) -> None:
        self._lock = threading.RLock()  # one connection per store: its users take turns

    # --- connection hooks -------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _begin_write(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._param)

    def close(self) -> None:
        raise NotImplementedError

    # --- operations -------------------------------------------------------------------------
    def create(self, meta: dict[str, str]) -> None:
        with self._lock:
            self._begin_write()
            try:
                for statement in _SCHEMA:
                    self._execute(statement.format(int=self._int))
                existing = self._execute("SELECT count(*) FROM audit_meta").fetchone()[0]
                if existing:
                    raise ConfigError(f"AuditLog.init: the log must not exist yet; got {self.where!r}, "
                                      "which is already an audit log. Open it with AuditLog.open, or choose "
                                      "another location.")
                self._executemany(self._sql("INSERT INTO audit_meta (key, value) VALUES (?, ?)"),
                                  sorted(meta.items()))
                self._commit()
            except BaseException:
                self._rollback()
                raise

    def meta(self) -> dict[str, str]:
        with self._lock:
            try:
                rows = self._execute("SELECT key, value FROM audit_meta").fetchall()
            except Exception as exc:  # a missing table: not an audit log (sqlite3 / psycopg errors)
                self._rollback()
                raise DataError(f"AuditLog.open: {self.where!r} must be an audit log; it has no audit tables "
                                f"({type(exc).__name__}). Create one with `modelshield audit init`.") from exc
            self._rollback()  # end the read transaction (psycopg opens one implicitly)
        meta = {str(k): str(v) for k, v in rows}
        if meta.get("format") != FORMAT:
            raise DataError(f"AuditLog.open: {self.where!r} must be a {FORMAT} log; got format "
                            f"{meta.get('format')!r}. Create one with `modelshield audit init`.")
        return meta

    def append(self, build: Callable[[int, str], list[Row]]) -> list[Row]:
        """One transaction: lock, read the last record, insert build(next_seq, prev_hash), commit."""
        with self._lock:
            self._begin_write()
            try:
                last = self._execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT "
                                     "1").fetchone()
                next_seq, prev = (0, "0" * 64) if last is None else (int(last[0]) + 1, str(last[1]))
                rows = build(next_seq, prev)
                self._executemany(self._sql(f"INSERT INTO audit_records ({_COLUMNS}) VALUES (?, ?, ?, ?, "
                                            "?, ?, ?, ?)"),
                                  rows)
                self._commit()
            except BaseException:
                self._rollback()
                raise
        return rows

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[Row]:
        """Records with start <= seq < stop in seq order, fetched in pages (no long-held cursor)."""
        page, cursor = 2000, start
        while True:
            with self._lock:
                sql = f"SELECT {_COLUMNS} FROM audit_records WHERE seq >= ?"
                params: list[Any] = [cursor]
                if stop is not None:
                    sql += " AND seq < ?"
                    params.append(stop)
                batch = self._execute(self._sql(sql + " ORDER BY seq LIMIT ?"), [*params, page]).fetchall()
                self._rollback()
            for r in batch:
                yield (int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]))
            if len(batch) < page:
                return
            cursor = int(batch[-1][0]) + 1

    def leaf_rows(self, stop: int) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._execute(self._sql("SELECT seq, hash FROM audit_records WHERE seq < ? ORDER BY seq"),
                                 [stop]).fetchall()
            self._rollback()
        return [(int(s), str(h)) for s, h in rows]

    def size(self) -> int:
        """The tree size the log claims: last seq + 1 (0 when empty)."""
        with self._lock:
            row = self._execute("SELECT max(seq) FROM audit_records").fetchone()
            self._rollback()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def checkpoints(self) -> list[CheckpointRow]:
        with self._lock:
            rows = self._execute("SELECT tree_size, root_hash, time, key_id, signature FROM "
                                 "audit_checkpoints "
                                 "ORDER BY tree_size").fetchall()
            self._rollback()
        return [(int(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]

    def add_checkpoint(self, row: CheckpointRow) -> None:
        """Insert a checkpoint unless one of that size exists (the first signed head of a size stays)."""
        with self._lock:
            self._begin_write()
            try:
                exists = self._execute(self._sql("SELECT 1 FROM audit_checkpoints WHERE tree_size = ?"),
                                       [row[0]]).fetchone()
                if exists is None:
                    self._execute(self._sql("INSERT INTO audit_checkpoints (tree_size, root_hash, time, "
                                            "key_id, "
                                            "signature) VALUES (?, ?, ?, ?, ?)"), row)
                self._commit()
            except BaseException:
                self._rollback()
                raise


class _Fetched:
    """The rows of one SQLite statement, fetched at once (a cursor's fetchall/fetchone)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None


class SQLiteStore(_SqlStore):
    """SQLite in WAL mode with synchronous=FULL; writers serialise on BEGIN IMMEDIATE."""

    def __init__(self, path: Path, *, create: bool, busy_timeout: float = 60.0) -> None:
        super().__init__()
        self.where = str(path)
        if not create and not path.is_file():
            raise DataError(f"AuditLog.open: the audit log must exist; got {str(path)!r}, which is not a "
                            "file. "
                            "Create it with `modelshield audit init` (or AuditLog.init).")
        if create and not path.parent.is_dir():
            raise ConfigError(f"AuditLog.init: the log's folder must exist; got {str(path.parent)!r}. "
                              "Create the folder first.")
        try:
            self._conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"AuditLog.open: {str(path)!r} must be an SQLite audit log; SQLite says: {exc}. "
                            "Check the path or create a log with `modelshield audit init`.") from exc
        self._lock_fd: int | None = None
        try:
            self._lock_fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            self._lock_fd = None  # a read-only folder: readers need no lock (writers still serialise)
        if str(mode).lower() != "wal":
            raise DataError(f"AuditLog.open: the log must support WAL journaling; got journal mode {mode!r} "
                            f"for {str(path)!r}. Put the log on a local file system.")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        # rows are fetched here, inside the try: SQLite reports a damaged page while stepping the cursor
        try:
            return _Fetched(self._conn.execute(sql, params).fetchall())
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _damaged(self, exc: sqlite3.DatabaseError) -> Exception:
        """A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB: bytes overwritten in the middle) becomes a
        one-line IntegrityError naming the file; busy, locked and other errors pass through."""
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB") \
                or type(exc) is sqlite3.DatabaseError:
            return IntegrityError(f"audit log {self.where!r}: the SQLite file must be intact; SQLite says "
                                  f"{exc}. It was damaged or tampered with: restore it from a backup (the "
                                  "records it still holds can be checked with `modelshield audit verify`).")
        return exc

    def _begin_write(self) -> None:
        # Writers of other processes queue on a blocking flock of <log>.lock first: the kernel wakes the
        # next one the moment the lock is released, where SQLite's busy handler would poll with sleeps
        # of up to 100 ms. BEGIN IMMEDIATE alone keeps the log correct; the flock only makes it fast.
        # A killed writer's flock is released by the kernel.
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        finally:
            if not self._conn.in_transaction:
                self._unlock()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            finally:
                self._unlock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


class PostgresStore(_SqlStore):
    """PostgreSQL through psycopg 3; writers serialise on an EXCLUSIVE table lock per transaction."""

    _param = "%s"
    _int = "BIGINT"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError("AuditLog.open: a postgresql:// log needs psycopg; it is not installed. "
                              "Install the extra: pip install 'modelshield[postgres]'.") from exc
        self.where = _redact(url)
        self._tables = False
        try:
            self._conn = psycopg.connect(url, autocommit=False)
        except psycopg.Error as exc:
            raise DataError("AuditLog.open: the PostgreSQL server must accept a connection to "
                            f"{self.where!r}; "
                            f"it said: {' '.join(str(exc).split())}. Check the URL and that the server "
                            "runs.") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql, rows)

    def _begin_write(self) -> None:
        self._rollback()  # a fresh transaction (psycopg begins one implicitly at the first statement)
        if not self._tables:
            found = self._conn.execute("SELECT to_regclass('audit_records')").fetchone()
            self._tables = found is not None and found[0] is not None
        if self._tables:  # absent only while `create` makes them
            self._conn.execute("LOCK TABLE audit_records IN EXCLUSIVE MODE")

    def _commit(self) -> None:
        self._conn.commit()

    def _rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _redact(url: str) -> str:
    """The URL without its password (for messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_store(target: str | Path, *, create: bool = False) -> Store:
    """The store for a path (SQLite) or a ``postgresql://`` URL."""
    if is_postgres_url(target):
        return PostgresStore(str(target))
    if not isinstance(target, str | Path) or not str(target):
        raise ConfigError("AuditLog.open: the log must be a file path or a postgresql:// URL; got "
                          f"{target!r}. "
                          "Pass --log PATH or set MODELSHIELD_AUDIT_LOG.")
    return SQLiteStore(Path(target).expanduser(), create=create)
