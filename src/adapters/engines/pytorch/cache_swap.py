"""The host-memory K/V pool and the block copies of preemption by swap.

The pool is one tensor, `[2 * num_layers, num_cpu_blocks, block_size, kv_heads, head_dim]`
(K and V of every layer), so one index_copy_/index_select moves a step's blocks for all layers
at once on the host side. The device cache stays a list of per-layer tensors (the model and the
CUDA graphs hold them), gathered or scattered with one index op per tensor.

On CUDA the pool itself is pageable: a swap-in gathers the blocks into a pinned staging buffer
and copies that to the device with non_blocking=True (PyTorch's pinned allocator keeps the
buffer alive until the copy is done), and a swap-out gathers on the device and makes one
device-to-host copy. Pinning the whole pool would lock host memory for no gain on this path.
Bytes moved per swapped block: 2 * num_layers * block_size * kv_heads * head_dim * itemsize.
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
        shape = (len(self.device_caches), num_cpu_blocks, *first.shape[1:])
        try:
            self.host_cache = torch.zeros(shape, dtype=first.dtype, device="cpu")
        except RuntimeError as exc:
            gib = first[0].numel() * first.element_size() * shape[0] * num_cpu_blocks / 2**30
            raise RuntimeError(
                f"could not allocate {gib:.1f} GiB of host memory for num_cpu_blocks="
                f"{num_cpu_blocks}; lower num_cpu_blocks"
            ) from exc

    @property
    def num_cpu_blocks(self) -> int:
        return self.host_cache.shape[1]

    def apply(self, blocks_to_swap_out: BlockPairs, blocks_to_swap_in: BlockPairs) -> None:
        """Swap-outs first: this step's swap-ins and new blocks may reuse what they freed."""
        if blocks_to_swap_out:
            self.swap_out(blocks_to_swap_out)
        if blocks_to_swap_in:
            self.swap_in(blocks_to_swap_in)

    def swap_out(self, pairs: BlockPairs) -> None:
        """Copy device blocks to host blocks, (device id, host id) per pair."""
        src = torch.tensor([s for s, _ in pairs], dtype=torch.int64, device=self.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.int64)
        staged = torch.stack([cache.index_select(0, src) for cache in self.device_caches])
        self.host_cache.index_copy_(1, dst, staged.cpu())  # .cpu(): the one sync, before reuse

    def swap_in(self, pairs: BlockPairs) -> None:
        """Copy host blocks to device blocks, (host id, device id) per pair."""
        src = torch.tensor([s for s, _ in pairs], dtype=torch.int64)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.int64, device=self.device)
        pin = self.device.type == "cuda"
        shape = (self.host_cache.shape[0], len(pairs), *self.host_cache.shape[2:])
        staged = torch.empty(shape, dtype=self.host_cache.dtype, pin_memory=pin)
        torch.index_select(self.host_cache, 1, src, out=staged)
        staged = staged.to(self.device, non_blocking=pin)
        for cache, blocks in zip(self.device_caches, staged, strict=True):
            cache.index_copy_(0, dst, blocks)
