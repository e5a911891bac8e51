"""Shared by the kernel tests: the device, dtype cases and tolerances, random paged caches."""

from __future__ import annotations

import math

import pytest
import torch

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="half precision runs on the GPU only")

# The interpreter computes with numpy, which has no bfloat16: half types are tested on the GPU.
DTYPES = [
    torch.float32,
    pytest.param(torch.bfloat16, marks=cuda_only),
    pytest.param(torch.float16, marks=cuda_only),
]
TOL = {
    torch.float32: {"atol": 2e-5, "rtol": 1e-4},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}


def gpu_cases(*cases) -> list:
    """Larger shapes, real model sizes: run only on the GPU, where they take milliseconds."""
    return [pytest.param(*c, marks=cuda_only) for c in cases]


def random_paged_cache(
    context_lens: list[int],
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    table_dtype: torch.dtype = torch.int32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches (unused slots hold noise too, so a read past a context shows), each
    sequence's blocks scattered over the pool, tables padded with 0 like the engine's.
    Returns k_cache, v_cache, block_tables, context_lens, all on DEVICE."""
    per_seq = [math.ceil(n / block_size) for n in context_lens]
    max_blocks = max(max(per_seq), 1)
    num_blocks = sum(per_seq) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    v_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    pool = torch.randperm(num_blocks).tolist()
    block_tables = torch.zeros(len(context_lens), max_blocks, dtype=table_dtype)
    for i, n in enumerate(per_seq):
        block_tables[i, :n] = torch.tensor(pool[:n], dtype=table_dtype)
        pool = pool[n:]
    context_lens_t = torch.tensor(context_lens, dtype=torch.int32)
    return k_cache, v_cache, block_tables.to(DEVICE), context_lens_t.to(DEVICE)


def slots_of(block_tables: torch.Tensor, block_size: int, seq: int, positions) -> torch.Tensor:
    """Flat cache slots of `positions` of sequence `seq`."""
    pos = torch.as_tensor(positions, device=block_tables.device)
    return block_tables[seq, pos // block_size].long() * block_size + pos % block_size


def one_token_decode_meta(block_table: list[int], context: int, block_size: int):
    """The attention metadata of one sequence's decode step (the layers' dispatch prepared),
    its new token at position context - 1 of the blocks `block_table`."""
    from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
    from lmdeploy.adapters.engines.pytorch.layers.attention import prepare_metadata

    last = context - 1
    slot = block_table[last // block_size] * block_size + last % block_size
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([slot], device=DEVICE),
        block_tables=torch.tensor([block_table], device=DEVICE),
        context_lens=torch.tensor([context], device=DEVICE),
        query_lens=[1],
        context_lens_list=[context],
        is_decode=True,
        num_cached_list=[last],
    )
    prepare_metadata(meta, block_size)
    return meta
