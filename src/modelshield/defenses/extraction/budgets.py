"""Per-client query budgets: the simplest brake on model extraction."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from modelshield._checks import check_range
from modelshield.errors import ConfigError, QueryBudgetExceeded

__all__ = ["ClientBudget"]


@dataclass
class ClientBudget:
    """At most ``max_queries`` queries per client, in total or per sliding window of ``window_s``.

    ``charge(client, n)`` is all-or-nothing: a request that would go over the limit raises
    ``QueryBudgetExceeded`` and is not counted, so the client keeps what it had left.
    Config fields are read-only after construction; per-client usage is internal state.

    Args:
        max_queries: queries (input rows) allowed per client.
        window_s: length of the sliding window in seconds, or None for a lifetime budget.
        clock: the time source in seconds (``time.monotonic``; injectable for tests).

    Example:
        budget = ClientBudget(max_queries=1000, window_s=3600)
        budget.charge("client-7", len(x_batch))   # raises once the hour's 1000 are used
    """

    max_queries: int
    window_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    _usage: dict[Hashable, deque[tuple[float, int]]] = field(init=False, default_factory=dict,
                                                            repr=False)

    def __post_init__(self) -> None:
        check_range("max_queries", self.max_queries, owner="ClientBudget", low=1, integer=True)
        if self.window_s is not None:
            check_range("window_s", self.window_s, owner="ClientBudget", low=0.0, low_open=True,
                        fix="Use None for a lifetime budget.")

    def _entries(self, client_id: Hashable) -> deque[tuple[float, int]]:
        entries = self._usage.setdefault(client_id, deque())
        if self.window_s is not None:
            oldest = self.clock() - self.window_s
            while entries and entries[0][0] <= oldest:
                entries.popleft()
        return entries

    def used(self, client_id: Hashable) -> int:
        """Queries the client has used (within the current window)."""
        return sum(n for _, n in self._entries(client_id))

    def remaining(self, client_id: Hashable) -> int:
        """Queries the client may still make (within the current window)."""
        return self.max_queries - self.used(client_id)

    def charge(self, client_id: Hashable, n: int = 1) -> int:
        """Count n queries for the client; return what remains.

        Raises:
            QueryBudgetExceeded: the n queries would exceed the client's limit (nothing counted).
            ConfigError: n is not a positive int.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(
                f"ClientBudget: 'n' must be a positive int (queries in the request); got {n!r}. "
                "Charge one per input row, e.g. charge(client, len(x_batch))."
            )
        entries = self._entries(client_id)
        used = sum(k for _, k in entries)
        if used + n > self.max_queries:
            span = "" if self.window_s is None else f" per {self.window_s:g} s"
            raise QueryBudgetExceeded(
                f"ClientBudget: client {client_id!r} must stay within {self.max_queries} "
                f"queries{span}; got a request for {n} with {used} already used. Refuse the "
                "request, or raise max_queries for this deployment."
            )
        entries.append((self.clock(), n))
        return self.max_queries - used - n

    def reset(self, client_id: Hashable | None = None) -> None:
        """Forget one client's usage (or every client's when None)."""
        if client_id is None:
            self._usage.clear()
        else:
            self._usage.pop(client_id, None)
