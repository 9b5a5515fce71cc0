"""Per-key token buckets (request rate) and the gateway's Prometheus metrics, both in memory.

Token bucket: a key holds up to ``burst`` tokens, refilled at ``rate_per_s``; a request takes one
or is refused with the time until the next token (the ``Retry-After``). This state is per process
(sharing it between replicas through a store is future work); query budgets are shared already,
through the key store.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "TokenBuckets"]

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class TokenBuckets:
    """Token buckets by key id; thread-safe. ``clock`` is injectable for tests."""

    clock: Callable[[], float] = time.monotonic
    _state: dict[str, tuple[float, float]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def take(self, key_id: str, *, rate_per_s: float, burst: int) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            tokens, last = self._state.get(key_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate_per_s)
            if tokens >= 1.0:
                self._state[key_id] = (tokens - 1.0, now)
                return 0.0
            self._state[key_id] = (tokens, now)
            return (1.0 - tokens) / rate_per_s


@dataclass
class Metrics:
    """Counters and one latency histogram, rendered in the Prometheus text exposition format 0.0.4."""

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    decisions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rows: int = 0
    audit_records: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum: float = 0.0
    alerts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def alert(self, monitor: str) -> None:
        """Count one alert raised by ``monitor`` in this process."""
        with self._lock:
            self.alerts[monitor] += 1

    def observe(self, *, endpoint: str, status: int, decision: str, seconds: float | None = None,
                rows: int = 0, audited: int = 0) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.decisions[decision] += 1
            self.rows += rows
            self.audit_records += audited
            if seconds is not None:
                self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
                self.latency_sum += seconds

    def render(self, *, active_keys: int, ready: bool, alerts: Mapping[str, int] | None = None) -> str:
        """The metrics as Prometheus text; ``alerts``: alerts by monitor (e.g. the shared store's count,
        every replica's), else this process's."""
        with self._lock:
            lines = ["# HELP modelshield_requests_total Requests by endpoint and HTTP status.",
                     "# TYPE modelshield_requests_total counter"]
            lines += [f'modelshield_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP modelshield_decisions_total Gateway decisions (answered, unauthenticated, "
                      "forbidden, rate-limited, budget-exhausted, invalid, too-large).",
                      "# TYPE modelshield_decisions_total counter"]
            lines += [f'modelshield_decisions_total{{decision="{d}"}} {n}'
                      for d, n in sorted(self.decisions.items())]
            lines += ["# HELP modelshield_predicted_rows_total Input rows answered.",
                      "# TYPE modelshield_predicted_rows_total counter",
                      f"modelshield_predicted_rows_total {self.rows}",
                      "# HELP modelshield_audit_records_total Audit records committed by this process.",
                      "# TYPE modelshield_audit_records_total counter",
                      f"modelshield_audit_records_total {self.audit_records}",
                      "# HELP modelshield_predict_seconds Latency of answered /v1/predict requests.",
                      "# TYPE modelshield_predict_seconds histogram"]
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_S, self.latency_counts, strict=False):
                cumulative += count
                lines.append(f'modelshield_predict_seconds_bucket{{le="{bound}"}} {cumulative}')
            total = sum(self.latency_counts)
            lines += [f'modelshield_predict_seconds_bucket{{le="+Inf"}} {total}',
                      f"modelshield_predict_seconds_sum {self.latency_sum:.6f}",
                      f"modelshield_predict_seconds_count {total}"]
        lines += ["# HELP modelshield_active_keys API keys not revoked.",
                  "# TYPE modelshield_active_keys gauge", f"modelshield_active_keys {active_keys}",
                  "# HELP modelshield_ready 1 when the gateway is ready to answer.",
                  "# TYPE modelshield_ready gauge",
                  f"modelshield_ready {int(ready)}"]
        with self._lock:
            counted = dict(self.alerts if alerts is None else alerts)
        lines += ["# HELP modelshield_alerts_total Alerts raised by the live monitors, by monitor.",
                  "# TYPE modelshield_alerts_total counter"]
        lines += [f'modelshield_alerts_total{{monitor="{m}"}} {n}' for m, n in sorted(counted.items())]
        return "\n".join(lines) + "\n"
