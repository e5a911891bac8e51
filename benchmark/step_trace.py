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


def breakdown(trace: StepTrace, start: float, end: float, bucket: int = 64) -> dict:
    """Where a run's wall time went, from its forward passes: each step owns the time from the
    previous step's end to its own (its GPU time and the host work it waited on), grouped into
    decode-only steps by batch size (buckets of `bucket` rows) and steps carrying prompt tokens.
    What is left is before the first step (admission, the first prefill's host work) and after
    the last (detokenising, the caller)."""
    steps = [s for s in trace.steps if start <= s[0] and s[1] <= end]
    groups: dict[str, list[float]] = {}
    prompt_steps: list[tuple[int, int, float]] = []
    prompt_tokens = 0
    prev_end = steps[0][0] if steps else start
    for _, step_end, seqs, tokens, decode in steps:
        if decode:
            low = (seqs - 1) // bucket * bucket + 1
            key = f"decode {low}-{low + bucket - 1}"
        else:
            key = "with prompt tokens"
            prompt_tokens += tokens - seqs  # at most one decode token a sequence
            prompt_steps.append((seqs, tokens, round((step_end - prev_end) * 1e3, 2)))
        groups.setdefault(key, []).append(step_end - prev_end)
        prev_end = step_end
    return {
        "wall_s": end - start,
        "before_first_step_s": (steps[0][0] - start) if steps else end - start,
        "after_last_step_s": (end - steps[-1][1]) if steps else 0.0,
        "steps": len(steps),
        "prompt_tokens_in_steps_about": prompt_tokens,
        "groups": {
            key: {
                "steps": len(times),
                "seconds": sum(times),
                "ms_p50": percentile(times, 0.5) * 1e3,
            }
            for key, times in sorted(groups.items(), key=lambda kv: _order(kv[0]))
        },
        "prompt_steps (seqs, tokens, ms)": prompt_steps,
    }


def _order(key: str) -> tuple[int, int]:
    return (1, 0) if not key.startswith("decode") else (0, int(key.split()[1].split("-")[0]))
