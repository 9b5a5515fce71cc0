"""Backdoor defences on sklearn digits with the zoo's tiny CNN: a BadNets model (5% poison to 0)
and a clean model, each trained in ~0.5 s."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from modelshield.attacks.backdoor import BadNets, attack_success_rate, clean_accuracy, make_train_fn
from modelshield.data import load_digits
from modelshield.defenses.backdoor import (
    STRIP,
    ActivationClustering,
    FinePruning,
    NeuralCleanse,
    SpectralSignatures,
    Unlearning,
    anomaly_indices,
    detection_metrics,
    extract_features,
    retrain_without,
)
from modelshield.errors import ConfigError, InputError, NotFittedError

TRAIN = make_train_fn("cnn-8x8", epochs=10, batch_size=32)


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    ds = load_digits()
    res = BadNets(target=0, rate=0.05)(None, ds.x_train, ds.y_train)
    model = TRAIN(res.x_poisoned, res.y_poisoned)
    clean = TRAIN(ds.x_train, ds.y_train)
    # Half of the test split is the defender's small clean set, the other half evaluation.
    xc, yc, xe, ye = ds.x_test[:270], ds.y_test[:270], ds.x_test[270:], ds.y_test[270:]
    return res, model, clean, (xc, yc), (xe, ye)


def test_features_are_the_input_of_the_last_linear(setup) -> None:  # type: ignore[no-untyped-def]
    res, model, _, _, _ = setup
    x = res.x_poisoned[:40]
    feats = extract_features(model, x, batch_size=16)
    with torch.no_grad():
        manual = model.classifier[1](model.classifier[0](model.features(x)))
    assert feats.shape == (40, 64) and torch.allclose(feats, manual, atol=1e-5)
    conv = extract_features(model, x, layer="features.2")
    assert conv.shape == (40, 32 * 8 * 8)
    with pytest.raises(ConfigError, match="'layer' must name a module"):
        extract_features(model, x, layer="nope")


def test_training_set_detectors_rank_poisoned_points_first(setup) -> None:  # type: ignore[no-untyped-def]
    res, model, _, _, _ = setup
    x0 = res.x_poisoned.clone()
    truth = res.mask.numpy()
    # The tiny 64-unit digits model needs the paper's ICA; the PCA default is tuned on MNIST
    # (benchmarks/backdoor.py: ICA F1 0.0, PCA F1 0.997 with lenet-28).
    ac = ActivationClustering(reduce="ica").fit(model, res.x_poisoned, res.y_poisoned)
    ss = SpectralSignatures().fit(model, res.x_poisoned, res.y_poisoned)
    assert torch.equal(res.x_poisoned, x0)
    # Measured 0.86 (AC) and 0.71 (SS) on this tiny 64-unit model; chance is 0.5.
    assert roc_auc_score(truth, ac.scores_.numpy()) > 0.75
    assert roc_auc_score(truth, ss.scores_.numpy()) > 0.62
    assert 0 in ac.flagged_classes
    m = detection_metrics(ac.flagged_indices_, res.indices, res.n)
    assert m["recall"] > 0.5
    # The paper's rule removes ceil(1.5 * eps * n_c) rows of every class.
    ss_eps = SpectralSignatures(epsilon=0.1).fit(model, res.x_poisoned, res.y_poisoned)
    counts = torch.bincount(res.y_poisoned[ss_eps.flagged_indices_], minlength=10)
    sizes = torch.bincount(res.y_poisoned, minlength=10)
    assert torch.equal(counts, torch.ceil(0.15 * sizes.double() - 1e-9).long())


def _natural_and_planted_features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic (N, 12) features of 8 classes: each class has a natural 30% sub-population
    (shifted 3-5.8 sd along its own axis, so the classes' splits differ as on real data); class 5
    also holds a planted 25% cluster shifted 10 sd."""
    g = torch.Generator().manual_seed(0)
    feats, labels, planted = [], [], []
    for c in range(8):
        n = 400
        f = torch.randn(n, 12, generator=g)
        f[: int(0.3 * n), c] += 3.0 + 0.4 * c
        p = torch.zeros(n, dtype=torch.bool)
        if c == 5:
            p[-100:] = True
            f[p, 11] += 10.0
        feats.append(f)
        labels.append(torch.full((n,), c))
        planted.append(p)
    return torch.cat(feats), torch.cat(labels), torch.cat(planted)


def test_cross_class_check_keeps_natural_subpopulations_unflagged() -> None:
    feats, y, planted = _natural_and_planted_features()
    x = torch.zeros(len(y), 1)
    for make in (lambda t: ActivationClustering(anomaly_threshold=t),
                 lambda t: SpectralSignatures(anomaly_threshold=t)):
        det = make(2.0).fit(None, x, y, features=feats)
        flagged_classes = set(y[det.flagged_indices_].tolist())
        assert flagged_classes == {5}, type(det).__name__
        m = detection_metrics(det.flagged_indices_, planted.nonzero().squeeze(1), len(y))
        assert m["f1"] > 0.95, (type(det).__name__, m)
        # Without the check the natural sub-populations of other classes are flagged as well.
        loose = make(None).fit(None, x, y, features=feats)
        assert len(set(y[loose.flagged_indices_].tolist())) > 1, type(det).__name__
    ac = ActivationClustering().fit(None, x, y, features=feats)
    report = {c.label: c for c in ac.classes_}
    assert report[5].anomaly_index >= 2.0 > max(report[c].anomaly_index for c in range(8) if c != 5)
    assert ac.to_dict()["classes"][5]["anomaly_index"] == pytest.approx(report[5].anomaly_index, abs=1e-6)


def test_anomaly_index_hand_computed() -> None:
    norms = torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0])
    # median 11, |dev| = 10, 1, 0, 1, 2 -> median 1 -> MAD 1.4826
    assert torch.allclose(anomaly_indices(norms), torch.tensor([10, 1, 0, 1, 2]) / 1.4826)


def test_neural_cleanse_flags_the_target_of_a_backdoored_model(setup) -> None:  # type: ignore[no-untyped-def]
    _res, model, _, (xc, _), _ = setup
    report = NeuralCleanse(steps=200, batch_size=64)(model, xc)
    assert report.flagged == (0,)
    assert report.suspect == 0 and report.max_anomaly_index > 2
    assert report.trigger_for(0).image.shape == (1, 8, 8)
    assert report.to_dict()["flagged"] == [0]


@pytest.mark.slow
@pytest.mark.xfail(reason="on 8x8 digits a clean class's minimal trigger sits near the MAD cut-off "
                   "(measured max anomaly index 2.0-2.2, class 3); see the report", strict=False)
def test_neural_cleanse_flags_no_class_on_a_clean_model(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, clean, (xc, _), _ = setup
    report = NeuralCleanse(steps=500)(clean, xc)
    assert report.flagged == ()


def test_neural_cleanse_clean_model_is_less_anomalous(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, clean, (xc, _), _ = setup
    nc = NeuralCleanse(steps=200, batch_size=64, classes=(0, 1, 2, 4, 5, 6, 7))
    bd, cl = nc(model, xc), nc(clean, xc)
    assert 0 not in cl.flagged
    assert float(cl.norms[0]) > 1.5 * float(bd.norms[0])  # class 0 needs a far larger trigger


def test_strip_frr_and_detection(setup) -> None:  # type: ignore[no-untyped-def]
    res, model, _, (xc, _), (xe, ye) = setup
    strip = STRIP(frr=0.05, n_overlays=20).fit(model, xc)
    assert abs(strip.false_rejection_ - 0.05) < 0.01  # calibration set
    assert float(strip.predict(xe).float().mean()) < 0.12  # held-out clean data
    assert float(strip.predict(res.apply_trigger(xe[ye != 0])).float().mean()) > 0.7
    with pytest.raises(NotFittedError, match="not fitted yet"):
        STRIP().predict(xe)


def test_removal_lowers_asr(setup) -> None:  # type: ignore[no-untyped-def]
    res, model, _, (xc, yc), (xe, ye) = setup
    asr0 = attack_success_rate(model, res, xe, ye)
    assert asr0 > 0.9
    params0 = [p.clone() for p in model.parameters()]
    retrained = retrain_without(TRAIN, res.x_poisoned, res.y_poisoned, res.indices)
    assert attack_success_rate(retrained, res, xe, ye) < 0.1
    fp = FinePruning()(model, xc, yc)
    assert attack_success_rate(fp.model, res, xe, ye) < asr0 - 0.2
    assert fp.extra["pruned_channels"]
    ul = Unlearning()(model, xc, yc, trigger=res.trigger)
    assert attack_success_rate(ul.model, res, xe, ye) < 0.3
    assert clean_accuracy(ul.model, xe, ye) > 0.85
    assert all(torch.equal(p, q) for p, q in zip(params0, model.parameters(), strict=True))


def test_clean_set_too_small_and_bad_config(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, _, (xc, yc), _ = setup
    with pytest.raises(InputError, match="clean set too small"):
        STRIP().fit(model, xc[:5])
    with pytest.raises(InputError, match="clean set too small"):
        NeuralCleanse()(model, xc[:5])
    with pytest.raises(InputError, match="clean set too small"):
        FinePruning()(model, xc[:5], yc[:5])
    with pytest.raises(ConfigError, match=r"'frr' must be a number in \(0, 1\)"):
        STRIP(frr=1.5)
    with pytest.raises(ConfigError, match="'method'"):
        ActivationClustering(method="biggest")  # type: ignore[arg-type]
