"""The host-memory K/V pool and the block copies of preemption by swap.

Each layer's cache is a tuple of block-major tensors: (K, V), or with a quantized cache (K, V,
K scale/zero, V scale/zero), whose shapes and dtypes differ. The tensors of one shape and dtype
form a group with its own host pool, `[num_cpu_blocks, tensors in group, *block shape]`, so one
host block of a group is one contiguous slab, pinned when the device is CUDA; a block's
scales travel with its data because every group swaps the same block ids.

A swap-out gathers the step's blocks of every tensor on the device into one staging tensor per
group (an index_select per tensor), then copies each block's slab to its host block with
non_blocking=True; a swap-in copies the slabs up into a device staging tensor and scatters it
with one index_copy_ per tensor. Every copy is ordered on the current stream, so the forward
pass that follows sees the swapped-in blocks and the host never waits: no sync at all.
Bytes per swapped block: the block bytes of every tensor of every layer.
"""

from __future__ import annotations

import torch

KVCaches = list[tuple[torch.Tensor, ...]]
BlockPairs = list[tuple[int, int]]


class _Group:
    """Device tensors of one block shape and dtype, and their host pool."""

    def __init__(self, tensors: list[torch.Tensor], num_cpu_blocks: int) -> None:
        self.tensors = tensors
        first = tensors[0]
        self.device = first.device
        self.block_shape = (len(tensors), *first.shape[1:])
        pin = self.device.type == "cuda"  # DMA straight from/to the pool, asynchronously
        try:
            self.host = torch.empty(
                (num_cpu_blocks, *self.block_shape), dtype=first.dtype, pin_memory=pin
            )
        except RuntimeError as exc:
            gib = first[0].numel() * first.element_size() * len(tensors) * num_cpu_blocks
            raise RuntimeError(
                f"could not allocate {gib / 2**30:.1f} GiB of host memory for "
                f"num_cpu_blocks={num_cpu_blocks}; lower num_cpu_blocks"
            ) from exc

    def swap_out(self, src: torch.Tensor, hosts: list[int]) -> None:
        staged = torch.stack([t.index_select(0, src) for t in self.tensors], 1)
        for row, host in zip(staged, hosts, strict=True):
            self.host[host].copy_(row, non_blocking=True)

    def swap_in(self, hosts: list[int], dst: torch.Tensor) -> None:
        staged = torch.empty(
            (len(hosts), *self.block_shape), dtype=self.host.dtype, device=self.device
        )
        for row, host in zip(staged, hosts, strict=True):
            row.copy_(self.host[host], non_blocking=True)
        for i, tensor in enumerate(self.tensors):
            tensor.index_copy_(0, dst, staged[:, i])


class CacheSwapper:
    def __init__(self, device_caches: KVCaches, num_cpu_blocks: int) -> None:
        if num_cpu_blocks < 1:
            raise ValueError(f"num_cpu_blocks must be >= 1, got {num_cpu_blocks}")
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for layer in device_caches:  # K0, V0, K1, V1 ... within a group
            for t in layer:
                by_kind.setdefault((t.dtype, tuple(t.shape[1:])), []).append(t)
        self.groups = [_Group(tensors, num_cpu_blocks) for tensors in by_kind.values()]
        self.device = device_caches[0][0].device
        self.num_cpu_blocks = num_cpu_blocks

    @property
    def host_pools(self) -> list[torch.Tensor]:
        return [g.host for g in self.groups]

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
        for group in self.groups:
            group.swap_out(src, [h for _, h in pairs])

    def swap_in(self, pairs: BlockPairs) -> None:
        """Copy host blocks to device blocks, (host id, device id) per pair."""
        dst = self._ids([d for _, d in pairs])
        for group in self.groups:
            group.swap_in([h for h, _ in pairs], dst)
