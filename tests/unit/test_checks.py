import math

import pytest
import torch

from modelshield._checks import check_bounds, check_choice, check_inputs, check_labels, check_range
from modelshield.errors import ConfigError, InputError


def test_check_range_accepts_and_names_value_and_fix() -> None:
    check_range("eps", 0.1, owner="PGD", low=0.0)
    with pytest.raises(ConfigError, match=r"PGD: 'eps' must be a number in \[0.0, inf\]; got -0.1\. Give"):
        check_range("eps", -0.1, owner="PGD", low=0.0, fix="Give eps in input units.")


@pytest.mark.parametrize("bad", [math.nan, "0.1", True, None])
def test_check_range_rejects_non_numbers(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"'eps' must be a number"):
        check_range("eps", bad, owner="X", low=0.0)


def test_check_range_integer_and_open_low() -> None:
    with pytest.raises(ConfigError, match="'steps' must be an int"):
        check_range("steps", 2.5, owner="X", low=1, integer=True)
    with pytest.raises(ConfigError, match=r"\(0.0, inf\]"):
        check_range("step", 0.0, owner="X", low=0.0, low_open=True)


def test_check_choice_lists_options() -> None:
    with pytest.raises(ConfigError, match=r"'norm' must be one of 'inf', '2'; got 'l1'"):
        check_choice("norm", "l1", ("inf", "2"), owner="PGD")


@pytest.mark.parametrize("bad", [(1.0, 0.0), (0.0,), (0.0, math.inf), "01"])
def test_check_bounds(bad: object) -> None:
    assert check_bounds([0, 1], owner="m") == (0.0, 1.0)
    with pytest.raises(ConfigError, match="'bounds' must be a pair"):
        check_bounds(bad, owner="m")


def test_check_inputs_messages() -> None:
    ok = torch.rand(3, 4)
    assert check_inputs(ok, bounds=(0.0, 1.0), owner="A") is ok
    with pytest.raises(InputError, match=r"must be a torch\.Tensor; got ndarray"):
        check_inputs(ok.numpy(), bounds=(0.0, 1.0), owner="A")
    with pytest.raises(InputError, match=r"floating-point tensor; got dtype torch.uint8.*/ 255"):
        check_inputs(torch.zeros(2, 3, dtype=torch.uint8), bounds=(0.0, 1.0), owner="A")
    with pytest.raises(InputError, match=r"shape \(N, \*input_shape\).*got shape \(4,\)"):
        check_inputs(torch.rand(4), bounds=(0.0, 1.0), owner="A")
    bad = ok.clone()
    bad[2, 1] = math.nan
    with pytest.raises(InputError, match=r"1 NaN or infinite values \(first in row 2\)"):
        check_inputs(bad, bounds=(0.0, 1.0), owner="A")
    out = ok.clone()
    out[1, 0] = 1.5
    out[2, 0] = -0.02
    with pytest.raises(
        InputError, match=r"2 values outside bounds \[0, 1\].*min -0.02.*row 1.*bounds=\(lo, hi\)"
    ):
        check_inputs(out, bounds=(0.0, 1.0), owner="A")


def test_check_labels_messages() -> None:
    dev = torch.device("cpu")
    assert check_labels(torch.tensor([0, 2]), n=2, n_classes=3, owner="A", device=dev).dtype == torch.long
    with pytest.raises(InputError, match=r"integer class indices; got dtype torch.float32"):
        check_labels(torch.tensor([0.0, 1.0]), n=2, n_classes=3, owner="A", device=dev)
    with pytest.raises(InputError, match=r"shape \(2,\) to match x; got shape \(3,\)"):
        check_labels(torch.tensor([0, 1, 1]), n=2, n_classes=3, owner="A", device=dev)
    with pytest.raises(InputError, match=r"class indices in \[0, 2\]; got 3 at row 1"):
        check_labels(torch.tensor([0, 3]), n=2, n_classes=3, owner="A", device=dev)
    with pytest.raises(InputError, match=r"class indices in \[0, 2\]; got -1 at row 0"):
        check_labels(torch.tensor([-1, 0]), n=2, n_classes=3, owner="A", device=dev)
