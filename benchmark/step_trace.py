"""Record every forward pass of an engine: wall time, tokens, and whether it was decode-only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepTrace:
    steps: list[tuple[float, float, int, int, bool]] = field(
        default_factory=list
    )  # start, end, seqs, tokens, decode

    def install(self, runner, synchronize=None) -> None:
        original = runner.step

        def traced(plan):
            start = time.perf_counter()
            out = original(plan)  # returns host ids: the step's own sync
            end = time.perf_counter()
            decode = all(
                n == 1 and s.num_output_tokens > 0
                for s, n in zip(plan.seqs, plan.num_scheduled, strict=True)
            )
            self.steps.append((start, end, len(plan.seqs), plan.num_tokens, decode))
            return out

        runner.step = traced

    def decode_latencies(self) -> list[float]:
        return [end - start for start, end, _, _, decode in self.steps if decode]

    def clear(self) -> None:
        self.steps.clear()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
