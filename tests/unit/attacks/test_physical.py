"""Physical-world attacks: geometry of EOT, the sticker's mask, the universal budget, held-out success."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modelshield import zoo
from modelshield.attacks.physical import (
    AdversarialPatch,
    PhysicalPattern,
    Sticker,
    Transforms,
    UniversalPerturbation,
    default_palette,
    evaluate_pattern,
    largest_patch_side,
    load_mask,
    load_palette,
    max_patch_share,
    non_printability,
    patch_side,
    place_patch,
    save_pattern_png,
    strength_curve,
    total_variation,
    view_scene,
)
from modelshield.attacks.physical.transforms import Draws
from modelshield.data import load_digits
from modelshield.errors import ConfigError, InputError

Digits = tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits() -> Digits:
    ds = load_digits()
    model = zoo.load("digits-cnn").module
    return model, ds.x_train, ds.y_train, ds.x_test, ds.y_test


def _draws(n: int, *, angle: float = 0.0, scale: float = 1.0,
           place: tuple[float, float] = (0.0, 0.0)) -> Draws:
    return Draws(torch.full((n,), angle), torch.full((n,), scale), torch.tensor([place] * n),
                 torch.zeros(n), torch.ones(n))


# --- transformations -------------------------------------------------------------------------


@pytest.mark.parametrize(("place", "corner"), [((0.0, 0.0), (0, 0)), ((1.0, 1.0), (22, 22)),
                                               ((1.0, 0.0), (0, 22)), ((0.5, 0.5), (11, 11))])
def test_an_upright_patch_lands_where_its_draw_says(place: tuple[float, float],
                                                    corner: tuple[int, int]) -> None:
    x = torch.zeros(1, 1, 28, 28)
    out = place_patch(x, torch.ones(1, 6, 6), _draws(1, place=place), bounds=(0.0, 1.0),
                      transforms=Transforms.none())
    on = (out[0, 0] > 0.5).nonzero()
    assert on.min(0).values.tolist() == list(corner)
    assert on.max(0).values.tolist() == [corner[0] + 5, corner[1] + 5]
    assert float(out.sum()) == pytest.approx(36.0, abs=1e-3)


def test_a_rotated_scaled_patch_always_lies_wholly_inside_the_image() -> None:
    # The ink of a patch of ones on a black image is its area (side * scale)^2 whenever no part
    # of it is cut off by the image border, whatever the angle, scale and place drawn.
    gen = torch.Generator().manual_seed(3)
    t = Transforms(rotation=45.0, scale=(0.8, 1.3), brightness=0.0, contrast=(1.0, 1.0), noise=0.0)
    d = t.draw(64, gen, device=torch.device("cpu"))
    d = d._replace(place=torch.cat([torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]),
                                    d.place[4:]]))
    out = place_patch(torch.zeros(64, 1, 28, 28), torch.ones(1, 8, 8), d, bounds=(0.0, 1.0), transforms=t)
    ink = out.sum((1, 2, 3))
    assert torch.allclose(ink, (8 * d.scale) ** 2, rtol=0.03)


def test_an_identity_view_returns_the_image() -> None:
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(view_scene(x, _draws(3), transforms=Transforms.none()), x, atol=1e-5)


def test_strength_scales_every_range_around_the_identity() -> None:
    t = Transforms(rotation=20.0, scale=(0.8, 1.2), shift=0.1, brightness=0.2, contrast=(0.9, 1.1),
                   noise=0.02)
    assert t.scaled(0.0) == Transforms.none()
    assert t.scaled(1.0) == t
    double = t.scaled(2.0)
    assert double.rotation == 40.0 and double.scale == pytest.approx((0.6, 1.4))
    assert double.brightness == pytest.approx(0.4) and double.noise == pytest.approx(0.04)


@pytest.mark.parametrize("kwargs", [{"rotation": -1.0}, {"scale": (1.2, 0.8)}, {"scale": (0.9,)},
                                    {"brightness": 2.0}, {"contrast": "high"}, {"noise": float("nan")}])
def test_bad_transforms_are_refused_in_one_line(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="Transforms: ") as err:
        Transforms(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_patch_side_is_the_ceiling_of_the_area_root() -> None:
    assert patch_side(0.05, 28, 28) == 7  # 39.2 pixels -> 7x7 (49 pixels, 6.25%)
    assert patch_side(0.1, 28, 28) == 9
    assert patch_side(0.03, 28, 28) == 5
    # the hint for a patch too large: its own patch fits, a thousandth more does not
    for h, w in ((8, 8), (28, 28), (4, 16)):
        most = max_patch_share(h, w)
        assert patch_side(most, h, w) <= largest_patch_side(h, w) < patch_side(most + 0.002, h, w)
    with pytest.raises(ConfigError, match="share"):
        patch_side(1.0, 28, 28)


# --- adversarial patch -----------------------------------------------------------------------


def test_a_patch_trained_on_some_images_fools_the_model_on_held_out_ones(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    patch = AdversarialPatch(size=0.15, steps=200)(model, xtr, ytr)
    assert patch.kind == "patch" and patch.pattern.shape == (1, 4, 4)
    assert patch.share == pytest.approx(16 / 64)
    held_out = evaluate_pattern(model, patch, xte, yte)
    # Measured: 0.65 on the 540 held-out digits under fresh draws (seed 0, 2026-12-03).
    assert held_out.success_rate >= 0.45
    # The optimisation is what fools it: the same patch with random content barely does.
    rand = torch.rand(patch.pattern.shape, generator=torch.Generator().manual_seed(1))
    noise = dataclasses.replace(patch, pattern=rand)
    assert evaluate_pattern(model, noise, xte, yte).success_rate < held_out.success_rate / 2
    # Success is read from the model's fresh answers on the views it reports.
    ev = held_out.evasion
    again = model(ev.x_adv).argmax(1)
    assert torch.equal(again, ev.adv_pred)
    assert held_out.n_eligible == int((model(xte.repeat_interleave(4, 0)).argmax(1)
                                       == yte.repeat_interleave(4)).sum())


def test_evaluation_draws_are_fresh_and_reproducible(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    patch = AdversarialPatch(size=0.1, steps=20)(model, xtr[:200], ytr[:200])
    a = evaluate_pattern(model, patch, xte[:100], yte[:100])
    b = evaluate_pattern(model, patch, xte[:100], yte[:100])
    c = evaluate_pattern(model, patch, xte[:100], yte[:100], seed=7)
    assert torch.equal(a.evasion.x_adv, b.evasion.x_adv)
    assert not torch.equal(a.evasion.x_adv, c.evasion.x_adv)
    assert json.loads(json.dumps(a.to_dict()))["views"] == 400


def test_a_patch_is_reproducible_from_its_seed(digits: Digits) -> None:
    model, xtr, ytr, _, _ = digits
    a = AdversarialPatch(size=0.1, steps=15, seed=4)(model, xtr[:100], ytr[:100])
    b = AdversarialPatch(size=0.1, steps=15, seed=4)(model, xtr[:100], ytr[:100])
    c = AdversarialPatch(size=0.1, steps=15, seed=5)(model, xtr[:100], ytr[:100])
    assert torch.equal(a.pattern, b.pattern) and not torch.equal(a.pattern, c.pattern)
    json.dumps(a.to_dict())


def test_a_targeted_patch_sends_held_out_images_to_its_class(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    patch = AdversarialPatch(size=0.25, steps=200)(model, xtr, ytr, target=3)
    ev = evaluate_pattern(model, patch, xte, yte)
    assert ev.target == 3 and ev.evasion.target is not None
    hit = ev.evasion.adv_pred == 3
    assert ev.success_rate == pytest.approx(float(hit[ev.evasion.eligible].double().mean()))
    assert ev.success_rate >= 0.3


def test_success_falls_off_with_transformations_it_never_saw(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    patch = AdversarialPatch(size=0.15, steps=150, transforms=Transforms.none())(model, xtr, ytr)
    seen = evaluate_pattern(model, patch, xte, yte)
    unseen = Transforms(rotation=60.0, scale=(0.6, 1.0), brightness=0.3, contrast=(0.5, 1.0), noise=0.05)
    curve = strength_curve(model, dataclasses.replace(patch, transforms=unseen), xte, yte,
                           strengths=(0.0, 1.0))
    assert curve[0].strength == 0.0 and curve[0].success_rate == seen.success_rate
    assert curve[1].success_rate < seen.success_rate - 0.1


# --- sticker ---------------------------------------------------------------------------------


def _mask(h: int = 8, w: int = 8) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[0:2, 1:7] = True
    return m


def test_a_sticker_never_changes_a_pixel_outside_its_mask(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    sticker = Sticker(mask=_mask(), steps=100)(model, xtr, ytr)
    out = sticker.apply(xte)
    outside = ~_mask()
    assert torch.equal(out[:, :, outside], xte[:, :, outside])
    assert not torch.equal(out[:, :, _mask()], xte[:, :, _mask()])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert sticker.share == pytest.approx(12 / 64)
    assert sticker.extra["non_printability"] >= 0.0
    assert evaluate_pattern(model, sticker, xte, yte).success_rate > 0.1


def test_printability_and_smoothness_penalties() -> None:
    mask = torch.ones(4, 4, dtype=torch.bool)
    palette = default_palette(1, (0.0, 1.0))
    on_palette = palette[3].view(1, 1, 1).expand(1, 4, 4)
    assert float(non_printability(on_palette, mask, palette)) == pytest.approx(0.0, abs=1e-6)
    assert float(non_printability(torch.full((1, 4, 4), 0.27), mask, palette)) > 0
    assert float(total_variation(torch.full((1, 4, 4), 0.3), mask)) == pytest.approx(1e-4, abs=1e-4)
    stripes = torch.arange(4.0).remainder(2).view(1, 1, 4).expand(1, 4, 4)
    assert float(total_variation(stripes, mask)) > 0.5


def test_the_nps_penalty_pulls_the_sticker_towards_printable_colours(digits: Digits) -> None:
    model, xtr, ytr, _, _ = digits
    free = Sticker(mask=_mask(), steps=60, nps_weight=0.0, tv_weight=0.0)(model, xtr, ytr)
    printable = Sticker(mask=_mask(), steps=60, nps_weight=5.0, tv_weight=0.0)(model, xtr, ytr)
    assert printable.extra["non_printability"] < free.extra["non_printability"]


@pytest.mark.parametrize(("mask", "match"), [
    (torch.zeros(8, 8, dtype=torch.bool), "empty"),
    (torch.ones(8, 8, dtype=torch.bool), "whole image"),
    (torch.ones(6, 6, dtype=torch.bool), "6x6 pixels but the images are 8x8 \\(width x height\\)"),
    (torch.ones(6, 7, dtype=torch.bool), "7x6 pixels but the images are 8x8"),  # (H, W) = (6, 7)
    (torch.full((8, 8), 0.5), "only 0 and 1"),
])
def test_bad_masks_are_refused_in_one_line(digits: Digits, mask: torch.Tensor, match: str) -> None:
    model, xtr, ytr, _, _ = digits
    with pytest.raises(InputError, match=match) as err:
        Sticker(mask=mask, steps=1)(model, xtr[:10], ytr[:10])
    assert "\n" not in str(err.value)


def test_mask_and_palette_files(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("L", (8, 8), 0)
    for i in range(1, 7):
        img.putpixel((i, 0), 255)
    img.save(tmp_path / "m.png")
    row = load_mask(tmp_path / "m.png", height=8, width=8)[0, 1:7]
    assert torch.equal(row, torch.ones(6, dtype=torch.bool))
    with pytest.raises(InputError, match="8x8 pixels but the images are 28x28"):
        load_mask(tmp_path / "m.png", height=28, width=28)
    Image.new("L", (8, 8), 0).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="empty"):
        load_mask(tmp_path / "empty.png", height=8, width=8)
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        load_mask(tmp_path / "not.png", height=8, width=8)

    (tmp_path / "p.json").write_text("[[0, 0, 0], [255, 255, 255], [255, 0, 0]]")
    pal = load_palette(tmp_path / "p.json", channels=3)
    assert pal.shape == (3, 3) and float(pal.max()) == 1.0
    (tmp_path / "p.txt").write_text("# printable\n0.1, 0.2, 0.3\n0.9 0.9 0.9\n")
    assert load_palette(tmp_path / "p.txt", channels=3).shape == (2, 3)
    for text, match in [("[[0, 0], [1, 1]]", "2 value"), ("{\"a\": 1}", "not a list of colours|value"),
                        ("red green", "not a list of colours"), ("[]", "no colour"),
                        ("[[300, 0, 0]]", "outside")]:
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(InputError, match=match) as err:
            load_palette(tmp_path / "bad.txt", channels=3)
        assert "\n" not in str(err.value)


# --- universal perturbation ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "norm", "eps"), [("sgd", "inf", 0.2), ("sgd", "2", 1.0),
                                                     ("deepfool", "inf", 0.2), ("deepfool", "2", 1.0)])
def test_the_universal_perturbation_stays_within_eps(digits: Digits, method: str, norm: str,
                                                     eps: float) -> None:
    model, xtr, ytr, xte, yte = digits
    attack = UniversalPerturbation(eps=eps, norm=norm, method=method, max_passes=2)  # type: ignore[arg-type]
    uap = attack(model, xtr[:200], ytr[:200])
    size = uap.pattern.abs().max() if norm == "inf" else uap.pattern.norm()
    assert float(size) <= eps + 1e-6
    ev = evaluate_pattern(model, uap, xte, yte)
    assert bool(ev.evasion.valid.all()) and ev.evasion.max_perturbation <= eps + 1e-6
    assert ev.draws == 1 and ev.evasion.n == xte.shape[0]
    assert 0.0 <= ev.fooling_rate <= 1.0


def test_the_sgd_universal_perturbation_fools_held_out_digits(digits: Digits) -> None:
    model, xtr, ytr, xte, yte = digits
    uap = UniversalPerturbation(eps=0.2, max_passes=5)(model, xtr[:500], ytr[:500])
    # Measured: fooling rate 0.47 on the 540 held-out digits (2026-12-03); noise of the same
    # size (random signs at eps) fools far fewer.
    ev = evaluate_pattern(model, uap, xte, yte)
    assert ev.fooling_rate >= 0.3
    signs = torch.randint(0, 2, uap.pattern.shape, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2
    noise = dataclasses.replace(uap, pattern=signs)
    assert evaluate_pattern(model, noise, xte, yte).fooling_rate < ev.fooling_rate / 2


# --- bad input -------------------------------------------------------------------------------


def test_bad_attack_settings_and_calls_are_refused(digits: Digits) -> None:
    model, xtr, ytr, _, _ = digits
    for make, match in [(lambda: AdversarialPatch(size=0.0), "size"),
                        (lambda: AdversarialPatch(size=1.5), "size"),
                        (lambda: AdversarialPatch(steps=0), "steps"),
                        (lambda: AdversarialPatch(lr=-1.0), "lr"),
                        (lambda: UniversalPerturbation(eps=0.0), "eps"),
                        (lambda: UniversalPerturbation(eps=0.1, method="lbfgs"), "method")]:  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=match):
            make()
    with pytest.raises(ConfigError, match=r"'target' must be one class index in 0\.\.9"):
        AdversarialPatch(steps=1)(model, xtr[:10], ytr[:10], target=10)
    flat = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(InputError, match="batch of images"):
        AdversarialPatch(steps=1)(flat, torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
    wide = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ConfigError, match="does not fit inside the 4x16 image"):
        AdversarialPatch(size=0.9, steps=1)(wide, torch.rand(5, 1, 4, 16), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"at most 0\.765\)"):  # 7x7 of 8x8: part stays visible
        AdversarialPatch(size=0.99, steps=1)(model, xtr[:10], ytr[:10])
    patch = AdversarialPatch(size=0.1, steps=1)(model, xtr[:10], ytr[:10])
    with pytest.raises(InputError, match="made for"):
        evaluate_pattern(model, patch, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="PhysicalPattern"):
        evaluate_pattern(model, "patch.png", xtr[:4], ytr[:4])  # type: ignore[arg-type]
    assert isinstance(patch, PhysicalPattern) and math.isfinite(patch.time_s)
    for kwargs, match in [({"dpi": 0}, "dpi"), ({"print_mm": -1.0}, "print_mm"),
                          ({"print_mm": 5000.0, "dpi": 1200}, "10,000")]:
        with pytest.raises(ConfigError, match=match):
            save_pattern_png(patch, Path("never-written.png"), **kwargs)  # type: ignore[arg-type]
    assert not Path("never-written.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dataset", "floor"),
                         [("mnist-cnn", "mnist", 0.2), ("fashion-cnn", "fashion-mnist", 0.18)])
def test_a_patch_fools_the_reference_models_on_held_out_images(data_root: Path, name: str, dataset: str,
                                                               floor: float) -> None:
    # benchmarks/physical.py (2026-12-03): a 10% patch, 160 steps on 1,024 training images, held-out
    # success 0.278-0.312 (mnist-cnn) and 0.217-0.307 (fashion-cnn) over seeds 0-2 (ART: 0.282, 0.246).
    from modelshield.data import load_dataset

    ds = load_dataset(dataset, root=data_root)
    model = zoo.load(name, data_root=data_root).module
    shared = Transforms(rotation=20.0, scale=(0.9, 1.1), brightness=0.0, contrast=(1.0, 1.0), noise=0.0)
    attack = AdversarialPatch(size=0.1, steps=160, transforms=shared)
    patch = attack(model, ds.x_train[:1024], ds.y_train[:1024])
    assert evaluate_pattern(model, patch, ds.x_test[:500], ds.y_test[:500]).success_rate >= floor
