"""The host-memory block pool behind preemption by swap: where a preempted sequence's K/V wait
while its device blocks serve others.

A host block belongs to exactly one swapped-out sequence (no sharing, no prefix index): a
sequence swapped out copies every block that holds its computed tokens, shared or not, and
drops its device references; the blocks it shared stay with their other owners. Swapping in
takes fresh device blocks, so it never depends on what happened to the old ones.
"""

from __future__ import annotations

from collections import deque

from .block_allocator import BlockAllocator, num_blocks_for
from .sequence import Sequence

BlockPairs = list[tuple[int, int]]  # (source block, destination block) for the runner to copy


class HostBlockAllocator:
    """Check/act pairs (`can_swap_out`/`swap_out`, `can_swap_in`/`swap_in`) so the scheduler
    decides before anything changes. Host block tables are kept here, by seq_id."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive: {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def holds(self, seq: Sequence) -> bool:
        return seq.seq_id in self._tables

    def num_blocks_of(self, seq: Sequence) -> int:
        return len(self._tables.get(seq.seq_id, ()))

    # -- device -> host -------------------------------------------------------------------------
    @staticmethod
    def _computed_blocks(seq: Sequence, block_size: int) -> int:
        return min(num_blocks_for(seq.num_cached_tokens, block_size), len(seq.block_table))

    def can_swap_out(self, seq: Sequence, device: BlockAllocator) -> bool:
        """Worth it (some K/V computed) and room for all of it."""
        num = self._computed_blocks(seq, device.block_size)
        return 0 < num <= self.num_free_blocks and not self.holds(seq)

    def swap_out(self, seq: Sequence, device: BlockAllocator) -> BlockPairs:
        """Move seq's computed blocks to host blocks; its device references go back.
        `num_cached_tokens` is kept: swapping in resumes exactly where it stopped."""
        assert self.can_swap_out(seq, device), "swap_out() without can_swap_out()"
        num_cached = seq.num_cached_tokens
        num = self._computed_blocks(seq, device.block_size)
        device.truncate(seq, num)  # blocks reserved for tokens not yet computed: nothing to save
        host = [self._free.popleft() for _ in range(num)]
        pairs = list(zip(seq.block_table, host, strict=True))
        self._tables[seq.seq_id] = host
        device.truncate(seq, 0)
        seq.num_cached_tokens = num_cached
        return pairs

    # -- host -> device -------------------------------------------------------------------------
    def blocks_to_swap_in(self, seq: Sequence, device: BlockAllocator, num_tokens: int) -> int:
        """Device blocks seq needs to come back and cover `num_tokens` tokens."""
        return max(self.num_blocks_of(seq), num_blocks_for(num_tokens, device.block_size))

    def can_swap_in(self, seq: Sequence, device: BlockAllocator, num_tokens: int) -> bool:
        return self.holds(seq) and (
            self.blocks_to_swap_in(seq, device, num_tokens) <= device.num_free_blocks
        )

    def swap_in(self, seq: Sequence, device: BlockAllocator) -> BlockPairs:
        """Fresh device blocks for seq's host blocks, which go back to the pool."""
        assert self.holds(seq) and not seq.block_table, "swap_in() of a sequence not swapped out"
        host = self._tables.pop(seq.seq_id)
        assert len(host) <= device.num_free_blocks, "swap_in() without can_swap_in()"
        device.allocate_fresh(seq, len(host))
        self._free.extend(host)
        return list(zip(host, seq.block_table, strict=True))

    def free(self, seq: Sequence) -> None:
        """Forget a swapped-out sequence (aborted or finished): its host blocks go back."""
        self._free.extend(self._tables.pop(seq.seq_id, ()))

    def check_invariants(self, swapped: list[Sequence]) -> None:
        """Exactly the swapped sequences own host blocks, none twice; the rest are free."""
        assert {s.seq_id for s in swapped} == set(self._tables), "host tables differ from swapped"
        owned = [b for table in self._tables.values() for b in table]
        free = list(self._free)
        assert len(owned) == len(set(owned)), "a host block is owned twice"
        assert not set(owned) & set(free), "an owned host block is on the free list"
        assert sorted(owned + free) == list(range(self.num_blocks)), "a host block went missing"
        for seq in swapped:
            assert not seq.block_table, "a swapped-out sequence still holds device blocks"
