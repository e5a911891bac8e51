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
    (pool,) = swapper.host_pools
    assert pool.shape == (NUM_CPU_BLOCKS, 2 * NUM_LAYERS, *BLOCK)
    assert pool.dtype == torch.float16 and swapper.num_cpu_blocks == NUM_CPU_BLOCKS
    with pytest.raises(ValueError, match="num_cpu_blocks"):
        CacheSwapper(caches, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_quantized_cache_swaps_its_scales_with_its_blocks(device):
    """uint8 K/V and their (scale, zero) tensors: two groups, each one host pool, every
    tensor's block lands at the new id."""
    g = torch.Generator().manual_seed(1)
    caches = [
        (
            *(torch.randint(0, 256, (NUM_BLOCKS, 5, 2, 4), generator=g).to(device, torch.uint8)
              for _ in range(2)),
            *(torch.randn((NUM_BLOCKS, 5, 2, 2), generator=g).to(device) for _ in range(2)),
        )
        for _ in range(NUM_LAYERS)
    ]  # fmt: skip
    before = [tuple(t.clone() for t in layer) for layer in caches]
    swapper = CacheSwapper(caches, NUM_CPU_BLOCKS)
    assert [p.shape[1] for p in swapper.host_pools] == [2 * NUM_LAYERS, 2 * NUM_LAYERS]
    swapper.apply([(3, 0), (8, 5)], [])
    for layer in caches:
        for t in layer:
            t[[3, 8]] = 0
    swapper.apply([], [(0, 8), (5, 1)])
    for layer, old in zip(caches, before, strict=True):
        for t, t0 in zip(layer, old, strict=True):
            assert torch.equal(t[[8, 1]], t0[[3, 8]])
