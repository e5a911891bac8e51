import pytest

from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence


def make_seq(n: int) -> Sequence:
    return Sequence(prompt_token_ids=list(range(1, n + 1)), sampling=SamplingParams(), max_len=1000)


def test_allocate_covers_every_token_and_free_returns_all():
    alloc = BlockAllocator(num_blocks=10, block_size=4)
    seqs = [make_seq(n) for n in (1, 4, 5, 9)]
    for seq in seqs:
        assert alloc.can_allocate(seq)
        alloc.allocate(seq)
    assert [len(s.block_table) for s in seqs] == [1, 1, 2, 3]
    assert alloc.num_free_blocks == 10 - 7
    owned = [b for s in seqs for b in s.block_table]
    assert len(owned) == len(set(owned)), "a block was handed out twice"
    for seq in seqs:
        alloc.free(seq)
        assert seq.block_table == []
    assert alloc.num_free_blocks == 10


def test_append_needs_a_new_block_only_at_a_block_boundary():
    alloc = BlockAllocator(num_blocks=3, block_size=4)
    seq = make_seq(4)
    alloc.allocate(seq)
    seq.token_ids.append(7)  # the decode step's token makes it 5 tokens
    assert alloc.blocks_needed(seq) == 1
    alloc.append_slot(seq)
    seq.token_ids.extend([8, 9, 10])
    assert alloc.blocks_needed(seq) == 0


def test_covers_says_whether_the_blocks_already_hold_a_token_count():
    alloc = BlockAllocator(num_blocks=3, block_size=4)
    seq = make_seq(3)
    assert not alloc.covers(seq, 1)  # no blocks yet
    alloc.allocate(seq)
    assert alloc.covers(seq, 4) and not alloc.covers(seq, 5)
    assert alloc.covers(seq, 4) == (alloc.blocks_needed(seq, 4) == 0)
    assert alloc.covers(seq, 5) == (alloc.blocks_needed(seq, 5) == 0)


def test_cannot_allocate_beyond_free_blocks():
    alloc = BlockAllocator(num_blocks=2, block_size=4)
    big = make_seq(9)
    assert not alloc.can_allocate(big)
    with pytest.raises(AssertionError):
        alloc.allocate(big)
    assert alloc.num_free_blocks == 2


def test_rejects_nonpositive_sizes():
    with pytest.raises(ValueError):
        BlockAllocator(num_blocks=0, block_size=4)
