"""run_jobs, Job and CheckpointStore in-process (InlineExecutor): keys, checkpoints, resume, retries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import testkit.runner_jobs  # noqa: F401  (registers the test-* job kinds)

from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.runner import (
    CheckpointStore,
    InlineExecutor,
    Job,
    ProcessExecutor,
    RayExecutor,
    job_kinds,
    register_job,
    run_jobs,
)


def _lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").split()[0::2] if log.exists() else []


def _jobs(log: Path, n: int = 5) -> list[Job]:
    return [Job("test-count", {"value": i, "log": str(log)}) for i in range(n)]


# --- Job -------------------------------------------------------------------------------------


def test_job_key_is_canonical_and_sensitive() -> None:
    a = Job("test-count", {"value": 1, "extra": (1, 2), "nested": {"b": 1, "a": 2}})
    b = Job("test-count", {"nested": {"a": 2, "b": 1}, "extra": [1, 2], "value": 1})
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert a.params["extra"] == [1, 2]  # what a worker receives: the JSON round trip
    assert Job("test-count", {"value": 2}).key != Job("test-count", {"value": 1}).key
    assert Job("test-fail-always", {"value": 1}).key != Job("test-count", {"value": 1}).key
    assert len(a.key) == 64 and int(a.key, 16) >= 0
    assert a.spec()["key"] == a.key and a.spec()["kind"] == "test-count"


def test_job_refuses_unknown_kind_and_unsafe_params() -> None:
    with pytest.raises(ConfigError, match=r"registered job kind.*evasion-shard"):
        Job("no-such-kind", {})
    with pytest.raises(ConfigError, match="JSON-safe"):
        Job("test-count", {"value": object()})
    with pytest.raises(ConfigError, match="JSON-safe"):
        Job("test-count", {"value": float("nan")})
    with pytest.raises(ConfigError, match="mapping"):
        Job("test-count", [1, 2])  # type: ignore[arg-type]  # the error under test


def test_register_job_refuses_a_second_function_and_bad_versions() -> None:
    with pytest.raises(ConfigError, match="unique"):
        register_job("test-count", lambda p: {})
    with pytest.raises(ConfigError, match="version"):
        register_job("test-other", lambda p: {}, version=0)
    with pytest.raises(ConfigError, match="non-empty"):
        register_job(" ", lambda p: {})
    assert {"evasion-shard", "test-count"} <= set(job_kinds())


# --- run_jobs and checkpoints ------------------------------------------------------------------


def test_run_returns_results_in_job_order_with_counts(tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    jobs = _jobs(tmp_path / "log", 4)
    run = run_jobs(jobs, checkpoint=tmp_path / "ckpt", progress=lambda d, t, m: seen.append((d, t, m)))
    assert run.results == [{"value": i, "square": i * i} for i in range(4)]
    assert run.counts == {"done": 4, "cached": 0, "failed": 0} and run.ok
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    d = run.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["counts"]["done"] == 4 and d["executor"] == "inline" and len(d["jobs"]) == 4
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in d["jobs"])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(f"{j.key}.json" for j in jobs)


def test_second_run_with_the_checkpoint_recomputes_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log"
    first = run_jobs(_jobs(log), checkpoint=tmp_path / "ckpt")
    assert _lines(log) == ["0", "1", "2", "3", "4"]
    second = run_jobs(_jobs(log, 7), checkpoint=tmp_path / "ckpt")
    assert _lines(log) == ["0", "1", "2", "3", "4", "5", "6"]  # only the two new jobs ran
    assert second.counts == {"done": 2, "cached": 5, "failed": 0}
    assert second.results[:5] == first.results
    assert [r.attempts for r in second.reports] == [0] * 5 + [1, 1]


def test_without_checkpoint_everything_runs_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    run_jobs(_jobs(log, 2))
    run_jobs(_jobs(log, 2))
    assert _lines(log) == ["0", "1", "0", "1"]


@pytest.mark.parametrize("tamper", ["result", "digest", "params", "truncate", "not-json", "format", "list"])
def test_a_tampered_checkpoint_is_recomputed_not_trusted(tmp_path: Path, tamper: str) -> None:
    log, ckpt = tmp_path / "log", tmp_path / "ckpt"
    jobs = _jobs(log, 3)
    run_jobs(jobs, checkpoint=ckpt)
    path = CheckpointStore(ckpt).path(jobs[1])
    record = json.loads(path.read_text(encoding="utf-8"))
    if tamper == "result":
        record["result"]["square"] = 5
    elif tamper == "digest":
        record["result"]["square"] = 5
        record["result_sha256"] = "0" * 64
    elif tamper == "params":
        record["job"]["params"]["value"] = 9
    elif tamper == "format":
        record["format"] = "other"
    text = json.dumps(record)
    text = {"truncate": text[: len(text) // 2], "not-json": "\x00garbage", "list": "[1, 2]"}.get(tamper, text)
    path.write_text(text, encoding="utf-8")
    run = run_jobs(jobs, checkpoint=ckpt)
    assert [r.status for r in run.reports] == ["cached", "done", "cached"]
    assert run.results[1] == {"value": 1, "square": 1}
    assert _lines(log) == ["0", "1", "2", "1"]
    assert CheckpointStore(ckpt).read(jobs[1]) == {"value": 1, "square": 1}  # rewritten, trusted again


def test_a_checkpoint_of_another_job_is_not_trusted(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    a, b = _jobs(tmp_path / "log", 2)
    run_jobs([a], checkpoint=ckpt)
    store = CheckpointStore(ckpt)
    store.path(a).rename(store.path(b))  # a's file under b's name
    assert store.read(b) is None


def test_a_failing_job_is_retried_then_reported_while_the_rest_complete(tmp_path: Path) -> None:
    log = tmp_path / "log"
    jobs = [*_jobs(log, 2), Job("test-fail-always", {"value": 7, "log": str(log)}), *_jobs(log, 3)[2:]]
    run = run_jobs(jobs, checkpoint=tmp_path / "ckpt", retries=2)
    assert [r.status for r in run.reports] == ["done", "done", "failed", "done"]
    bad = run.reports[2]
    assert bad.attempts == 3 and bad.error_type == "RuntimeError" and bad.error == "job 7 always fails"
    assert bad.result is None and run.results[2] is None and not run.ok and run.failed == [bad]
    assert _lines(log).count("7") == 3
    assert not CheckpointStore(tmp_path / "ckpt").path(jobs[2]).exists()  # failures are not cached
    again = run_jobs(jobs, checkpoint=tmp_path / "ckpt", retries=0)  # a failed job is tried again
    assert again.counts == {"done": 0, "cached": 3, "failed": 1} and again.reports[2].attempts == 1


def test_a_result_that_is_not_json_fails_without_retries(tmp_path: Path) -> None:
    run = run_jobs([Job("test-not-json", {"value": 1})], retries=3)
    (rep,) = run.reports
    assert rep.status == "failed" and rep.attempts == 1 and rep.error_type == "ConfigError"
    assert "JSON-safe" in (rep.error or "")


def test_equal_jobs_run_once_and_share_the_result(tmp_path: Path) -> None:
    log = tmp_path / "log"
    a = Job("test-count", {"value": 3, "log": str(log)})
    run = run_jobs([a, Job("test-count", {"log": str(log), "value": 3})])
    assert run.results == [{"value": 3, "square": 9}] * 2 and _lines(log) == ["3"]


def test_run_jobs_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retries"):
        run_jobs([], retries=-1)
    with pytest.raises(ConfigError, match=r"Job objects.*index 0"):
        run_jobs([{"kind": "test-count"}])  # type: ignore[list-item]  # the error under test
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="folder"):
        run_jobs(_jobs(tmp_path / "log", 1), checkpoint=tmp_path / "file")
    assert run_jobs([]).counts == {"done": 0, "cached": 0, "failed": 0}


def test_inline_executor_restores_torch_threads(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    run_jobs(_jobs(tmp_path / "log", 1), InlineExecutor(threads=before + 1))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("make", "match"), [
    (lambda: ProcessExecutor(workers=0), "workers"),
    (lambda: ProcessExecutor(threads_per_worker=True), "threads_per_worker"),
    (lambda: InlineExecutor(threads=0), "threads"),
    (lambda: RayExecutor(address="nonsense"), "address"),
    (lambda: RayExecutor(workers=-1), "workers"),
])
def test_executors_check_their_settings(make: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_ray_executor_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ModelCapabilityError, match=r"pip install 'modelshield\[ray\]'"):
        run_jobs(_jobs(tmp_path / "log", 1), RayExecutor())


def test_the_runner_imports_without_torch() -> None:
    """Workers of job kinds that need no model start without importing torch."""
    import subprocess

    code = ("import sys, modelshield.runner; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_jobs_start_costliest_first_and_results_keep_job_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    costs = [1.0, 5.0, 3.0, 5.0, 0.0]
    jobs = [Job("test-count", {"value": i, "log": str(log)}, cost=c) for i, c in enumerate(costs)]
    run = run_jobs(jobs, InlineExecutor())
    started = [int(ln.split()[0]) for ln in log.read_text(encoding="utf-8").splitlines()]
    assert started == [1, 3, 2, 0, 4]  # cost descending, ties in the given order
    assert run.results == [{"value": i, "square": i * i} for i in range(5)]
    assert Job("test-count", {"value": 0, "log": str(log)}, cost=9).key == jobs[0].key  # cost: not in the key


@pytest.mark.parametrize("cost", [-1.0, float("nan"), float("inf"), True, "2"])
def test_job_refuses_a_bad_cost(cost: Any) -> None:
    with pytest.raises(ConfigError, match="'cost' must be a finite number >= 0"):
        Job("test-count", {"value": 0}, cost=cost)
