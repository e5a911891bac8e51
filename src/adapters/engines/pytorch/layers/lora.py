"""LoRA on a built model's linears, added without touching them: a forward hook on each adapted
`LinearBase` adds `scale * (x @ A^T) @ B^T` of each row's adapter to the base output.

Each adapted linear holds stacked weights for the resident adapter slots (`LoraStack`); the
step's rows name their slot in the shared `LoraBatch` the runner fills before each forward
pass (-1: the base model). On CUDA the Triton shrink/expand kernels take the rows grouped by
slot (segments) and serve every adapter and every shard of the linear in one launch each, with
no torch op between them (a decode graph replays just the two); on a CPU a torch path
groups rows by adapter too (one matmul pair per adapter the step touches, not per request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..backends.cuda.lora import GraphSegments


@dataclass
class LoraBatch:
    """The step's adapter of each token row; set by the runner, read by every hook."""

    num_slots: int
    scales: torch.Tensor  # [num_slots] float32 on the device
    active: bool = False  # False: no row of the step has an adapter; the hooks step aside
    # CUDA: the rows grouped by slot (order, seg_start, seg_len), int32 on the device.
    segments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # Elsewhere (CPU, NPU): (slot, rows) of each adapter the step touches.
    groups: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    # CUDA graphs: the segments they read, rewritten before each replay.
    graph_rows: GraphSegments | None = None

    def set_rows(self, row_slots: list[int], device: torch.device) -> None:
        self.active = True
        if device.type == "cuda":
            from ..backends.cuda.lora import pack_segments, split_segments

            num = len(row_slots)
            packed = pack_segments(row_slots, self.num_slots, num).to(device)
            self.segments = split_segments(packed, self.num_slots, num)
            return
        by_slot: dict[int, list[int]] = {}
        for row, slot in enumerate(row_slots):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(row)
        # On the device: `index_add_` on an NPU's output takes no host index.
        self.groups = [(s, torch.tensor(rows, device=device)) for s, rows in by_slot.items()]

    def use_graph_rows(self, size: int) -> None:
        """While capturing the decode graph of `size` rows: read the persistent segments."""
        self.active = True
        self.segments = self.graph_rows.view(size)

    def load_graph_rows(self, row_slots: list[int]) -> None:
        """Before a replay: each row's slot; the padding rows are the base model's."""
        self.graph_rows.load(row_slots)


class LoraStack(nn.Module):
    """One linear's adapter slots: A [slots, shards * rank, in], B [slots, out, rank]; shard i
    of the linear's output (q, k, v or gate, up; the whole output otherwise) takes A rows
    [i * rank, (i + 1) * rank)."""

    def __init__(
        self,
        batch: LoraBatch,
        shards: list[tuple[int, int]],
        rank: int,
        in_size: int,
        num_slots: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.batch, self.shards, self.rank = batch, shards, rank
        self.shard_sizes = [size for _, size in shards]
        # the CUDA expand finds each output column's shard, of up to 3, from the sizes alone
        assert len(shards) <= 3 and [start for start, _ in shards] == [
            sum(self.shard_sizes[:i]) for i in range(len(shards))
        ], f"LoRA needs up to 3 shards side by side from column 0, got {shards}"
        out_size = sum(self.shard_sizes)
        self.lora_a = torch.zeros(
            num_slots, len(shards) * rank, in_size, dtype=dtype, device=device
        )
        self.lora_b = torch.zeros(num_slots, out_size, rank, dtype=dtype, device=device)

    def hook(self, _module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not self.batch.active:
            return out
        x = args[0].reshape(-1, self.lora_a.shape[2])
        flat = out.view(-1, out.shape[-1])
        if flat.is_cuda:
            self._add_triton(x, flat)
        else:
            self._add_grouped(x, flat)
        return out

    def _add_triton(self, x: torch.Tensor, out: torch.Tensor) -> None:
        from ..backends.cuda.lora import add_lora  # Triton: imported only where it runs

        batch = self.batch
        add_lora(x, out, self.lora_a, self.lora_b, batch.segments, batch.scales, self.shard_sizes)

    def _add_grouped(self, x: torch.Tensor, out: torch.Tensor) -> None:
        scales, rank = self.batch.scales, self.rank
        for slot, rows in self.batch.groups:
            xa = x[rows] @ self.lora_a[slot].T  # [rows, shards * rank]
            delta = torch.cat(
                [
                    xa[:, i * rank : (i + 1) * rank] @ self.lora_b[slot, start : start + size].T
                    for i, (start, size) in enumerate(self.shards)
                ],
                dim=1,
            )
            out.index_add_(0, rows, delta, alpha=float(scales[slot]))
