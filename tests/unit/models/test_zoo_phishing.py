"""The scikit-learn phishing zoo models: retrained on load, checked against a cached fingerprint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from modelshield import zoo
from modelshield.errors import DataError

PHISHING = ("phishing-gbm", "phishing-logreg", "phishing-rf")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    return tmp_path


def test_registered_sorted_and_described() -> None:
    names = zoo.names()
    assert names == sorted(names)
    assert set(PHISHING) <= set(names)
    for name in PHISHING:
        s = zoo.spec(name)
        assert (s.kind, s.dataset, s.bounds, s.input_shape, s.n_classes) == (
            "sklearn", "phishing-websites", (-1.0, 1.0), (30,), 2)
        assert s.deduplicate and "deduplicated" in s.description
    assert zoo.spec("digits-cnn").kind == "torch"


def test_load_caches_json_only_and_retrains_deterministically(cache: Path) -> None:
    first = zoo.load("phishing-logreg")
    files = sorted(p.name for p in (cache / "zoo").iterdir())
    assert files == ["phishing-logreg.json"]  # no model file, nothing to unpickle
    meta = json.loads((cache / "zoo" / "phishing-logreg.json").read_text())
    for key in ("test_accuracy", "malicious_recall", "data_sha256", "seed", "sklearn_version",
                "phishing_fingerprint", "deduplicated"):
        assert key in meta, key
    assert meta["deduplicated"] is True and meta["n_test"] == 1463
    assert zoo.is_cached("phishing-logreg") and zoo.cached_meta("phishing-logreg") == meta
    second = zoo.load("phishing-logreg")
    assert second.kind == "sklearn" and second.module is not first.module
    x, _ = zoo.test_split("phishing-logreg")
    xn = x.numpy()
    np.testing.assert_array_equal(first.module.predict_proba(xn), second.module.predict_proba(xn))
    assert second.meta["phishing_fingerprint"] == meta["phishing_fingerprint"]
    # The recorded accuracy is the accuracy of the model that load returns.
    _, y = zoo.test_split("phishing-logreg")
    acc = float((second.module.predict(x.numpy()) == y.numpy()).mean())
    assert acc == pytest.approx(meta["test_accuracy"]) and acc >= zoo.spec("phishing-logreg").min_accuracy


def test_fingerprint_mismatch_is_detected(cache: Path) -> None:
    zoo.load("phishing-logreg")
    path = cache / "zoo" / "phishing-logreg.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "phishing_fingerprint": "0" * 64}))
    with pytest.raises(DataError, match=r"must reproduce the cached model's fingerprint 000000000000.*"
                                        r"zoo train phishing-logreg --force"):
        zoo.load("phishing-logreg")
    path.write_text(json.dumps({**meta, "data_sha256": "f" * 64}))
    with pytest.raises(DataError, match="must be the file it was trained on"):
        zoo.load("phishing-logreg")
    path.write_text(json.dumps({**meta, "format": "pickle"}))
    with pytest.raises(DataError, match="must have format 'modelshield-zoo-sklearn-v1'; got 'pickle'"):
        zoo.load("phishing-logreg")
    path.write_text("{not json")
    with pytest.raises(DataError, match="must be readable JSON"):
        zoo.load("phishing-logreg")
    zoo.train("phishing-logreg", force=True)  # the fix the messages give
    assert zoo.load("phishing-logreg").meta["phishing_fingerprint"] == meta["phishing_fingerprint"]


def test_test_split_shapes_and_bounds(cache: Path) -> None:
    x, y = zoo.test_split("phishing-gbm")
    # 11,055 rows minus 5,206 exact duplicates = 5,849; a quarter (rounded up) is held out.
    assert x.shape == (1463, 30) and y.shape == (1463,)
    assert x.dtype.is_floating_point and y.dtype.is_floating_point is False
    assert set(np.unique(x.numpy()).tolist()) <= {-1.0, 0.0, 1.0}
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert set(y.tolist()) == {0, 1}
    xs, ys = zoo.test_split("phishing-gbm", n=7)
    assert xs.shape == (7, 30) and bool((xs == x[:7]).all()) and bool((ys == y[:7]).all())
