"""Reference models: small CNNs and scikit-learn detectors trained on the CPU with fixed seeds.

Torch models (``kind="torch"``: digits-cnn, mnist-cnn, fashion-cnn) train in under a minute on
two CPU cores, are saved as ``modelshield-v1`` files (loaded with ``weights_only=True``) in
``cache_dir()/zoo/<name>.pt`` with a JSON copy of their metadata beside it, and record their
clean test accuracy and provenance (weights and data SHA-256, seed, torch version, time).
``digits-cnn-at`` is digits-cnn adversarially trained (TRADES, L-inf eps 0.1, about 10 s) and
``mnist-cnn-at`` is Madry et al.'s wider MNIST CNN adversarially trained (PGD, L-inf eps 0.3,
about an hour on two cores, trained on first use like the others); each is cached only when its
PGD robust accuracy passes a floor, which its metadata records.

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

scikit-learn models (``kind="sklearn"``: phishing-logreg, phishing-rf, phishing-gbm) are never
pickled: they retrain from the data on every load (under a second each, one thread) and only
their JSON metadata is cached in ``cache_dir()/zoo/<name>.json``. On load the retrained model's
fingerprint (SHA-256 of its test-set probabilities) must equal the cached one, so a change of
data or scikit-learn behaviour is caught instead of silently giving other numbers.

Example:
    model = zoo.load("digits-cnn")             # trains on first use (a few seconds)
    x, y = zoo.test_split("digits-cnn", n=500)
    model.module(x).argmax(1)
    gbm = zoo.load("phishing-gbm")             # gbm.module is a fitted estimator
    x, y = zoo.test_split("phishing-gbm")      # rows in [-1, 1]; label 1 = phishing
    gbm.module.predict_proba(x.numpy())

Text models (``spam-nb``, ``spam-logreg``: scikit-learn pipelines over raw SMS messages, label 1 =
spam) are scikit-learn entries too, retrained on load and fingerprint-checked the same way. Their
inputs are strings, not tensors, so ``test_split`` refuses them and ``text_split`` returns
``(texts, y)`` instead (``is_text(name)`` tells which applies):

    nb = zoo.load("spam-nb")
    texts, y = zoo.text_split("spam-nb", n=200)
    nb.module.predict_proba(list(texts))
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import torch
from torch import Tensor

from modelshield.data import load_dataset, load_tabular_dataset
from modelshield.data.sms_spam import load_sms_spam
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.models.archs import ARCHS, build
from modelshield.models.load import (
    FORMAT,
    UnsafeModelFileError,
    file_sha256,
    load_model,
    save_model,
    weights_sha256,
)
from modelshield.zoo.phishing import PhishingKind, phishing_fingerprint, train_phishing_model
from modelshield.zoo.spam import SpamKind, spam_fingerprint, spam_metrics, train_spam_model
from modelshield.zoo.training import Progress, Recipe, evaluate, fit, torch_threads

__all__ = [
    "ARCHS",
    "CACHE_ENV",
    "CHECK_POINTS",
    "KINDS",
    "TEXT_DATASETS",
    "AdversarialTrainer",
    "ZooKind",
    "ZooModel",
    "ZooSpec",
    "build",
    "cache_dir",
    "cached_meta",
    "check_cache",
    "is_cached",
    "is_text",
    "load",
    "names",
    "register_adversarial_trainer",
    "spec",
    "test_split",
    "text_split",
    "train",
]

CACHE_ENV = "MODELSHIELD_CACHE"

ZooKind: TypeAlias = Literal["torch", "sklearn"]
KINDS: tuple[ZooKind, ...] = ("torch", "sklearn")

TEXT_DATASETS: tuple[str, ...] = ("sms-spam",)
"""Data sets of raw-text zoo models (inputs are strings: use ``text_split``, not ``test_split``)."""

SKLEARN_FORMAT = "modelshield-zoo-sklearn-v1"
"""``format`` of the JSON metadata cached for a scikit-learn zoo model (no model file)."""


@dataclass(frozen=True, slots=True)
class ZooSpec:
    """What a zoo model is: its data, input format, architecture and accuracy floor.

    Attributes:
        name: the zoo name, e.g. ``"mnist-cnn"``.
        dataset: the data set it is trained and tested on (a name in ``modelshield.data.DATASETS``
            for torch models, in ``modelshield.data.TABULAR_DATASETS`` for scikit-learn ones).
        description: one line for listings.
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(30,)``.
        n_classes: number of output logits (torch) or probability columns (scikit-learn).
        bounds: the input range the model expects.
        min_accuracy: the clean test accuracy below which training refuses to cache the model.
        arch: the architecture name (a key of ``ARCHS``) for torch models; the estimator kind
            (``"logreg"``, ``"rf"``, ``"gbm"``) for scikit-learn models.
        kind: ``"torch"`` (an ``nn.Module`` returning logits) or ``"sklearn"`` (a fitted
            estimator with ``predict_proba``, retrained on load, never unpickled).
        deduplicate: tabular data only: drop exact duplicate rows before the train/test split.
        eps: for adversarially trained torch models, the L-inf budget they are trained for
            (None: a standard model).
        min_robust_accuracy: for adversarially trained models, the PGD robust accuracy at
            ``eps`` (on the first ``ROBUST_CHECK_POINTS`` test points) below which training
            refuses to cache the model.
        slow: training takes about an hour or more on two CPU cores: code that would train the
            model implicitly on first use (the assess ``defenses`` section's default counterpart)
            skips it instead and says how to train it (``modelshield zoo train NAME``).
    """

    name: str
    dataset: str
    description: str
    input_shape: tuple[int, ...]
    n_classes: int
    bounds: tuple[float, float]
    min_accuracy: float
    arch: str
    kind: ZooKind = "torch"
    deduplicate: bool = False
    eps: float | None = None
    min_robust_accuracy: float | None = None
    slow: bool = False


@dataclass(frozen=True, slots=True)
class ZooModel:
    """A trained zoo model.

    Attributes:
        spec: what the model is.
        module: for ``spec.kind == "torch"`` the ``nn.Module`` (CPU, eval mode), mapping inputs in
            ``spec.bounds`` to logits; for ``"sklearn"`` the fitted estimator (``predict_proba``
            gives (N, 2) probabilities; wrap it with ``as_model(est, bounds=spec.bounds)``).
        meta: torch: ``test_accuracy``, ``check_points`` and ``check_accuracy`` (the slice that
            ``load`` re-scores), ``train_time_s``, ``epochs``, ``seed``,
            ``weights_sha256``, ``data_sha256``, ``torch_version``, ``trained_at`` (ISO 8601,
            UTC) and the training recipe, plus ``sha256`` (of the file), ``path``, ``format`` and
            ``arch``. scikit-learn: ``test_accuracy``, ``malicious_recall``, ``data_sha256``,
            ``seed``, ``sklearn_version``, ``phishing_fingerprint``, ``deduplicated``,
            ``n_train``, ``n_test``, ``train_time_s``, ``trained_at``, ``path``, ``format``.
            Text (spam) models record ``spam_precision``, ``spam_recall``, ``spam_f1`` and
            ``spam_fingerprint`` instead of ``malicious_recall`` and ``phishing_fingerprint``.
        path: the cached weights file (torch) or metadata file (scikit-learn).
    """

    spec: ZooSpec
    module: Any
    meta: dict[str, Any]
    path: Path

    @property
    def kind(self) -> ZooKind:
        """``"torch"`` or ``"sklearn"`` (see ``ZooSpec.kind``)."""
        return self.spec.kind


_SPECS: dict[str, ZooSpec] = {
    s.name: s
    for s in (
        ZooSpec(
            name="digits-cnn",
            dataset="digits",
            description="2-conv CNN on scikit-learn's 8x8 digits (bundled, no download)",
            input_shape=(1, 8, 8),
            n_classes=10,
            bounds=(0.0, 1.0),
            min_accuracy=0.97,
            arch="cnn-8x8",
        ),
        ZooSpec(
            name="mnist-cnn",
            dataset="mnist",
            description="LeNet-style CNN on MNIST 28x28 handwritten digits",
            input_shape=(1, 28, 28),
            n_classes=10,
            bounds=(0.0, 1.0),
            min_accuracy=0.985,
            arch="lenet-28",
        ),
        ZooSpec(
            name="digits-cnn-at",
            dataset="digits",
            description="digits-cnn adversarially trained (TRADES, L-inf eps 0.1)",
            input_shape=(1, 8, 8),
            n_classes=10,
            bounds=(0.0, 1.0),
            min_accuracy=0.93,
            arch="cnn-8x8",
            eps=0.1,
            min_robust_accuracy=0.6,
        ),
        ZooSpec(
            name="mnist-cnn-at",
            dataset="mnist",
            description=("Madry et al.'s MNIST CNN (lenet-28-wide) adversarially trained (PGD, L-inf "
                         "eps 0.3); about an hour to train on 2 CPU cores"),
            input_shape=(1, 28, 28),
            n_classes=10,
            bounds=(0.0, 1.0),
            min_accuracy=0.98,
            arch="lenet-28-wide",
            eps=0.3,
            min_robust_accuracy=0.85,
            slow=True,
        ),
        ZooSpec(
            name="fashion-cnn",
            dataset="fashion-mnist",
            description="LeNet-style CNN on Fashion-MNIST 28x28 clothing images",
            input_shape=(1, 28, 28),
            n_classes=10,
            bounds=(0.0, 1.0),
            min_accuracy=0.89,
            arch="lenet-28",
        ),
        *(
            ZooSpec(
                name=f"phishing-{est}",
                dataset="phishing-websites",
                # Deduplicated before the split: 5,206 of the 11,055 rows are exact copies, so a
                # plain random split would score the model on copies of its training rows.
                description=f"{label} phishing detector (UCI, deduplicated split, refit on load)",
                input_shape=(30,),
                n_classes=2,
                bounds=(-1.0, 1.0),
                min_accuracy=floor,
                arch=est,
                kind="sklearn",
                deduplicate=True,
            )
            # Measured test accuracy on the deduplicated split (seed 0, scikit-learn 1.x):
            # logreg 0.909, rf 0.946, gbm 0.957.
            for est, label, floor in (
                ("logreg", "Logistic-regression", 0.89),
                ("rf", "Random-forest", 0.93),
                ("gbm", "Gradient-boosting", 0.94),
            )
        ),
        *(
            ZooSpec(
                name=f"spam-{est}",
                dataset="sms-spam",
                description=f"{label} SMS spam filter over raw text (UCI, refit on load)",
                input_shape=(),  # one raw string per input
                n_classes=2,
                bounds=(0.0, 1.0),  # unused: inputs are strings
                min_accuracy=floor,
                arch=est,
                kind="sklearn",
            )
            # Measured on the default split (seed 0, 1,394 test messages, scikit-learn 1.x):
            # nb accuracy 0.984 (spam F1 0.938), logreg 0.989 (spam F1 0.955).
            for est, label, floor in (
                ("nb", "TF-IDF + naive-Bayes", 0.97),
                ("logreg", "TF-IDF word+char n-gram logistic-regression", 0.975),
            )
        ),
    )
}

# Measured on 2 CPU cores (torch 2.13): digits ~2 s, mnist ~25 s, fashion ~45 s.
_RECIPES: dict[str, Recipe] = {
    # One thread: for a model this small threading costs more than it gains (measured 1.7 s vs
    # 3.6 s), and a fixed count makes the weights identical on every machine with the same torch.
    "digits-cnn": Recipe(epochs=30, batch_size=32, lr=3e-3, weight_decay=1e-4, seed=0, num_threads=1),
    "mnist-cnn": Recipe(epochs=3, batch_size=128, lr=3e-3, weight_decay=1e-4, seed=0),
    "fashion-cnn": Recipe(epochs=5, batch_size=128, lr=3e-3, weight_decay=1e-4, seed=0),
}

# Adversarially trained entries: AdversarialTrainer settings (eps and bounds come from the spec).
# digits-cnn-at: ~10 s on one thread. mnist-cnn-at: the settings of benchmarks/defenses.py's PGD
# row (12 epochs of PGD-10 with a 2-epoch eps warm-up, Adam 1e-3 cyclic), ~60 min on 2 threads.
_AT_RECIPES: dict[str, dict[str, Any]] = {
    "digits-cnn-at": {"method": "trades", "steps": 10, "epochs": 20, "batch_size": 32, "lr": 3e-3,
                      "seed": 0, "num_threads": 1},
    "mnist-cnn-at": {"method": "pgd", "steps": 10, "epochs": 12, "eps_warmup_epochs": 2,
                     "batch_size": 128, "lr": 1e-3, "seed": 0, "num_threads": 2},
}
ROBUST_CHECK_POINTS = 500
"""Test points of the PGD check that an adversarially trained zoo model must pass to be cached."""

CHECK_POINTS = 256
"""Test points (the first ones of its test split) a cached torch zoo model is re-scored on at load."""

FLOOR_SLACK = 0.05
"""A cached torch model re-scored below ``min_accuracy - FLOOR_SLACK`` on the check slice is refused
even when its recorded numbers agree (the slice is small, so the floor gets some room)."""


def names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(_SPECS)


def is_text(name: str) -> bool:
    """Whether a zoo model takes raw text (its data set is in ``TEXT_DATASETS``).

    Raises:
        ConfigError: unknown name.
    """
    return spec(name).dataset in TEXT_DATASETS


def spec(name: str) -> ZooSpec:
    """The ZooSpec of a zoo model.

    Raises:
        ConfigError: unknown name; the message lists the names and suggests a close match.
    """
    found = _SPECS.get(name) if isinstance(name, str) else None
    if found is not None:
        return found
    close = difflib.get_close_matches(str(name), names(), n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"zoo: 'name' must be one of {', '.join(map(repr, names()))}; got {name!r}. "
        f"{hint}List them with `modelshield zoo list`."
    )


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
    suffix = ".json" if _SPECS[name].kind == "sklearn" else ".pt"
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


def train(
    name: str,
    *,
    data_root: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ZooModel:
    """Train a zoo model on the CPU, check its test accuracy, and cache it.

    Training is deterministic for a given seed and thread count, and never touches the global
    RNG (see ``modelshield.zoo.training``). The model is cached only when its clean test
    accuracy reaches ``spec(name).min_accuracy``.

    Args:
        name: a zoo name (see ``names()``).
        data_root: the data folder for MNIST / Fashion-MNIST; None means ``$MODELSHIELD_DATA``.
            Ignored for ``digits-cnn``.
        force: retrain and replace a cached model; otherwise a cached model is an error.
        progress: optional ``progress(done, total, message)`` callback (per batch chunk and
            epoch; the last unit is the test evaluation).

    Returns:
        The trained ZooModel (eval mode), with the same meta that ``load`` returns.

    Raises:
        ConfigError: unknown name, or already cached and ``force`` is False.
        MissingDataError: the data files are not found.
        DataError: the test accuracy is below ``min_accuracy`` (nothing is cached).

    Example:
        model = zoo.train("mnist-cnn", data_root="/data", force=True)
        model.meta["test_accuracy"]
    """
    s = spec(name)
    path = _weights_path(s.name)
    if path.exists() and not force:
        raise ConfigError(
            f"zoo.train: {s.name!r} must not be cached already unless force=True; it is cached at "
            f"{str(path)!r}. Use zoo.load({s.name!r}), or retrain with force=True "
            f"(`modelshield zoo train {s.name} --force`)."
        )
    if s.kind == "sklearn":
        zm = _fit_sklearn(s, data_root, progress=progress, owner="zoo.train")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, zm.meta)
        return zm
    if progress is not None:  # say what the (possibly long) first steps are, before they run
        progress(0, 1, f"training {s.name} (cached afterwards): loading {s.dataset}")
    ds = load_dataset(s.dataset, data_root)
    if s.name in _AT_RECIPES:
        module, recipe_dict, train_time, robust = _train_adversarial(s, ds, progress)
        accuracy = evaluate(module, ds.x_test, ds.y_test)
        check_points, check_accuracy = _check_score(module, ds.x_test, ds.y_test)
    else:
        recipe = _RECIPES[s.name]
        recipe_dict, robust = asdict(recipe), None
        module = build(s.arch, seed=recipe.seed)
        steps = -(-int(ds.x_train.shape[0]) // recipe.batch_size) * recipe.epochs
        start = time.perf_counter()
        fit(module, ds.x_train, ds.y_train, recipe, progress=progress, progress_total=steps + 1)
        train_time = time.perf_counter() - start
        accuracy = evaluate(module, ds.x_test, ds.y_test)
        check_points, check_accuracy = _check_score(module, ds.x_test, ds.y_test)
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
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if robust is not None:
        check = f"PGD-20 (CE, 1 restart) on the first {ROBUST_CHECK_POINTS} test points"
        meta.update({"eps": s.eps, "norm": "inf", "robust_accuracy_pgd": robust, "robust_check": check})
    digest = save_model(module, path, arch=s.arch, meta=meta, overwrite=force)
    full = {**meta, "sha256": digest, "path": str(path.resolve()), "format": FORMAT, "arch": s.arch}
    _write_json(path.with_suffix(".json"), full)
    return ZooModel(spec=s, module=module.eval(), meta=full, path=path)


def _check_score(module: torch.nn.Module, x_test: Tensor, y_test: Tensor) -> tuple[int, float]:
    """(points, accuracy) of module on the first CHECK_POINTS test points: the load-time check."""
    n = min(CHECK_POINTS, int(x_test.shape[0]))
    with torch_threads(1):  # as _rescore does: same thread count, same arithmetic
        return n, evaluate(module, x_test[:n], y_test[:n])


class AdversarialTrainer(Protocol):
    """Trains an adversarially trained entry in place: ``(train seconds, PGD robust accuracy)``.

    See ``modelshield.defenses.training.train_adversarial_entry``, registered on import.
    """

    def __call__(self, module: torch.nn.Module, *, eps: float, bounds: tuple[float, float],
                 recipe: dict[str, Any], train: tuple[Tensor, Tensor], check: tuple[Tensor, Tensor],
                 progress: Progress | None) -> tuple[float, float]: ...


_ADVERSARIAL_TRAINERS: list[AdversarialTrainer] = []


def register_adversarial_trainer(fn: AdversarialTrainer) -> None:
    """Install the function that trains the adversarially trained entries.

    The zoo sits below attacks and defences in the package layers, so it does not import the
    trainer; ``modelshield.defenses.training`` registers it when imported (and importing
    ``modelshield`` imports it). The last registration wins.
    """
    _ADVERSARIAL_TRAINERS.append(fn)


def _train_adversarial(
    s: ZooSpec, ds: Any, progress: Progress | None
) -> tuple[torch.nn.Module, dict[str, Any], float, float]:
    """(module, recipe, train seconds, PGD robust accuracy) for an adversarially trained entry."""
    recipe = dict(_AT_RECIPES[s.name])
    threads = recipe.pop("num_threads", None)
    if s.eps is None:
        raise RuntimeError("unreachable: adversarial zoo entries have eps")
    if not _ADVERSARIAL_TRAINERS:
        raise ConfigError(
            f"zoo.train: {s.name!r} needs the adversarial trainer, which must be registered; got none. "
            "Import modelshield.defenses.training first (importing modelshield does it)."
        )
    module = build(s.arch, seed=int(recipe["seed"]))
    check = (ds.x_test[:ROBUST_CHECK_POINTS], ds.y_test[:ROBUST_CHECK_POINTS])
    with torch_threads(int(threads) if threads else None):
        train_time, robust = _ADVERSARIAL_TRAINERS[-1](
            module, eps=s.eps, bounds=s.bounds, recipe=recipe, train=(ds.x_train, ds.y_train),
            check=check, progress=progress,
        )
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
            ``CHECK_POINTS`` test points (see the module docstring); the message names
            ``modelshield zoo train NAME --force``.

    Example:
        model = zoo.load("fashion-cnn", data_root="/data")
    """
    s = spec(name)
    path = _weights_path(s.name)
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


def test_split(
    name: str, *, n: int | None = None, data_root: str | Path | None = None
) -> tuple[Tensor, Tensor]:
    """The first n points of a zoo model's test split.

    Args:
        name: a zoo name.
        n: how many points (at most the test split's size: digits has 540, the deduplicated
            phishing split 1,463); None means all.
        data_root: the data folder for MNIST / Fashion-MNIST / phishing-websites; None means
            ``$MODELSHIELD_DATA``.

    Returns:
        ``(x, y)``: ``(n, *input_shape)`` float32 in the model's bounds and ``(n,)`` int64,
        freshly allocated. Phishing rows are ``(n, 30)`` in [-1, 1] with label 1 = phishing.

    Raises:
        ConfigError: unknown name, n is not a positive int, or a text model (its inputs are
            strings: use ``text_split``).
        MissingDataError: the data files are not found.
    """
    s = spec(name)
    _check_n(n, "zoo.test_split")
    if s.dataset in TEXT_DATASETS:
        raise ConfigError(
            f"zoo.test_split: 'name' must be a model with tensor inputs; got {s.name!r}, a text model "
            f"whose inputs are strings. Use zoo.text_split({s.name!r}) for its (texts, labels)."
        )
    if s.kind == "sklearn":
        tab = load_tabular_dataset(s.dataset, data_root, deduplicate=s.deduplicate)
        x_test, y_test = tab.x_test, tab.y_test
    else:
        ds = load_dataset(s.dataset, data_root)
        x_test, y_test = ds.x_test, ds.y_test
    if n is None:
        return x_test, y_test
    # clone() so the small slice does not keep the whole test split alive.
    return x_test[:n].clone(), y_test[:n].clone()


def _check_n(n: object, owner: str) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(
            f"{owner}: 'n' must be an int >= 1 or None; got {n!r}. Pass the number of "
            "test points, e.g. n=500."
        )


def text_split(
    name: str, *, n: int | None = None, data_root: str | Path | None = None
) -> tuple[tuple[str, ...], Tensor]:
    """The first n messages of a text zoo model's test split (the counterpart of ``test_split``).

    Args:
        name: a text zoo model (``spam-nb``, ``spam-logreg``; see ``is_text``).
        n: how many messages (at most 1,394 for the SMS split); None means all.
        data_root: the folder holding ``sms-spam/``; None means ``$MODELSHIELD_DATA``.

    Returns:
        ``(texts, y)``: a tuple of raw strings and an ``(n,)`` int64 tensor (1 = spam), the
        same split the model was scored on.

    Raises:
        ConfigError: unknown name, a model whose inputs are tensors (use ``test_split``), or n
            is not a positive int.
        MissingDataError: the data file is not found. DataError: a malformed line.

    Example:
        texts, y = zoo.text_split("spam-nb", n=200)
    """
    s = spec(name)
    _check_n(n, "zoo.text_split")
    if s.dataset not in TEXT_DATASETS:
        raise ConfigError(
            f"zoo.text_split: 'name' must be a text model ({', '.join(_text_names())}); got "
            f"{s.name!r}, whose inputs are tensors. Use zoo.test_split({s.name!r})."
        )
    ds = load_sms_spam(data_root, deduplicate=s.deduplicate)
    if n is None:
        return ds.texts_test, ds.y_test.clone()
    return ds.texts_test[:n], ds.y_test[:n].clone()


def _text_names() -> list[str]:
    return [name for name in names() if _SPECS[name].dataset in TEXT_DATASETS]


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
    path = _weights_path(s.name)
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
    path = _weights_path(s.name)
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


# Not a test: keep pytest from collecting the public `test_split` when imported into test files.
test_split.__test__ = False  # type: ignore[attr-defined]  # pytest's collection opt-out flag
text_split.__test__ = False  # type: ignore[attr-defined]  # (the same, for symmetry)
