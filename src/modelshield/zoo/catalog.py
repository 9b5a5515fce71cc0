"""The zoo's catalogue: what each zoo name is, and its test data.

Each entry is a ``ZooSpec`` (data set, input shape and bounds, architecture or estimator, kind,
accuracy floors), looked up by ``spec(name)``; ``names()`` lists them. The training recipes of
the torch entries (``Recipe`` settings, or ``AdversarialTrainer`` settings for the adversarially
trained ones) sit beside the specs, so that everything that defines an entry is in one place;
``modelshield.zoo.builder`` trains from them. ``test_split`` and ``text_split`` return the test
split an entry is scored on. Nothing here reads or writes the cache (``modelshield.zoo.cache``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from torch import Tensor

from modelshield.data import load_dataset, load_tabular_dataset
from modelshield.data.sms_spam import load_sms_spam
from modelshield.errors import ConfigError
from modelshield.zoo.training import Recipe

__all__ = [
    "KINDS",
    "TEXT_DATASETS",
    "ZooKind",
    "ZooModel",
    "ZooSpec",
    "is_text",
    "names",
    "spec",
    "test_split",
    "text_split",
]

ZooKind: TypeAlias = Literal["torch", "sklearn"]
KINDS: tuple[ZooKind, ...] = ("torch", "sklearn")

TEXT_DATASETS: tuple[str, ...] = ("sms-spam",)
"""Data sets of raw-text zoo models (inputs are strings: use ``text_split``, not ``test_split``)."""


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


# Not a test: keep pytest from collecting the public `test_split` when imported into test files.
test_split.__test__ = False  # type: ignore[attr-defined]  # pytest's collection opt-out flag
text_split.__test__ = False  # type: ignore[attr-defined]  # (the same, for symmetry)
