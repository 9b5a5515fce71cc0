"""plant_backdoor (poison, train, measure) and scan_model (Neural Cleanse, STRIP, training-set
detectors, verdict per class) on sklearn digits with the zoo's tiny CNN (~1 s per training)."""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from modelshield.attacks.backdoor import (
    BackdoorResult,
    BadNets,
    Blend,
    CleanLabel,
    WaNet,
    make_train_fn,
)
from modelshield.data import load_digits
from modelshield.defenses.backdoor import STRIP, ActivationClustering, NeuralCleanse, ScanReport, scan_model
from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.experiments.backdoor import PlantResult, build_backdoor_attack, plant_backdoor

TRAIN = make_train_fn("cnn-8x8", epochs=10, batch_size=32)


@pytest.fixture(scope="module")
def planted() -> tuple[PlantResult, Any]:
    ds = load_digits()
    x0, y0 = ds.x_train.clone(), ds.y_train.clone()
    calls: list[tuple[int, int, str]] = []
    res = plant_backdoor(BadNets(target=0, rate=0.05), TRAIN, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                         progress=lambda d, t, s: calls.append((d, t, s)))
    assert torch.equal(ds.x_train, x0) and torch.equal(ds.y_train, y0)  # inputs untouched
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls) and calls[-1][0] == calls[-1][1]
    return res, ds


def test_plant_backdoor_trains_a_working_backdoor(planted: tuple[PlantResult, Any]) -> None:
    res, ds = planted
    n = int(ds.y_train.numel())
    assert res.poison.n_poisoned == round(0.05 * n)
    # BadNets stamps a patch on exactly the relabelled rows.
    assert torch.equal(res.changed_indices, res.poison.indices)
    assert res.attack_success_rate > 0.9 and res.clean_accuracy > 0.85
    assert res.surrogate is None  # BadNets is data-only
    assert isinstance(res.model, nn.Module)
    with torch.no_grad():
        acc = float((res.model.eval()(ds.x_test).argmax(1) == ds.y_test).float().mean())
    assert acc == pytest.approx(res.clean_accuracy, abs=1e-6)
    s = res.summary
    json.dumps(s, allow_nan=False)
    assert s["indices"] == res.poison.indices.tolist() and s["n_test"] == int(ds.y_test.numel())
    assert s["baseline_clean_accuracy"] is None and s["n_changed_inputs"] == res.poison.n_poisoned


def test_plant_backdoor_trains_a_surrogate_for_model_based_attacks() -> None:
    seen: list[Any] = []
    trained: list[int] = []
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))

    def train(x: Tensor, y: Tensor) -> nn.Module:
        trained.append(int(x.shape[0]))
        return module

    class Stub:
        needs_model: ClassVar[bool] = True

        def __call__(self, model: Any, x: Tensor, y: Tensor) -> BackdoorResult:
            seen.append(model)
            res: BackdoorResult = BadNets(target=0, rate=0.25, patch_size=1)(None, x, y)
            return res

    x = torch.rand(8, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 1, 2, 1, 2, 1])
    out = plant_backdoor(Stub(), train, x, y, x, y, baseline=True)
    assert seen == [module]  # the surrogate trained on the clean set was handed to the attack
    assert trained == [8, 8, 8]  # surrogate, poisoned model, clean baseline
    assert out.surrogate is module and out.summary["baseline_clean_accuracy"] is not None


def test_build_backdoor_attack_by_name() -> None:
    kinds = {"badnets": BadNets, "blend": Blend, "clean-label": CleanLabel, "wanet": WaNet}
    for name, cls in kinds.items():
        atk = build_backdoor_attack(name, target=2, rate=0.1, seed=3)
        assert isinstance(atk, cls) and atk.target == 2 and atk.rate == 0.1
    assert build_backdoor_attack("blend", target=0, rate=0.1, alpha=0.3).alpha == 0.3  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="'name' must be one of"):
        build_backdoor_attack("trojan", target=0, rate=0.1)
    with pytest.raises(ConfigError, match="'rate' must be a number in \\(0, 1\\)"):
        build_backdoor_attack("badnets", target=0, rate=1.5)


@pytest.fixture(scope="module")
def scanned(planted: tuple[PlantResult, Any]) -> tuple[ScanReport, PlantResult, STRIP, Any]:
    res, ds = planted
    strip = STRIP(frr=0.05)
    x_train0 = res.poison.x_poisoned.clone()
    # The tiny 64-unit digits model needs the paper's ICA (see test_backdoor_defenses.py).
    report = scan_model(res.model, ds.x_test[:200], ds.y_test[:200], x_train=res.poison.x_poisoned,
                        y_train=res.poison.y_poisoned, poisoned_indices=res.poison.indices,
                        x_holdout=ds.x_test[200:], y_holdout=ds.y_test[200:],
                        neural_cleanse=NeuralCleanse(steps=100), strip=strip,
                        activation_clustering=ActivationClustering(reduce="ica"))
    assert torch.equal(res.poison.x_poisoned, x_train0)
    return report, res, strip, ds


def test_scan_model_finds_the_planted_target(scanned: tuple[ScanReport, PlantResult, STRIP, Any]) -> None:
    report, res, strip, ds = scanned
    assert strip.threshold_ is None  # the caller's STRIP config is not fitted, a copy is
    assert report.strip.threshold_ is not None
    assert report.neural_cleanse.flagged == (0,)
    assert 0 in report.flagged_classes and report.verdict == "backdoored"
    assert "neural-cleanse" in report.flagged_by[0] and "activation-clustering" in report.flagged_by[0]
    rows = report.per_class()
    assert [r["class"] for r in rows] == list(range(10))
    for r in rows:
        assert r["verdict"] == ("backdoor" if r["flagged_by"] else "clean")
    # STRIP at 5%: 10 of the 200 calibration entropies fall below the 5% quantile.
    assert report.strip.false_rejection_ == pytest.approx(0.05, abs=0.006)
    assert report.n_holdout == 340 and report.strip_holdout_rejection is not None
    assert report.strip_holdout_rejection < 0.15
    # The reversed trigger of the real target is caught like the planted one would be.
    assert report.trigger_detection[0] > 0.5
    planted_catch = report.strip_catch_rate(res.poison.apply_trigger(ds.x_test[200:][ds.y_test[200:] != 0]))
    assert planted_catch > 0.5
    assert math.isnan(report.strip_catch_rate(ds.x_test[:0]))


def test_scan_report_to_dict_is_json_safe(scanned: tuple[ScanReport, PlantResult, STRIP, Any]) -> None:
    report, res, _, _ = scanned
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "Tensor" not in text
    assert d["verdict"] == "backdoored" and d["flagged_classes"] == list(report.flagged_classes)
    ts = d["training_set"]
    assert ts["n"] == res.poison.n and ts["n_poisoned"] == res.poison.n_poisoned
    ac = ts["activation_clustering"]
    assert 0 in ac["flagged_classes"] and 0.0 <= ac["precision"] <= 1.0 and ac["recall"] > 0.5
    assert d["strip"]["reversed_trigger_detection"] == {"0": round(report.trigger_detection[0], 6)}
    assert d["neural_cleanse"]["flagged"] == [0]


def test_scan_model_without_a_training_set(planted: tuple[PlantResult, Any]) -> None:
    res, ds = planted
    report = scan_model(res.model, ds.x_test[:60], neural_cleanse=NeuralCleanse(steps=5, classes=(0, 1, 2)))
    assert report.training_summary() is None and report.activation_clustering is None
    assert report.strip_holdout_rejection is None and report.n_clean == 60
    assert set(report.flagged_by) == {0, 1, 2}
    json.dumps(report.to_dict(), allow_nan=False)


def test_scan_model_bad_input(planted: tuple[PlantResult, Any]) -> None:
    res, ds = planted
    x = ds.x_test[:30]
    with pytest.raises(ConfigError, match="'x_train' and 'y_train' must be given together"):
        scan_model(res.model, x, x_train=x)
    with pytest.raises(ConfigError, match="'poisoned_indices' must come with a training set"):
        scan_model(res.model, x, poisoned_indices=torch.tensor([1]))

    def black_box(z: Tensor) -> Tensor:
        return torch.full((z.shape[0], 10), 0.1)

    with pytest.raises(ModelCapabilityError, match="scan_model: needs gradients"):
        scan_model(black_box, x)
