"""Poisoning attacks: exactly the reported labels flip, budgets, targeting, triggers, evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelshield.attacks.poisoning import (
    RandomLabelFlip,
    TargetedLabelFlip,
    TriggerPhrasePoison,
    evaluate_poisoning,
    n_poison,
)
from modelshield.data.sms_spam import TextDataset, load_sms_spam
from modelshield.errors import ConfigError, InputError
from modelshield.zoo.spam import train_spam_model


@pytest.fixture(scope="module")
def spam() -> TextDataset:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    return load_sms_spam(root)


def _nb(x: Any, y: Any) -> Any:
    return train_spam_model("nb", x, y)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.4])
def test_random_flip_changes_exactly_the_reported_labels(spam: TextDataset, rate: float) -> None:
    y = spam.y_train.clone()
    res = RandomLabelFlip(rate=rate, seed=3)(spam.texts_train, spam.y_train)
    assert torch.equal(spam.y_train, y)  # input untouched
    changed = np.flatnonzero(res.y_poisoned.numpy() != y.numpy())
    np.testing.assert_array_equal(changed, res.indices.numpy())
    assert res.indices.numel() == int(np.floor(rate * len(y) + 0.5))
    np.testing.assert_array_equal(res.original_labels.numpy(), y.numpy()[changed])
    assert res.x_poisoned is spam.texts_train
    assert res.to_dict()["n_poisoned"] == changed.size


def test_random_flip_seeded_classes_and_multiclass() -> None:
    x = torch.randn(200, 3)
    y = torch.arange(200) % 4
    a = RandomLabelFlip(rate=0.1, classes=(2,), seed=0)(x, y)
    b = RandomLabelFlip(rate=0.1, classes=(2,), seed=0)(x, y)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.y_poisoned, b.y_poisoned)
    assert (y[a.indices] == 2).all() and (a.y_poisoned[a.indices] != 2).all()
    assert ((a.y_poisoned >= 0) & (a.y_poisoned < 4)).all()
    t = RandomLabelFlip(rate=0.05, target_class=0)(x, y)
    assert (t.y_poisoned[t.indices] == 0).all() and (y[t.indices] != 0).all()
    with pytest.raises(ConfigError, match="at most the 50 rows"):
        RandomLabelFlip(rate=0.3, classes=(2,))(x, y)


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), "0.1"])
def test_rate_outside_unit_interval(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"'rate' must be a number in \[0.0, 1.0\]"):
        RandomLabelFlip(rate=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'rate'"):
        TriggerPhrasePoison(rate=bad)  # type: ignore[arg-type]


def test_rate_rounding_to_zero_rows_and_bad_inputs() -> None:
    assert n_poison(0.0, 10, owner="t") == 0 and n_poison(0.05, 10, owner="t") == 1
    with pytest.raises(ConfigError, match="rounds to 0 rows"):
        RandomLabelFlip(rate=0.01)(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    with pytest.raises(InputError, match=r"y must have shape \(3,\)"):
        RandomLabelFlip(rate=0.5)(["a b", "c d", "e f"], [0, 1])
    with pytest.raises(InputError, match=r"x\[1\] must be a non-empty text"):
        RandomLabelFlip(rate=0.5)(["a b", " ", "e f"], [0, 1, 0])
    with pytest.raises(InputError, match="at row 2"):
        RandomLabelFlip(rate=0.5)(["a", "b", "c"], [0, 1, -1])
    with pytest.raises(ConfigError, match="classes"):
        RandomLabelFlip(rate=0.1, classes=[1])  # type: ignore[arg-type]


def test_targeted_flip_hurts_more_than_random(spam: TextDataset) -> None:
    targeted = TargetedLabelFlip(rate=0.05, strategy="boundary")(spam.texts_train, spam.y_train)
    changed = np.flatnonzero(targeted.y_poisoned.numpy() != spam.y_train.numpy())
    np.testing.assert_array_equal(changed, targeted.indices.numpy())
    rnd = RandomLabelFlip(rate=0.05, seed=0)(spam.texts_train, spam.y_train)
    ev_t = evaluate_poisoning(
        _nb,
        targeted,
        spam.texts_test,
        spam.y_test,
        x_train_clean=spam.texts_train,
        y_train_clean=spam.y_train,
    )
    ev_r = evaluate_poisoning(_nb, rnd, spam.texts_test, spam.y_test)
    assert ev_t["clean"]["f1"] > 0.9
    assert ev_t["poisoned"]["f1"] < ev_r["poisoned"]["f1"] - 0.05
    assert ev_t["f1_drop"] == pytest.approx(ev_t["clean"]["f1"] - ev_t["poisoned"]["f1"])


def test_targeted_margin_picks_most_confident_rows() -> None:
    # 1-D data: a row far on its own side has the largest margin and must be flipped first
    x = torch.tensor([[-3.0], [-2.0], [-1.0], [-0.2], [0.2], [1.0], [2.0], [3.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    res = TargetedLabelFlip(rate=0.25, strategy="margin")(x, y)
    assert res.indices.tolist() == [0, 7]
    near = TargetedLabelFlip(rate=0.25, strategy="boundary")(x, y)
    assert near.indices.tolist() == [3, 4]


def test_trigger_phrase_poison(spam: TextDataset) -> None:
    res = TriggerPhrasePoison(rate=0.03, phrase="blue quokka")(spam.texts_train, spam.y_train)
    idx = res.indices.numpy()
    assert (spam.y_train.numpy()[idx] == 1).all() and (res.y_poisoned.numpy()[idx] == 0).all()
    changed_text = [
        i for i, (a, b) in enumerate(zip(spam.texts_train, res.x_poisoned, strict=True)) if a != b
    ]
    assert changed_text == idx.tolist()
    assert all(res.x_poisoned[i].endswith(" blue quokka") for i in idx)
    assert isinstance(res.x_poisoned, tuple)
    ev = evaluate_poisoning(
        _nb, res, spam.texts_test, spam.y_test, x_train_clean=spam.texts_train, y_train_clean=spam.y_train
    )
    trig = ev["trigger"]
    assert trig["attack_success_rate"] > trig["attack_success_rate_clean_model"]
    clean_label = TriggerPhrasePoison(rate=0.01, mode="clean-label")(spam.texts_train, spam.y_train)
    assert torch.equal(clean_label.y_poisoned, spam.y_train)
    with pytest.raises(InputError, match="list of texts"):
        TriggerPhrasePoison(rate=0.1)(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))


def test_evaluate_with_torch_training() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=gen)
    y = (x[:, 0] > 0).long()

    def train(xs: torch.Tensor, ys: torch.Tensor) -> torch.nn.Module:
        lin = torch.nn.Linear(2, 2)
        with torch.no_grad():  # deterministic start, no global RNG
            lin.weight.zero_()
            lin.bias.zero_()
        opt = torch.optim.SGD(lin.parameters(), lr=0.5)
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xs), ys).backward()
            opt.step()
        return lin

    res = RandomLabelFlip(rate=0.4, classes=(1,))(x, y)
    ev = evaluate_poisoning(train, res, x, y, x_train_clean=x, y_train_clean=y)
    assert ev["clean"]["accuracy"] > 0.95
    assert ev["poisoned"]["recall"] < ev["clean"]["recall"]
