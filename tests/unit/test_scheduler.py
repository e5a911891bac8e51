import random

import pytest

from lmdeploy.domain.errors import OutOfBlocks
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import FinishReason, Sequence, SequenceStatus

from .fakes import build_scheduler


def make_scheduler(num_blocks=16, block_size=4, max_batch_size=8, max_tokens=64):
    return build_scheduler(
        num_blocks, block_size, max_batch_size=max_batch_size, max_num_batched_tokens=max_tokens
    )


def make_seq(n, max_new_tokens=3):
    return Sequence(
        list(range(1, n + 1)), SamplingParams(max_new_tokens=max_new_tokens), max_len=1000
    )


def run_step(sched):
    plan = sched.schedule()
    plan.num_new = [s.num_new_tokens for s in plan.seqs]
    finished = sched.postprocess(plan, [5] * len(plan.seqs))
    return plan, finished


def test_admits_in_arrival_order_under_max_batch_size():
    sched = make_scheduler(max_batch_size=2)
    seqs = [make_seq(3) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    plan = sched.schedule()
    assert plan.seqs == seqs[:2]
    assert seqs[2].status is SequenceStatus.WAITING


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget():
    sched = make_scheduler(max_tokens=10, num_blocks=32)
    long, short = make_seq(20), make_seq(3)
    sched.add(long)
    sched.add(short)
    plan, _ = run_step(sched)
    assert plan.seqs == [long] and plan.num_new == [20] and plan.num_scheduled == [10]
    assert long.num_cached_tokens == 10 and long.num_output_tokens == 0  # mid-prefill: no token yet
    plan, _ = run_step(sched)
    assert plan.seqs == [long] and plan.num_scheduled == [10] and long.num_output_tokens == 1
    # long decodes one token outside the budget; short prefills in the same pass
    plan, _ = run_step(sched)
    assert plan.seqs == [long, short] and plan.num_scheduled == [1, 3]


def test_sequences_join_and_leave_every_step():
    sched = make_scheduler()
    a, b = make_seq(2, max_new_tokens=1), make_seq(2, max_new_tokens=3)
    sched.add(a)
    sched.add(b)
    plan, finished = run_step(sched)
    assert finished == [a] and a.finish_reason is FinishReason.LENGTH
    c = make_seq(2)
    sched.add(c)
    plan, _ = run_step(sched)
    assert plan.seqs == [b, c]
    assert plan.num_new == [1, 2]  # b decodes while c prefills, in one forward pass


def test_waits_for_blocks_then_admits_when_freed():
    sched = make_scheduler(num_blocks=2, block_size=4)
    a, b = make_seq(4, max_new_tokens=1), make_seq(4)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule()
    assert plan.seqs == [a, b]
    sched.postprocess(plan, [5, 5])  # a finishes and frees its block
    assert sched.allocator.num_free_blocks == 1


def test_preempts_newest_when_decode_runs_out_of_blocks_and_frees_everything_at_the_end():
    sched = make_scheduler(num_blocks=3, block_size=2)
    old, new = make_seq(2, max_new_tokens=4), make_seq(2, max_new_tokens=4)
    sched.add(old)
    sched.add(new)
    steps = 0
    while sched.has_work:
        run_step(sched)
        steps += 1
        assert steps < 50
    assert sched.num_preemptions >= 1
    assert old.num_output_tokens == 4 and new.num_output_tokens == 4
    assert sched.allocator.num_free_blocks == 3


def _run_old_then_new(headroom):
    """Three blocks of 4 tokens: `old` (4 prompt + 8 output tokens) ends up needing all three;
    `new` (one block of prompt) arrives once `old` decodes."""
    sched = build_scheduler(3, 4, admission_headroom=headroom)
    old, new = make_seq(4, max_new_tokens=8), make_seq(4, max_new_tokens=2)
    sched.add(old)
    run_step(sched)
    sched.add(new)
    new_first_step = None
    for step in range(1, 50):
        if not sched.has_work:
            break
        plan, _ = run_step(sched)
        if new in plan.seqs and new_first_step is None:
            new_first_step = step, old.is_finished
    assert old.num_output_tokens == 8 and new.num_output_tokens == 2
    assert sched.allocator.num_free_blocks == 3
    return sched.num_preemptions, new_first_step


def test_admission_keeps_the_blocks_that_running_sequences_grow_into():
    preemptions, _ = _run_old_then_new(headroom=0)
    assert preemptions >= 1  # admitted into old's next block, then preempted by its growth
    preemptions, (_, old_done) = _run_old_then_new(headroom=8)
    assert preemptions == 0 and old_done  # waited for old's blocks instead


def test_an_idle_batch_admits_whatever_the_headroom():
    sched = build_scheduler(2, 4, admission_headroom=1000)
    seq = make_seq(4, max_new_tokens=4)
    sched.add(seq)
    plan, _ = run_step(sched)
    assert plan.seqs == [seq]


def test_prompt_larger_than_the_whole_cache_is_refused():
    sched = make_scheduler(num_blocks=2, block_size=4)
    with pytest.raises(OutOfBlocks):
        sched.add(make_seq(9))


def test_abort_frees_blocks():
    sched = make_scheduler()
    seq = make_seq(5)
    sched.add(seq)
    sched.schedule()
    sched.abort(seq)
    assert seq.finish_reason is FinishReason.ABORT
    assert sched.allocator.num_free_blocks == 16 and not sched.has_work


def test_a_session_parks_its_blocks_and_the_next_turn_reuses_the_common_prefix():
    sched = make_scheduler(num_blocks=8, block_size=4)
    seq = make_seq(6, max_new_tokens=2)
    seq.keep_cache = True
    sched.add(seq)
    while sched.has_work:
        run_step(sched)
    assert seq.seq_id in sched.parked and seq.block_table  # blocks kept between turns
    history = list(seq.token_ids)
    seq.continue_with(history + [9, 9], seq.sampling)
    assert seq.num_cached_tokens == len(history) - 1  # the last sampled token was never computed
    sched.add(seq)
    plan = sched.schedule()
    assert plan.seqs == [seq] and plan.num_tokens == 3
    sched.abort(seq)
    assert sched.allocator.num_free_blocks == 8


def test_parked_sessions_are_evicted_before_new_requests_wait():
    sched = make_scheduler(num_blocks=3, block_size=4)
    parked = make_seq(7, max_new_tokens=1)
    parked.keep_cache = True
    sched.add(parked)
    run_step(sched)
    assert sched.allocator.num_free_blocks == 1
    newcomer = make_seq(8)
    sched.add(newcomer)
    assert sched.schedule().seqs == [newcomer]
    assert not sched.parked and parked.num_cached_tokens == 0


def _drain_lognormal(headroom: int) -> tuple[int, int]:
    """200 requests of log-normal prompt and output lengths over 64 blocks of 16 tokens (about
    a tenth of them fit at once), run to the end: (preemptions, prompt tokens computed)."""
    rng = random.Random(0)
    sched = build_scheduler(
        64, 16, max_batch_size=64, max_num_batched_tokens=256, admission_headroom=headroom
    )
    seqs = []
    for _ in range(200):
        n_in = min(400, max(4, int(rng.lognormvariate(4.0, 0.8))))
        n_out = min(300, max(2, int(rng.lognormvariate(3.8, 0.8))))
        seqs.append(make_seq(n_in, max_new_tokens=n_out))
        sched.add(seqs[-1])
    computed = 0
    for _ in range(20000):
        if not sched.has_work:
            break
        plan, _ = run_step(sched)
        computed += sum(n for n in plan.num_scheduled if n > 1)  # prompt chunks (prompts >= 4)
    assert all(s.num_output_tokens == s.sampling.max_new_tokens for s in seqs)
    assert sched.allocator.num_free_blocks == 64
    return sched.num_preemptions, computed


def test_headroom_spares_most_recomputation_under_a_full_cache():
    without, computed_without = _drain_lognormal(0)
    with_, computed_with = _drain_lognormal(16)
    assert without >= 20, without  # the cache is meant to run short
    assert with_ <= without // 4 and computed_with < computed_without, (with_, without)
