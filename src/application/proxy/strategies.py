"""The three documented dispatch strategies, as choices over the healthy candidate nodes.

Ties break at random so that identical idle nodes share the load."""

from __future__ import annotations

import random
from statistics import fmean

from .nodes import NodeStatus

STRATEGIES = ("random", "min_expected_latency", "min_observed_latency")

Candidates = list[tuple[str, NodeStatus]]


def _speeds(candidates: Candidates) -> list[float]:
    """Each node's speed; a node without one counts as the average of those that have one."""
    known = [s.speed for _, s in candidates if s.speed is not None]
    average = fmean(known) if known else 1.0
    return [s.speed if s.speed is not None else average for _, s in candidates]


def _random(candidates: Candidates, rng: random.Random) -> str:
    """Weighted by speed: a node twice as fast gets twice the requests."""
    return rng.choices([url for url, _ in candidates], weights=_speeds(candidates))[0]


def _lowest(candidates: Candidates, costs: list[float], rng: random.Random) -> str:
    best = min(costs)
    return rng.choice([url for (url, _), c in zip(candidates, costs, strict=True) if c == best])


def _min_expected_latency(candidates: Candidates, rng: random.Random) -> str:
    """The node that would finish this request soonest: its queue (this one included) over
    its speed."""
    costs = [
        (s.unfinished + 1) / v for (_, s), v in zip(candidates, _speeds(candidates), strict=True)
    ]
    return _lowest(candidates, costs, rng)


def _min_observed_latency(candidates: Candidates, rng: random.Random) -> str:
    """The node whose recent requests finished fastest on average. A node with no finished
    request yet counts as fastest, so that every node gets measured."""
    costs = [fmean(s.latency) if s.latency else 0.0 for _, s in candidates]
    return _lowest(candidates, costs, rng)


_PICKERS = {
    "random": _random,
    "min_expected_latency": _min_expected_latency,
    "min_observed_latency": _min_observed_latency,
}


def pick_node(strategy: str, candidates: Candidates, rng: random.Random) -> str:
    if not candidates:
        raise ValueError("pick_node needs at least one candidate")
    try:
        picker = _PICKERS[strategy]
    except KeyError:
        raise ValueError(
            f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        ) from None
    return picker(candidates, rng)
