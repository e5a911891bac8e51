"""Synthetic request workloads shared by the benchmarks (seeded, so runs are comparable)."""

from __future__ import annotations

import math
import random


def sharegpt_like(
    num: int,
    seed: int = 0,
    mean_in: float = 220,
    mean_out: float = 200,
    cap: int = 2048,
    sigma: float = 0.9,
) -> list[tuple[int, int]]:
    """(input_len, output_len) pairs from log-normals with the given means, capped."""
    rng = random.Random(seed)

    def draw(mean: float) -> int:
        mu = math.log(mean) - sigma**2 / 2  # so that E[x] = mean
        return max(4, min(cap, int(rng.lognormvariate(mu, sigma))))

    return [(draw(mean_in), draw(mean_out)) for _ in range(num)]


def random_prompt(length: int, vocab: int, rng: random.Random) -> list[int]:
    return [rng.randrange(100, vocab) for _ in range(length)]
