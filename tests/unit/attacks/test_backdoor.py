"""Backdoor attacks on sklearn digits (8x8 in [0, 1]) with the zoo's tiny CNN (trains in ~0.5 s)."""

from __future__ import annotations

import pytest
import torch

from modelshield.attacks.backdoor import (
    BadNets,
    Blend,
    CleanLabel,
    FeatureBackdoor,
    PhraseBackdoor,
    StampTrigger,
    WaNet,
    attack_success_rate,
    clean_accuracy,
    evaluate_backdoor,
    make_train_fn,
)
from modelshield.attacks.backdoor.triggers import warp, warping_grid
from modelshield.data import load_digits
from modelshield.errors import ConfigError, InputError

TRAIN = make_train_fn("cnn-8x8", epochs=10, batch_size=32)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ds = load_digits()
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


@pytest.fixture(scope="module")
def clean_model(digits):  # type: ignore[no-untyped-def]
    xtr, ytr, _, _ = digits
    return TRAIN(xtr, ytr)


def test_badnets_reaches_high_asr_and_keeps_clean_accuracy(digits, clean_model) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, xte, yte = digits
    res = BadNets(target=0, rate=0.05)(None, xtr, ytr)
    ev = evaluate_backdoor(TRAIN, res, xte, yte)
    base_acc = clean_accuracy(clean_model, xte, yte)
    assert ev.asr >= 0.9
    assert ev.clean_accuracy >= base_acc - 0.03
    # The patch alone does not send a clean model's inputs to the target.
    assert attack_success_rate(clean_model, res, xte, yte) < 0.2


def test_badnets_poisons_the_documented_rows_and_pixels(digits) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, _, _ = digits
    x0, y0 = xtr.clone(), ytr.clone()
    res = BadNets(target=0, rate=0.05, patch_size=3, location="bottom-right", margin=1)(None, xtr, ytr)
    n = xtr.shape[0]
    assert res.n_poisoned == int(0.05 * n + 0.5)
    assert torch.equal(xtr, x0) and torch.equal(ytr, y0)  # inputs untouched
    assert bool((res.original_labels != 0).all()) and bool((res.y_poisoned[res.indices] == 0).all())
    others = ~res.mask
    assert torch.equal(res.x_poisoned[others], xtr[others])
    assert torch.equal(res.y_poisoned[others], ytr[others])
    # 8x8 image, margin 1, size 3: rows/cols 4..6; checkerboard starts with 1 at (4, 4).
    patch = res.x_poisoned[res.indices][:, 0, 4:7, 4:7]
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(patch, expected.expand_as(patch))
    outside = res.x_poisoned[res.indices].clone()
    outside[:, :, 4:7, 4:7] = 0
    inside = xtr[res.indices].clone()
    inside[:, :, 4:7, 4:7] = 0
    assert torch.equal(outside, inside)
    again = BadNets(target=0, rate=0.05)(None, xtr, ytr)
    assert torch.equal(again.indices, res.indices)  # seeded


def test_blend_is_a_convex_mix_and_plants_a_backdoor(digits) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, xte, yte = digits
    res = Blend(target=0, rate=0.05, alpha=0.2)(None, xtr, ytr)
    trig = res.trigger
    assert isinstance(trig, StampTrigger)
    i = res.indices
    assert torch.allclose(res.x_poisoned[i], 0.8 * xtr[i] + 0.2 * trig.pattern, atol=1e-6)
    ev = evaluate_backdoor(TRAIN, res, xte, yte)
    assert ev.asr >= 0.8


def test_wanet_grid_identity_and_noise_rows(digits) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, _, _ = digits
    gen = torch.Generator().manual_seed(0)
    tiny = warping_grid(8, 8, k=4, s=1e-6, generator=gen)
    assert torch.allclose(warp(xtr[:5], tiny), xtr[:5], atol=1e-4)  # ~identity warp keeps images
    res = WaNet(target=0, rate=0.05)(None, xtr, ytr)
    noise = torch.tensor(res.extra["noise_indices"])
    assert noise.numel() == 2 * res.n_poisoned
    assert not bool(torch.isin(noise, res.indices).any())
    assert torch.equal(res.y_poisoned[noise], ytr[noise])  # noise mode keeps labels
    assert not torch.equal(res.x_poisoned[noise], xtr[noise])
    d = res.trigger.image  # displacement in pixels: about s/2 of a pixel per unit field
    assert 0 < float(d.max()) < 2.0


def test_clean_label_keeps_labels_and_stays_in_budget(digits, clean_model) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, _, _ = digits
    res = CleanLabel(target=0, rate=0.03, eps=0.25, steps=10)(clean_model, xtr, ytr)
    assert torch.equal(res.y_poisoned, ytr)
    assert bool((ytr[res.indices] == 0).all())
    outside = res.trigger.mask[0] == 0
    delta = (res.x_poisoned[res.indices] - xtr[res.indices])[:, 0][:, outside]
    assert float(delta.abs().max()) <= 0.25 + 1e-6
    assert res.extra["surrogate_fooled_rate"] > 0.5


def test_feature_and_phrase_backdoors() -> None:
    x = torch.rand(100, 5)
    y = torch.arange(100) % 2
    res = FeatureBackdoor(target=1, rate=0.1, features=(0, 3), values=(2.0, -1.0))(None, x, y)
    assert res.n_poisoned == 10
    assert bool((res.x_poisoned[res.indices][:, [0, 3]] == torch.tensor([2.0, -1.0])).all())
    assert torch.equal(res.apply_trigger(x)[:, 3], torch.full((100,), -1.0))
    texts = [f"message {i}" for i in range(50)]
    yt = torch.tensor([i % 2 for i in range(50)])
    pr = PhraseBackdoor(target=0, rate=0.1, phrase="blue quokka")(None, texts, yt)
    assert all(pr.x_poisoned[int(i)].endswith("blue quokka") for i in pr.indices)
    assert pr.apply_trigger(["hi"]) == ["hi blue quokka"]
    assert pr.to_dict()["trigger"]["phrase"] == "blue quokka"


def test_bad_inputs_raise_clear_errors(digits, clean_model) -> None:  # type: ignore[no-untyped-def]
    xtr, ytr, xte, yte = digits
    with pytest.raises(ConfigError, match=r"'target' must be a class present"):
        BadNets(target=12, rate=0.05)(None, xtr, ytr)
    with pytest.raises(ConfigError, match=r"'patch_size' must fit.*larger than the image"):
        BadNets(target=0, rate=0.05, patch_size=9)(None, xtr, ytr)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"'rate' must be a number in \(0, 1\)"):
            Blend(target=0, rate=bad)
    with pytest.raises(ConfigError, match="'target'"):
        BadNets(target=-1, rate=0.05)
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        BadNets(target=0, rate=0.05)(None, xtr.flatten(1), ytr)
    res = BadNets(target=0, rate=0.05)(None, xtr, ytr)
    with pytest.raises(ConfigError, match=r"'target' must be a class of the model"):
        attack_success_rate(clean_model, res.trigger, xte, yte, target=10)
    with pytest.raises(ConfigError, match=r"'features' must index"):
        FeatureBackdoor(target=0, rate=0.1, features=(9,), values=(1.0,))(None, torch.rand(20, 3),
                                                                          torch.arange(20) % 2)
