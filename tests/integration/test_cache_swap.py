"""The runner's block copies: swapping out then in lands the same K/V bytes at the new block
ids, for every layer, and touches nothing else. On CPU tensors, and on CUDA where there is one
(pinned staging, non-blocking copies)."""

from __future__ import annotations

import random

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.runner.cache_swap import CacheSwapper

NUM_LAYERS, NUM_BLOCKS, NUM_CPU_BLOCKS, BLOCK = 3, 11, 7, (5, 2, 3)  # irregular on purpose
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_caches(dtype: torch.dtype, device: str = "cpu") -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    return [
        tuple(torch.randn((NUM_BLOCKS, *BLOCK), generator=g).to(device, dtype) for _ in range(2))
        for _ in range(NUM_LAYERS)
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(4))
def test_swap_out_then_in_restores_the_bytes_at_the_new_block_ids(dtype, seed, device):
    rng = random.Random(seed)
    caches = random_caches(dtype, device)
    before = [(k.clone(), v.clone()) for k, v in caches]
    swapper = CacheSwapper(caches, NUM_CPU_BLOCKS)
    n = rng.randint(1, NUM_CPU_BLOCKS)
    out_src = rng.sample(range(NUM_BLOCKS), n)
    host = rng.sample(range(NUM_CPU_BLOCKS), n)
    swapper.apply(list(zip(out_src, host, strict=True)), [])
    for k, v in caches:  # the device blocks are reused by others meanwhile
        k[out_src] = 0
        v[out_src] = 0
    in_dst = rng.sample(range(NUM_BLOCKS), n)
    untouched = [b for b in range(NUM_BLOCKS) if b not in in_dst]
    scribbled = [(k.clone(), v.clone()) for k, v in caches]
    swapper.apply([], list(zip(host, in_dst, strict=True)))
    for (k, v), (k0, v0), (k1, v1) in zip(caches, before, scribbled, strict=True):
        assert torch.equal(k[in_dst], k0[out_src]) and torch.equal(v[in_dst], v0[out_src])
        assert torch.equal(k[untouched], k1[untouched]) and torch.equal(v[untouched], v1[untouched])


@pytest.mark.parametrize("device", DEVICES)
def test_one_step_swaps_out_before_it_swaps_in_to_the_freed_blocks(device):
    caches = random_caches(torch.float32, device)
    before = [(k.clone(), v.clone()) for k, v in caches]
    swapper = CacheSwapper(caches, NUM_CPU_BLOCKS)
    swapper.apply([(4, 0), (9, 1)], [])
    swapper.apply([(2, 6)], [(0, 2)])  # block 2 leaves for host 6 as host 0 comes into it
    swapper.apply([], [(6, 9), (1, 4)])
    for (k, v), (k0, v0) in zip(caches, before, strict=True):
        assert torch.equal(k[[2, 4, 9]], k0[[4, 9, 2]]) and torch.equal(v[[2, 4, 9]], v0[[4, 9, 2]])


def test_the_host_pool_has_the_device_geometry():
    caches = random_caches(torch.float16)
    swapper = CacheSwapper(caches, NUM_CPU_BLOCKS)
    assert swapper.host_cache.shape == (NUM_CPU_BLOCKS, 2 * NUM_LAYERS, *BLOCK)
    assert swapper.host_cache.dtype == torch.float16 and swapper.num_cpu_blocks == NUM_CPU_BLOCKS
    with pytest.raises(ValueError, match="num_cpu_blocks"):
        CacheSwapper(caches, 0)
