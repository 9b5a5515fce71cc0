"""The zoo's cache: where trained models live, and the checks a cached model passes before use.

Torch models are saved as ``modelshield-v1`` files (loaded with ``weights_only=True``) in
``cache_dir()/zoo/<name>.pt`` with a JSON copy of their metadata beside it; scikit-learn models
are never pickled, and only their JSON metadata is cached in ``cache_dir()/zoo/<name>.json``
(``modelshield.zoo.builder`` refits them on load and compares fingerprints).

A cached torch model is checked on every ``load`` before it is returned, because anyone who can
write to the cache can replace it: the file must be a ``modelshield-v1`` weights file (TorchScript
and pickles are refused unread, so nothing in the cache can run code); its file and weights
SHA-256 must match the JSON copy beside it (which catches a weights file replaced on its own,
even with self-consistent metadata inside); and it is re-scored on the first ``CHECK_POINTS``
points of its own test split, which must reproduce the clean accuracy recorded on that slice at
training time (within one point) and stay within ``FLOOR_SLACK`` of the entry's accuracy floor.
The re-score holds even when an attacker rewrites both files, as long as the new weights score
differently on that slice from what is recorded, or far below the floor; weights tampered to
keep that accuracy (e.g. a backdoor that leaves clean predictions alone) are not caught by it. Files
cached before these checks record no slice accuracy: they are re-scored on the whole test split
against their recorded ``test_accuracy`` instead (slower; retrain to get the fast check). Any
failure is a DataError naming ``modelshield zoo train NAME --force``. ``check_cache(name)`` is the
cheap part (digests only, no data) that ``modelshield zoo list`` uses.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelshield.data import load_dataset
from modelshield.errors import DataError, MissingDataError
from modelshield.models.load import UnsafeModelFileError, file_sha256, load_model, weights_sha256
from modelshield.zoo.catalog import ZooModel, ZooSpec, spec
from modelshield.zoo.training import evaluate, torch_threads

__all__ = [
    "CACHE_ENV",
    "CHECK_POINTS",
    "FLOOR_SLACK",
    "SKLEARN_FORMAT",
    "cache_dir",
    "cached_meta",
    "check_cache",
    "is_cached",
]

CACHE_ENV = "MODELSHIELD_CACHE"

SKLEARN_FORMAT = "modelshield-zoo-sklearn-v1"
"""``format`` of the JSON metadata cached for a scikit-learn zoo model (no model file)."""

CHECK_POINTS = 256
"""Test points (the first ones of its test split) a cached torch zoo model is re-scored on at load."""

FLOOR_SLACK = 0.05
"""A cached torch model re-scored below ``min_accuracy - FLOOR_SLACK`` on the check slice is refused
even when its recorded numbers agree (the slice is small, so the floor gets some room)."""


def cache_dir() -> Path:
    """The modelshield cache folder (not created here).

    ``$MODELSHIELD_CACHE`` if set, else ``$XDG_CACHE_HOME/modelshield``, else
    ``~/.cache/modelshield``. Zoo weights live in its ``zoo/`` sub-folder.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "modelshield"
    return Path.home() / ".cache" / "modelshield"


def _weights_path(name: str) -> Path:
    """The cached file of a zoo model: weights (.pt) for torch, metadata (.json) for sklearn."""
    suffix = ".json" if spec(name).kind == "sklearn" else ".pt"
    return cache_dir() / "zoo" / f"{name}{suffix}"


def is_cached(name: str) -> bool:
    """Whether the zoo model's weights file (metadata file for scikit-learn models) is cached.

    Raises:
        ConfigError: unknown name.
    """
    return _weights_path(spec(name).name).is_file()


def cached_meta(name: str) -> dict[str, Any] | None:
    """The metadata stored beside a cached model (from its JSON file), or None when not cached.

    Cheap: reads the small JSON file only, never the weights. The numbers are what was recorded
    at training time, not a check: see ``check_cache`` (cheap) and ``load`` (re-scores).

    Raises:
        ConfigError: unknown name.
    """
    path = _weights_path(spec(name).name).with_suffix(".json")
    if not is_cached(name) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_cache(name: str) -> str | None:
    """Why a cached zoo model's recorded metadata cannot be trusted, or None when nothing is wrong.

    Cheap (no data, no forward pass): the JSON metadata must be readable and, for torch models,
    the weights file's SHA-256 must equal the one recorded in it, so a weights file replaced on
    its own is noticed. It cannot notice both files rewritten together; ``load`` re-scores the
    model on its test data and catches that unless the accuracy is unchanged.

    Args:
        name: a zoo name.

    Returns:
        None when the model is not cached or looks intact, else a short reason (for listings).

    Raises:
        ConfigError: unknown name.
    """
    s = spec(name)
    path = _weights_path(s.name)
    if not path.is_file():
        return None
    side = cached_meta(s.name)
    if side is None:
        return f"its metadata file {path.with_suffix('.json').name} is missing or unreadable"
    if s.kind == "sklearn":
        return None if side.get("format") == SKLEARN_FORMAT else "its metadata has the wrong format"
    try:
        digest = file_sha256(path)
    except (MissingDataError, OSError):
        return "its weights file cannot be read"
    if side.get("sha256") != digest:
        return "its weights file is not the one recorded (modified or replaced)"
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write data as JSON atomically (temporary file + os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_score(module: torch.nn.Module, x_test: Tensor, y_test: Tensor) -> tuple[int, float]:
    """(points, accuracy) of module on the first CHECK_POINTS test points: the load-time check."""
    n = min(CHECK_POINTS, int(x_test.shape[0]))
    with torch_threads(1):  # as _rescore does: same thread count, same arithmetic
        return n, evaluate(module, x_test[:n], y_test[:n])


def _load_torch(s: ZooSpec, path: Path, data_root: str | Path | None) -> ZooModel:
    """The cached torch zoo model at path, checked (file format, digests, re-score) before use."""
    fix = f"Retrain it with `modelshield zoo train {s.name} --force`."
    try:
        module, meta = load_model(path)  # never trust_torchscript: the cache must not run code
    except UnsafeModelFileError as exc:
        raise UnsafeModelFileError(
            f"zoo.load: the cached {s.name!r} at {str(path)!r} must be a modelshield-v1 weights file; "
            "it is a TorchScript archive or pickled objects, which run code while loading, so it was "
            f"not opened. Delete it and retrain: `modelshield zoo train {s.name} --force`."
        ) from exc
    if meta.get("arch") != s.arch:
        raise DataError(
            f"zoo.load: the cached {s.name!r} must have architecture {s.arch!r}; got "
            f"{meta.get('arch')!r} in {str(path)!r}. {fix}"
        )
    recorded = meta.get("weights_sha256")
    actual = weights_sha256(module)
    if recorded != actual:
        raise DataError(
            f"zoo.load: the weights in {str(path)!r} must match their recorded SHA-256 "
            f"{str(recorded)[:12]}...; they do not (the file was modified). {fix}"
        )
    side = _side_meta(s, path, fix)
    for key, value in (("sha256", meta["sha256"]), ("weights_sha256", actual)):
        if side.get(key) != value:
            what = "file" if key == "sha256" else "weights"
            raise DataError(
                f"zoo.load: the {what} SHA-256 of the cached {s.name!r} must be the one recorded "
                f"beside it in {path.with_suffix('.json').name} ({str(side.get(key))[:12]}...); got "
                f"{value[:12]}... from {str(path)!r}, so the weights file was replaced or modified. "
                f"{fix}"
            )
    _rescore(s, module, side, data_root, fix)
    return ZooModel(spec=s, module=module, meta=meta, path=path)


def _side_meta(s: ZooSpec, path: Path, fix: str) -> dict[str, Any]:
    """The JSON metadata beside a cached torch model, or DataError when missing or unreadable."""
    side_path = path.with_suffix(".json")
    try:
        side = json.loads(side_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"zoo.load: the cached {s.name!r} must have its metadata file {str(side_path)!r} beside "
            f"it (readable JSON); got {type(exc).__name__}, so its weights cannot be checked. {fix}"
        ) from exc
    if not isinstance(side, dict):
        raise DataError(
            f"zoo.load: the metadata file {str(side_path)!r} of {s.name!r} must hold a JSON object; "
            f"got {type(side).__name__}. {fix}"
        )
    return side


def _rescore(s: ZooSpec, module: torch.nn.Module, side: dict[str, Any],
             data_root: str | Path | None, fix: str) -> None:
    """DataError unless module reproduces the clean accuracy recorded in side (within one point).

    Uses the first ``check_points`` test points against ``check_accuracy``; a file cached before
    those were recorded is scored on the whole test split against ``test_accuracy``.
    """
    try:
        ds = load_dataset(s.dataset, data_root)
    except MissingDataError as exc:
        raise MissingDataError(
            f"zoo.load: the {s.dataset} test data must be found to re-score the cached {s.name!r} "
            f"before use (see modelshield.zoo); {exc}"
        ) from exc
    n_test = int(ds.x_test.shape[0])
    points, recorded = min(CHECK_POINTS, n_test), side.get("check_accuracy")
    # The slice size is ours, not the file's: a rewritten file must not shrink the check.
    if side.get("check_points") == points and recorded is not None:
        # Scored as at training time (_check_score): one thread, the same arithmetic; one point
        # of slack all the same.
        where, threads, slack = f"the first {points} test points", 1, 1.0 / points
    else:  # cached before check_points existed: the whole split, as scored at training time
        points, recorded, where = n_test, side.get("test_accuracy"), f"its {n_test} test points"
        threads, slack = None, max(1.0 / points, 0.001)
    if not isinstance(recorded, int | float) or isinstance(recorded, bool):
        raise DataError(
            f"zoo.load: the metadata of the cached {s.name!r} must record its accuracy; got "
            f"{recorded!r}, so it cannot be checked. {fix}"
        )
    with torch_threads(threads):
        now = evaluate(module, ds.x_test[:points], ds.y_test[:points])
    if abs(now - float(recorded)) > slack + 1e-9:
        data_note = ""
        if side.get("data_sha256") not in (None, ds.sha256):
            data_note = (f" The {s.dataset} data also differ from the training data (sha256 "
                         f"{ds.sha256[:12]}..., recorded {str(side.get('data_sha256'))[:12]}...).")
        raise DataError(
            f"zoo.load: the cached {s.name!r} must reproduce its recorded accuracy "
            f"{float(recorded):.4f} on {where}; it scores {now:.4f}, so its weights are not the ones "
            f"trained (replaced or corrupted) and its recorded numbers do not apply.{data_note} {fix}"
        )
    # Recorded numbers rewritten to match worse weights; train() caches nothing this far below
    # (one point of arithmetic slack, as above).
    if now + slack < s.min_accuracy - FLOOR_SLACK:
        raise DataError(
            f"zoo.load: the cached {s.name!r} must score at least {s.min_accuracy - FLOOR_SLACK:.3f} "
            f"(its accuracy floor {s.min_accuracy:.3f} less {FLOOR_SLACK}) on {where}; it scores "
            f"{now:.4f}, so it is not the model the zoo trains (replaced, with its recorded numbers "
            f"rewritten to match). {fix}"
        )
