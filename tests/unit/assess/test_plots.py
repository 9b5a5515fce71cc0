"""Report figures: PNGs for image and non-image inputs, broken points shown first."""

from __future__ import annotations

import base64

import pytest
import torch

from modelshield.assess._plots import examples_grid, is_image, robustness_curve
from modelshield.attacks.results import EvasionResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result_for(x: torch.Tensor, broken: list[int], eps: float = 0.1) -> EvasionResult:
    n = x.shape[0]
    y = torch.zeros(n, dtype=torch.long)
    adv_pred = y.clone()
    adv_pred[broken] = 1
    x_adv = (x + eps * (adv_pred == 1).float().view(-1, *([1] * (x.dim() - 1)))).clamp(0, 1)
    return EvasionResult(
        attack="Crafted", params={}, x_adv=x_adv, y=y, target=None, clean_pred=y.clone(), adv_pred=adv_pred,
        success=adv_pred != y, valid=torch.ones(n, dtype=torch.bool), norms=torch.full((n,), eps),
        norm="inf", eps=eps, queries_forward=0, queries_backward=0, time_s=0.0,
    )


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8, 8), True), ((1, 28, 28), True), ((3, 32, 32), True), ((64,), False), ((2, 8, 8), False),
     ((1, 3, 8, 8), False)],
)
def test_is_image(shape: tuple[int, ...], expected: bool) -> None:
    assert is_image(shape) is expected


@pytest.mark.parametrize("shape", [(10, 8, 8), (10, 1, 8, 8), (10, 3, 8, 8), (10, 12)])
def test_examples_grid_renders_png_with_broken_points_first(shape: tuple[int, ...]) -> None:
    x = torch.linspace(0, 0.8, int(torch.tensor(shape).prod())).view(shape)
    png, shown = examples_grid(result_for(x, broken=[7, 3]), x, bounds=(0.0, 1.0), classes=list("ab"))
    assert base64.b64decode(png).startswith(PNG_MAGIC)
    assert shown[:2] == [3, 7]  # successful attacks first, in index order
    assert len(shown) == (8 if len(shape) != 2 else 4)  # non-image inputs get fewer, taller panels


def test_robustness_curve_renders_png() -> None:
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    curves = {"pgd": [result_for(x, [], eps=0.0), result_for(x, [1, 2], eps=0.1)]}
    png = robustness_curve(curves, headline_eps=0.1, norm="inf")
    assert base64.b64decode(png).startswith(PNG_MAGIC)
