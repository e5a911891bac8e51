"""Preemption by swap: the host block allocator, the scheduler's swap queue, and a simulated
KV cache that checks every computed token's K/V is where the block table says, after any mix
of swaps, recomputes, prefix sharing, sessions and aborts."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.host_blocks import HostBlockAllocator
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.domain.sequence import FinishReason, Sequence, SequenceStatus


def seq_of(tokens, max_new_tokens=4):
    return Sequence(list(tokens), SamplingParams(max_new_tokens=max_new_tokens), max_len=10_000)


def make(num_blocks, num_cpu_blocks, block_size=4, max_batch_size=8, budget=64, caching=False):
    alloc = BlockAllocator(num_blocks, block_size, enable_prefix_caching=caching)
    host = HostBlockAllocator(num_cpu_blocks) if num_cpu_blocks else None
    config = SchedulerConfig(max_batch_size, max_num_batched_tokens=budget, max_model_len=10_000)
    return Scheduler(config, alloc, host)


def check(sched):
    live = [*sched.running, *sched.waiting, *sched.parked.values()]
    sched.allocator.check_invariants(live)
    if sched.host:
        sched.host.check_invariants(list(sched.swapped))


def test_swap_out_copies_every_computed_block_and_keeps_shared_ones_for_their_owners():
    alloc = BlockAllocator(16, 4, enable_prefix_caching=True)
    host = HostBlockAllocator(8)
    first = seq_of(range(10))
    alloc.allocate(first)
    first.num_cached_tokens = 10
    alloc.register_computed(first)
    second = seq_of([*range(8), 42, 43])
    alloc.allocate(second)  # shares first's two full blocks
    second.num_cached_tokens = 9  # mid-prefill: one token left to compute
    shared = second.block_table[:2]
    assert host.can_swap_out(second, alloc)
    pairs = host.swap_out(second, alloc)
    assert [d for d, _ in pairs] == [*shared, pairs[2][0]] and len(pairs) == 3
    assert second.block_table == [] and second.num_cached_tokens == 9
    assert all(alloc.ref_count(b) == 1 for b in shared)  # still first's
    alloc.check_invariants([first])
    host.check_invariants([second])
    back = host.swap_in(second, alloc)
    assert [h for h, _ in back] == [h for _, h in pairs]
    assert not set(second.block_table) & set(first.block_table)  # fresh blocks, never shared
    host.check_invariants([])
    alloc.check_invariants([first, second])


def test_a_sequence_with_nothing_computed_is_not_worth_swapping():
    alloc, host = BlockAllocator(8, 4), HostBlockAllocator(8)
    seq = seq_of(range(6))
    alloc.allocate(seq)
    assert not host.can_swap_out(seq, alloc)


def run_until_done(sched, limit=500):
    plans = []
    for _ in range(limit):
        if not sched.has_work:
            return plans
        plan = sched.schedule()
        plans.append(plan)
        sched.postprocess(plan, [5] * len(plan.seqs))
        check(sched)
    raise AssertionError("the scheduler stalled")


def test_preemption_swaps_when_the_host_has_room_and_nothing_is_recomputed():
    sched = make(num_blocks=4, num_cpu_blocks=8, block_size=2)
    old, new = seq_of([1, 2], max_new_tokens=4), seq_of([3, 4], max_new_tokens=4)
    sched.add(old)
    sched.add(new)
    plans = run_until_done(sched)
    c = sched.counters
    assert c.swapped_out_seqs >= 1 and c.swapped_in_seqs == c.swapped_out_seqs
    assert c.recompute_preemptions == 0
    assert c.prefill_tokens == 4, "a swapped sequence recomputed its prompt"
    swap_step = next(i for i, p in enumerate(plans) if p.blocks_to_swap_out)
    assert plans[swap_step].preempted == [new] and new.status is not SequenceStatus.WAITING
    assert old.num_output_tokens == 4 and new.num_output_tokens == 4
    assert sched.allocator.num_free_blocks == 4 and sched.host.num_free_blocks == 8


def test_a_swapped_sequence_comes_back_before_new_admissions():
    sched = make(num_blocks=4, num_cpu_blocks=8, block_size=2)
    old, new = seq_of([1, 2], max_new_tokens=4), seq_of([3, 4], max_new_tokens=4)
    sched.add(old)
    sched.add(new)
    while not sched.swapped:
        sched.postprocess(plan := sched.schedule(), [5] * len(plan.seqs))
    late = seq_of([6, 7], max_new_tokens=1)
    sched.add(late)
    order = []
    while sched.has_work:
        plan = sched.schedule()
        order += [s for s in plan.seqs if s not in order]
        sched.postprocess(plan, [5] * len(plan.seqs))
    assert order.index(new) < order.index(late)


def test_a_host_pool_too_small_falls_back_to_recompute():
    sched = make(num_blocks=4, num_cpu_blocks=1, block_size=2)
    old, new = seq_of([1, 2, 3], max_new_tokens=3), seq_of([4, 5, 6], max_new_tokens=3)
    sched.add(old)
    sched.add(new)
    run_until_done(sched)
    assert sched.counters.swapped_out_seqs == 0 and sched.counters.recompute_preemptions >= 1
    assert old.num_output_tokens == 3 and new.num_output_tokens == 3


def test_abort_while_swapped_frees_both_pools():
    sched = make(num_blocks=4, num_cpu_blocks=8, block_size=2)
    old, new = seq_of([1, 2], max_new_tokens=6), seq_of([3, 4], max_new_tokens=6)
    sched.add(old)
    sched.add(new)
    while not sched.swapped:
        sched.postprocess(plan := sched.schedule(), [5] * len(plan.seqs))
    sched.abort(new)
    assert new.finish_reason is FinishReason.ABORT and not sched.swapped
    assert sched.host.num_free_blocks == 8
    run_until_done(sched)
    assert sched.allocator.num_free_blocks == 4
    assert sched.counters.finished == {"abort": 1, "length": 1}


class SimulatedCache:
    """The runner's side, in pure Python: a slot holds the hash of the token prefix whose last
    token's K/V it would store. Swaps copy blocks in the runner's order (out, then in); a
    planned sequence must find each computed token where its block table says."""

    def __init__(self, num_blocks: int, num_cpu_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.device = [[None] * block_size for _ in range(num_blocks)]
        self.host = [[None] * block_size for _ in range(num_cpu_blocks)]

    @staticmethod
    def keys(seq: Sequence, end: int) -> list[int]:
        out, h = [], None
        for token in seq.token_ids[:end]:
            h = hash((h, token))
            out.append(h)
        return out

    def step(self, plan) -> None:
        for src, dst in plan.blocks_to_swap_out:
            self.host[dst] = list(self.device[src])
        for src, dst in plan.blocks_to_swap_in:
            self.device[dst] = list(self.host[src])
        bs = self.block_size
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            keys = self.keys(seq, seq.num_cached_tokens + num)
            for p in range(seq.num_cached_tokens):
                assert self.device[seq.block_table[p // bs]][p % bs] == keys[p], (
                    f"seq {seq.seq_id} lost the K/V of token {p}"
                )
            for p in range(seq.num_cached_tokens, seq.num_cached_tokens + num):
                self.device[seq.block_table[p // bs]][p % bs] = keys[p]


actions = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "session", "resume", "step", "step", "step", "abort"]),
        st.lists(st.integers(0, 3), min_size=1, max_size=24),
        st.integers(1, 24),  # long enough generations that decoding runs out of blocks
    ),
    min_size=4,
    max_size=60,
)


# Found by this test: a resumed session queued behind a sequence that needs the blocks it
# kept, with nothing running (first: waiting for admission; second: waiting for a swap-in).
@example(
    actions=[("add", [0], 1), ("session", [0] * 6, 8)]
    + [("resume", [0], 1)] * 8
    + [("add", [0] * 9, 1), ("resume", [0], 1)],
    caching=False,
    budget=7,
    num_blocks=6,
    num_cpu_blocks=0,
)
@example(
    actions=[("add", [0] * 11, 11), ("resume", [0], 1), ("session", [0] * 6, 8)]
    + [("resume", [0], 1)]
    + [("add", [0], 1)] * 12
    + [("resume", [0], 1)] * 8,
    caching=False,
    budget=9,
    num_blocks=9,
    num_cpu_blocks=5,
)
@settings(max_examples=200, deadline=None)
@given(
    actions=actions,
    caching=st.booleans(),
    budget=st.integers(4, 32),
    num_blocks=st.integers(6, 16),
    num_cpu_blocks=st.integers(0, 24),
)
def test_random_load_with_swaps_keeps_every_token_and_every_block_accounted_for(
    actions, caching, budget, num_blocks, num_cpu_blocks
):
    sched = make(num_blocks, num_cpu_blocks, max_batch_size=4, budget=budget, caching=caching)
    cache = SimulatedCache(num_blocks, num_cpu_blocks, 4)
    seqs: list[Sequence] = []

    def step():
        plan = sched.schedule()
        cache.step(plan)
        # the sampled token varies with the history, so diverging sequences stay distinct
        sched.postprocess(plan, [len(s.token_ids) * 7 % 5 for s in plan.seqs])
        check(sched)

    for kind, prompt, max_new in actions:
        if kind in ("add", "session") and len(prompt) + max_new <= num_blocks * 4:
            seq = seq_of(prompt, max_new)
            seq.keep_cache = kind == "session"
            sched.add(seq)
            seqs.append(seq)
        elif kind == "resume" and sched.parked:
            seq = list(sched.parked.values())[len(prompt) % len(sched.parked)]
            history = seq.token_ids[: len(seq.token_ids) - max_new % 3]
            if len(history) + len(prompt) + max_new <= num_blocks * 4:
                sched.resume(seq, history + prompt, SamplingParams(max_new_tokens=max_new))
        elif kind == "abort" and seqs:
            sched.abort(seqs[len(prompt) % len(seqs)])
            check(sched)
        else:
            step()
    for _ in range(3000):
        if not sched.has_work:
            break
        step()
    assert not sched.has_work, "the scheduler stalled"
    for seq in list(sched.parked.values()):
        sched.drop(seq)
    assert all(s.is_finished for s in seqs)
    c = sched.counters
    assert c.swapped_in_seqs + sum(s.finish_reason is FinishReason.ABORT for s in seqs) >= (
        c.swapped_out_seqs
    )
    assert sched.allocator.num_free_blocks == num_blocks
    sched.allocator.check_invariants([])
    if sched.host:
        assert sched.host.num_free_blocks == num_cpu_blocks
        sched.host.check_invariants([])
    else:
        assert c.swapped_out_seqs == 0
