"""A decode step's inputs, written into one pinned host buffer and sent in one copy.

Between two CUDA-graph replays the GPU waits for the host, so a decode step's host work before
the replay is pure loss. Building each input as its own tensor from Python lists cost a
pageable host-to-device copy and an allocation per tensor, then a device copy per tensor into
the graph's static inputs. Here every input lives in one int64 buffer, laid out as

    [input_ids: n | positions: n | slot_mapping: n | context_lens: n | block_tables: n x W]

(`positions` are the rotary ones: a sequence's index, shifted after M-RoPE images.)

(n the largest batch, W the most blocks a sequence may hold), in pinned host memory and once
on the device, where the graphs read it directly. A step of B sequences writes its rows
through a numpy view of a host buffer and sends the header and its B table rows in one
asynchronous copy. A step started ahead (before the previous step's tokens reach the host)
writes, in place of its input ids, the rows of the previous step's device tokens to take them
from, and gathers them on the device after the copy. Two host buffers take turns, each
written only once the copy that last read it has run (an event), so a step can be staged
while the previous one's copy still waits in the GPU queue.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .....domain.sequence import Sequence
from .mrope import rope_delta


class DecodeInputs:
    def __init__(
        self, max_seqs: int, max_blocks_per_seq: int, block_size: int, device: torch.device
    ) -> None:
        n, width = max_seqs, max_blocks_per_seq
        self.max_seqs, self.max_blocks_per_seq, self.block_size = n, width, block_size
        self._hosts = [_HostBuffer(n, width, device) for _ in range(2)]
        self._turn = 0
        self._device = self._hosts[0].tensor.to(device)
        self.input_ids = self._device[:n]
        self.positions = self._device[n : 2 * n]
        self.slot_mapping = self._device[2 * n : 3 * n]
        self.context_lens = self._device[3 * n : 4 * n]
        self.block_tables = self._device[4 * n :].view(n, width)

    @property
    def staged(self) -> torch.Tensor:
        """Every buffer above in one device tensor (what a tensor-parallel rank 0 broadcasts)."""
        return self._device

    def fits(self, seqs: list[Sequence], lag: int = 0) -> bool:
        bs = self.block_size
        return len(seqs) <= self.max_seqs and all(
            len(s.block_table) <= self.max_blocks_per_seq
            and (s.num_cached_tokens + lag) // bs < len(s.block_table)
            for s in seqs
        )

    def load(
        self,
        seqs: list[Sequence],
        lag: int = 0,
        ids_from: tuple[torch.Tensor, list[int]] | None = None,
    ) -> None:
        """Write the rows of `seqs` (one new token each, at position num_cached_tokens + lag)
        and send them to the device; the rows past them (the padding of a graph's bucket) are
        reset to slot -1, one token of context. The input ids are the sequences' tokens at
        those positions, or with `ids_from=(tokens, rows)` the device tokens `tokens[rows]`."""
        host = self._hosts[self._turn]
        self._turn ^= 1
        host.wait_for_copy()
        n, bs, num = self.max_seqs, self.block_size, len(seqs)
        tables = host.tables
        _write_tables(tables, [seq.block_table for seq in seqs])
        pos = np.fromiter((s.num_cached_tokens for s in seqs), dtype=np.int64, count=num) + lag
        values = host.values
        if ids_from is None:
            values[:num] = [seq.token_ids[p] for seq, p in zip(seqs, pos.tolist(), strict=True)]
        else:
            values[:num] = ids_from[1]
        values[n : n + num] = pos
        if any(seq.images for seq in seqs):  # rotary positions shift after M-RoPE images
            values[n : n + num] += [rope_delta(seq.images) for seq in seqs]
        values[2 * n : 2 * n + num] = tables[np.arange(num), pos // bs] * bs + pos % bs
        values[3 * n : 3 * n + num] = pos + 1
        if host.num_filled > num:
            values[2 * n + num : 2 * n + host.num_filled] = -1
            values[3 * n + num : 3 * n + host.num_filled] = 1
        host.num_filled = num
        end = 4 * n + num * self.max_blocks_per_seq
        self._device[:end].copy_(host.tensor[:end], non_blocking=True)
        host.record_copy()
        if ids_from is not None:
            tokens, _ = ids_from
            self.input_ids[:num] = tokens.index_select(0, self.input_ids[:num])


def _write_tables(tables: np.ndarray, rows: list[list[int]]) -> None:
    """tables[i, :len(rows[i])] = rows[i] for every i, in one scatter (a numpy assignment a
    row cost ~1 us each, ~0.5 ms a 512-row step)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    total = int(lengths.sum())
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    col_of = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tables[row_of, col_of] = flat


class _HostBuffer:
    """One pinned staging buffer and the event of the last copy that read it."""

    def __init__(self, n: int, width: int, device: torch.device) -> None:
        self.tensor = torch.zeros(
            4 * n + n * width, dtype=torch.int64, pin_memory=device.type == "cuda"
        )
        self.values = self.tensor.numpy()
        self.tables = self.values[4 * n :].reshape(n, width)
        self.values[3 * n : 4 * n] = 1  # a padding row attends to one token ...
        self.values[2 * n : 3 * n] = -1  # ... and writes none
        self.num_filled = 0  # rows written by its last step: what the next must pad again
        self._copied: torch.cuda.Event | None = None
        self._on_cuda = device.type == "cuda"

    def wait_for_copy(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()

    def record_copy(self) -> None:
        if self._on_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
