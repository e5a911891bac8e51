"""n > 1: sibling choices reference the first choice's computed prompt blocks."""

from __future__ import annotations

from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.domain.sequence import Sequence


def _scheduler(max_tokens: int = 64, prefix_caching: bool = False) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_batch_size=8, max_num_batched_tokens=max_tokens, max_model_len=1000),
        BlockAllocator(32, 4, prefix_caching),
    )


def _choices(n: int, prompt_len: int, max_new_tokens: int = 3) -> list[Sequence]:
    params = SamplingParams(max_new_tokens=max_new_tokens)
    seqs = [Sequence(list(range(1, prompt_len + 1)), params, max_len=1000) for _ in range(n)]
    for child in seqs[1:]:
        child.fork_parent = seqs[0]
    return seqs


def _run(sched: Scheduler, seqs: list[Sequence], check=None) -> None:
    while sched.has_work:
        plan = sched.schedule()
        if check:
            check(plan)
        sched.postprocess(plan, [7] * len(plan.seqs))
        sched.allocator.check_invariants(sched.running + list(sched.waiting))


def test_siblings_compute_only_the_prompt_tail_and_share_its_full_blocks():
    sched = _scheduler()
    seqs = _choices(4, prompt_len=10)  # blocks of 4: two full prompt blocks, a tail of 2
    for s in seqs:
        sched.add(s)
    shared: list[list[int]] = []

    def check(plan):
        if all(s in plan.seqs for s in seqs[1:]) and not shared:
            shared.append(seqs[0].block_table[:2])
            for child in seqs[1:]:
                assert child.block_table[:2] == seqs[0].block_table[:2]
            assert all(sched.allocator.ref_count(b) == 4 for b in seqs[0].block_table[:2])

    _run(sched, seqs, check)
    assert shared, "the siblings never ran beside their parent"
    assert sched.counters.prefill_tokens == 10 + 3 * 2
    assert sched.allocator.counters.forked_tokens == 3 * 8
    assert all(s.output_token_ids == [7, 7, 7] for s in seqs)
    assert sched.allocator.num_free_blocks == 32


def test_siblings_wait_for_a_chunked_prompt_then_fork():
    sched = _scheduler(max_tokens=4)
    seqs = _choices(3, prompt_len=13)
    for s in seqs:
        sched.add(s)
    _run(sched, seqs)
    assert sched.counters.prefill_tokens == 13 + 2 * 1  # 3 full blocks shared, 1 token each
    assert sched.allocator.num_free_blocks == 32


def test_a_parent_that_finishes_with_its_prompt_still_hands_over_its_blocks():
    sched = _scheduler()
    seqs = _choices(3, prompt_len=9, max_new_tokens=1)
    for s in seqs:
        sched.add(s)
    _run(sched, seqs)
    assert sched.counters.prefill_tokens == 9 + 2 * 1
    assert all(s.output_token_ids == [7] for s in seqs)
    assert sched.allocator.num_free_blocks == 32


def test_siblings_of_an_aborted_parent_compute_their_own_prompt():
    sched = _scheduler()
    seqs = _choices(3, prompt_len=9)
    for s in seqs:
        sched.add(s)
    sched.abort(seqs[0])
    _run(sched, seqs)
    assert sched.counters.prefill_tokens == 2 * 9
    assert all(s.output_token_ids == [7, 7, 7] for s in seqs[1:])
    assert sched.allocator.num_free_blocks == 32


def test_choice_seeds_differ_and_choice_zero_keeps_the_seed():
    params = SamplingParams(random_seed=11)
    seeds = [params.for_choice(i).random_seed for i in range(4)]
    assert seeds[0] == 11 and len(set(seeds)) == 4
    assert seeds == [params.for_choice(i).random_seed for i in range(4)]
    assert SamplingParams().for_choice(3).random_seed is None


def test_choices_under_cache_pressure_all_finish_and_every_block_comes_back():
    sched = Scheduler(
        SchedulerConfig(max_batch_size=8, max_num_batched_tokens=16, max_model_len=1000),
        BlockAllocator(9, 4),  # too few for 4 choices of 10 + 12 tokens at once
    )
    seqs = _choices(4, prompt_len=10, max_new_tokens=12)
    for s in seqs:
        sched.add(s)
    _run(sched, seqs)
    assert sched.counters.preemptions > 0
    assert all(s.num_output_tokens == 12 for s in seqs)
    assert sched.allocator.num_free_blocks == 9
