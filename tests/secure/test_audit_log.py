"""The audit log on SQLite and on PostgreSQL: chain, tree, tampering, concurrency and kill -9.

The PostgreSQL cases start a throwaway cluster (initdb + pg_ctl on a unix socket) once per session
and skip, saying why, when the binaries are absent (`.ci/run` installs Debian's postgresql).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelshield.errors import ConfigError, DataError
from modelshield.secure.audit import (
    GENESIS_HASH,
    Artifact,
    AuditLog,
    Entry,
    log_event,
    merkle,
    verify_checkpoint,
)
from modelshield.secure.audit.keys import Checkpoint, load_public_key

_spec = importlib.util.spec_from_file_location("audit_support", Path(__file__).with_name("audit_support.py"))
assert _spec is not None and _spec.loader is not None
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    if support.postgres_binaries() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                    "install Debian's postgresql package to run the PostgreSQL audit-log tests")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'modelshield[postgres]')")
    # fsync off: these tests kill clients, never the server, so server-side durability is not under
    # test here (benchmarks/audit_log.py runs its cluster with fsync on).
    with support.postgres_cluster(fsync=False) as url:
        yield url


class Target:
    """A fresh log location plus raw SQL access to it (to play the attacker)."""

    def __init__(self, url: str, key: Path, kind: str) -> None:
        self.url, self.key, self.kind = url, key, kind

    def sql(self, statement: str) -> None:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url)
            conn.execute(statement)
            conn.commit()
            conn.close()
        else:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)

    def init(self) -> AuditLog:
        return AuditLog.init(self.url, key=self.key)

    def open(self) -> AuditLog:
        return AuditLog.open(self.url, key=self.key)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target(str(tmp_path / "audit.db"), tmp_path / "audit.key", "sqlite")
    url = request.getfixturevalue("pg_cluster")
    return Target(support.new_schema(url, "t" + uuid.uuid4().hex[:12]), tmp_path / "audit.key", "postgres")


def fill(log: AuditLog, n: int, *, start: int = 0) -> list[Any]:
    return [log.append(action="train", artifact=Artifact(name=f"model-{i}.pt", sha256=hashlib.sha256(
        str(i).encode()).hexdigest()), details={"i": i, "data_root": "ab" * 32, "lr": 0.1}, actor="ci")
        for i in range(start, start + n)]


# --- records, chain, tree ----------------------------------------------------------------------------


def test_records_chain_and_hash(target: Target) -> None:
    with target.init() as log:
        recs = fill(log, 5)
        assert [r.seq for r in recs] == list(range(5))
        assert recs[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(recs))
        assert all(r.computed_hash() == r.hash for r in recs)
        stored = log.records()
        assert [r.to_dict() for r in stored] == [r.to_dict() for r in recs]
        assert [r.seq for r in log.records(action="train", artifact="model-3.pt")] == [3]
        report = log.verify()
        assert report.ok and report.records == 5
        assert report.root_hash == merkle.root_hash([r.leaf_hash() for r in recs]).hex()


def test_artifact_of_file_hashes_the_bytes(target: Target, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    with target.init() as log:
        rec = log.append(action="scan", artifact=model, details={"findings": 0})
    assert rec.artifact.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"action": "Train!", "artifact": "m"}, "'action' must be a lower-case name"),
    ({"action": "train", "artifact": "m", "details": {"x": float("nan")}}, "only JSON values"),
    ({"action": "train", "artifact": "m", "details": [1, 2]}, "must be a JSON object"),
    ({"action": "train", "artifact": "m", "actor": ""}, "'actor' must be a non-empty string"),
    ({"action": "train", "artifact": 3}, "'artifact' must be an Artifact"),
])
def test_bad_entries_are_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict[str, Any],
                                                        match: str) -> None:
    with AuditLog.init(tmp_path / "a.db") as log:
        with pytest.raises(ConfigError, match=match):
            log.append(**kwargs)
        assert log.size() == 0


def test_init_refuses_existing_and_open_refuses_non_logs(tmp_path: Path) -> None:
    AuditLog.init(tmp_path / "a.db").close()
    with pytest.raises(ConfigError, match="must not exist yet"):
        AuditLog.init(tmp_path / "a.db")
    with pytest.raises(DataError, match="must exist"):
        AuditLog.open(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(DataError, match="no audit tables"):
        AuditLog.open(other)


def test_key_files_mode_and_checkpoint_signature(target: Target) -> None:
    with target.init() as log:
        fill(log, 7)
        cp = log.checkpoint()
        assert cp.tree_size == 7
        assert os.stat(target.key).st_mode & 0o777 == 0o600
        public = load_public_key(target.key.with_suffix(".pub"))
        assert verify_checkpoint(cp, public)
        assert cp.root_hash == merkle.root_hash([r.leaf_hash() for r in log.records()]).hex()
        assert log.checkpoint() == cp  # no growth: the same signed head
        forged = type(cp)(origin=cp.origin, tree_size=8, root_hash=cp.root_hash, time=cp.time,
                          key_id=cp.key_id, signature=cp.signature)
        assert not verify_checkpoint(forged, public)


def test_proofs_verify_and_match_checkpoints(target: Target) -> None:
    with target.init() as log:
        fill(log, 11)
        cp11 = log.checkpoint()
        fill(log, 6, start=11)
        cp17 = log.checkpoint()
        for seq in range(17):
            proof = log.prove_inclusion(seq)
            assert proof.verify() and proof.checkpoint == cp17
            assert json.loads(json.dumps(proof.to_dict()))["path"] == list(proof.path)
        old = log.prove_inclusion(4, 11)
        assert old.verify() and old.root_hash == cp11.root_hash
        cons = log.prove_consistency(11, 17)
        assert cons.verify() and cons.old_checkpoint == cp11 and cons.new_checkpoint == cp17
        bad = type(cons)(old_size=11, new_size=17, old_root=cons.old_root, new_root=cons.new_root,
                         path=(cons.path[0][::-1], *cons.path[1:]))
        assert not bad.verify()
        with pytest.raises(ConfigError, match=r"'seq' must be an int in \[0, 10\]"):
            log.prove_inclusion(11, 11)


# --- tampering: each kind detected and named ------------------------------------------------------------


def tampered(target: Target, attack: Callable[[Target], None], *, n: int = 12) -> set[str]:
    with target.init() as log:
        fill(log, n)
        log.checkpoint()
        assert log.verify().ok
    attack(target)
    with target.open() as log:
        report = log.verify()
    assert not report.ok
    assert all(p.message for p in report.problems)
    return report.kinds()


def test_edited_field_is_named(target: Target) -> None:
    kinds = tampered(target, lambda t: t.sql("UPDATE audit_records SET actor = 'mallory' WHERE seq = 4"))
    assert kinds == {"edited", "rewritten"} or kinds == {"edited"}
    with target.open() as log:
        assert any(p.kind == "edited" and p.seq == 4 and "seq 4" in p.message for p in log.verify().problems)


def test_edited_details_json_is_named(target: Target) -> None:
    kinds = tampered(target, lambda t: t.sql(
        "UPDATE audit_records SET details = '{\"i\":99,\"data_root\":\"x\",\"lr\":0.1}' WHERE seq = 2"))
    assert "edited" in kinds


def test_deleted_record_is_named(target: Target) -> None:
    tampered(target, lambda t: t.sql("DELETE FROM audit_records WHERE seq = 5"))
    with target.open() as log:
        problems = log.verify().problems
    assert [(p.kind, p.seq) for p in problems if p.kind == "deleted"] == [("deleted", 5)]


def test_swapped_records_are_named_reordered(target: Target) -> None:
    def swap(t: Target) -> None:
        t.sql("UPDATE audit_records SET seq = -1 WHERE seq = 3")
        t.sql("UPDATE audit_records SET seq = 3 WHERE seq = 7")
        t.sql("UPDATE audit_records SET seq = 7 WHERE seq = -1")

    kinds = tampered(target, swap)
    assert "reordered" in kinds
    with target.open() as log:
        msgs = [p.message for p in log.verify().problems if p.kind == "reordered"]
    assert any("seq 3 was written as seq "
               "7" in m for m in msgs) and any("seq 7 was written as seq "
                                                                        "3" in m for m in msgs)


def test_truncated_tail_is_named(target: Target) -> None:
    kinds = tampered(target, lambda t: t.sql("DELETE FROM audit_records WHERE seq >= 9"))
    assert kinds == {"truncated"}


def test_replaced_checkpoint_signature_is_named_forged(target: Target) -> None:
    sig = base64.b64encode(bytes(64)).decode()
    kinds = tampered(target, lambda t: t.sql(f"UPDATE audit_checkpoints SET signature = '{sig}'"))
    assert kinds == {"forged"}


def test_consistent_rewrite_breaks_the_chain_and_the_signed_root(target: Target) -> None:
    """An attacker who edits a record and recomputes its hash: the next record's prev_hash no longer
    matches (chain break), and the signed checkpoint's root no longer matches (rewritten)."""
    with target.init() as log:
        recs = fill(log, 8)
        log.checkpoint()
    r = recs[3]
    new_hash = type(r)(seq=r.seq, time=r.time, actor="mallory", action=r.action, artifact=r.artifact,
                       details=r.details, prev_hash=r.prev_hash).computed_hash()
    target.sql(f"UPDATE audit_records SET actor = 'mallory', hash = '{new_hash}' WHERE seq = 3")
    with target.open() as log:
        report = log.verify()
    assert report.kinds() == {"chain-break", "rewritten"}
    assert any(p.kind == "chain-break" and p.seq == 4 for p in report.problems)


def test_wrong_public_key_is_named(target: Target, tmp_path: Path) -> None:
    with target.init() as log:
        fill(log, 3)
        log.checkpoint()
    other = AuditLog.init(tmp_path / "other.db")
    other.close()
    with AuditLog.open(target.url, key=target.key, public_key=tmp_path / "other.db.pub") as log:
        assert {"wrong-key", "forged"} <= log.verify().kinds()


def test_uncovered_tail_is_a_warning_not_a_problem(target: Target) -> None:
    with target.init() as log:
        fill(log, 3)
        log.checkpoint()
        fill(log, 2, start=3)
        report = log.verify()
    assert report.ok and any("records 3..4 are not yet covered" in w for w in report.warnings)


# --- concurrency -----------------------------------------------------------------------------------


def check_complete(target: Target, expected: int) -> None:
    with target.open() as log:
        report = log.verify()
        seqs = [r.seq for r in log.records()]
    assert report.ok, report.problems
    assert seqs == list(range(expected))  # none lost, none duplicated


def test_eight_threads_sharing_one_log(target: Target) -> None:
    with target.init() as log:
        def work(t: int) -> None:
            for i in range(40):
                if i % 10 == 0:
                    log.append_many([Entry(action="scan", artifact=f"{t}-{i}-{k}", actor="t")
                                     for k in range(3)])
                else:
                    log.append(action="train", artifact=f"{t}-{i}", actor="t")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    check_complete(target, 8 * (36 + 4 * 3))


def test_eight_threads_with_their_own_connections(target: Target) -> None:
    target.init().close()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            with target.open() as log:
                for i in range(25):
                    log.append(action="train", artifact=f"{t}-{i}", actor="t")
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    check_complete(target, 200)


def test_four_processes_appending(target: Target) -> None:
    target.init().close()
    program = (
        "import sys, types\n"
        "pkg = types.ModuleType('modelshield'); pkg.__path__ = [sys.argv[1]]; sys.modules['modelshield'] = "
        "pkg\n"
        "from modelshield.secure.audit import AuditLog\n"
        "log = AuditLog.open(sys.argv[2], key=sys.argv[3])\n"
        "for i in range(60):\n"
        "    log.append(action='train', artifact=f'p-{i}', actor='proc')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", program, str(support.SRC), target.url, str(target.key)])
             for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    check_complete(target, 240)


@pytest.mark.parametrize("trials", [20])
def test_kill_minus_nine_loses_no_acknowledged_record(target: Target, trials: int) -> None:
    target.init().close()
    rng = random.Random(17)
    count = trials if target.kind == "sqlite" else trials // 4
    for trial in range(count):
        acked = support.kill_trial(target.url, str(target.key), rng.uniform(0.0, 0.25), python=sys.executable)
        with target.open() as log:
            report = log.verify()
            stored = {str(r.seq): r.hash for r in log.records()}
        assert report.ok, (trial, report.problems)
        missing = {s: h for s, h in acked.items() if stored.get(s) != h}
        assert not missing, (trial, missing)
    with target.open() as log:
        assert log.size() > 0


def test_log_event_writes_only_when_a_log_is_configured(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSHIELD_AUDIT_LOG", raising=False)
    assert log_event(action="scan", artifact="m.pt") is None
    AuditLog.init(tmp_path / "a.db").close()
    monkeypatch.setenv("MODELSHIELD_AUDIT_LOG", str(tmp_path / "a.db"))
    rec = log_event(action="scan", artifact="m.pt", details={"findings": 2}, actor="scanner")
    assert rec is not None and rec.seq == 0
    with AuditLog.open(tmp_path / "a.db") as log:
        assert log.record(0).details == {"findings": 2}


def test_hostile_log_files_are_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="must be an SQLite audit log"):
        AuditLog.open(junk)
    with pytest.raises(DataError, match="PostgreSQL server must accept a connection"):
        AuditLog.open(f"postgresql://nobody@/x?host={tmp_path}&port=1&connect_timeout=2")


def test_second_init_is_refused_and_leaves_no_key(target: Target, tmp_path: Path) -> None:
    target.init().close()
    with pytest.raises(ConfigError, match="must not exist yet"):
        AuditLog.init(target.url, key=tmp_path / "second.key")
    assert not (tmp_path / "second.key").exists() and not (tmp_path / "second.pub").exists()


def test_trusted_checkpoint_finds_a_cut_tail_after_checkpoints_were_deleted(target: Target) -> None:
    with target.init() as log:
        fill(log, 10)
        saved = log.checkpoint().to_dict()  # kept by a witness, outside the log
    target.sql("DELETE FROM audit_records WHERE seq >= 6")
    target.sql("DELETE FROM audit_checkpoints")
    with target.open() as log:
        assert log.verify().ok  # the log alone cannot tell
        report = log.verify(trusted=[Checkpoint.from_dict(json.loads(json.dumps(saved)))])
        assert report.kinds() == {"truncated"}
        assert any("is not stored in the log" in w for w in report.warnings) is False  # size 10 > 6
        with pytest.raises(ConfigError, match="must be one of this log"):
            log.verify(trusted=[Checkpoint.from_dict({**saved, "origin": "modelshield-audit/other"})])
