"""LoRA on CUDA: the step's rows grouped by adapter slot (segments, built on the host), then
two launches per adapted linear whatever its shards: the shrink and the expand."""

from __future__ import annotations

import torch

from ......kernels.lora import lora_expand, lora_segments, lora_shrink

Segments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # order, seg_start, seg_len


def pack_segments(row_slots: list[int], num_slots: int, num_rows: int) -> torch.Tensor:
    """One int32 host tensor [seg_start (num_slots) | seg_len (num_slots) | order (num_rows)]
    of `row_slots` padded with base rows (-1) to `num_rows`: one copy to the device."""
    padded = row_slots + [-1] * (num_rows - len(row_slots))
    order, seg_start, seg_len = lora_segments(padded, num_slots)
    return torch.tensor(seg_start + seg_len + order, dtype=torch.int32)


def split_segments(packed: torch.Tensor, num_slots: int, num_rows: int) -> Segments:
    """Views of a packed buffer (see `pack_segments`) for a step of `num_rows` rows."""
    order = packed[2 * num_slots : 2 * num_slots + num_rows]
    return order, packed[:num_slots], packed[num_slots : 2 * num_slots]


class GraphSegments:
    """The segments a decode graph reads, at a fixed device address, and two pinned host
    buffers that take turns staging them (each rewritten only once the copy that last read it
    ran, an event): staging the rows of a step started ahead (decode_ahead.py) neither waits
    for the step queued before it nor overwrites what that step reads."""

    def __init__(self, num_slots: int, max_rows: int, device: torch.device) -> None:
        self.num_slots, self.max_rows = num_slots, max_rows
        size = 2 * num_slots + max_rows
        self.device_buffer = torch.zeros(size, dtype=torch.int32, device=device)
        pin = device.type == "cuda"
        self._hosts = [torch.zeros(size, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def view(self, num_rows: int) -> Segments:
        return split_segments(self.device_buffer, self.num_slots, num_rows)

    def load(self, row_slots: list[int]) -> None:
        """Each row's slot (-1: the base model; rows past them are padding, the base's too),
        queued behind the work already on the stream."""
        turn, self._turn = self._turn, self._turn ^ 1
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()
        host = self._hosts[turn]
        host.copy_(pack_segments(row_slots, self.num_slots, self.max_rows))
        self.device_buffer.copy_(host, non_blocking=True)
        if self.device_buffer.is_cuda:
            self._copied[turn] = torch.cuda.Event()
            self._copied[turn].record()


def add_lora(
    x: torch.Tensor,
    out: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    segments: Segments,
    scales: torch.Tensor,
    shard_sizes: list[int],
) -> None:
    """out[t] += scales[s] * (x[t] @ lora_a[s]^T) @ lora_b[s]^T per shard, s = row t's slot."""
    part = lora_shrink(x, lora_a, *segments)
    lora_expand(part, lora_b, *segments, scales, out, shard_sizes)
