"""The paged KV cache's bookkeeping: which blocks are free, which sequence owns which, and
(with prefix caching) which full blocks hold which token prefix.

A block is identified by the hash of its tokens chained with its prefix's hash, so equal
prefixes map to equal hashes. Blocks are reference counted; a block nobody references stays
findable by its hash until it is needed for something else, oldest first (LRU).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from .sequence import Sequence


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def chain_hash(prefix_hash: int | None, key: tuple) -> int:
    """`key`: a block's `Sequence.block_key` (its tokens, and the images it holds)."""
    return hash((prefix_hash, key))


def root_hash(seq: Sequence) -> int | None:
    """The chain's seed: K/V computed under a LoRA adapter differ from the base model's (and
    from another adapter's) for the same tokens, so each adapter has a prefix index of its own."""
    return None if seq.adapter_name is None else hash(("lora", seq.adapter_name))


@dataclass
class CacheCounters:
    prefix_hit_tokens: int = 0
    evicted_cached_blocks: int = 0
    forked_tokens: int = 0  # prompt tokens a sibling choice referenced instead of computing


class BlockAllocator:
    """Methods come in check/act pairs (`can_allocate`/`allocate`) so the scheduler decides
    before anything changes. A sequence's `block_table` lists its blocks in order."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"num_blocks and block_size must be positive: {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.counters = CacheCounters()
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        self._free_plain: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # unreferenced, still findable

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._free_cached)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def is_private(self, block: int) -> bool:
        """Referenced by one sequence and not findable through the prefix index."""
        return self._ref[block] == 1 and self._hash_of[block] is None

    # -- prefix matching ----------------------------------------------------------------------
    def _matched_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks equal to seq's leading full blocks; never the block of its last token,
        which must be computed to produce the next logits."""
        if not self.enable_prefix_caching or seq.block_table or seq.sampling.needs_prompt_outputs:
            return []
        matched, prefix = [], root_hash(seq)
        for i in range((seq.num_tokens - 1) // self.block_size):
            prefix = chain_hash(prefix, seq.block_key(i, self.block_size))
            block = self._by_hash.get(prefix)
            if block is None:
                break
            matched.append(block)
        return matched

    # -- allocation ---------------------------------------------------------------------------
    def _needed(self, seq: Sequence, num_tokens: int | None, matched: list[int]) -> int:
        """Blocks that must come out of the free pool to cover `num_tokens` tokens."""
        total = num_blocks_for(
            seq.num_tokens if num_tokens is None else num_tokens, self.block_size
        )
        fresh = max(0, total - len(seq.block_table) - len(matched))
        revived = sum(1 for b in matched if self._ref[b] == 0)
        return fresh + revived

    def covers(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether seq's blocks already hold `num_tokens` tokens (no allocation to make)."""
        return num_blocks_for(num_tokens, self.block_size) <= len(seq.block_table)

    def blocks_needed(self, seq: Sequence, num_tokens: int | None = None) -> int:
        return self._needed(seq, num_tokens, self._matched_blocks(seq))

    def can_allocate(self, seq: Sequence, num_tokens: int | None = None) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int | None = None) -> None:
        """Cover `num_tokens` (default: all) of seq's tokens; reuse cached prefix blocks first."""
        matched = self._matched_blocks(seq)
        assert self._needed(seq, num_tokens, matched) <= self.num_free_blocks, (
            "allocate() without can_allocate()"
        )
        for block in matched:
            if self._ref[block] == 0:
                del self._free_cached[block]
            self._ref[block] += 1
            seq.block_table.append(block)
        if matched:
            seq.num_cached_tokens = len(matched) * self.block_size
            seq.block_hashes = [self._hash_of[b] for b in matched]
            self.counters.prefix_hit_tokens += seq.num_cached_tokens
        total = num_blocks_for(
            seq.num_tokens if num_tokens is None else num_tokens, self.block_size
        )
        while len(seq.block_table) < total:
            seq.block_table.append(self._take_free())

    def allocate_fresh(self, seq: Sequence, num_blocks: int) -> None:
        """Append `num_blocks` unshared blocks to seq, past the prefix index: a swap-in copies
        its own K/V into them, which must not land in blocks others read."""
        assert num_blocks <= self.num_free_blocks, "allocate_fresh() beyond the free blocks"
        seq.block_table.extend(self._take_free() for _ in range(num_blocks))

    def _take_free(self) -> int:
        if self._free_plain:
            block = self._free_plain.popleft()
        else:
            block, _ = self._free_cached.popitem(last=False)
            del self._by_hash[self._hash_of[block]]
            self._hash_of[block] = None
            self.counters.evicted_cached_blocks += 1
        assert self._ref[block] == 0, f"block {block} handed out while referenced"
        self._ref[block] = 1
        return block

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` (same prompt, no blocks yet) reference the parent's computed full prompt
        blocks; never the block of the prompt's last token, which the child must compute to
        produce its own first logits. Those blocks are never written again: the parent's new
        tokens land after the prompt."""
        assert not child.block_table, "fork() into a sequence that holds blocks"
        assert child.prompt_token_ids == parent.prompt_token_ids, "fork() across prompts"
        num_full = min(
            (child.num_tokens - 1) // self.block_size,
            parent.num_cached_tokens // self.block_size,
            len(parent.block_table),
        )
        for block in parent.block_table[:num_full]:
            self._ref[block] += 1
            child.block_table.append(block)
        child.block_hashes = list(parent.block_hashes[:num_full])
        child.num_cached_tokens = num_full * self.block_size
        self.counters.forked_tokens += child.num_cached_tokens

    def append_slot(self, seq: Sequence) -> None:
        self.allocate(seq)

    # -- release ------------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        self.truncate(seq, 0)
        seq.num_cached_tokens = 0

    def truncate(self, seq: Sequence, num_blocks: int) -> None:
        """Give back every block of seq after its first `num_blocks`, newest first."""
        for block in reversed(seq.block_table[num_blocks:]):
            self._ref[block] -= 1
            assert self._ref[block] >= 0, f"block {block} was freed twice"
            if self._ref[block] == 0:
                if self._hash_of[block] is None:
                    self._free_plain.appendleft(block)
                else:
                    self._free_cached[block] = None
        del seq.block_table[num_blocks:]
        del seq.block_hashes[num_blocks:]
        seq.num_cached_tokens = min(seq.num_cached_tokens, num_blocks * self.block_size)

    # -- indexing computed blocks ---------------------------------------------------------------
    def register_computed(self, seq: Sequence) -> None:
        """Index seq's full blocks whose K/V are now computed, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_cached_tokens // bs, len(seq.block_table))
        for i in range(len(seq.block_hashes), num_full):
            prefix = seq.block_hashes[-1] if seq.block_hashes else root_hash(seq)
            digest = chain_hash(prefix, seq.block_key(i, bs))
            seq.block_hashes.append(digest)
            block = seq.block_table[i]
            if digest not in self._by_hash and self._hash_of[block] is None:
                self._by_hash[digest] = block
                self._hash_of[block] = digest

    def check_invariants(self, live: list[Sequence]) -> None:
        """Every reference is owned by a live sequence; free blocks are unreferenced; no block
        is in two places. For tests and debugging."""
        owned = [0] * self.num_blocks
        for seq in live:
            assert len(set(seq.block_table)) == len(seq.block_table), (
                "a sequence holds a block twice"
            )
            for block in seq.block_table:
                owned[block] += 1
        assert owned == self._ref, "reference counts differ from ownership"
        free = list(self._free_plain) + list(self._free_cached)
        assert len(free) == len(set(free)), "a block is free twice"
        assert all(self._ref[b] == 0 for b in free), "a referenced block is on the free list"
        assert len(free) + sum(1 for r in self._ref if r) == self.num_blocks, "a block went missing"
        for digest, block in self._by_hash.items():
            assert self._hash_of[block] == digest
