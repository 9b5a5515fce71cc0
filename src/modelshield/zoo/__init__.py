"""Reference models: small CNNs and scikit-learn detectors trained with fixed seeds (on the CPU
by default; ``train(..., device="cuda")`` trains the torch entries on a GPU and saves CPU weights).

Torch models (``kind="torch"``: digits-cnn, mnist-cnn, fashion-cnn) train in under a minute on
two CPU cores, are cached as ``modelshield-v1`` files in ``cache_dir()/zoo/<name>.pt`` with a JSON
copy of their metadata beside it, and record their clean test accuracy and provenance (weights
and data SHA-256, seed, torch version, time). ``digits-cnn-at`` is digits-cnn adversarially
trained (TRADES, L-inf eps 0.1, about 10 s) and ``mnist-cnn-at`` is Madry et al.'s wider MNIST CNN
adversarially trained (PGD, L-inf eps 0.3, about an hour on two cores, trained on first use like
the others); each is cached only when its PGD robust accuracy passes a floor, which its metadata
records. A cached torch model is checked on every ``load`` before it is returned (file format,
digests, and a re-score on the first ``CHECK_POINTS`` test points; see ``modelshield.zoo.cache``).

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

The package re-exports its modules' public names:

- ``modelshield.zoo.catalog``: what each entry is (``ZooSpec``, ``spec``, ``names``), its test data
  (``test_split``, ``text_split``) and ``ZooModel``.
- ``modelshield.zoo.cache``: where models are cached (``cache_dir``, ``is_cached``, ``cached_meta``)
  and the checks a cached model passes (``check_cache``; the re-score on load).
- ``modelshield.zoo.builder``: ``train``, ``load`` and ``register_adversarial_trainer``.

``zoo.build`` is ``modelshield.models.archs.build`` (an architecture by name, as in ``ARCHS``).
"""

from __future__ import annotations

from modelshield.models.archs import ARCHS, build
from modelshield.zoo.builder import (
    ROBUST_CHECK_POINTS,
    AdversarialTrainer,
    load,
    register_adversarial_trainer,
    train,
)
from modelshield.zoo.cache import (
    CACHE_ENV,
    CHECK_POINTS,
    FLOOR_SLACK,
    SKLEARN_FORMAT,
    cache_dir,
    cached_meta,
    check_cache,
    is_cached,
)
from modelshield.zoo.catalog import (
    KINDS,
    TEXT_DATASETS,
    ZooKind,
    ZooModel,
    ZooSpec,
    is_text,
    names,
    spec,
    test_split,
    text_split,
)

__all__ = [
    "ARCHS",
    "CACHE_ENV",
    "CHECK_POINTS",
    "FLOOR_SLACK",
    "KINDS",
    "ROBUST_CHECK_POINTS",
    "SKLEARN_FORMAT",
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
