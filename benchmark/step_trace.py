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
        """Per decode step, the time from the previous step's end to its own: the inter-token
        latency, with the engine's host work between steps in it. (A step's own call is not
        the measure: with the next decode step started ahead, the host work between calls
        overlaps the GPU and a call only waits for the rest.)"""
        return [
            end - prev_end
            for (_, prev_end, *_), (_, end, _, _, decode) in zip(
                self.steps, self.steps[1:], strict=False
            )
            if decode
        ]

    def clear(self) -> None:
        self.steps.clear()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
