"""The evasion-shard job: per-point results independent of sharding, merge checks, cache checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelshield import zoo
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.runner import Job, evasion_shards, merge_shards, run_jobs
from modelshield.runner.evasion import _blocks, evasion_shard

ATTACK = {"name": "pgd", "eps": 0.1, "steps": 3}


@pytest.fixture(scope="module")
def digits_cnn() -> str:
    zoo.load("digits-cnn")  # trains once into the session cache when cold
    return "digits-cnn"


def test_blocks_cut_at_global_multiples() -> None:
    assert _blocks(0, 10, 5) == [(0, 5), (5, 10)]
    assert _blocks(3, 12, 5) == [(3, 5), (5, 10), (10, 12)]
    assert _blocks(7, 8, 5) == [(7, 8)]


def test_shards_give_the_same_points_as_one_run(digits_cnn: str) -> None:
    one = run_jobs(evasion_shards(digits_cnn, attack=ATTACK, n=30, shard_size=30, batch_size=10, seed=3))
    three = run_jobs(evasion_shards(digits_cnn, attack=ATTACK, n=30, shard_size=10, batch_size=10, seed=3))
    a, b = merge_shards(one.results), merge_shards(list(reversed(three.results)))
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert [p["index"] for p in a.points] == list(range(30))
    assert a.model["weights_sha256"] == zoo.load(digits_cnn).meta["weights_sha256"]
    assert 0.0 <= a.robust_accuracy <= a.clean_accuracy <= 1.0
    assert all(p["norm"] <= 0.1 + 1e-6 and p["valid"] for p in a.points)
    assert any(p["success"] for p in a.points) and any(not p["success"] for p in a.points)
    # success means misclassified, and robust accuracy counts the points that stayed correct
    correct = [p for p in a.points if p["clean_pred"] == p["label"]]
    assert all(p["success"] == (p["adv_pred"] != p["label"]) for p in correct)
    ok = sum(p["clean_pred"] == p["label"] == p["adv_pred"] for p in a.points)
    assert a.robust_accuracy == ok / 30
    other_seed = merge_shards(run_jobs(evasion_shards(digits_cnn, attack=ATTACK, n=30, shard_size=30,
                                                      batch_size=10, seed=4)).results)
    assert [p["x_adv_sha256"] for p in other_seed.points] != [p["x_adv_sha256"] for p in a.points]


def test_evasion_shards_refuse_misaligned_shards_and_bad_attacks(digits_cnn: str) -> None:
    with pytest.raises(ConfigError, match="multiple of batch_size=25"):
        evasion_shards(digits_cnn, attack=ATTACK, n=100, shard_size=30)
    with pytest.raises(ConfigError, match="'name' and 'eps'"):
        evasion_shards(digits_cnn, attack={"name": "pgd"}, n=10, shard_size=10, batch_size=10)
    with pytest.raises(ConfigError, match="seed"):
        evasion_shards(digits_cnn, attack={**ATTACK, "seed": 1}, n=10, shard_size=10, batch_size=10)
    with pytest.raises(ConfigError, match="'n'"):
        evasion_shards(digits_cnn, attack=ATTACK, n=0, shard_size=10)


def test_a_job_never_trains_a_zoo_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "empty-cache"))
    assert not zoo.is_cached("digits-cnn")
    with pytest.raises(MissingDataError, match="modelshield zoo train digits-cnn"):
        evasion_shards("digits-cnn", attack=ATTACK, n=10, shard_size=10, batch_size=10)
    job = Job("evasion-shard", {"model": "digits-cnn", "attack": ATTACK, "start": 0, "stop": 10})
    run = run_jobs([job], retries=2)
    (rep,) = run.reports
    assert rep.status == "failed" and rep.attempts == 1 and rep.error_type == "MissingDataError"
    assert "modelshield zoo train digits-cnn" in (rep.error or "")
    assert not zoo.is_cached("digits-cnn")


def test_shard_params_are_checked(digits_cnn: str) -> None:
    base = {"model": digits_cnn, "attack": ATTACK, "start": 0, "stop": 10}
    with pytest.raises(ConfigError, match="greater than 'start'"):
        evasion_shard({**base, "start": 10, "stop": 10})
    with pytest.raises(ConfigError, match="at most the test split's size"):
        evasion_shard({**base, "stop": 10**6})
    with pytest.raises(ConfigError, match="'stop'"):
        evasion_shard({**base, "stop": "10"})


def _shard(start: int, stop: int, **over: Any) -> dict[str, Any]:
    return {"format": "modelshield-evasion-shard-v1", "model": {"ref": "m"}, "data": {"name": "d"},
            "attack": {"name": "pgd"}, "seed": 0, "start": start, "stop": stop,
            "points": [{"index": i, "label": 0, "clean_pred": 0, "adv_pred": 0, "success": False}
                       for i in range(start, stop)], **over}


def test_merge_shards_refuses_gaps_overlaps_failures_and_mixed_runs() -> None:
    assert merge_shards([_shard(5, 10), _shard(0, 5)]).n == 10
    with pytest.raises(DataError, match=r"missing points \[5, 6\)"):
        merge_shards([_shard(0, 5), _shard(6, 10)])
    with pytest.raises(DataError, match="without gap or overlap"):
        merge_shards([_shard(0, 5), _shard(3, 10)])
    with pytest.raises(DataError, match="failed job"):
        merge_shards([_shard(0, 5), None])
    with pytest.raises(DataError, match="share their seed"):
        merge_shards([_shard(0, 5), _shard(5, 10, seed=1)])
    with pytest.raises(DataError, match="at least one"):
        merge_shards([])
