"""The text (spam) zoo models: registered, retrained on load, fingerprint-checked, text_split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from modelshield import zoo
from modelshield.errors import ConfigError, DataError

SPAM = ("spam-logreg", "spam-nb")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    return tmp_path


def test_registered_as_text_sklearn_models() -> None:
    assert set(SPAM) <= set(zoo.names()) and zoo.names() == sorted(zoo.names())
    for name in SPAM:
        s = zoo.spec(name)
        assert (s.kind, s.dataset, s.n_classes, s.arch) == ("sklearn", "sms-spam", 2, name.split("-")[1])
        assert zoo.is_text(name)
    assert not zoo.is_text("phishing-rf") and not zoo.is_text("digits-cnn")


def test_data_exports() -> None:
    import modelshield.data as data

    assert {"load_sms_spam", "TextDataset"} <= set(data.__all__)
    assert data.load_sms_spam is __import__("modelshield.data.sms_spam", fromlist=["x"]).load_sms_spam


def test_load_caches_json_only_and_records_spam_metrics(cache: Path) -> None:
    first = zoo.load("spam-nb")
    assert sorted(p.name for p in (cache / "zoo").iterdir()) == ["spam-nb.json"]  # nothing to unpickle
    meta = json.loads((cache / "zoo" / "spam-nb.json").read_text())
    second = zoo.load("spam-nb")
    assert second.module is not first.module and second.meta["spam_fingerprint"] == meta["spam_fingerprint"]
    texts, y = zoo.text_split("spam-nb")
    assert len(texts) == meta["n_test"] == 1394 and all(isinstance(t, str) for t in texts)
    np.testing.assert_array_equal(
        first.module.predict_proba(list(texts)), second.module.predict_proba(list(texts))
    )
    # The recorded spam metrics are those of the returned model, recomputed by hand here.
    pred = second.module.predict(list(texts))
    truth = y.numpy() == 1
    tp = int((truth & (pred == 1)).sum())
    precision, recall = tp / int((pred == 1).sum()), tp / int(truth.sum())
    assert meta["spam_precision"] == pytest.approx(precision)
    assert meta["spam_recall"] == pytest.approx(recall)
    assert meta["spam_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert meta["test_accuracy"] == pytest.approx(float((pred == y.numpy()).mean()))
    assert meta["test_accuracy"] >= zoo.spec("spam-nb").min_accuracy


def test_changed_fingerprint_is_refused(cache: Path) -> None:
    zoo.load("spam-nb")
    path = cache / "zoo" / "spam-nb.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "spam_fingerprint": "0" * 64}))
    with pytest.raises(DataError, match="fingerprint 000000000000"):
        zoo.load("spam-nb")


def test_text_split_and_test_split_point_to_each_other(cache: Path) -> None:
    texts, y = zoo.text_split("spam-nb", n=7)
    assert len(texts) == 7 and y.shape == (7,)
    from modelshield.data import load_sms_spam

    ds = load_sms_spam()
    assert texts == ds.texts_test[:7] and y.tolist() == ds.y_test[:7].tolist()
    with pytest.raises(ConfigError, match=r"text model .* Use zoo.text_split\('spam-nb'\)"):
        zoo.test_split("spam-nb")
    with pytest.raises(ConfigError, match=r"must be a text model .* Use zoo.test_split\('phishing-rf'\)"):
        zoo.text_split("phishing-rf")
    with pytest.raises(ConfigError, match="'n' must be an int >= 1"):
        zoo.text_split("spam-nb", n=0)
