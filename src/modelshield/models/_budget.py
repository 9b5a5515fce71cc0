"""Query counting and budgets shared by every model adapter."""

from __future__ import annotations

from dataclasses import dataclass

from modelshield.errors import QueryBudgetExceeded

__all__ = ["QueryCounter"]


@dataclass(slots=True)
class QueryCounter:
    """Counts forward queries (inputs scored) and backward queries (input gradients).

    One query is one input row: scoring a batch of 100 inputs costs 100 forward queries.
    ``budget`` caps forward queries; exceeding it raises QueryBudgetExceeded *before* the
    model is called, so the model never sees a query beyond the budget.
    """

    forward: int = 0
    backward: int = 0
    budget: int | None = None

    def add_forward(self, n: int) -> None:
        if self.budget is not None and self.forward + n > self.budget:
            raise QueryBudgetExceeded(
                f"Model: query budget of {self.budget} would be exceeded "
                f"({self.forward} used, {n} more requested). Raise the budget or query fewer points."
            )
        self.forward += n

    def add_backward(self, n: int) -> None:
        self.backward += n

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.forward

    def snapshot(self) -> tuple[int, int]:
        return self.forward, self.backward

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0
