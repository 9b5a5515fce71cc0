"""Files of physical attacks: masks and palettes in, printable PNGs and example sheets out."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.physical.results import PhysicalPattern
from modelshield.attacks.physical.sticker import check_mask
from modelshield.errors import ConfigError, InputError

__all__ = ["load_mask", "load_palette", "save_pattern_png", "save_sheet"]

MM_PER_INCH = 25.4
MAX_PRINT_PX = 10_000
"""The largest PNG side save_pattern_png writes (a 10,000 px square is 300 MB of RGBA)."""


def load_mask(path: str | Path, *, height: int, width: int) -> Tensor:
    """An (H, W) bool mask from an image file: pixels brighter than mid-grey are the sticker.

    Raises InputError (one line naming the file and the fix) for an unreadable file, another
    size than the images' or an empty mask.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            grey = im.convert("L")
            size = grey.size
            data = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise InputError(f"load_mask: no mask file at {str(p)!r}. Give the path of a PNG the size "
                         f"of the images ({width}x{height}), white where the sticker goes.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"load_mask: {str(p)!r} is not an image file ({type(exc).__name__}). Give a "
                         "PNG, white where the sticker goes and black elsewhere.") from None
    w, h = size
    return check_mask(data.view(h, w) > 127, height=height, width=width, owner=f"load_mask ({str(p)!r})")


def load_palette(path: str | Path, *, channels: int, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """(K, C) printable colours, in input units, from a JSON list or a text file.

    JSON: ``[[r, g, b], ...]`` (or ``[v, ...]`` for grey); text: one colour per line, values
    separated by commas or spaces (Sharif et al.'s printable-colours files). Values are 0..255
    when any exceeds 1, else 0..1. Raises InputError for anything that is not a list of colours
    with ``channels`` values each.
    """
    p = Path(path)
    fix = (f"Give one colour per entry with {channels} value(s) in 0..1 or 0..255, e.g. "
           + ("[[0, 0, 0], [255, 255, 255]]" if channels == 3 else "[0, 128, 255]") + ".")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"load_palette: no palette file at {str(p)!r}. {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"load_palette: cannot read {str(p)!r} as text ({type(exc).__name__}). {fix}"
        ) from None
    rows: list[list[float]]
    try:
        parsed = json.loads(text)
        rows = [[float(v)] if isinstance(v, int | float) and not isinstance(v, bool)
                else [float(u) for u in v] for v in parsed]
        if not isinstance(parsed, list):
            raise TypeError
    except (json.JSONDecodeError, TypeError, ValueError):
        try:
            rows = [[float(u) for u in line.replace(",", " ").split()]
                    for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        except ValueError:
            raise InputError(f"load_palette: {str(p)!r} is not a list of colours. {fix}") from None
    if not rows:
        raise InputError(f"load_palette: {str(p)!r} holds no colour. {fix}")
    if any(len(r) != channels for r in rows):
        bad = next(r for r in rows if len(r) != channels)
        raise InputError(f"load_palette: {str(p)!r} has a colour with {len(bad)} value(s) "
                         f"({bad[:4]}); the images have {channels} channel(s). {fix}")
    vals = torch.tensor(rows, dtype=torch.float32)
    if not torch.isfinite(vals).all() or bool((vals < 0).any()) or bool((vals > 255).any()):
        raise InputError(f"load_palette: {str(p)!r} has values outside 0..255. {fix}")
    if bool((vals > 1).any()):
        vals = vals / 255.0
    lo, hi = bounds
    return lo + (hi - lo) * vals


def _to_uint8(img: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    return ((img.detach().float().cpu() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)


def _pil(img: Tensor, alpha: Tensor | None = None) -> Any:  # a PIL image
    from PIL import Image

    arr = img.permute(1, 2, 0).contiguous()  # H, W, C uint8
    c = arr.shape[2]
    if c == 1:
        arr = arr.expand(-1, -1, 3).contiguous() if alpha is not None else arr[:, :, 0].contiguous()
    if alpha is not None:
        arr = torch.cat([arr[:, :, :3], alpha[:, :, None]], dim=2).contiguous()
        return Image.frombytes("RGBA", (arr.shape[1], arr.shape[0]), bytes(arr.numpy().tobytes()))
    mode = "L" if arr.dim() == 2 else "RGB"
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), bytes(arr.numpy().tobytes()))


def save_pattern_png(pattern: PhysicalPattern, path: str | Path, *, print_mm: float = 50.0,
                     dpi: int = 300) -> dict[str, object]:
    """Write the pattern as a PNG to print: ``print_mm`` wide at ``dpi`` (nearest-neighbour
    upscaling, so every model pixel is a block of ink), with the DPI in the file.

    A patch is written whole; a sticker as RGBA, transparent outside its mask (print it on
    sticker paper and cut along the edge); a universal perturbation is shown mid-grey = 0,
    scaled to its eps. Returns what was written (pixels, scale, size in mm).
    """
    check_range("print_mm", print_mm, owner="save_pattern_png", low=0.0, low_open=True,
                fix="Give the printed width in millimetres, e.g. print_mm=50.")
    check_range("dpi", dpi, owner="save_pattern_png", low=1, high=4800, integer=True,
                fix="Give the printer's resolution, e.g. dpi=300.")
    if print_mm / MM_PER_INCH * dpi > MAX_PRINT_PX:
        raise ConfigError(f"save_pattern_png: {print_mm:g} mm at {dpi} dpi is more than {MAX_PRINT_PX:,} "
                          "pixels a side. Lower dpi or print_mm.")
    if pattern.kind == "universal":
        eps = float(pattern.pattern.abs().max().clamp_min(1e-12))
        img = _to_uint8(pattern.pattern / (2 * eps) + 0.5, (0.0, 1.0))
        alpha = None
    elif pattern.kind == "sticker":
        assert pattern.mask is not None
        img = _to_uint8(pattern.pattern, pattern.bounds)
        alpha = pattern.mask.to(torch.uint8).cpu() * 255
    else:
        img = _to_uint8(pattern.pattern, pattern.bounds)
        alpha = None
    w_px = img.shape[-1]
    target_px = max(1, round(print_mm / MM_PER_INCH * dpi))
    scale = max(1, math.ceil(target_px / w_px))
    img = img.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if alpha is not None:
        alpha = alpha.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
    out = Path(path)
    _pil(img, alpha).save(out, format="PNG", dpi=(dpi, dpi))
    return {"path": str(out), "pixels": [int(img.shape[-1]), int(img.shape[-2])], "scale": scale,
            "dpi": dpi, "print_mm": round(img.shape[-1] / dpi * MM_PER_INCH, 2)}


def save_sheet(path: str | Path, clean: Tensor, adv: Tensor, clean_pred: Tensor, adv_pred: Tensor, *,
               bounds: tuple[float, float], class_names: Sequence[str] | None = None,
               columns: int = 8, scale: int = 4) -> None:
    """A sheet of examples: each clean image over its version with the pattern, with labels."""
    from PIL import Image, ImageDraw

    n = min(clean.shape[0], columns)
    h, w = clean.shape[2:]
    cell_w, cell_h = w * scale, h * scale
    text_h = 14
    sheet = Image.new("RGB", (n * (cell_w + 6) + 6, 2 * (cell_h + text_h + 6) + 6), "white")
    draw = ImageDraw.Draw(sheet)

    def name(k: int) -> str:
        if class_names is not None and 0 <= k < len(class_names):
            return str(class_names[k])[:12]
        return str(k)

    for i in range(n):
        for row, (imgs, preds) in enumerate(((clean, clean_pred), (adv, adv_pred))):
            u8 = _to_uint8(imgs[i], bounds)
            u8 = u8.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            tile = _pil(u8).convert("RGB")
            x0 = 6 + i * (cell_w + 6)
            y0 = 6 + row * (cell_h + text_h + 6)
            sheet.paste(tile, (x0, y0))
            label = int(preds[i])
            colour = "black" if row == 0 or label == int(clean_pred[i]) else "red"
            draw.text((x0, y0 + cell_h + 1), ("clean: " if row == 0 else "seen: ") + name(label),
                      fill=colour)
    sheet.save(Path(path), format="PNG")
