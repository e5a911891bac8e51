"""New prompts wait while a busy batch decodes (`prefill_interval`, LMDeploy 0.6.5's dynamic
prefill interval): fewer, fuller prefill steps, at most `prefill_interval` steps of waiting
when the batch is full, none when nothing runs."""

import pytest

from lmdeploy import PytorchEngineConfig
from lmdeploy.domain.errors import InvalidConfig
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence

from .fakes import build_scheduler


def make_scheduler(interval, max_batch_size=8, forecast=False):
    return build_scheduler(
        64, 4, max_batch_size=max_batch_size, forecast_decodes=forecast, prefill_interval=interval
    )


def make_seq(max_new_tokens=50, prompt_len=3):
    prompt = [1 + i % 50 for i in range(prompt_len)]
    return Sequence(prompt, SamplingParams(max_new_tokens=max_new_tokens), max_len=1000)


def step(sched):
    plan = sched.schedule()
    sched.postprocess(plan, [5] * len(plan.seqs))
    return plan


def steps_until_admitted(sched, seq, limit=40):
    sched.add(seq)
    for n in range(limit):
        if seq in step(sched).seqs:
            return n
    raise AssertionError("never admitted")


def test_nothing_running_admits_at_once():
    sched = make_scheduler(interval=16)
    assert steps_until_admitted(sched, make_seq()) == 0


@pytest.mark.parametrize("running, expected_wait", [(4, 8), (2, 4), (8, None)])
def test_a_prompt_waits_in_proportion_to_how_full_the_batch_is(running, expected_wait):
    sched = make_scheduler(interval=16, max_batch_size=8)
    for _ in range(running):
        sched.add(make_seq())
    step(sched)  # their prefill: the admission that restarts the count
    if expected_wait is None:  # a full batch admits nobody, whatever the count
        sched.add(make_seq())
        assert all(len(step(sched).seqs) == running for _ in range(20))
        return
    assert steps_until_admitted(sched, make_seq()) == expected_wait  # 16 x running / 8


def test_waiting_prompts_join_together_in_one_prefill_step():
    sched = make_scheduler(interval=16)
    for _ in range(4):
        sched.add(make_seq())
    step(sched)
    late = [make_seq() for _ in range(3)]
    for seq in late:
        sched.add(seq)
    prefills = [p for p in (step(sched) for _ in range(12)) if any(s in p.seqs for s in late)]
    assert all(s in prefills[0].seqs for s in late)  # one step admits all three


def test_interval_0_admits_at_once():
    sched = make_scheduler(interval=0)
    for _ in range(4):
        sched.add(make_seq())
    step(sched)
    assert steps_until_admitted(sched, make_seq()) == 0


def test_decode_steps_are_forecast_while_a_waiting_prompt_is_not_yet_due():
    sched = make_scheduler(interval=16, forecast=True)
    running = [make_seq() for _ in range(4)]
    for seq in running:
        sched.add(seq)
    step(sched)
    sched.add(make_seq())
    forecasts = [len(step(sched).forecast) for _ in range(9)]
    # 8 steps of waiting (16 x 4 / 8): the step before the admission forecasts nothing.
    assert forecasts[:7] == [4] * 7 and forecasts[7] == 0


def test_prompts_that_fill_a_prefill_step_are_admitted_at_once():
    sched = make_scheduler(interval=16, max_batch_size=8)
    for _ in range(4):
        sched.add(make_seq())
    step(sched)  # 4 running: a small refill would wait 8 steps
    burst = [make_seq(prompt_len=20) for _ in range(4)]  # 80 tokens for the 64-token budget
    for seq in burst:
        sched.add(seq)
    assert any(seq in step(sched).seqs for seq in burst)


def test_a_burst_fills_the_batch_in_back_to_back_prefill_steps():
    sched = make_scheduler(interval=16, max_batch_size=8)
    # 192 prompt tokens, 64 a step; with their outputs they fit the 64 blocks of 4 tokens.
    burst = [make_seq(max_new_tokens=2, prompt_len=24) for _ in range(8)]
    for seq in burst:
        sched.add(seq)
    steps = 0
    while any(seq.num_output_tokens == 0 for seq in burst):
        step(sched)
        steps += 1
    assert steps == 3  # every step a full prefill: 192 / 64


@pytest.mark.parametrize("bad", [-1, 1.5, "16"])
def test_a_bad_interval_is_refused_naming_it(bad):
    with pytest.raises(InvalidConfig, match="prefill_interval"):
        PytorchEngineConfig(prefill_interval=bad)
