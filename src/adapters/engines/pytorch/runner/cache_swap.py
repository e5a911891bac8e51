"""The host-memory K/V pool and the block copies of preemption by swap.

The pool is block-major, `[num_cpu_blocks, 2 * num_layers, block_size, kv_heads, head_dim]`, so
one host block (K and V of every layer) is one contiguous slab, and pinned when the device is
CUDA. A swap-out gathers the step's blocks of every layer on the device into one staging tensor
(an index_select per layer tensor), then copies each block's slab to its host block with
non_blocking=True; a swap-in copies the slabs up into a device staging tensor and scatters it
with one index_copy_ per layer tensor. Every copy is ordered on the current stream, so the
forward pass that follows sees the swapped-in blocks and the host never waits: no sync at all.
Bytes per swapped block: 2 * num_layers * block_size * kv_heads * head_dim * itemsize.
"""

from __future__ import annotations

import torch

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]
BlockPairs = list[tuple[int, int]]


class CacheSwapper:
    def __init__(self, device_caches: KVCaches, num_cpu_blocks: int) -> None:
        if num_cpu_blocks < 1:
            raise ValueError(f"num_cpu_blocks must be >= 1, got {num_cpu_blocks}")
        self.device_caches = [t for layer in device_caches for t in layer]  # K0, V0, K1, V1 ...
        first = self.device_caches[0]
        self.device = first.device
        self.block_shape = (len(self.device_caches), *first.shape[1:])
        pin = self.device.type == "cuda"  # DMA straight from/to the pool, asynchronously
        try:
            self.host_cache = torch.empty(
                (num_cpu_blocks, *self.block_shape), dtype=first.dtype, pin_memory=pin
            )
        except RuntimeError as exc:
            gib = first[0].numel() * first.element_size() * len(self.device_caches)
            raise RuntimeError(
                f"could not allocate {gib * num_cpu_blocks / 2**30:.1f} GiB of host memory "
                f"for num_cpu_blocks={num_cpu_blocks}; lower num_cpu_blocks"
            ) from exc

    @property
    def num_cpu_blocks(self) -> int:
        return self.host_cache.shape[0]

    def apply(self, blocks_to_swap_out: BlockPairs, blocks_to_swap_in: BlockPairs) -> None:
        """Swap-outs first: this step's swap-ins and new blocks may reuse what they freed."""
        if blocks_to_swap_out:
            self.swap_out(blocks_to_swap_out)
        if blocks_to_swap_in:
            self.swap_in(blocks_to_swap_in)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.int64, device=self.device)

    def swap_out(self, pairs: BlockPairs) -> None:
        """Copy device blocks to host blocks, (device id, host id) per pair."""
        src = self._ids([s for s, _ in pairs])
        staged = torch.stack([cache.index_select(0, src) for cache in self.device_caches], 1)
        for row, (_, host) in zip(staged, pairs, strict=True):
            self.host_cache[host].copy_(row, non_blocking=True)

    def swap_in(self, pairs: BlockPairs) -> None:
        """Copy host blocks to device blocks, (host id, device id) per pair."""
        staged = torch.empty(
            (len(pairs), *self.block_shape), dtype=self.host_cache.dtype, device=self.device
        )
        for row, (host, _) in zip(staged, pairs, strict=True):
            row.copy_(self.host_cache[host], non_blocking=True)
        dst = self._ids([d for _, d in pairs])
        for i, cache in enumerate(self.device_caches):
            cache.index_copy_(0, dst, staged[:, i])
