"""Attribution pictures: valid PNGs of a fixed size, colours centred on zero, deterministic, no leaks."""

from __future__ import annotations

import gc
import io
import struct
import weakref
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib import colormaps

from modelshield.errors import ConfigError, InputError
from modelshield.explain import plots
from modelshield.explain.plots import (
    bars_png,
    heatmap_png,
    signed_colors,
    signed_limit,
    tokens_html,
    tokens_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a PNG."""
    arr = matplotlib.image.imread(io.BytesIO(path.read_bytes()), format="png")
    return np.round(np.asarray(arr)[..., :3] * 255).astype(np.int64)


def count_colour(img: np.ndarray, rgb: tuple[int, ...], tol: int = 2) -> int:
    return int((np.abs(img - np.asarray(rgb)).max(axis=2) <= tol).sum())


def centre_rgb() -> tuple[int, int, int]:
    r, g, b = colormaps[plots.CMAP](0.5)[:3]
    return round(255 * r), round(255 * g), round(255 * b)


def test_zero_maps_to_the_colormap_centre() -> None:
    values = torch.tensor([-3.0, 0.0, 1.0])
    rgba = signed_colors(values)
    cmap = colormaps[plots.CMAP]
    np.testing.assert_allclose(rgba[1], cmap(0.5))
    np.testing.assert_allclose(rgba[0], cmap(0.0))  # -max|v| is the bottom colour
    np.testing.assert_allclose(rgba[2], cmap(0.5 + 1.0 / 6.0))  # 1/3 of the way up the positive half
    assert signed_limit(values) == 3.0
    assert signed_limit(torch.zeros(4)) == 1.0  # all zero: any range keeps 0 at the centre


def test_heatmap_is_a_png_of_the_documented_size_with_zero_at_the_centre_colour(tmp_path: Path) -> None:
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    att = torch.zeros(1, 8, 8)
    att[0, :2, :2] = 1.0  # a small positive patch; the rest of the map is exactly zero
    path = heatmap_png(image, att, tmp_path / "a.png", title="ig", target=3)
    assert path == tmp_path / "a.png"
    assert png_size(path) == (900, 340)
    zero_centred = count_colour(pixels(path), centre_rgb())
    # The same map shifted up (zero region now at +0.5): if colours were not centred on zero both
    # pictures would paint the same large area the centre colour.
    shifted = heatmap_png(image, att + 0.5, tmp_path / "b.png")
    assert zero_centred > 10_000  # most of the attribution panel (about 260 x 260 px)
    assert count_colour(pixels(shifted), centre_rgb()) < zero_centred / 5


def test_heatmap_of_rgb_images_sums_channels(tmp_path: Path) -> None:
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    att = torch.zeros(3, 6, 6)
    att[0, 0, 0], att[1, 0, 0] = 1.0, -1.0  # cancels: the whole summed map is zero
    path = heatmap_png(image, att, tmp_path / "rgb.png")
    assert png_size(path) == (900, 340)
    assert count_colour(pixels(path), centre_rgb()) > 10_000


def test_bars_show_the_largest_magnitudes_with_signs(tmp_path: Path) -> None:
    values = torch.zeros(40)
    values[5], values[17] = 2.0, -3.0
    path = bars_png(values, [f"f{i}" for i in range(40)], tmp_path / "bars.png", top=2, target=1)
    assert png_size(path) == (800, 500)
    img = pixels(path)
    cmap = colormaps[plots.CMAP]
    red = tuple(round(255 * c) for c in cmap(0.5 + 0.4)[:3])
    blue = tuple(round(255 * c) for c in cmap(0.5 - 0.4)[:3])
    assert count_colour(img, red) > 500 and count_colour(img, blue) > 500  # one bar of each sign
    only_positive = bars_png(values.abs(), None, tmp_path / "pos.png", top=2)
    assert count_colour(pixels(only_positive), blue) < 50


def test_pictures_are_deterministic(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    image, att = torch.rand(8, 8, generator=gen), torch.randn(8, 8, generator=gen)
    a = heatmap_png(image, att, tmp_path / "1.png").read_bytes()
    b = heatmap_png(image, att, tmp_path / "2.png").read_bytes()
    assert a == b
    vals = torch.randn(12, generator=gen)
    assert (bars_png(vals, None, tmp_path / "3.png").read_bytes()
            == bars_png(vals, None, tmp_path / "4.png").read_bytes())
    toks = ["win", "a", "free", "prize"]
    assert (tokens_png(toks, vals[:4], tmp_path / "5.png").read_bytes()
            == tokens_png(toks, vals[:4], tmp_path / "6.png").read_bytes())


def test_figures_are_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[weakref.ref[object]] = []
    real = plots.Figure  # type: ignore[attr-defined]  # the module's matplotlib import, patched here

    def tracking(*args: object, **kwargs: object) -> object:
        fig = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(weakref.ref(fig))
        return fig

    monkeypatch.setattr(plots, "Figure", tracking)
    for i in range(3):
        heatmap_png(torch.rand(4, 4), torch.randn(4, 4), tmp_path / f"h{i}.png")
        bars_png(torch.randn(5), None, tmp_path / f"b{i}.png")
        tokens_png(["a", "b"], [0.1, -0.1], tmp_path / f"t{i}.png")
    gc.collect()
    assert len(made) == 9 and all(ref() is None for ref in made)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # nothing registered with pyplot


def test_tokens_html_colours_and_escapes() -> None:
    out = tokens_html(["<b>", "free", "ok"], torch.tensor([0.0, 2.0, -2.0, 9.0]))  # padded row
    assert "&lt;b&gt;" in out and "<b>" not in out
    r, g, b = centre_rgb()
    assert f"#{r:02x}{g:02x}{b:02x}" in out  # zero: the centre colour
    assert out.count("<span") == 3


def test_tokens_png_grows_with_the_text(tmp_path: Path) -> None:
    short = tokens_png(["hi"], [1.0], tmp_path / "s.png")
    long = tokens_png(["word"] * 200, torch.linspace(-1, 1, 200), tmp_path / "l.png")
    (w1, h1), (w2, h2) = png_size(short), png_size(long)
    assert w1 == w2 == 800 and h2 > h1


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="shape"):
        heatmap_png(torch.rand(8, 8), torch.rand(7, 8), tmp_path / "x.png")
    with pytest.raises(InputError, match="one image"):
        heatmap_png(torch.rand(30), torch.rand(30), tmp_path / "x.png")
    with pytest.raises(InputError, match="finite"):
        bars_png(torch.tensor([1.0, float("nan")]), None, tmp_path / "x.png")
    with pytest.raises(InputError, match="feature_names"):
        bars_png(torch.rand(3), ["a"], tmp_path / "x.png")
    with pytest.raises(InputError, match="top"):
        bars_png(torch.rand(3), None, tmp_path / "x.png", top=0)
    with pytest.raises(InputError, match="one number per token"):
        tokens_png(["a", "b"], [1.0], tmp_path / "x.png")
    bars_png(torch.rand(3), None, tmp_path / "y.png")
    with pytest.raises(ConfigError, match="exist"):
        bars_png(torch.rand(3), None, tmp_path / "y.png")
    bars_png(torch.rand(3), None, tmp_path / "y.png", overwrite=True)
