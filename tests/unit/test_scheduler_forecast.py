"""The scheduler's forecast of the next decode batch (StepPlan.forecast), for a runner that
starts the next decode step before the current step's tokens reach the host."""

from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence

from .fakes import build_scheduler


def make_scheduler(num_blocks=32, block_size=4, max_batch_size=8, forecast=True):
    return build_scheduler(
        num_blocks, block_size, max_batch_size=max_batch_size, forecast_decodes=forecast
    )


def make_seq(n, max_new_tokens=10, max_len=1000):
    return Sequence(
        list(range(1, n + 1)), SamplingParams(max_new_tokens=max_new_tokens), max_len=max_len
    )


def step(sched, token=5):
    plan = sched.schedule()
    sched.postprocess(plan, [token] * len(plan.seqs))
    return plan


def decoding(sched, *seqs):
    for s in seqs:
        sched.add(s)
    first = step(sched)  # the prefill: nothing to forecast from a step that prefills
    assert first.forecast == []
    return sched


def test_an_all_decode_step_forecasts_itself_and_holds_the_next_tokens_blocks():
    # Blocks of 4. After the prefill a holds 4 tokens and b 6: this step computes positions 3
    # and 5 in blocks they hold; the forecast's position 4 opens a new block for a, not for b.
    a, b = make_seq(3), make_seq(5)
    sched = decoding(make_scheduler(), a, b)
    free = sched.allocator.num_free_blocks
    plan = sched.schedule()
    assert plan.seqs == [a, b] and plan.forecast == [a, b]
    for s in (a, b):  # room for the token this step samples and the one after it
        assert len(s.block_table) * 4 >= s.num_tokens + 1
    assert sched.allocator.num_free_blocks == free - 1
    sched.postprocess(plan, [5, 5])
    nxt = sched.schedule()  # the forecast holds: the next plan is exactly it
    assert nxt.seqs == [a, b] and sched.allocator.num_free_blocks == free - 1


def test_a_sequence_that_reaches_its_length_limit_is_not_forecast():
    a, b = make_seq(3, max_new_tokens=2), make_seq(3, max_new_tokens=10)
    c = make_seq(3, max_new_tokens=10, max_len=5)  # prompt 3 + first token 1: the next is its last
    sched = decoding(make_scheduler(), a, b, c)
    plan = sched.schedule()
    assert plan.forecast == [b]
    sched.postprocess(plan, [5, 5, 5])
    assert a.is_finished and c.is_finished and not b.is_finished


def test_nothing_is_forecast_while_a_waiting_request_could_join():
    a = make_seq(3)
    sched = decoding(make_scheduler(max_batch_size=2), a)
    sched.add(make_seq(3))
    assert sched.schedule().forecast == []  # this very step admits it: a prefill


def test_a_full_batch_forecasts_even_with_requests_waiting():
    a, b, waiting = make_seq(3), make_seq(3), make_seq(3)
    sched = decoding(make_scheduler(max_batch_size=2), a, b)
    sched.add(waiting)
    assert sched.schedule().forecast == [a, b]


def test_a_finishing_sequence_in_a_full_batch_means_an_admission_next_step():
    a, b = make_seq(3, max_new_tokens=2), make_seq(3)
    sched = decoding(make_scheduler(max_batch_size=2), a, b)
    sched.add(make_seq(3))
    assert sched.schedule().forecast == []  # a ends by length: its place goes to the waiting


def test_no_forecast_and_no_block_taken_when_the_free_blocks_do_not_cover_it():
    # 4 blocks of 4: a (prompt 4) and b (prompt 4) hold 1 each after prefill; their first
    # decode needs a second block each, their forecast a third.
    a, b = make_seq(4), make_seq(4)
    sched = decoding(make_scheduler(num_blocks=4), a, b)
    plan = sched.schedule()
    assert plan.seqs == [a, b] and sched.allocator.num_free_blocks == 0
    sched.postprocess(plan, [5, 5])
    plan = sched.schedule()  # positions 5: same blocks; the forecast fits the blocks held
    assert plan.forecast == [a, b]
    for _ in range(2):
        sched.postprocess(plan, [5, 5])
        plan = sched.schedule()
    # Position 7 is computed now; the forecast's position 8 would need two fresh blocks.
    assert plan.forecast == [] and sched.allocator.num_free_blocks == 0
    sched.allocator.check_invariants(sched.running)


def test_a_step_that_prefills_forecasts_nothing():
    a = make_seq(3)
    sched = decoding(make_scheduler(), a)
    sched.add(make_seq(6))
    plan = sched.schedule()
    assert len(plan.seqs) == 2 and plan.forecast == []


def test_off_unless_configured():
    a = make_seq(3)
    sched = decoding(make_scheduler(forecast=False), a)
    assert sched.schedule().forecast == []


def test_a_prompt_that_cannot_fit_does_not_stop_the_forecast_and_joins_one_step_later():
    # 6 blocks of 4: a and b (prompts of 4) hold 2 blocks each once decoding; the waiting
    # prompt of 12 tokens needs 3 of the 2 left. a then ends on its stop token (unforeseeable),
    # freeing 2: the forecast step still runs as forecast and the prompt joins the next one.
    a = Sequence(
        [1, 2, 3, 4], SamplingParams(max_new_tokens=10), max_len=1000, eos_token_ids=frozenset({9})
    )
    b, waiting = make_seq(4), make_seq(12)
    sched = decoding(make_scheduler(num_blocks=6), a, b)
    step(sched)  # the prefill
    sched.add(waiting)
    plan = sched.schedule()
    assert plan.seqs == [a, b] and plan.forecast == [a, b]
    sched.postprocess(plan, [9, 5])  # a stops
    assert a.is_finished and sched.allocator.num_free_blocks >= 3
    held = sched.schedule()
    assert held.seqs == [b]  # as forecast, though the prompt would fit now
    sched.postprocess(held, [5])
    assert waiting in sched.schedule().seqs
    sched.allocator.check_invariants(sched.running)
