"""Throughput and crash safety of the tamper-evident audit log (issue #17, item 5), in one run.

Prints one JSON object:

- ``throughput``: appends per second with 8 concurrent writers, on SQLite (WAL, synchronous=FULL)
  and on PostgreSQL (a throwaway cluster started here with initdb/pg_ctl, fsync on, the default
  synchronous_commit=on). Every append is *acknowledged*: the call returns only after the
  transaction holding the record has committed durably. Three shapes are measured:
  ``threads``: 8 threads sharing one ``AuditLog``, one record per call (group commit: the records
  queued while a transaction runs share the next transaction and its fsync);
  ``threads_batch``: 8 threads calling ``append_many`` with ``--batch`` records per call;
  ``processes``: 4 processes, one connection each, one record per call (they serialise on the
  database's write lock; nothing is shared between them).
  Each run then checks the log: ``lost`` (records a writer was acknowledged for but that are not
  there), ``duplicated`` (sequence numbers that repeat; impossible by the UNIQUE key, counted anyway),
  ``gaps`` and ``verify_ok`` (a full ``verify()``).
- ``kill9``: ``--trials`` trials of a writer process (two threads, single appends, ``append_many``
  and checkpoints) killed with SIGKILL at a random moment (uniform in [0, 0.25] s after it starts
  appending), each followed by ``verify()`` and a check that every record the writer printed
  (after ``append`` returned) is present with the same hash. Progress is kept in ``--state`` so an
  interrupted run resumes where it stopped.

The numbers depend on the disk's fsync latency (shared CI machines vary by 10x from minute to
minute): ``fsync_ms`` reports a 4 KiB write+fsync measured at the start, next to the results.

Usage: python benchmarks/audit_log.py [--seconds 5] [--batch 50] [--trials 200] [--pg-trials 20]
[--state benchmarks/results/audit_kill9_state.json] [--no-postgres]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from modelshield.secure.audit import AuditLog, Entry

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_support",
                                               ROOT / "tests" / "secure" / "audit_support.py")
assert _spec is not None and _spec.loader is not None
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

PROC_WRITER = r'''
import sys, time, types
pkg = types.ModuleType("modelshield"); pkg.__path__ = [sys.argv[1]]; sys.modules["modelshield"] = pkg
from modelshield.secure.audit import AuditLog
log = AuditLog.open(sys.argv[2], key=sys.argv[3])
deadline = float(sys.argv[4])
while time.time() < float(sys.argv[5]):
    time.sleep(0.001)
n = 0
while time.time() < deadline:
    log.append(action="train", artifact=f"p-{n}", details={"n": n}, actor="bench")
    n += 1
print(n)
'''


def fsync_ms(folder: str) -> float:
    path = os.path.join(folder, "fsync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(50):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        return (time.perf_counter() - start) / 50 * 1000
    finally:
        os.close(fd)
        os.remove(path)


def check(target: str, key: str, acknowledged: int) -> dict[str, Any]:
    with AuditLog.open(target, key=key) as log:
        start = time.perf_counter()
        report = log.verify()
        verify_s = time.perf_counter() - start
        seqs = [r.seq for r in log.records()]
    dup = sum(c - 1 for c in Counter(seqs).values() if c > 1)
    gaps = len(set(range(max(seqs) + 1)) - set(seqs)) if seqs else 0
    return {"records": len(seqs), "acknowledged": acknowledged, "lost": max(0, acknowledged - len(seqs)),
            "duplicated": dup, "gaps": gaps, "verify_ok": report.ok, "verify_s": round(verify_s, 3)}


def run_threads(target: str, key: str, seconds: float, batch: int) -> dict[str, Any]:
    counts = [0] * 8
    with AuditLog.open(target, key=key) as log:
        stop = time.perf_counter() + seconds

        def work(t: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                if batch == 1:
                    log.append(action="train", artifact=f"t{t}-{n}", details={"n": n}, actor="bench")
                else:
                    log.append_many([Entry(action="train", artifact=f"t{t}-{n}-{k}", details={"k": k},
                                           actor="bench") for k in range(batch)])
                n += batch
                counts[t] = n
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
    total = sum(counts)
    return {"writers": 8, "records_per_call": batch, "appends_per_s": round(total / elapsed, 1),
            "seconds": round(elapsed, 2), **check(target, key, total)}


def run_processes(target: str, key: str, seconds: float) -> dict[str, Any]:
    begin = time.time() + 4.0  # all start together, after their imports and connections
    procs = [subprocess.Popen([sys.executable, "-c", PROC_WRITER, str(support.SRC), target, key,
                               str(begin + seconds), str(begin)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    total = sum(int(p.communicate(timeout=seconds + 120)[0].strip() or 0) for p in procs)
    return {"writers": 4, "records_per_call": 1, "appends_per_s": round(total / seconds, 1),
            "seconds": seconds, **check(target, key, total)}


def throughput(make: Any, seconds: float, batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in (("threads", lambda t, k: run_threads(t, k, seconds, 1)),
                     ("threads_batch", lambda t, k: run_threads(t, k, seconds, batch)),
                     ("processes", lambda t, k: run_processes(t, k, seconds))):
        target, key = make(name)
        AuditLog.init(target, key=key).close()
        out[name] = fn(target, str(key))
    return out


def kill9(target: str, key: str, trials: int, state_path: Path | None, label: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if state_path is not None and state_path.is_file():
        state = json.loads(state_path.read_text()).get(label, {})
    done, failures, acked_total = state.get("done", 0), state.get("failures", []), state.get("acked", 0)
    if state.get("target") != target:  # a fresh start: a new log (an old SQLite one is removed)
        done, failures, acked_total = 0, [], 0
        if not target.startswith("postgresql://"):
            for path in (target, target + "-wal", target + "-shm", target + ".lock", key,
                         str(Path(key).with_suffix(".pub"))):
                Path(path).unlink(missing_ok=True)
        AuditLog.init(target, key=key).close()
    rng = random.Random(1000 + done)
    start = time.perf_counter()
    while done < trials:
        acked = support.kill_trial(target, key, rng.uniform(0.0, 0.25), python=sys.executable)
        with AuditLog.open(target, key=key) as log:
            report = log.verify()
            stored = {str(r.seq): r.hash for r in log.records()}
        missing = [s for s, h in acked.items() if stored.get(s) != h]
        if not report.ok or missing:
            failures.append({"trial": done, "problems": [p.message for p in report.problems],
                             "missing": missing[:20]})
        done += 1
        acked_total += len(acked)
        if state_path is not None:
            saved = json.loads(state_path.read_text()) if state_path.is_file() else {}
            saved[label] = {"target": target, "done": done, "failures": failures, "acked": acked_total}
            state_path.write_text(json.dumps(saved))
    with AuditLog.open(target, key=key) as log:
        size = log.size()
    return {"trials": done, "failed_trials": len(failures), "failures": failures[:5],
            "acknowledged_records_checked": acked_total, "log_records": size,
            "seconds_this_run": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each throughput run.")
    parser.add_argument("--batch", type=int, default=50, help="Records per append_many call.")
    parser.add_argument("--trials", type=int, default=200, help="kill -9 trials on SQLite.")
    parser.add_argument("--pg-trials", type=int, default=20, help="kill -9 trials on PostgreSQL.")
    parser.add_argument("--state", type=Path, default=None, help="JSON file keeping kill -9 progress "
                                                                 "(resume).")
    parser.add_argument("--workdir", type=Path, default=None, help="Folder for the SQLite logs (kept).")
    parser.add_argument("--no-postgres", action="store_true", help="Skip PostgreSQL.")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="msaudit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    result: dict[str, Any] = {"benchmark": "audit_log", "python": platform.python_version(),
                              "cpus": os.cpu_count(), "fsync_ms": round(fsync_ms(str(work)), 3)}

    def sqlite_target(name: str) -> tuple[str, Path]:
        return str(work / f"{name}-{stamp}.db"), work / f"{name}-{stamp}.key"

    result["sqlite"] = {"throughput": throughput(sqlite_target, args.seconds, args.batch)}
    kill_db = work / "kill9.db"
    result["sqlite"]["kill9"] = kill9(str(kill_db), str(work / "kill9.db.key"), args.trials, args.state,
                                      "sqlite")
    if args.no_postgres or support.postgres_binaries() is None:
        result["postgres"] = {"skipped": "--no-postgres" if args.no_postgres else "initdb/pg_ctl not found"}
    else:
        with support.postgres_cluster(fsync=True) as url:
            counter = iter(range(100))

            def pg_target(name: str) -> tuple[str, Path]:
                db = f"b{next(counter)}_{name}"
                return support.new_schema(url, db), work / f"pg-{db}-{stamp}.key"

            result["postgres"] = {"throughput": throughput(pg_target, args.seconds, args.batch)}
            kill_url, kill_key = pg_target("kill9")
            result["postgres"]["kill9"] = kill9(kill_url, str(kill_key), args.pg_trials, None, "postgres")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
