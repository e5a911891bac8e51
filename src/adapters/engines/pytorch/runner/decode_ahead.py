"""A decode step started before the host has the previous step's tokens.

Between two decode steps the host appends the sampled tokens, checks stop conditions, reports
them and plans the next step; with the next step waiting on that, the GPU idles for all of it
(~140 us a step for an 8B model at batch 1, with CUDA graphs). The scheduler forecasts the next
decode batch (`StepPlan.forecast`: the sequences that continue unless they stop on the token
being sampled); the runner starts that step right behind the current one on the device, its
input ids taken from the current step's device tokens, and only then waits for the current
tokens. The host's work for step n+1 then overlaps the GPU's work on it.

When the real next plan comes, its sequences must each have been computed ahead at the same
position and slot; rows of sequences that stopped are dropped. Any other plan (a prefill, a
swap, a new request) runs normally, and the step started ahead is wasted: its K/V writes went
to slots of the forecast sequences' own blocks at positions past their last token, which the
real step that computes those positions overwrites first (and a sequence that stopped gives
its blocks back behind those writes on the same stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .....domain.scheduler import StepPlan
from .....domain.sequence import Sequence


@dataclass
class AheadCounters:
    started: int = 0  # forecast steps queued
    used: int = 0  # of them, those whose rows the real next plan took


class HostTokens:
    """Token ids copied to the host asynchronously; `wait()` blocks on this copy only, not on
    whatever was queued behind it."""

    def __init__(self, tokens: torch.Tensor) -> None:
        if tokens.is_cuda:
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._host.copy_(tokens, non_blocking=True)
            self._done: torch.cuda.Event | None = torch.cuda.Event()
            self._done.record()
        else:
            self._host, self._done = tokens, None

    def wait(self) -> list[int]:
        if self._done is not None:
            self._done.synchronize()
        return self._host.tolist()


@dataclass
class AheadStep:
    """The forecast step in flight: which sequence took which row, at which slot."""

    rows: dict[int, int]  # seq_id -> row of `tokens`
    slots: list[int]  # the cache slot each row wrote
    tokens: torch.Tensor  # [rows] sampled ids, on the device
    host: HostTokens

    @classmethod
    def slot_of(cls, seq: Sequence, lag: int, block_size: int) -> int:
        pos = seq.num_cached_tokens + lag
        return seq.block_table[pos // block_size] * block_size + pos % block_size

    def rows_for(self, plan: StepPlan, block_size: int) -> list[int] | None:
        """The rows that computed `plan`, in its order, or None when it is not a subset of
        this step: a sequence not computed ahead, or at another slot (preempted and back)."""
        if plan.blocks_to_swap_out or plan.blocks_to_swap_in:
            return None
        rows = []
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            row = self.rows.get(seq.seq_id)
            if row is None or num != 1 or seq.num_new_tokens != 1:
                return None
            if self.slots[row] != self.slot_of(seq, 0, block_size):
                return None
            rows.append(row)
        return rows


def is_plain(seq: Sequence) -> bool:
    """Sampling that needs nothing of the previous token but its id on the device: no
    repetition penalty (the token history), no logprobs, processors, grammar or hidden rows
    (host work on this step's own outputs)."""
    s = seq.sampling
    return (
        s.repetition_penalty == 1.0
        and s.logprobs is None
        and not s.logits_processors
        and not s.needs_hidden_rows
        and not s.extra
    )
