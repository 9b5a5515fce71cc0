"""``modelshield attack physical`` on bad input: one line naming the problem, exit 2, nothing written.

The model is an untrained digits CNN saved as a modelshield-v1 file (no zoo training), a user's
own state dict on 4x16 images, or a user's callable, so every case runs in about a second.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.cli import invoke, one_error_line

QUICK = ("--steps", "2", "--n-train", "20", "--n-test", "10")


@pytest.fixture()
def digits_file(tmp_path: Path) -> Path:
    """An untrained digits CNN (cnn-8x8) as a modelshield-v1 file that names its data set."""
    from modelshield.models.archs import build
    from modelshield.models.load import save_model

    path = tmp_path / "digits.pt"
    save_model(build("cnn-8x8"), path, arch="cnn-8x8", meta={"dataset": "digits"})
    return path


@pytest.fixture()
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for the user's own modules (removed from sys.modules afterwards)."""
    root = tmp_path / "user"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    (root / "userphys_models.py").write_text(textwrap.dedent("""
        import numpy as np
        from torch import nn

        def make_wide():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def rows(x):
            x = np.asarray(x).reshape(len(x), -1)
            p = np.exp(np.stack([x.sum(1), -x.sum(1)], 1) / x.shape[1])
            return p / p.sum(1, keepdims=True)
    """))
    yield root
    for name in [n for n in sys.modules if n.startswith("userphys")]:
        sys.modules.pop(name, None)


def _grey(path: Path, size: tuple[int, int], fill: int, box: tuple[int, int, int, int] | None = None) -> Path:
    im = Image.new("L", size, fill)
    if box is not None:
        for x in range(box[0], box[2]):
            for y in range(box[1], box[3]):
                im.putpixel((x, y), 255)
    im.save(path)
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    """The hostile files, by name."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "not-an-image.png").write_text("hello, I am text")
    (d / "palette.json").write_text('{"red": [255, 0, 0]}')
    (d / "words.txt").write_text("red green\nblue\n")
    (d / "rgb.json").write_text("[[0, 0, 0], [255, 255, 255]]")
    (d / "negative.json").write_text("[-5, 10]")
    (d / "empty.json").write_text("[]")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    return {
        "mask": _grey(d / "mask.png", (8, 8), 0, (1, 0, 7, 2)),
        "mask_9x8": _grey(d / "mask-9x8.png", (9, 8), 0, (1, 0, 7, 2)),
        "mask_empty": _grey(d / "mask-empty.png", (8, 8), 0),
        "mask_full": _grey(d / "mask-full.png", (8, 8), 255),
        "mask_text": d / "not-an-image.png",
        "mask_missing": d / "no-such-mask.png",
        "palette_dict": d / "palette.json",
        "palette_words": d / "words.txt",
        "palette_rgb": d / "rgb.json",
        "palette_negative": d / "negative.json",
        "palette_empty": d / "empty.json",
        "palette_binary": d / "binary.txt",
        "palette_missing": d / "no-such-palette.json",
    }


# (arguments, words the one line must hold); "{name}" is an input file of the `inputs` fixture
CASES = [
    (["--kind", "blob"], ["'--kind'", "'blob'", "'patch', 'sticker', 'universal'"]),
    (["--kind", "sticker"], ["'--mask'", "--kind sticker", "white where the sticker goes"]),
    (["--kind", "sticker", "--mask", "{mask_9x8}"], ["mask-9x8.png", "9x8", "8x8", "images' size"]),
    (["--kind", "sticker", "--mask", "{mask_empty}"], ["mask-empty.png", "empty"]),
    (["--kind", "sticker", "--mask", "{mask_full}"], ["mask-full.png", "whole image"]),
    (["--kind", "sticker", "--mask", "{mask_text}"], ["not-an-image.png", "not an image"]),
    (["--kind", "sticker", "--mask", "{mask_missing}"], ["no-such-mask.png", "no mask file"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_dict}"],
     ["palette.json", "not a list of colours"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_words}"],
     ["words.txt", "not a list of colours"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_rgb}"],
     ["rgb.json", "3 value(s)", "1 channel"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_negative}"],
     ["negative.json", "outside 0..255"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_empty}"], ["empty.json", "no colour"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_binary}"],
     ["binary.txt", "cannot read"]),
    (["--kind", "sticker", "--mask", "{mask}", "--palette", "{palette_missing}"],
     ["no-such-palette.json", "no palette file"]),
    (["--size", "0.99"], ["'--size'", "visible", "8x8", "at most 0.765"]),
    (["--size", "1"], ["'--size'", "(0, 1)", "got 1.0"]),
    (["--size", "1.5"], ["'--size'", "(0, 1)", "got 1.5"]),
    (["--size", "0"], ["'--size'", "(0, 1)", "got 0.0"]),
    (["--size", "-0.1"], ["'--size'", "(0, 1)"]),
    (["--size", "nan"], ["'--size'", "got nan"]),
    (["--kind", "universal", "--target", "3"], ["'--target'", "universal", "untargeted"]),
    (["--kind", "universal", "--size", "0.1"], ["'--size'", "--kind patch", "got --kind universal"]),
    (["--kind", "universal", "--mask", "{mask}"], ["'--mask'", "--kind sticker"]),
    (["--palette", "{palette_rgb}"], ["'--palette'", "--kind sticker"]),
    (["--eps", "0.1"], ["'--eps'", "--kind universal"]),
    (["--kind", "sticker", "--mask", "{mask}", "--method", "sgd"], ["'--method'", "--kind universal"]),
    (["--kind", "universal", "--eps", "-1"], ["'eps'", "-1"]),
    (["--kind", "universal", "--eps", "0"], ["'eps'", "0.0"]),
    (["--kind", "universal", "--norm", "3"], ["'norm'", "'3'"]),
    (["--kind", "universal", "--method", "newton"], ["'method'", "'newton'"]),
    (["--target", "10"], ["'target'", "0..9", "10"]),
    (["--steps", "0"], ["'steps'", "got 0"]),
    (["--kind", "universal", "--steps", "0"], ["'max_passes'", "got 0"]),
    (["--n-train", "0"], ["'--n-train'", "got 0"]),
    (["--n-test", "0"], ["'--n-test'", "got 0"]),
    (["--draws", "0"], ["'--draws'", "got 0"]),
    (["--dpi", "0"], ["'--dpi'", "got 0"]),
    (["--print-mm", "0"], ["'--print-mm'", "got 0.0"]),
    (["--print-mm", "1000", "--dpi", "1200"], ["'--print-mm'", "47,244 px"]),
    (["--device", "abacus"], ["'--device'", "'abacus'"]),
]


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    digits_file: Path, inputs: dict[str, Path], tmp_path: Path, args: list[str], words: list[str]
) -> None:
    out = tmp_path / "never"
    argv = [a.format(**inputs) for a in args]
    line = one_error_line(invoke("attack", "physical", "--model", digits_file, *QUICK, "--out", out, *argv))
    for word in words:
        assert word in line, line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(("model", "what"), [("phishing-gbm", "tabular"), ("phishing-rf", "tabular"),
                                             ("spam-nb", "text"), ("spam-logreg", "text")])
def test_a_zoo_model_that_is_not_an_image_model_is_refused_before_loading(
    tmp_path: Path, model: str, what: str
) -> None:
    out = tmp_path / "never"
    line = one_error_line(invoke("attack", "physical", "--model", model, "--out", out))
    assert "'--model' must be an image model" in line and repr(model) in line and what in line
    assert "digits-cnn" in line  # the fix names one that works
    assert not out.exists()


def test_a_users_tabular_model_is_refused(user_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 5), dtype=np.float32)
    np.savez(tmp_path / "rows.npz", x=x, y=(x.sum(1) > 2.5).astype(np.int64))
    out = tmp_path / "never"
    line = one_error_line(invoke("attack", "physical", "--model", "userphys_models:rows", "--data",
                                 tmp_path / "rows.npz", *QUICK, "--out", out))
    assert "'--model' must be an image model on image data" in line and "tabular" in line
    assert not out.exists()


def test_a_query_only_image_model_is_refused(user_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "images.npz", x=x, y=(x.sum((1, 2, 3)) > 32).astype(np.int64))
    out = tmp_path / "never"
    line = one_error_line(invoke("attack", "physical", "--model", "userphys_models:rows", "--data",
                                 tmp_path / "images.npz", *QUICK, "--out", out))
    assert "gradients" in line and "query-only" in line
    assert not out.exists()


def test_a_patch_wider_than_a_non_square_image_is_refused(user_dir: Path, tmp_path: Path) -> None:
    """On 4x16 images a patch of half the area is 6x6 pixels: taller than the image."""
    from userphys_models import make_wide  # type: ignore[import-not-found]  # written by user_dir

    torch.save(make_wide().state_dict(), tmp_path / "wide.pt")
    rng = np.random.default_rng(0)
    x = rng.random((80, 1, 4, 16), dtype=np.float32)
    np.savez(tmp_path / "wide.npz", x=x, y=rng.integers(0, 10, 80))
    out = tmp_path / "never"
    base = ["attack", "physical", "--model", tmp_path / "wide.pt", "--arch", "userphys_models:make_wide",
            "--data", tmp_path / "wide.npz", *QUICK, "--out", out]
    line = one_error_line(invoke(*base, "--size", "0.5"))
    assert "'--size'" in line and "got 0.5" in line and "6x6" in line and "4x16" in line
    assert "smaller --size (at most 0.25)" in line  # a 4x4 patch: 0.25 of 4x16
    assert not out.exists()
    mask = _grey(tmp_path / "mask.png", (8, 8), 0, (0, 0, 8, 2))  # the digits' size, not 16x4
    line = one_error_line(invoke(*base, "--kind", "sticker", "--mask", mask))
    assert "8x8" in line and "16x4" in line and not out.exists()


def test_existing_outputs_are_kept_without_force(digits_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("mine")
    line = one_error_line(invoke("attack", "physical", "--model", digits_file, *QUICK, "--out", out))
    assert "summary.json" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert (out / "summary.json").read_text() == "mine"


def test_out_inside_a_file_is_refused(digits_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(invoke("attack", "physical", "--model", digits_file, *QUICK,
                                 "--out", blocker / "run"))
    assert "is a file, not a folder" in line and blocker.read_text() == "x"
