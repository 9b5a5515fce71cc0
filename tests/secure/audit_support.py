"""Helpers shared by the audit-log tests and benchmarks/audit_log.py (not a test module).

- :func:`postgres_cluster`: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a unix
  socket in a fresh temporary folder, stopped and removed on exit. When run as root (CI
  containers), the server runs as the ``postgres`` user through ``runuser``, since PostgreSQL
  refuses to run as root.
- :data:`WRITER`: a writer program for kill -9 trials. It imports ``modelshield.secure.audit``
  without running ``modelshield/__init__.py`` (which loads torch and takes seconds), appends from
  two threads sharing one log, and prints ``seq hash`` after each append returns (acknowledged).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "modelshield"


def postgres_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl) from PATH or Debian's /usr/lib/postgresql/<v>/bin, else None."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{folder}/initdb") and os.path.exists(f"{folder}/pg_ctl"):
            return f"{folder}/initdb", f"{folder}/pg_ctl"
    return None


@contextlib.contextmanager
def postgres_cluster(*, fsync: bool = True) -> Iterator[str]:
    """Start a throwaway cluster; yield a ``postgresql://`` URL of its ``postgres`` database."""
    bins = postgres_binaries()
    if bins is None:
        raise FileNotFoundError("initdb/pg_ctl not found (install Debian's postgresql package)")
    initdb, pg_ctl = bins
    folder = tempfile.mkdtemp(prefix="msa-pg-")  # short: a unix socket path is limited to ~107 bytes
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = f"{folder}/data"
    try:
        subprocess.run([*prefix, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        options = f"-k {folder} -c listen_addresses='' -p 5432 -c fsync={'on' if fsync else 'off'}"
        subprocess.run([*prefix, pg_ctl, "-D", data, "-o", options, "-l", f"{folder}/log", "-w", "start"],
                       check=True, capture_output=True, timeout=120)
        try:
            yield f"postgresql://postgres@/postgres?host={folder}&port=5432"
        finally:
            subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_schema(url: str, name: str) -> str:
    """Create schema ``name`` in the cluster's database; return a URL whose search_path is that schema
    (a fresh, empty place for one log, far lighter than a database per test)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{url}&options=-csearch_path%3D{name}"


WRITER = r'''
import os, sys, threading, types
pkg = types.ModuleType("modelshield"); pkg.__path__ = [sys.argv[1]]; sys.modules["modelshield"] = pkg
from modelshield.secure.audit import AuditLog, Entry
log = AuditLog.open(sys.argv[2], key=sys.argv[3])
out = threading.Lock()

def work(t):
    i = 0
    while True:
        if i % 7 == 3:
            recs = log.append_many([Entry(action="scan", artifact=f"w{t}-{i}-{k}", details={"k": k},
                                          actor="w") for k in range(3)])
        else:
            recs = [log.append(action="train", artifact=f"w{t}-{i}", details={"i": i, "t": t}, actor="w")]
        with out:
            for r in recs:
                sys.stdout.write(f"{r.seq} {r.hash}\n")
            sys.stdout.flush()
        if t == 0 and i % 20 == 10:
            log.checkpoint()
        i += 1

print("ready", flush=True)
threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(2)]
for th in threads:
    th.start()
for th in threads:
    th.join()
'''


def kill_trial(target: str, key: str, delay: float, *, python: str) -> dict[str, str]:
    """Run WRITER against the log, SIGKILL it after ``delay`` s of appending; return acked {seq: hash}."""
    proc = subprocess.Popen([python, "-c", WRITER, str(SRC), target, key], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if first.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"writer did not start: {first!r} {proc.stderr.read() if proc.stderr else ''}")
    time.sleep(delay)
    proc.kill()  # SIGKILL
    rest, _ = proc.communicate(timeout=60)
    acked: dict[str, str] = {}
    for line in rest.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 64:  # a line cut by the kill is no acknowledgement
            acked[parts[0]] = parts[1]
    return acked
