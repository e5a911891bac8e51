"""Sampling on CUDA through the fused Triton kernel (`lmdeploy.kernels.sampling`).

The torch path sorts the vocabulary (or takes a top-k) and runs a dozen kernels per step; the
fused kernel does temperature, top-k, top-p, min-p and the exponential race in one launch,
with the same distribution, but it only wins for large batches that the torch path would sort
(see `applies`). Each row's noise comes from its Philox seed: a seeded request
draws from `random_seed` and its position, as the torch path seeds its generator; the others
from seeds drawn off torch's default generator. Measured by benchmark/gpu_sampling.py.
"""

from __future__ import annotations

import torch

from .....kernels.sampling import fused_sample
from .batch import SamplingBatch

# Smallest batch the fused kernel runs for. Measured on an H200, vocab 128256: one program per
# row re-reads it ~15-30 times, so the kernel takes ~1.85 ms up to 64 rows (torch's sort path:
# 0.7 ms at 1-16 rows, 1.4 ms at 64) and 2.6 ms at 256 rows, where torch's sort takes 4.1 ms.
MIN_ROWS = 128


def applies(logits: torch.Tensor, batch: SamplingBatch) -> bool:
    """Only where torch would sort the whole vocabulary: with a top-k on every sampling row,
    torch's `topk` path (0.4-0.95 ms) beats the kernel at every batch size. And only when no
    sampling row sets a top-k: the torch path applies top-p and min-p to the distribution
    renormalised after top-k (as transformers does), the kernel to the whole vocabulary's."""
    return (
        logits.is_cuda
        and not batch.all_greedy
        and logits.shape[0] >= MIN_ROWS
        and not any(s.sampling.top_k > 0 for s in batch.seqs if s.sampling.temperature > 0)
    )


def _seeds(batch: SamplingBatch, device: torch.device) -> torch.Tensor:
    seeds = torch.randint(0, 2**62, (len(batch.seqs),)).tolist()
    for row, seq in enumerate(batch.seqs):
        seed = seq.sampling.random_seed
        if seed is not None:
            seeds[row] = (seed * 1_000_003 + seq.num_output_tokens + batch.lag) % 2**62
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
