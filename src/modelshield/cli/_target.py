"""The CLI's view of targets (``modelshield.targets``) plus its option parsing helpers."""

from __future__ import annotations

from modelshield._typing import Norm
from modelshield.targets import Target, as_query_model, check_model_fits, load_target
from modelshield.zoo.training import torch_threads

__all__ = ["Target", "as_query_model", "check_model_fits", "load_target", "parse_norm", "torch_threads"]


def parse_norm(text: str) -> Norm:
    """The CLI's norm spellings ('inf', 'linf', '2', 'l2') as a Norm; others go on to be rejected."""
    key = text.strip().lower().removeprefix("l")
    return key if key in ("inf", "2") else text  # type: ignore[return-value]  # the attack/plan rejects it
