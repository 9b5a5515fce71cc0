"""Training-data validation: flipped-label detection, clean sets, duplicates, outliers, drift, images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modelshield.attacks.poisoning import RandomLabelFlip
from modelshield.data.sms_spam import TextDataset, load_sms_spam
from modelshield.defenses.data import (
    ConfidentLearning,
    KNNLabelConsistency,
    OutlierDetector,
    confident_joint,
    drift_report,
    find_duplicates,
    per_class_thresholds,
    prune_by_noise_rate,
    validate_dataset,
)
from modelshield.errors import ConfigError, InputError, NotFittedError
from modelshield.zoo.spam import spam_metrics, train_spam_model


@pytest.fixture(scope="module")
def spam() -> TextDataset:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    return load_sms_spam(root)


def _pr(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = float((flag & truth).sum())
    return tp / max(flag.sum(), 1), tp / max(truth.sum(), 1)


def test_confident_learning_maths_by_hand() -> None:
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.95, 0.05]])
    y = np.array([0, 0, 1, 1, 1])  # the last row looks like class 0
    t = per_class_thresholds(p, y)
    np.testing.assert_allclose(t, [0.85, (0.7 + 0.8 + 0.05) / 3])
    cj, guess = confident_joint(p, y, t)
    # row 1: p0 = 0.8 < 0.85 but p1 = 0.2 < 0.517: no confident class
    assert guess.tolist() == [0, -1, 1, 1, 0]
    np.testing.assert_array_equal(cj, [[1, 0], [1, 2]])
    assert prune_by_noise_rate(p, y, cj).tolist() == [False, False, False, False, True]


def test_flipped_spam_labels_are_found_and_cleaning_restores_f1(spam: TextDataset) -> None:
    res = RandomLabelFlip(rate=0.1, seed=1)(spam.texts_train, spam.y_train)
    truth = res.mask.numpy()
    report = validate_dataset(list(spam.texts_train), res.y_poisoned, checks=("label_issues", "duplicates"))
    prec, rec = _pr(report.removed.numpy(), truth)
    assert rec >= 0.85 and prec >= 0.75, (prec, rec)
    x_clean, y_clean, kept = report.cleaned()
    assert (
        len(x_clean) == y_clean.numel() == kept.numel() == len(spam.texts_train) - int(report.removed.sum())
    )
    assert all(x_clean[j] == spam.texts_train[int(i)] for j, i in enumerate(kept[:50]))
    f1_clean = spam_metrics(train_spam_model("nb", spam), spam.texts_test, spam.y_test)["f1"]
    f1_poisoned = spam_metrics(
        train_spam_model("nb", spam.texts_train, res.y_poisoned), spam.texts_test, spam.y_test
    )["f1"]
    f1_cleaned = spam_metrics(train_spam_model("nb", x_clean, y_clean), spam.texts_test, spam.y_test)["f1"]
    assert f1_cleaned > f1_poisoned + 0.03 and f1_cleaned > f1_clean - 0.02
    top = report.rows[0]
    assert top.remove and top.reasons and top.index in set(report.flagged_indices.tolist())
    assert report.to_dict()["removed"] == int(report.removed.sum())
    _, _, kept_rel = report.cleaned(relabel=True)
    assert kept_rel.numel() > kept.numel()


def test_knn_consistency_catches_flips(spam: TextDataset) -> None:
    res = RandomLabelFlip(rate=0.1, seed=2)(spam.texts_train, spam.y_train)
    knn = KNNLabelConsistency(k=10).fit(list(spam.texts_train), res.y_poisoned)
    assert knn.issues_ is not None
    prec, rec = _pr(knn.issues_, res.mask.numpy())
    assert rec >= 0.8 and prec >= 0.6, (prec, rec)


def test_clean_set_flags_few_rows(spam: TextDataset) -> None:
    report = validate_dataset(list(spam.texts_train), spam.y_train)
    assert int(report.removed.sum()) <= 0.02 * len(spam.texts_train)
    assert report.summary["knn_disagreements"] <= 0.05 * len(spam.texts_train)
    assert report.summary["duplicates"]["conflicting_groups"] == 0


def test_duplicates_exact_near_and_conflicting() -> None:
    texts = [
        "win a free prize now",
        "see you at lunch",
        "win a free prize now",
        "see you at lunch!!",
        "totally different words here",
        "another unrelated message",
    ]
    rep = find_duplicates(texts, [1, 0, 0, 0, 0, 0], near_threshold=0.9)
    groups = {g.indices: g for g in rep.groups}
    assert groups[(0, 2)].kind == "exact" and groups[(0, 2)].conflicting
    assert groups[(1, 3)].kind == "near" and not groups[(1, 3)].conflicting
    assert set(groups[(0, 2)].minority()) == {0, 2}  # a tie: both rows are suspect
    assert rep.duplicate_rows.tolist() == [False, False, True, True, False, False]
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [5.0, -1.0]])
    assert [g.indices for g in find_duplicates(x, near_threshold=None).groups] == [(0, 1)]


def test_outliers_tabular_and_images() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=gen)
    x[7] = 25.0
    od = OutlierDetector(k=5, contamination=0.01).fit(x)
    assert od.outliers_ is not None and bool(od.outliers_[7])
    assert od.predict(torch.full((1, 4), 30.0)).tolist() == [True]
    with pytest.raises(NotFittedError, match=r"not fitted yet\. Call 'fit'"):
        OutlierDetector().score(x)
    iso = OutlierDetector(method="isolation_forest", contamination=0.01).fit(x)
    assert iso.scores_ is not None and int(np.argmax(iso.scores_)) == 7


def test_images_flipped_labels_via_pixels_and_embedding() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.rand(200, 1, 6, 6, generator=gen) * 0.3
    x[y == 1, :, :3] += 0.6  # class 1: bright top half
    res = RandomLabelFlip(rate=0.1, seed=0)(x, y)
    rep = validate_dataset(x, res.y_poisoned, checks=("label_issues", "knn"))
    prec, rec = _pr(rep.removed.numpy(), res.mask.numpy())
    assert prec >= 0.8 and rec >= 0.8
    x_c, _, kept = rep.cleaned()
    assert isinstance(x_c, torch.Tensor) and x_c.shape[1:] == x.shape[1:] and x_c.shape[0] == kept.numel()
    cl = ConfidentLearning(embed=lambda t: t.flatten(1)[:, :18].mean(1, keepdim=True)).fit(x, res.y_poisoned)
    assert cl.issues_ is not None
    prec_e, rec_e = _pr(cl.issues_, res.mask.numpy())
    assert prec_e >= 0.8 and rec_e >= 0.8


def test_drift_text_and_tabular(spam: TextDataset) -> None:
    same = drift_report(
        list(spam.texts_train[:1000]),
        spam.y_train[:1000],
        list(spam.texts_train[1000:2000]),
        spam.y_train[1000:2000],
    )
    assert not same.drifted
    spam_only = [t for t, v in zip(spam.texts_test, spam.y_test.tolist(), strict=True) if v == 1]
    shifted = drift_report(
        spam_only,
        torch.ones(len(spam_only), dtype=torch.long),
        list(spam.texts_train[:1000]),
        spam.y_train[:1000],
    )
    assert shifted.class_drift and shifted.drifted_features and shifted.text is not None
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 3, generator=gen), torch.randn(500, 3, generator=gen)
    b2 = b.clone()
    b2[:, 1] += 2.0
    ya = torch.zeros(500, dtype=torch.long)
    assert drift_report(b, ya, a, ya).drifted_features == ()
    assert drift_report(b2, ya, a, ya).drifted_features == ("feature_1",)
    rep = validate_dataset(b2, (b2[:, 0] > 0).long(), reference=(a, (a[:, 0] > 0).long()), checks=("knn",))
    assert rep.drift is not None and rep.to_dict()["drift"]["drifted"]


def test_bad_inputs_name_the_row() -> None:
    with pytest.raises(InputError, match=r"x\[2\] must be a non-empty text"):
        validate_dataset(["a b", "c d", ""], [0, 1, 0])
    with pytest.raises(InputError, match=r"y must have shape \(2,\)"):
        KNNLabelConsistency().fit(["a b", "c d"], [0])
    with pytest.raises(InputError, match="NaN or inf in row 1"):
        OutlierDetector().fit(np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ConfigError, match="checks"):
        validate_dataset(["a b"], [0], checks=("spellcheck",))
    with pytest.raises(ConfigError, match="'cv'"):
        ConfidentLearning(cv=1)
    with pytest.raises(InputError, match="at least cv=5 rows"):
        ConfidentLearning().fit(["a b", "c d", "e f"], [0, 1, 1])
