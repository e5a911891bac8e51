"""The proxy's table of api_server nodes: what each serves, how busy and how fast it is,
and whether it answers."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 15  # finished requests a node's observed latency averages over (as 0.6.5)


@dataclass
class NodeStatus:
    models: list[str] = field(default_factory=list)
    unfinished: int = 0  # requests dispatched to the node and not finished yet
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    speed: float | None = None  # the operator's throughput figure (any unit, the same for all)
    healthy: bool = True
    failures: int = 0  # consecutive failed health probes

    def as_dict(self) -> dict[str, Any]:
        """0.6.5's status fields, plus `healthy`."""
        return {
            "models": list(self.models),
            "unfinished": self.unfinished,
            "latency": list(self.latency),
            "speed": self.speed,
            "healthy": self.healthy,
        }


class NodeTable:
    """Nodes by URL. A node leaves service after `failure_threshold` failed probes in a row,
    or at once when a request to it fails, and returns with the next successful probe."""

    def __init__(
        self, failure_threshold: int = 2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._nodes: dict[str, NodeStatus] = {}
        self._failure_threshold = failure_threshold
        self._clock = clock

    def add(
        self,
        url: str,
        models: Iterable[str] = (),
        speed: float | None = None,
        healthy: bool = True,
    ) -> NodeStatus:
        """Add a node, or refresh a known one's models and speed (keeping its counters)."""
        url = normalize_url(url)
        status = self._nodes.setdefault(url, NodeStatus(healthy=healthy))
        status.models = list(models) or status.models
        status.speed = speed if speed is None or speed > 0 else None  # 0.6.5 sends -1 for "unknown"
        return status

    def remove(self, url: str) -> bool:
        return self._nodes.pop(normalize_url(url), None) is not None

    def get(self, url: str) -> NodeStatus | None:
        return self._nodes.get(normalize_url(url))

    def items(self) -> list[tuple[str, NodeStatus]]:
        return list(self._nodes.items())

    def model_names(self) -> list[str]:
        """Every model some registered node serves, each once, in registration order."""
        return list(dict.fromkeys(m for status in self._nodes.values() for m in status.models))

    def record_probe(self, url: str, ok: bool) -> bool:
        """Count one health probe; True when the node just came back into service."""
        status = self.get(url)
        if status is None:
            return False
        if ok:
            came_back = not status.healthy
            status.failures, status.healthy = 0, True
            return came_back
        status.failures += 1
        if status.failures >= self._failure_threshold:
            status.healthy = False
        return False

    def mark_failed(self, url: str) -> None:
        """A request could not reach the node: out of service until a probe succeeds."""
        status = self.get(url)
        if status is not None:
            status.healthy = False

    def begin(self, url: str) -> float:
        """A request goes to `url`; returns its start time for `finish`."""
        status = self.get(url)
        if status is not None:
            status.unfinished += 1
        return self._clock()

    def finish(self, url: str, start: float, ok: bool) -> None:
        """The request from `begin` ended; a completed one adds to the node's latency window."""
        status = self.get(url)
        if status is None:  # removed meanwhile
            return
        status.unfinished = max(0, status.unfinished - 1)
        if ok:
            status.latency.append(self._clock() - start)


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/")
