"""A step's sampling parameters as device columns, built once per step for `sampler.sample`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .....domain.sequence import Sequence


@dataclass
class SamplingBatch:
    temperature: torch.Tensor | None  # [B]; the four columns are None when all rows are greedy
    top_k: torch.Tensor | None  # [B] 0 = off
    top_p: torch.Tensor | None  # [B]
    min_p: torch.Tensor | None  # [B]
    repetition_penalty: torch.Tensor | None  # [B] or None when all 1
    all_greedy: bool
    seqs: list[Sequence]
    # Over the sampling rows (temperature > 0): whether any filter is on, and the largest top-k
    # when every one of them sets a top-k (0 otherwise).
    any_filter: bool = True
    max_top_k: int = 0
    # Tokens each sequence is behind the step being sampled: 1 for a decode step started before
    # the previous step's tokens were appended (seeds and min_new_tokens count them).
    lag: int = 0

    @classmethod
    def from_seqs(cls, seqs: list[Sequence], device: torch.device, lag: int = 0) -> SamplingBatch:
        params = [s.sampling for s in seqs]

        def col(values, dtype=torch.float32):
            # Pinned and asynchronous: a blocking copy would wait for the whole GPU queue,
            # which may hold a step started ahead.
            host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
            return host.to(device, non_blocking=True)

        penalties = [p.repetition_penalty for p in params]
        sampling = [p for p in params if p.temperature > 0]
        all_greedy = all(p.is_greedy for p in params)
        # An all-greedy step (the common decode case) needs none of the per-row columns: each
        # would be a host-to-device copy per step for nothing.
        maybe = (lambda values, dtype=torch.float32: None) if all_greedy else col
        return cls(
            temperature=maybe([p.temperature for p in params]),
            top_k=maybe([p.top_k for p in params], torch.int64),
            top_p=maybe([p.top_p for p in params]),
            min_p=maybe([p.min_p for p in params]),
            repetition_penalty=None if all(x == 1.0 for x in penalties) else col(penalties),
            all_greedy=all_greedy,
            seqs=seqs,
            any_filter=any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in sampling),
            max_top_k=max((p.top_k for p in sampling), default=0)
            if all(p.top_k > 0 for p in sampling)
            else 0,
            lag=lag,
        )
