"""The ``evasion-shard`` job: one evasion attack on a slice of a model's test points.

A shard names its model and data (zoo name or model file, data reference), the attack (a
``build_attack`` name with eps, norm, steps, max_queries), the slice ``[start, stop)`` of the test
points, the seed and the batch size. The worker loads the target itself (digests checked) and
returns per-point results. Results do not depend on the shard a point lands in: every randomised
attack draws its random numbers per point from the seed and the point itself
(``modelshield.attacks.ops.point_keys``), and the points are attacked in batches aligned to
multiples of ``batch_size`` in the test split, so a point always shares its batch with the same
points and the model's arithmetic (whose BLAS kernels may depend on the batch size) is the same
too. ``evasion_shards`` builds aligned shards; ``merge_shards`` joins their results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelshield._checks import check_range
from modelshield.attacks.evasion.registry import build_attack
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.runner.jobs import Job, register_job
from modelshield.targets import Target, load_target

__all__ = ["EVASION_SHARD_FORMAT", "MergedEvasion", "attack_cost", "check_cached", "evasion_shard",
           "evasion_shards", "merge_shards"]

EVASION_SHARD_FORMAT = "modelshield-evasion-shard-v1"

_ATTACK_KEYS = ("name", "eps", "norm", "steps", "max_queries")


def _attack_config(attack: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The attack mapping with defaults filled in and unknown keys refused."""
    if not isinstance(attack, Mapping) or "name" not in attack or "eps" not in attack:
        raise ConfigError(f"{owner}: 'attack' must be a mapping with at least 'name' and 'eps'; got "
                          f"{attack!r}. E.g. attack={{'name': 'pgd', 'eps': 0.1, 'steps': 10}}.")
    unknown = sorted(set(attack) - set(_ATTACK_KEYS))
    if unknown:
        raise ConfigError(f"{owner}: 'attack' keys must be among {', '.join(_ATTACK_KEYS)}; got {unknown}. "
                          "The seed is the shard's 'seed'.")
    return {"name": attack["name"], "eps": attack["eps"], "norm": attack.get("norm", "inf"),
            "steps": attack.get("steps"), "max_queries": attack.get("max_queries")}


_DEFAULT_STEPS = {"fgsm": 1, "pgd": 40, "apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "cw": 1000,
                  "deepfool": 50, "ensemble": 100}
_MEMBERS = {"ensemble": 3}  # APGD-CE, APGD-T and Square run in turn on the points still standing


def attack_cost(name: str, points: int, *, steps: int | None = None, max_queries: int | None = None) -> float:
    """A job's expected cost for longest-first scheduling: points x gradient steps (a query-based
    attack's forward queries count half a step each). Only the order of costs matters."""
    from modelshield.attacks.evasion.registry import BLACK_BOX_ATTACKS, DEFAULT_MAX_QUERIES

    if name in BLACK_BOX_ATTACKS:
        return points * (max_queries or DEFAULT_MAX_QUERIES) / 2
    return points * (steps or _DEFAULT_STEPS.get(name, 100)) * _MEMBERS.get(name, 1)


def _zoo_name(model: str) -> str | None:
    from modelshield import zoo

    return model if model in zoo.names() else None


def check_cached(model: str, owner: str) -> None:
    """Refuse a zoo model that is not cached: a job never trains one (train once, then fan out)."""
    from modelshield import zoo

    name = _zoo_name(model)
    if name is not None and not zoo.is_cached(name):
        raise MissingDataError(
            f"{owner}: zoo model {name!r} must be trained before jobs fan out; it is not cached in "
            f"{str(zoo.cache_dir())!r}. Run `modelshield zoo train {name}` once (on each machine, or "
            "with a shared MODELSHIELD_CACHE), then run again."
        )


def _target(model: str, data: str | None, data_dir: str | None, arch: str | None) -> Target:
    """The target with its whole test split, loaded (digests checked) once per worker process."""
    from modelshield import zoo

    check_cached(model, "evasion-shard")  # every job: a memoised target must not skip it
    return _load(model, data, data_dir, arch, str(zoo.cache_dir()))


@lru_cache(maxsize=2)
def _load(model: str, data: str | None, data_dir: str | None, arch: str | None, cache: str) -> Target:
    """load_target, memoised per reference and zoo cache folder (workers run many shards)."""
    target = load_target(model, data=data, data_dir=Path(data_dir) if data_dir else None, arch=arch, n=None)
    if target.text:
        raise ConfigError(f"evasion-shard: 'model' must take tensor inputs; got {model!r}, a text model. "
                          "Shard text attacks with their own job kind.")
    return target


def _blocks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) cut at the multiples of size (global batch boundaries)."""
    out, a = [], start
    while a < stop:
        b = min(stop, (a // size + 1) * size)
        out.append((a, b))
        a = b
    return out


def _row_digest(row: torch.Tensor) -> str:
    arr = np.ascontiguousarray(row.detach().cpu().numpy())
    return hashlib.sha256(arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes()).hexdigest()


def evasion_shard(params: Mapping[str, Any]) -> dict[str, Any]:
    """Attack the test points ``[start, stop)`` of a target and return per-point results.

    Params (JSON): ``model`` (zoo name or model file), ``data`` (data reference; None for zoo
    models), ``data_dir``, ``arch`` (architecture of a state-dict file), ``attack``
    (``{"name", "eps", "norm", "steps", "max_queries"}`` as ``build_attack`` takes them), ``start``,
    ``stop``, ``seed`` and ``batch_size``.

    Returns:
        ``{"format", "model", "data", "attack", "seed", "start", "stop", "points"}`` where each point
        is ``{"index", "label", "clean_pred", "adv_pred", "success", "valid", "norm", "x_adv_sha256",
        "queries"}`` (queries: forward queries spent on the point by a query-based attack, else
        None) and model / data hold the provenance digests.

    Raises:
        MissingDataError: a zoo model is not cached (the fix is ``modelshield zoo train NAME``).
        ConfigError: bad params, or stop beyond the test split.
    """
    owner = "evasion-shard"
    attack_cfg = _attack_config(params.get("attack", {}), owner)
    start: Any = params.get("start")
    stop: Any = params.get("stop")
    batch: Any = params.get("batch_size", 25)
    check_range("start", start, owner=owner, low=0, integer=True)
    check_range("stop", stop, owner=owner, low=1, integer=True)
    check_range("batch_size", batch, owner=owner, low=1, integer=True)
    if stop <= start:
        raise ConfigError(f"{owner}: 'stop' must be greater than 'start'; got start={start}, stop={stop}. "
                          "Give the half-open range [start, stop) of test points.")
    seed = params.get("seed", 0)
    check_range("seed", seed, owner=owner, low=0, integer=True)
    model = params.get("model")
    if not isinstance(model, str):
        raise ConfigError(f"{owner}: 'model' must be a zoo name or a model file path; got {model!r}.")
    target = _target(model, params.get("data"), params.get("data_dir"), params.get("arch"))
    if int(target.x.shape[0]) < stop:
        raise ConfigError(f"{owner}: 'stop' must be at most the test split's size {int(target.x.shape[0])}; "
                          f"got {stop}. Shard only the points that exist.")
    attack = build_attack(attack_cfg["name"], eps=attack_cfg["eps"], norm=attack_cfg["norm"],
                          steps=attack_cfg["steps"], seed=seed, max_queries=attack_cfg["max_queries"])
    model_obj = target.module if target.white_box else target.adapted()
    points: list[dict[str, Any]] = []
    for a, b in _blocks(start, stop, batch):
        res = attack(model_obj, target.x[a:b], target.y[a:b])
        queries = res.point_queries
        for i in range(b - a):
            points.append({
                "index": a + i, "label": int(res.y[i]), "clean_pred": int(res.clean_pred[i]),
                "adv_pred": int(res.adv_pred[i]), "success": bool(res.success[i]),
                "valid": bool(res.valid[i]),
                "norm": float(res.norms[i]), "x_adv_sha256": _row_digest(res.x_adv[i]),
                "queries": None if queries is None else int(queries[i]),
            })
    return {"format": EVASION_SHARD_FORMAT,
            "model": {"ref": model, "weights_sha256": target.model_info.get("weights_sha256"),
                      "fingerprint": target.model_info.get("fingerprint")},
            "data": {"name": target.data_info.get("name"), "sha256": target.data_info.get("sha256")},
            "attack": {**attack_cfg, "class": type(attack).__name__}, "seed": seed, "batch_size": batch,
            "start": start, "stop": stop, "points": points}


register_job("evasion-shard", evasion_shard)


def evasion_shards(
    model: str,
    *,
    attack: Mapping[str, Any],
    n: int,
    shard_size: int,
    seed: int = 0,
    batch_size: int = 25,
    data: str | None = None,
    data_dir: Path | None = None,
    arch: str | None = None,
) -> list[Job]:
    """``evasion-shard`` jobs covering the first n test points in shards of shard_size.

    The zoo model must already be cached (checked here, in the driver, so that a sweep fails once
    and early instead of in every worker). ``shard_size`` must be a multiple of ``batch_size``, so
    that every point is attacked in the same batch whatever the sharding (bit-identical results).

    Raises:
        MissingDataError: a zoo model is not cached (run ``modelshield zoo train NAME`` once).
        ConfigError: bad n, shard_size or batch_size, or a bad attack mapping.

    Example:
        jobs = evasion_shards("digits-cnn", attack={"name": "pgd", "eps": 0.1, "steps": 10}, n=500,
                              shard_size=100)
    """
    owner = "evasion_shards"
    check_range("n", n, owner=owner, low=1, integer=True)
    check_range("batch_size", batch_size, owner=owner, low=1, integer=True)
    check_range("shard_size", shard_size, owner=owner, low=1, integer=True)
    if shard_size % batch_size:
        raise ConfigError(f"{owner}: 'shard_size' must be a multiple of batch_size={batch_size}; got "
                          f"{shard_size}. Use e.g. shard_size={max(1, shard_size // batch_size) * batch_size}"
                          ", so that results do not depend on the sharding.")
    cfg = _attack_config(attack, owner)
    check_cached(model, owner)
    folder = None if data_dir is None else str(data_dir)
    return [Job("evasion-shard", {"model": model, "data": data, "data_dir": folder, "arch": arch,
                                  "attack": cfg, "seed": seed, "batch_size": batch_size, "start": a,
                                  "stop": min(n, a + shard_size)},
                cost=attack_cost(cfg["name"], min(n, a + shard_size) - a, steps=cfg["steps"],
                                 max_queries=cfg["max_queries"]))
            for a in range(0, n, shard_size)]


@dataclass(frozen=True, slots=True)
class MergedEvasion:
    """Per-point results of a sharded evasion run, joined in test-point order.

    Attributes:
        points: one dict per test point (see ``evasion_shard``), by index.
        model, data, attack: provenance and configuration, equal in every shard.
        seed: the attack seed.
    """

    points: tuple[dict[str, Any], ...]
    model: dict[str, Any]
    data: dict[str, Any]
    attack: dict[str, Any]
    seed: int

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def clean_accuracy(self) -> float:
        return sum(int(p["clean_pred"] == p["label"]) for p in self.points) / self.n

    @property
    def robust_accuracy(self) -> float:
        hits = sum(int(p["clean_pred"] == p["label"] == p["adv_pred"]) for p in self.points)
        return hits / self.n

    @property
    def attack_success_rate(self) -> float | None:
        """Share of clean-correct points broken (None when none is clean-correct)."""
        eligible = [p for p in self.points if p["clean_pred"] == p["label"]]
        return sum(p["success"] for p in eligible) / len(eligible) if eligible else None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                "attack_success_rate": self.attack_success_rate, "model": self.model, "data": self.data,
                "attack": self.attack, "seed": self.seed, "points": list(self.points)}


def merge_shards(results: Sequence[Mapping[str, Any] | None]) -> MergedEvasion:
    """Join ``evasion-shard`` results (any order) into one per-point list.

    Raises:
        DataError: a result is missing (a failed job: None), not an evasion-shard result, from
            another model, data set, attack or seed, or the shards overlap or leave a gap.
    """
    owner = "merge_shards"
    if not results:
        raise DataError(f"{owner}: 'results' must hold at least one shard result; got none. "
                        "Run the shards first.")
    for i, r in enumerate(results):
        if r is None or r.get("format") != EVASION_SHARD_FORMAT:
            raise DataError(f"{owner}: every result must be an evasion-shard result; got "
                            f"{'None (a failed job)' if r is None else type(r).__name__} at index {i}. "
                            "Rerun the failed shards (the checkpoint keeps the others).")
    same = ("model", "data", "attack", "seed")
    shards = sorted((r for r in results if r is not None), key=lambda r: int(r["start"]))
    first = shards[0]
    for r in shards:
        for k in same:
            if r[k] != first[k]:
                raise DataError(f"{owner}: all shards must share their {k}; got {r[k]!r} and {first[k]!r}. "
                                "Merge the shards of one run only.")
    pos = int(shards[0]["start"])
    points: list[dict[str, Any]] = []
    for r in shards:
        if int(r["start"]) != pos:
            raise DataError(f"{owner}: shards must tile the points without gap or overlap; got a shard "
                            f"starting at {r['start']} where {pos} was expected. Run the missing "
                            f"points [{pos}, {r['start']}) or drop the duplicate shard.")
        points.extend(r["points"])
        pos = int(r["stop"])
    return MergedEvasion(points=tuple(points), model=dict(first["model"]), data=dict(first["data"]),
                         attack=dict(first["attack"]), seed=int(first["seed"]))
