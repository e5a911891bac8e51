"""Sampling on CUDA through the fused Triton kernel (`lmdeploy.kernels.sampling`).

The torch path sorts the vocabulary (or takes a top-k) and runs a dozen kernels per step; the
fused kernel does temperature, top-k, top-p, min-p and the exponential race in one launch,
with the same distribution. Each row's noise comes from its Philox seed: a seeded request
draws from `random_seed` and its position, as the torch path seeds its generator; the others
from seeds drawn off torch's default generator. Used where it measured faster
(benchmark/gpu_sampling.py): see `applies`.
"""

from __future__ import annotations

import torch

from ....kernels.sampling import fused_sample
from .sampling import SamplingBatch

# Smallest batch the fused kernel runs for (it wins from here on; benchmark/NOTES.md).
MIN_ROWS = 1


def applies(logits: torch.Tensor, batch: SamplingBatch) -> bool:
    return logits.is_cuda and not batch.all_greedy and logits.shape[0] >= MIN_ROWS


def _seeds(batch: SamplingBatch, device: torch.device) -> torch.Tensor:
    seeds = torch.randint(0, 2**62, (len(batch.seqs),)).tolist()
    for row, seq in enumerate(batch.seqs):
        seed = seq.sampling.random_seed
        if seed is not None:
            seeds[row] = (seed * 1_000_003 + seq.num_output_tokens) % 2**62
    return torch.tensor(seeds, dtype=torch.int64).to(device, non_blocking=True)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Token ids [B] for rows of any mix of greedy and sampling parameters."""
    assert batch.temperature is not None, "a batch with sampling rows carries its columns"
    return fused_sample(
        logits.contiguous(),
        batch.temperature,
        batch.top_k,
        batch.top_p,
        batch.min_p,
        _seeds(batch, logits.device),
    )
