"""The model protocol: the black-box view every attack may use, and the white-box extension."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from modelshield.models._budget import QueryCounter

__all__ = ["GradientModel", "Model"]


@runtime_checkable
class Model(Protocol):
    """Black-box view of a classifier: the only thing black-box attacks may touch."""

    bounds: tuple[float, float]
    queries: QueryCounter

    @property
    def n_classes(self) -> int: ...

    def scores(self, x: Tensor) -> Tensor:
        """(N, C) class scores (logits when available, else probabilities); counts N queries."""
        ...

    def predict(self, x: Tensor) -> Tensor:
        """(N,) int64 predicted labels; counts N queries."""
        ...


@runtime_checkable
class GradientModel(Model, Protocol):
    """White-box view: differentiable logits."""

    def logits(self, x: Tensor) -> Tensor:
        """(N, C) logits, differentiable with respect to x; counts N forward queries."""
        ...
