"""``modelshield attack physical``: patch, sticker and universal perturbation on digits-cnn, end to end.

Each run learns on a few training images (the train split) and is tested on held-out ones (the
test split); the files it writes are checked: the PNG to print (its pixel size is the print size,
a sticker transparent outside its mask), pattern.pt (plain tensors), examples.png and summary.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.cli import invoke
from typer.testing import CliRunner

from modelshield.cli.app import app

# 8x8 digits: a few seconds per run on one thread
SMALL = ("--steps", "30", "--n-train", "200", "--n-test", "40", "--draws", "2")
FILES = ("pattern.pt", "examples.png", "summary.json")
MM_PER_INCH = 25.4


@pytest.fixture(scope="module")
def digits_cache() -> Iterator[None]:
    from modelshield import zoo
    from modelshield.cli._target import torch_threads

    with torch_threads(1):
        zoo.load("digits-cnn")  # trains on a cold session cache (seconds)
    yield


def run(out: Path, *args: str) -> Any:
    result = invoke("attack", "physical", "--model", "digits-cnn", *SMALL, "--out", out, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def print_px(print_mm: float, dpi: int, side: int) -> int:
    """The PNG side: print_mm at dpi, rounded up to a whole number of blocks of the pattern's side."""
    return math.ceil(round(print_mm / MM_PER_INCH * dpi) / side) * side


def pixels(im: Image.Image) -> torch.Tensor:
    """(H, W) int16 values of a one-channel image."""
    return torch.from_numpy(np.asarray(im, dtype=np.int16).copy())


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def tensors(out: Path) -> dict[str, torch.Tensor]:
    loaded: dict[str, torch.Tensor] = torch.load(out / "pattern.pt", weights_only=True)  # plain tensors
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())
    return loaded


def check_summary(d: dict[str, Any], kind: str, *, n_test: int = 40, draws: int = 2) -> None:
    assert d["kind"] == kind == d["pattern"]["kind"] == d["evaluation"]["kind"]
    ev = d["evaluation"]
    assert 0.0 <= ev["success_rate"] <= 1.0 and 0.0 <= ev["fooling_rate"] <= 1.0
    assert d["success_rate"] == ev["success_rate"] and d["fooling_rate"] == ev["fooling_rate"]
    assert ev["views"] == n_test * ev["draws"] and ev["strength"] == 1.0
    assert ev["draws"] == (1 if kind == "universal" else draws)
    assert d["data"]["n_train"] == 200 and d["data"]["n_test"] == n_test and d["data"]["name"] == "digits"
    assert d["data"]["split"] == "test"
    assert d["model"]["name"] == "digits-cnn" and d["pattern"]["image_shape"] == [1, 8, 8]
    prov = d["provenance"]
    assert prov["seed"] == 0 and kind in prov["attacks"] and prov["packages"]
    assert prov["data"]["n"] == n_test and prov["model"]["name"] == "digits-cnn"
    assert d["files"] == {"png": f"{kind}.png", "tensors": "pattern.pt", "examples": "examples.png",
                          "summary": "summary.json"}
    assert d["examples"]["n"] == 8 and len(d["examples"]["adv_pred"]) == 8
    if kind == "universal":
        assert d["strength_curve"] == [] and "strength_curve_note" in d
    else:
        assert [c["strength"] for c in d["strength_curve"]] == [0.0, 0.5, 1.0, 1.5, 2.0]
        assert d["strength_curve"][2]["success_rate"] == ev["success_rate"]  # the same draws


def check_png(out: Path, d: dict[str, Any], kind: str, side: int, *, print_mm: float = 50.0,
              dpi: int = 300) -> Image.Image:
    with Image.open(out / f"{kind}.png") as im:
        im.load()
    px = print_px(print_mm, dpi, side)
    assert im.size == (px, px) and d["png"]["pixels"] == [px, px]
    assert [round(v) for v in im.info["dpi"]] == [dpi, dpi]
    assert d["png"]["dpi"] == dpi and d["png"]["print_mm"] == pytest.approx(px / dpi * MM_PER_INCH, abs=0.01)
    assert d["png"]["path"] == f"{kind}.png"
    return im


def test_patch_writes_a_printable_png_and_an_honest_summary(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "patch"
    result = run(out, "--size", "0.2")
    assert {p.name for p in out.iterdir()} == {"patch.png", *FILES}
    d = summary(out)
    check_summary(d, "patch")
    side = math.ceil(math.sqrt(0.2 * 64))  # 4 pixels: patch_side
    assert d["pattern"]["pattern_shape"] == [1, side, side] and d["pattern"]["share"] == side * side / 64
    im = check_png(out, d, "patch", side)  # 50 mm at 300 dpi: 591 px, rounded up to 148 blocks of 4
    assert im.size == (592, 592) and im.mode == "L"
    t = tensors(out)
    assert set(t) == {"pattern"} and t["pattern"].shape == (1, side, side)
    assert float(t["pattern"].min()) >= 0.0 and float(t["pattern"].max()) <= 1.0
    # the PNG is the pattern, each pattern pixel a block of 148 x 148 pixels of ink
    grey = pixels(im).float()[::148, ::148]
    assert torch.allclose(grey / 255, t["pattern"][0], atol=1 / 255)
    assert "held-out success rate" in result.stdout and "fooling rate" in result.stdout
    assert "patch.png, pattern.pt, examples.png, summary.json" in result.stdout


def test_targeted_patch_reports_its_target(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "targeted"
    run(out, "--size", "0.2", "--target", "3")
    d = summary(out)
    assert d["pattern"]["target"] == 3 == d["evaluation"]["target"]


def _sticker_mask(path: Path) -> torch.Tensor:
    """A 2-row strip across the top of an 8x8 image, white on black, as a PNG; the bool mask."""
    im = Image.new("L", (8, 8), 0)
    for x in range(1, 7):
        for y in range(0, 2):
            im.putpixel((x, y), 255)
    im.save(path)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0:2, 1:7] = True
    return mask


# save_sheet's layout: tiles of the 8x8 image scaled 4x, 6 px apart, with a 14 px label below each
SHEET_SCALE, SHEET_GAP, SHEET_TEXT = 4, 6, 14


def _sheet_tiles(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, with the pattern) tiles of an examples sheet as (n, 8 * scale, 8 * scale) grey."""
    with Image.open(path) as im:
        sheet = im.convert("L")
    cell = 8 * SHEET_SCALE
    grid = pixels(sheet)
    rows = []
    for row in range(2):
        y0 = SHEET_GAP + row * (cell + SHEET_TEXT + SHEET_GAP)
        rows.append(torch.stack([grid[y0:y0 + cell, SHEET_GAP + i * (cell + SHEET_GAP):][:, :cell]
                                 for i in range(n)]))
    return rows[0], rows[1]


def test_sticker_is_transparent_outside_its_mask_and_changes_nothing_there(
    digits_cache: None, tmp_path: Path
) -> None:
    mask_png = tmp_path / "mask.png"
    mask = _sticker_mask(mask_png)
    out = tmp_path / "sticker"
    run(out, "--kind", "sticker", "--mask", mask_png)
    assert {p.name for p in out.iterdir()} == {"sticker.png", *FILES}
    d = summary(out)
    check_summary(d, "sticker")
    assert d["pattern"]["mask_pixels"] == int(mask.sum()) == 12
    im = check_png(out, d, "sticker", 8)
    assert im.mode == "RGBA"
    scale = im.size[0] // 8
    alpha = pixels(im.getchannel("A"))
    expected = mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    assert torch.equal(alpha == 255, expected) and torch.equal(alpha == 0, ~expected)  # cut along the edge
    t = tensors(out)
    assert set(t) == {"pattern", "mask"} and torch.equal(t["mask"], mask)
    assert t["pattern"].shape == (1, 8, 8) and not t["pattern"][:, ~mask].any()
    # The examples show the sticker stamped as printed: outside the mask every pixel is the clean one.
    clean, adv = _sheet_tiles(out / "examples.png", 8)
    outside = ~mask.repeat_interleave(SHEET_SCALE, 0).repeat_interleave(SHEET_SCALE, 1)
    assert torch.equal(clean[:, outside], adv[:, outside])
    assert (clean[:, ~outside] != adv[:, ~outside]).any()  # and the sticker is there
    # Stamping the saved sticker on held-out images leaves the pixels outside the mask bit for bit.
    from modelshield import zoo
    from modelshield.attacks.physical import stamp

    x, _ = zoo.test_split("digits-cnn", n=16)
    stamped = stamp(x, t["pattern"], t["mask"])
    assert torch.equal(stamped[:, :, ~mask], x[:, :, ~mask])


def test_sticker_with_a_palette_file(digits_cache: None, tmp_path: Path) -> None:
    mask_png = tmp_path / "mask.png"
    _sticker_mask(mask_png)
    palette = tmp_path / "greys.txt"
    palette.write_text("# three greys\n0\n128\n255\n")
    out = tmp_path / "sticker"
    run(out, "--kind", "sticker", "--mask", mask_png, "--palette", palette)
    d = summary(out)
    assert d["pattern"]["params"]["palette_colours"] == 3
    assert [c for (c,) in d["pattern"]["extra"]["palette"]] == pytest.approx([0.0, 128 / 255, 1.0])


def test_universal_perturbation_stays_within_eps(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "universal"
    run(out, "--kind", "universal", "--eps", "0.2", "--steps", "2", "--print-mm", "20", "--dpi", "600")
    assert {p.name for p in out.iterdir()} == {"universal.png", *FILES}
    d = summary(out)
    check_summary(d, "universal")
    assert d["pattern"]["eps"] == 0.2 and d["pattern"]["norm"] == "inf" and d["pattern"]["steps"] <= 2
    check_png(out, d, "universal", 8, print_mm=20, dpi=600)  # 472 px
    t = tensors(out)
    assert set(t) == {"pattern"} and t["pattern"].shape == (1, 8, 8)
    assert float(t["pattern"].abs().max()) <= 0.2 + 1e-6


def test_universal_deepfool_in_l2(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "deepfool"
    run(out, "--kind", "universal", "--method", "deepfool", "--norm", "2", "--steps", "1")
    d = summary(out)
    assert d["pattern"]["eps"] == 1.0 and d["pattern"]["norm"] == "2"  # the L2 default budget
    assert d["pattern"]["params"]["method"] == "deepfool"
    assert float(tensors(out)["pattern"].flatten().norm()) <= 1.0 + 1e-5


def test_force_replaces_an_earlier_run(digits_cache: None, tmp_path: Path) -> None:
    out = tmp_path / "again"
    run(out, "--size", "0.2")
    run(out, "--size", "0.2", "--seed", "1", "--force")
    assert summary(out)["provenance"]["seed"] == 1


def test_help_lists_physical() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "physical" in top.stdout
    sub = runner.invoke(app, ["attack", "--help"])
    assert sub.exit_code == 0 and "physical" in sub.stdout and "evasion" in sub.stdout
    own = runner.invoke(app, ["attack", "physical", "--help"])
    assert own.exit_code == 0
    for option in ("--kind", "--size", "--mask", "--palette", "--eps", "--norm", "--method", "--target",
                   "--steps", "--n-train", "--n-test", "--draws", "--seed", "--print-mm", "--dpi", "--out",
                   "--force", "--device"):
        assert option in own.stdout, option
