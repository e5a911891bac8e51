"""A decode step's inputs, written into one pinned host buffer and sent in one copy.

Between two CUDA-graph replays the GPU waits for the host, so a decode step's host work before
the replay is pure loss. Building each input as its own tensor from Python lists cost a
pageable host-to-device copy and an allocation per tensor, then a device copy per tensor into
the graph's static inputs. Here every input lives in one int64 buffer, laid out as

    [input_ids: n | positions: n | slot_mapping: n | context_lens: n | block_tables: n x W]

(n the largest batch, W the most blocks a sequence may hold), once in pinned host memory and
once on the device, where the graphs read it directly. A step of B sequences writes its rows
through a numpy view of the host buffer and sends the header and its B table rows in one
asynchronous copy. The step's only sync (the sampled ids) comes after the replay, and the next
step writes the host buffer only after that sync, so the copy never reads a half-written row.
"""

from __future__ import annotations

import torch

from ....domain.sequence import Sequence


class DecodeInputs:
    def __init__(
        self, max_seqs: int, max_blocks_per_seq: int, block_size: int, device: torch.device
    ) -> None:
        n, width = max_seqs, max_blocks_per_seq
        self.max_seqs, self.max_blocks_per_seq, self.block_size = n, width, block_size
        size = 4 * n + n * width
        self._host = torch.zeros(size, dtype=torch.int64, pin_memory=device.type == "cuda")
        self._np = self._host.numpy()
        self._tables_np = self._np[4 * n :].reshape(n, width)
        self._np[3 * n : 4 * n] = 1  # a padding row attends to one token ...
        self._np[2 * n : 3 * n] = -1  # ... and writes none
        self._device = self._host.to(device)
        self.input_ids = self._device[:n]
        self.positions = self._device[n : 2 * n]
        self.slot_mapping = self._device[2 * n : 3 * n]
        self.context_lens = self._device[3 * n : 4 * n]
        self.block_tables = self._device[4 * n :].view(n, width)
        self._num_filled = 0  # rows written by the last step: what the next must pad again

    def fits(self, seqs: list[Sequence]) -> bool:
        return len(seqs) <= self.max_seqs and all(
            len(s.block_table) <= self.max_blocks_per_seq for s in seqs
        )

    def load(self, seqs: list[Sequence]) -> None:
        """Write the rows of `seqs` (one new token each) and send them to the device; the rows
        past them (the padding of a graph's bucket) are reset to slot -1, one token of context."""
        n, bs, num = self.max_seqs, self.block_size, len(seqs)
        ids, positions, slots = [], [], []
        tables = self._tables_np
        for row, seq in enumerate(seqs):
            pos = seq.num_cached_tokens
            table = seq.block_table
            ids.append(seq.token_ids[pos])
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            tables[row, : len(table)] = table
        host = self._np
        host[:num] = ids
        host[n : n + num] = positions
        host[2 * n : 2 * n + num] = slots
        host[3 * n : 3 * n + num] = positions
        host[3 * n : 3 * n + num] += 1
        if self._num_filled > num:
            host[2 * n + num : 2 * n + self._num_filled] = -1
            host[3 * n + num : 3 * n + self._num_filled] = 1
        self._num_filled = num
        end = 4 * n + num * self.max_blocks_per_seq
        self._device[:end].copy_(self._host[:end], non_blocking=True)
