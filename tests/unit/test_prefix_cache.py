"""Prefix caching in the block allocator, and the scheduler's invariants under random load."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.domain.sequence import Sequence


def seq_of(tokens, max_new_tokens=4):
    return Sequence(list(tokens), SamplingParams(max_new_tokens=max_new_tokens), max_len=10_000)


def computed(alloc, seq):
    """Pretend the whole prompt went through a forward pass."""
    alloc.allocate(seq)
    seq.num_cached_tokens = seq.num_tokens
    alloc.register_computed(seq)


def test_a_shared_prefix_is_reused_block_by_block():
    alloc = BlockAllocator(num_blocks=16, block_size=4, enable_prefix_caching=True)
    first = seq_of(range(10))  # blocks [0..3] [4..7] full, [8, 9] partial
    computed(alloc, first)
    second = seq_of(list(range(8)) + [42, 43, 44])
    alloc.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.num_cached_tokens == 8 and alloc.counters.prefix_hit_tokens == 8
    assert alloc.ref_count(first.block_table[0]) == 2
    alloc.check_invariants([first, second])


def test_the_block_of_the_last_token_is_never_shared():
    alloc = BlockAllocator(num_blocks=16, block_size=4, enable_prefix_caching=True)
    computed(alloc, seq_of(range(8)))
    again = seq_of(range(8))
    alloc.allocate(again)
    assert again.num_cached_tokens == 4  # the second block holds the last token: recomputed


def test_freed_cached_blocks_stay_findable_until_needed_oldest_first():
    alloc = BlockAllocator(num_blocks=4, block_size=4, enable_prefix_caching=True)
    old = seq_of(range(9))
    computed(alloc, old)
    alloc.free(old)
    assert alloc.num_free_blocks == 4
    hit = seq_of(list(range(8)) + [7])
    alloc.allocate(hit)
    assert hit.num_cached_tokens == 8
    alloc.free(hit)
    other = seq_of(range(100, 116))  # needs all 4 blocks: the cached ones are evicted
    alloc.allocate(other)
    assert alloc.counters.evicted_cached_blocks == 2
    miss = seq_of(list(range(8)) + [7])
    alloc.free(other)
    alloc.allocate(miss)
    assert miss.num_cached_tokens == 0
    alloc.check_invariants([miss])


def test_without_prefix_caching_nothing_is_shared():
    alloc = BlockAllocator(num_blocks=8, block_size=4)
    computed(alloc, seq_of(range(9)))
    again = seq_of(range(9))
    alloc.allocate(again)
    assert again.num_cached_tokens == 0


actions = st.lists(
    st.tuples(
        st.sampled_from(["add", "session", "resume", "step", "step", "step", "abort"]),
        st.lists(st.integers(0, 3), min_size=1, max_size=40),  # a prompt over a tiny vocabulary
        st.integers(1, 6),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    actions=actions,
    caching=st.booleans(),
    budget=st.integers(4, 32),
    num_blocks=st.integers(12, 30),
)
def test_random_admit_grow_finish_preempt_keeps_every_invariant(
    actions, caching, budget, num_blocks
):
    alloc = BlockAllocator(num_blocks=num_blocks, block_size=4, enable_prefix_caching=caching)
    sched = Scheduler(
        SchedulerConfig(max_batch_size=4, max_num_batched_tokens=budget, max_model_len=10_000),
        alloc,
    )
    seqs: list[Sequence] = []

    def step():
        plan = sched.schedule()
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            assert num >= 1 and seq.num_cached_tokens + num <= seq.num_tokens
            assert len(seq.block_table) * 4 >= seq.num_cached_tokens + num, (
                "computing without blocks"
            )
        prefill = [
            n
            for s, n in zip(plan.seqs, plan.num_scheduled, strict=True)
            if s.num_output_tokens == 0
        ]
        assert sum(prefill) <= budget, "prefill chunks overran the token budget"
        sched.postprocess(plan, [1] * len(plan.seqs))
        alloc.check_invariants(sched.running + list(sched.waiting) + list(sched.parked.values()))

    for kind, prompt, max_new in actions:
        if kind in ("add", "session") and len(prompt) + 8 <= num_blocks * 4:
            seq = seq_of(prompt, max_new)
            seq.keep_cache = kind == "session"
            sched.add(seq)
            seqs.append(seq)
        elif kind == "resume" and sched.parked:
            seq = list(sched.parked.values())[len(prompt) % len(sched.parked)]
            history = seq.token_ids[: len(seq.token_ids) - max_new % 3]  # sometimes diverge
            if len(history) + len(prompt) + 8 <= num_blocks * 4:
                sched.resume(seq, history + prompt, SamplingParams(max_new_tokens=max_new))
        elif kind == "abort" and seqs:
            sched.abort(seqs[len(prompt) % len(seqs)])
        else:
            step()
    for _ in range(2000):
        if not sched.has_work:
            break
        step()
    assert not sched.has_work, "the scheduler stalled"
    for seq in list(sched.parked.values()):
        sched.drop(seq)
    assert all(s.is_finished for s in seqs)
    assert all(
        s.num_output_tokens == s.sampling.max_new_tokens
        for s in seqs
        if s.finish_reason.value == "length"
    )
    assert alloc.num_free_blocks == num_blocks
    alloc.check_invariants([])
