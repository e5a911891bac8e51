"""The paged KV cache's bookkeeping: which blocks are free and which sequence owns which."""

from __future__ import annotations

from collections import deque

from .sequence import Sequence


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockAllocator:
    """Hands out fixed-size KV blocks; a sequence's `block_table` lists its blocks in order.

    Methods come in check/act pairs (`can_allocate`/`allocate`, `can_append`/`append_slot`)
    so that the scheduler decides before anything changes.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"num_blocks and block_size must be positive: {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_tokens: int | None = None) -> int:
        """Blocks to add so that the table covers `num_tokens` (default: all of seq's tokens)."""
        total = seq.num_tokens if num_tokens is None else num_tokens
        return max(0, num_blocks_for(total, self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int | None = None) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int | None = None) -> None:
        needed = self.blocks_needed(seq, num_tokens)
        assert needed <= self.num_free_blocks, "allocate() without can_allocate()"
        seq.block_table.extend(self._free.popleft() for _ in range(needed))

    def can_append(self, seq: Sequence) -> bool:
        """Room for the one token a decode step writes (seq.num_tokens already counts it)."""
        return self.can_allocate(seq)

    def append_slot(self, seq: Sequence) -> None:
        self.allocate(seq)

    def free(self, seq: Sequence) -> None:
        # Newest blocks go back first so that a recomputed sequence finds warm memory.
        self._free.extendleft(reversed(seq.block_table))
        seq.block_table = []
        seq.num_cached_tokens = 0
        assert self.num_free_blocks <= self.num_blocks, "a block was freed twice"
