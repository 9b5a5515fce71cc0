"""The zoo's builder: training an entry with a fixed seed (on the CPU, or a GPU), and loading one.

``train(name)`` builds the entry's model from its spec and recipe (``modelshield.zoo.catalog``),
trains it deterministically (``modelshield.zoo.training``; the global RNG is never touched;
``device=`` trains a torch entry on a GPU instead, not bit-reproducibly),
checks its clean test accuracy (and, for adversarially trained entries, its PGD robust accuracy)
against the spec's floors, and only then caches it (``modelshield.zoo.cache``), recording its
provenance: weights and data SHA-256, seed, library version, time.

Adversarially trained entries (``digits-cnn-at``: TRADES, L-inf eps 0.1, about 10 s;
``mnist-cnn-at``: Madry et al.'s wider MNIST CNN, PGD, L-inf eps 0.3, about an hour on two cores)
are trained by the function that ``modelshield.defenses.training`` registers with
``register_adversarial_trainer`` (the zoo sits below the defences in the package layers, so it
cannot import them).

``load(name)`` returns a cached model after the cache's checks, training it first when it is not
cached (and that is allowed). scikit-learn entries are never unpickled: they are refit from the
data on every load (under a second each) and the refit model's fingerprint (SHA-256 of its
test-set probabilities) must equal the cached one, so a change of data or scikit-learn behaviour
is caught instead of silently giving other numbers.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from modelshield.data import load_dataset, load_tabular_dataset
from modelshield.data.sms_spam import load_sms_spam
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.models.archs import build
from modelshield.models.device import resolve_device
from modelshield.models.load import FORMAT, save_model, weights_sha256
from modelshield.zoo import cache, catalog
from modelshield.zoo.cache import FLOOR_SLACK, SKLEARN_FORMAT
from modelshield.zoo.catalog import TEXT_DATASETS, ZooModel, ZooSpec, spec
from modelshield.zoo.phishing import PhishingKind, phishing_fingerprint, train_phishing_model
from modelshield.zoo.spam import SpamKind, spam_fingerprint, spam_metrics, train_spam_model
from modelshield.zoo.training import Progress, evaluate, fit, torch_threads

__all__ = [
    "ROBUST_CHECK_POINTS",
    "AdversarialTrainer",
    "load",
    "register_adversarial_trainer",
    "train",
]

ROBUST_CHECK_POINTS = 500
"""Test points of the PGD check that an adversarially trained zoo model must pass to be cached."""


def train(
    name: str,
    *,
    data_root: str | Path | None = None,
    force: bool = False,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> ZooModel:
    """Train a zoo model (on the CPU by default), check its test accuracy, and cache it.

    Training is deterministic for a given seed and thread count, and never touches the global
    RNG (see ``modelshield.zoo.training``). The model is cached only when its clean test
    accuracy reaches ``spec(name).min_accuracy``.

    With ``device`` a GPU (``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``), a torch entry is
    initialised on the CPU as always (same seed, same initial weights), then trained with the
    model and the training data on that device; it is moved back to the CPU before it is scored,
    checked and saved, so the file, digests and load-time checks are those of CPU weights. GPU
    arithmetic differs from the CPU's (and cuDNN kernels may be non-deterministic), so the
    weights differ from the CPU run's and the recorded ``weights_sha256`` is that of the run
    actually done; the metadata records ``train_device``. scikit-learn entries ignore
    ``device`` (they fit on the CPU).

    Args:
        name: a zoo name (see ``names()``).
        data_root: the data folder for MNIST / Fashion-MNIST; None means ``$MODELSHIELD_DATA``.
            Ignored for ``digits-cnn``.
        force: retrain and replace a cached model; otherwise a cached model is an error.
        device: where a torch entry trains (``"cpu"``, the default, is bit-reproducible); see
            ``modelshield.models.resolve_device``. Ignored by scikit-learn entries.
        progress: optional ``progress(done, total, message)`` callback (per batch chunk and
            epoch; the last unit is the test evaluation).

    Returns:
        The trained ZooModel (eval mode), with the same meta that ``load`` returns.

    Raises:
        ConfigError: unknown name, already cached and ``force`` is False, or a device name that
            is not one or that this machine lacks.
        MissingDataError: the data files are not found.
        DataError: the test accuracy is below ``min_accuracy`` (nothing is cached).

    Example:
        model = zoo.train("mnist-cnn", data_root="/data", force=True)
        model.meta["test_accuracy"]
    """
    s = spec(name)
    dev = resolve_device(device, owner="zoo.train")  # a bad device fails before any work
    path = cache._weights_path(s.name)
    if path.exists() and not force:
        raise ConfigError(
            f"zoo.train: {s.name!r} must not be cached already unless force=True; it is cached at "
            f"{str(path)!r}. Use zoo.load({s.name!r}), or retrain with force=True "
            f"(`modelshield zoo train {s.name} --force`)."
        )
    if s.kind == "sklearn":  # scikit-learn fits on the CPU: device does not apply
        zm = _fit_sklearn(s, data_root, progress=progress, owner="zoo.train")
        path.parent.mkdir(parents=True, exist_ok=True)
        cache._write_json(path, zm.meta)
        return zm
    if progress is not None:  # say what the (possibly long) first steps are, before they run
        progress(0, 1, f"training {s.name} (cached afterwards): loading {s.dataset}")
    ds = load_dataset(s.dataset, data_root)
    if s.name in catalog._AT_RECIPES:
        module, recipe_dict, train_time, robust = _train_adversarial(s, ds, progress, dev)
        accuracy = evaluate(module, ds.x_test, ds.y_test)
        check_points, check_accuracy = cache._check_score(module, ds.x_test, ds.y_test)
    else:
        recipe = catalog._RECIPES[s.name]
        recipe_dict, robust = asdict(recipe), None
        module = build(s.arch, seed=recipe.seed).to(dev)  # initialised on the CPU, then moved
        steps = -(-int(ds.x_train.shape[0]) // recipe.batch_size) * recipe.epochs
        start = time.perf_counter()
        fit(module, ds.x_train.to(dev), ds.y_train.to(dev), recipe, progress=progress,
            progress_total=steps + 1)
        train_time = time.perf_counter() - start
        module = module.cpu()  # scored, checked and saved as CPU weights, whatever the device
        accuracy = evaluate(module, ds.x_test, ds.y_test)
        check_points, check_accuracy = cache._check_score(module, ds.x_test, ds.y_test)
        if progress is not None:
            progress(steps + 1, steps + 1, f"test accuracy {accuracy:.4f}")
    if accuracy < s.min_accuracy:
        raise DataError(
            f"zoo.train: {s.name!r} must reach test accuracy >= {s.min_accuracy:.3f}; got "
            f"{accuracy:.4f}, so it was not cached. Check the {s.dataset} files (sha256 "
            f"{ds.sha256[:12]}...) are the original ones, then retrain."
        )
    if check_accuracy < s.min_accuracy - FLOOR_SLACK:  # so that load's floor check never refuses it
        raise DataError(
            f"zoo.train: {s.name!r} must reach accuracy >= {s.min_accuracy - FLOOR_SLACK:.3f} on the "
            f"first {check_points} test points (the load-time check); got {check_accuracy:.4f}, so it "
            "was not cached. Check the data files, then retrain; if it fails again, report it."
        )
    if robust is not None and s.min_robust_accuracy is not None and robust < s.min_robust_accuracy:
        raise DataError(
            f"zoo.train: {s.name!r} must reach PGD robust accuracy >= {s.min_robust_accuracy:.3f} at "
            f"eps {s.eps}; got {robust:.4f}, so it was not cached. Retrain with "
            f"`modelshield zoo train {s.name} --force`; if it fails again, report it."
        )
    meta: dict[str, Any] = {
        "name": s.name,
        "dataset": s.dataset,
        "test_accuracy": accuracy,
        "n_test": int(ds.x_test.shape[0]),
        "check_points": check_points,
        "check_accuracy": check_accuracy,
        "train_time_s": round(train_time, 3),
        "epochs": recipe_dict["epochs"],
        "seed": recipe_dict["seed"],
        "recipe": recipe_dict,
        "weights_sha256": weights_sha256(module),
        "data_sha256": ds.sha256,
        "data_source": ds.source,
        "torch_version": str(torch.__version__),
        "num_threads": recipe_dict.get("num_threads") or torch.get_num_threads(),
        "train_device": str(dev),
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if robust is not None:
        check = f"PGD-20 (CE, 1 restart) on the first {ROBUST_CHECK_POINTS} test points"
        meta.update({"eps": s.eps, "norm": "inf", "robust_accuracy_pgd": robust, "robust_check": check})
    digest = save_model(module, path, arch=s.arch, meta=meta, overwrite=force)
    full = {**meta, "sha256": digest, "path": str(path.resolve()), "format": FORMAT, "arch": s.arch}
    cache._write_json(path.with_suffix(".json"), full)
    return ZooModel(spec=s, module=module.eval(), meta=full, path=path)


class AdversarialTrainer(Protocol):
    """Trains an adversarially trained entry in place: ``(train seconds, PGD robust accuracy)``.

    See ``modelshield.defenses.training.train_adversarial_entry``, registered on import.
    """

    def __call__(self, module: torch.nn.Module, *, eps: float, bounds: tuple[float, float],
                 recipe: dict[str, Any], train: tuple[Tensor, Tensor], check: tuple[Tensor, Tensor],
                 progress: Progress | None) -> tuple[float, float]: ...


_ADVERSARIAL_TRAINERS: list[AdversarialTrainer] = []


TRAINER_PROVIDER = "modelshield.defenses.training"
"""The module that registers the adversarial trainer when imported; loaded by name the first time
an adversarially trained entry is built and no trainer is registered yet (a plugin lookup: the
zoo sits below the defences in the package layers and never imports their code directly)."""


def register_adversarial_trainer(fn: AdversarialTrainer) -> None:
    """Install the function that trains the adversarially trained entries.

    The zoo sits below attacks and defences in the package layers, so it does not import the
    trainer; ``modelshield.defenses.training`` registers it when imported (``TRAINER_PROVIDER``
    is loaded on first need). The last registration wins.
    """
    _ADVERSARIAL_TRAINERS.append(fn)


def _train_adversarial(
    s: ZooSpec, ds: Any, progress: Progress | None, dev: torch.device
) -> tuple[torch.nn.Module, dict[str, Any], float, float]:
    """(module, recipe, train seconds, PGD robust accuracy) for an adversarially trained entry.

    The trainer follows the module's device (the training loop and PGD run where the model is),
    so the device reaches it through the module and the tensors moved there; the returned
    module is back on the CPU.
    """
    recipe = dict(catalog._AT_RECIPES[s.name])
    threads = recipe.pop("num_threads", None)
    if s.eps is None:
        raise RuntimeError("unreachable: adversarial zoo entries have eps")
    if not _ADVERSARIAL_TRAINERS:
        importlib.import_module(TRAINER_PROVIDER)  # registers the trainer
    if not _ADVERSARIAL_TRAINERS:
        raise ConfigError(
            f"zoo.train: {s.name!r} needs the adversarial trainer, which must be registered; got none. "
            "Import modelshield.defenses.training first (importing modelshield does it)."
        )
    module = build(s.arch, seed=int(recipe["seed"])).to(dev)
    check = (ds.x_test[:ROBUST_CHECK_POINTS].to(dev), ds.y_test[:ROBUST_CHECK_POINTS].to(dev))
    with torch_threads(int(threads) if threads else None):
        train_time, robust = _ADVERSARIAL_TRAINERS[-1](
            module, eps=s.eps, bounds=s.bounds, recipe=recipe,
            train=(ds.x_train.to(dev), ds.y_train.to(dev)), check=check, progress=progress,
        )
    module = module.cpu()
    return module, {**recipe, "num_threads": threads, "trainer": "AdversarialTrainer"}, train_time, robust


def load(
    name: str,
    *,
    data_root: str | Path | None = None,
    train_if_missing: bool = True,
    progress: Progress | None = None,
) -> ZooModel:
    """Load a zoo model from the cache (safely), training it first if needed and allowed.

    Args:
        name: a zoo name (see ``names()``).
        data_root: the data folder, used when training and to re-score a cached torch model.
        train_if_missing: train (and cache) the model when it is not cached.
        progress: optional ``progress(done, total, message)`` callback, used when training.

    Returns:
        The ZooModel (eval mode).

    Raises:
        ConfigError: unknown name.
        MissingDataError: not cached and ``train_if_missing`` is False (the fix is
            ``modelshield zoo train NAME``), or the training data is missing.
        MissingDataError: the test data that a cached torch model is re-scored on is missing.
        UnsafeModelFileError: the cached file is TorchScript or a pickle (never loaded from
            the cache; a DataError).
        DataError: the cached file is corrupt, its weights do not match the digests recorded in
            it and beside it, or it does not reproduce its recorded accuracy on the first
            ``CHECK_POINTS`` test points (see ``modelshield.zoo.cache``); the message names
            ``modelshield zoo train NAME --force``.

    Example:
        model = zoo.load("fashion-cnn", data_root="/data")
    """
    s = spec(name)
    path = cache._weights_path(s.name)
    if not path.is_file():
        if train_if_missing:
            return train(s.name, data_root=data_root, progress=progress)
        raise MissingDataError(
            f"zoo.load: {s.name!r} must be trained first; no cached weights at {str(path)!r}. "
            f"Run `modelshield zoo train {s.name}` (or zoo.train({s.name!r})), or pass "
            "train_if_missing=True."
        )
    if s.kind == "sklearn":
        return _load_sklearn(s, path, data_root, progress=progress)
    return cache._load_torch(s, path, data_root)


def _fingerprint_key(s: ZooSpec) -> str:
    return "spam_fingerprint" if s.dataset in TEXT_DATASETS else "phishing_fingerprint"


def _fit_spam(s: ZooSpec, data_root: str | Path | None, *, progress: Progress | None,
              owner: str) -> ZooModel:
    """Train a text (spam) zoo model from the SMS data and describe it (nothing is written)."""
    import sklearn

    seed = 0
    ds = load_sms_spam(data_root, deduplicate=s.deduplicate)
    if progress is not None:
        progress(0, 2, f"training {s.name}")
    start = time.perf_counter()
    est = train_spam_model(_spam_kind(s.arch), ds, seed=seed)
    train_time = time.perf_counter() - start
    scores = spam_metrics(est, ds.texts_test, ds.y_test)
    accuracy = scores["accuracy"]
    if progress is not None:
        progress(2, 2, f"test accuracy {accuracy:.4f}")
    if accuracy < s.min_accuracy:
        raise DataError(
            f"{owner}: {s.name!r} must reach test accuracy >= {s.min_accuracy:.3f}; got "
            f"{accuracy:.4f}, so it was not cached. Check the {s.dataset} file (sha256 "
            f"{ds.sha256[:12]}...) is the original UCI one, then retrain."
        )
    path = cache._weights_path(s.name)
    meta: dict[str, Any] = {
        "name": s.name,
        "kind": "sklearn",
        "modality": "text",
        "estimator": s.arch,
        "estimator_class": type(est).__name__,
        "dataset": s.dataset,
        "deduplicated": s.deduplicate,
        "n_train": len(ds.texts_train),
        "n_test": len(ds.texts_test),
        "test_accuracy": accuracy,
        "spam_precision": scores["precision"],
        "spam_recall": scores["recall"],
        "spam_f1": scores["f1"],
        "train_time_s": round(train_time, 3),
        "seed": seed,
        "data_sha256": ds.sha256,
        "data_source": ds.source,
        "sklearn_version": str(sklearn.__version__),
        "spam_fingerprint": spam_fingerprint(est, ds),
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "path": str(path.resolve()),
        "format": SKLEARN_FORMAT,
        "arch": s.arch,
    }
    return ZooModel(spec=s, module=est, meta=meta, path=path)


def _spam_kind(arch: str) -> SpamKind:
    if arch not in ("nb", "logreg"):
        raise ConfigError(f"zoo: internal: unknown spam estimator {arch!r}.")
    return arch  # type: ignore[return-value]  # narrowed by the check above


def _fit_sklearn(s: ZooSpec, data_root: str | Path | None, *, progress: Progress | None,
                 owner: str) -> ZooModel:
    """Train a scikit-learn zoo model from the data and describe it (nothing is written)."""
    import sklearn

    if s.dataset in TEXT_DATASETS:
        return _fit_spam(s, data_root, progress=progress, owner=owner)
    seed = 0
    ds = load_tabular_dataset(s.dataset, data_root, deduplicate=s.deduplicate)
    if progress is not None:
        progress(0, 2, f"training {s.name}")
    start = time.perf_counter()
    est = train_phishing_model(_phishing_kind(s.arch), ds, seed=seed)
    train_time = time.perf_counter() - start
    x_te, y_te = ds.x_test.numpy(), ds.y_test.numpy()
    pred = est.predict(x_te)
    accuracy = float((pred == y_te).mean())
    malicious = y_te == 1
    recall = float((pred[malicious] == 1).mean()) if malicious.any() else float("nan")
    if progress is not None:
        progress(2, 2, f"test accuracy {accuracy:.4f}")
    if accuracy < s.min_accuracy:
        raise DataError(
            f"{owner}: {s.name!r} must reach test accuracy >= {s.min_accuracy:.3f}; got "
            f"{accuracy:.4f}, so it was not cached. Check the {s.dataset} file (sha256 "
            f"{ds.sha256[:12]}...) is the original UCI one, then retrain."
        )
    path = cache._weights_path(s.name)
    meta: dict[str, Any] = {
        "name": s.name,
        "kind": "sklearn",
        "estimator": s.arch,
        "estimator_class": type(est).__name__,
        "dataset": s.dataset,
        "deduplicated": s.deduplicate,
        "n_train": int(ds.x_train.shape[0]),
        "n_test": int(ds.x_test.shape[0]),
        "test_accuracy": accuracy,
        "malicious_recall": recall,
        "train_time_s": round(train_time, 3),
        "seed": seed,
        "data_sha256": ds.sha256,
        "data_source": ds.source,
        "sklearn_version": str(sklearn.__version__),
        "phishing_fingerprint": phishing_fingerprint(est, ds),
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "path": str(path.resolve()),
        "format": SKLEARN_FORMAT,
        "arch": s.arch,
    }
    return ZooModel(spec=s, module=est, meta=meta, path=path)


def _phishing_kind(arch: str) -> PhishingKind:
    if arch not in ("logreg", "rf", "gbm"):
        raise ConfigError(f"zoo: internal: unknown phishing estimator {arch!r}.")
    return arch  # type: ignore[return-value]  # narrowed by the check above


def _load_sklearn(s: ZooSpec, path: Path, data_root: str | Path | None, *,
                  progress: Progress | None) -> ZooModel:
    """Retrain a scikit-learn zoo model and check it reproduces the cached fingerprint."""
    fix = f"Retrain it with `modelshield zoo train {s.name} --force` (or zoo.train(..., force=True))."
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"zoo.load: the metadata of {s.name!r} in {str(path)!r} must be readable JSON; got "
            f"{type(exc).__name__}: {exc}. {fix}"
        ) from exc
    if not isinstance(cached, dict) or cached.get("format") != SKLEARN_FORMAT:
        got = cached.get("format") if isinstance(cached, dict) else type(cached).__name__
        raise DataError(
            f"zoo.load: the metadata of {s.name!r} in {str(path)!r} must have format "
            f"{SKLEARN_FORMAT!r}; got {got!r}. {fix}"
        )
    zm = _fit_sklearn(s, data_root, progress=progress, owner="zoo.load")
    fresh = zm.meta
    if cached.get("data_sha256") != fresh["data_sha256"]:
        raise DataError(
            f"zoo.load: the {s.dataset} data of {s.name!r} must be the file it was trained on "
            f"(sha256 {str(cached.get('data_sha256'))[:12]}...); got {fresh['data_sha256'][:12]}... "
            f"from {fresh['data_source']!r}, so its recorded accuracy does not apply. Restore the "
            f"original file, or {fix[0].lower()}{fix[1:]}"
        )
    key = _fingerprint_key(s)
    if cached.get(key) != fresh[key]:
        raise DataError(
            f"zoo.load: the retrained {s.name!r} must reproduce the cached model's fingerprint "
            f"{str(cached.get(key))[:12]}... (SHA-256 of its test-set "
            f"probabilities); got {fresh[key][:12]}... with scikit-learn "
            f"{fresh['sklearn_version']} (cached with {cached.get('sklearn_version')!r}). The same data "
            f"and seed gave a different model, so the recorded metrics do not apply. {fix}"
        )
    meta = {**fresh, "trained_at": cached.get("trained_at", fresh["trained_at"]),
            "train_time_s": fresh["train_time_s"]}
    return ZooModel(spec=s, module=zm.module, meta=meta, path=path)
