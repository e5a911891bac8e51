"""A cumulative latency histogram (Prometheus-style buckets), fed by the engine thread and read
by any thread: the numbers behind /metrics' time-to-first-token, without a metrics library."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]  # upper bounds, seconds; +Inf is implied
    counts: tuple[int, ...]  # cumulative, one per bucket, then +Inf
    total: float

    @property
    def count(self) -> int:
        return self.counts[-1]


class LatencyHistogram:
    def __init__(self, buckets: tuple[float, ...] = TTFT_BUCKETS) -> None:
        assert list(buckets) == sorted(buckets), "bucket bounds must increase"
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._total += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._total
        cumulative, running = [], 0
        for n in counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self.buckets, tuple(cumulative), total)
