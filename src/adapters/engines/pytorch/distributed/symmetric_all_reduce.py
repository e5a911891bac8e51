"""A one-shot all-reduce through peer-readable GPU memory, for the small sums of decode steps.

A batch-1 decode step of a tensor-parallel Llama runs two all-reduces a layer of one row each
(8-16 KB). NCCL's latency at that size (~10-20 us through its proxy and protocol) is a third of
a tp=2 8B step on H200s (benchmark/NOTES.md). PyTorch's symmetric memory maps every rank's
buffer into every other rank's address space (CUDA IPC over NVLink, no multicast), and its
`one_shot_all_reduce` kernel reads the peers' buffers directly after a barrier on signal pads:
two launches (the copy in, the sum out), both capturable in CUDA graphs. Larger tensors (the
prefill's) keep NCCL, which is bandwidth-optimal there.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# One-shot reads every peer's whole tensor. Measured on 2 H200s (benchmark/NOTES.md): at one row
# (8 KB) it takes 6.9 us in a CUDA graph against NCCL's 23 us, but with the bound at 512 KB the
# 1000-request run (decode batches of up to 64 rows on it) fell to 8651 output tok/s from NCCL's
# 9803. The bound keeps it to a few rows of the largest hidden sizes.
MAX_BYTES = 64 * 1024


class SymmetricAllReduce:
    """Sums a contiguous tensor of at most `MAX_BYTES` over the default process group."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        group = dist.distributed_c10d._get_default_group()
        self.group_name = group.group_name
        with warnings.catch_warnings():  # needed before torch 2.12, deprecated since
            warnings.simplefilter("ignore", FutureWarning)
            if not symm_mem.is_symm_mem_enabled_for_group(self.group_name):
                symm_mem.enable_symm_mem_for_group(self.group_name)
        self.buffer = symm_mem.empty(MAX_BYTES, dtype=torch.uint8, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)

    def fits(self, x: torch.Tensor) -> bool:
        return x.is_contiguous() and x.numel() * x.element_size() <= MAX_BYTES

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the ranks, in place."""
        staged = self.buffer[: x.numel() * x.element_size()].view(x.dtype).view(x.shape)
        staged.copy_(x)
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, out=x)
        return x


def try_symmetric_all_reduce(device: torch.device) -> SymmetricAllReduce | None:
    """The one-shot all-reduce if every rank can set it up and it sums right, else None (NCCL
    for every size). Collective: every rank of the default group calls it."""
    fast, error = None, None
    try:
        fast = SymmetricAllReduce(device)
        probe = torch.full((4,), float(dist.get_rank() + 1), device=device)
        expected = dist.get_world_size() * (dist.get_world_size() + 1) / 2
        ok = bool((fast(probe) == expected).all())
    except Exception as exc:  # no P2P between the GPUs, an older torch, ...
        ok, error = False, exc
    agreed = torch.tensor([int(ok)], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)  # one rank without it: none uses it
    if not agreed.item():
        logger.info("one-shot all-reduce unavailable (%s): NCCL for every size", error or "a peer")
        return None
    return fast
