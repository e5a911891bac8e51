"""The engine on the embedded model when memory is short: every request completes, unchanged."""

from __future__ import annotations

import time

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

GEN = GenerationConfig(max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(prompt_ids):
    """20 distinct prompts of 20 to 58 tokens."""
    base = prompt_ids[-1]
    return [base[i * 7 : i * 7 + 20 + 2 * i] for i in range(20)]


@pytest.fixture(scope="module")
def alone(default_pipe, prompts):
    """Each prompt's greedy output when it runs by itself."""
    return [default_pipe([p], gen_config=GEN)[0].token_ids for p in prompts]


@pytest.fixture
def no_headroom(monkeypatch):
    """Admission without headroom for the running sequences' growth (the scheduler's default
    keeps 16 tokens each), so that decodes run out of blocks and preempt: what these tests
    exercise."""
    monkeypatch.setenv("LMDEPLOY_ADMISSION_HEADROOM", "0")


def test_200_requests_over_a_cache_for_about_10_complete_unchanged(prompts, alone):
    # 30 blocks of 16 tokens: each request needs 2-5 blocks, so about 10 fit at once.
    pipe = pipeline(
        None, backend_config=PytorchEngineConfig(block_size=16, num_gpu_blocks=30, session_len=1024)
    )
    try:
        outs = pipe([prompts[i % 20] for i in range(200)], gen_config=GEN)
        stats = pipe.service.engine.stats()
    finally:
        pipe.close()
    assert [o.token_ids for o in outs] == [alone[i % 20] for i in range(200)]
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.num_preemptions > 0, "the cache was meant to run short"


def test_with_a_host_pool_preempted_requests_swap_out_and_back_unchanged(
    prompts, alone, no_headroom
):
    config = PytorchEngineConfig(
        block_size=16, num_gpu_blocks=30, num_cpu_blocks=256, session_len=1024
    )
    pipe = pipeline(None, backend_config=config)
    try:
        outs = pipe([prompts[i % 20] for i in range(60)], gen_config=GEN)
        stats = pipe.service.engine.stats()
    finally:
        pipe.close()
    print(f"swap: {stats}")
    assert [o.token_ids for o in outs] == [alone[i % 20] for i in range(60)]
    assert (
        stats.num_swapped_out_seqs > 0 and stats.num_swapped_in_seqs == stats.num_swapped_out_seqs
    )
    assert stats.num_swapped_in_blocks == stats.num_swapped_out_blocks
    assert stats.num_recompute_preemptions == 0
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.num_free_cpu_blocks == stats.num_cpu_blocks == 256
    assert stats.num_swapped == 0 and stats.num_finished_length == 60


def test_a_host_pool_too_small_for_some_victims_falls_back_to_recompute(
    prompts, alone, no_headroom
):
    # 3 host blocks hold a victim of up to 48 computed tokens; bigger ones are recomputed.
    config = PytorchEngineConfig(
        block_size=16, num_gpu_blocks=30, num_cpu_blocks=3, session_len=1024
    )
    pipe = pipeline(None, backend_config=config)
    try:
        outs = pipe([prompts[i % 20] for i in range(60)], gen_config=GEN)
        stats = pipe.service.engine.stats()
    finally:
        pipe.close()
    print(f"small host pool: {stats}")
    assert [o.token_ids for o in outs] == [alone[i % 20] for i in range(60)]
    assert stats.num_recompute_preemptions > 0
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.num_free_cpu_blocks == stats.num_cpu_blocks == 3


def test_prefix_caching_computes_a_shared_system_prompt_once(prompt_ids):
    system = prompt_ids[-1][:400]
    requests = [system + prompt_ids[-1][400 + i : 403 + i] for i in range(50)]

    def run(caching: bool):
        config = PytorchEngineConfig(block_size=16, session_len=1024, enable_prefix_caching=caching)
        pipe = pipeline(None, backend_config=config)
        try:
            pipe([requests[0]], gen_config=GEN)  # warms the cache with the shared prefix
            outs = pipe(requests, gen_config=GEN)
            return [o.token_ids for o in outs], pipe.service.engine.stats()
        finally:
            pipe.close()

    cached, stats_on = run(True)
    plain, stats_off = run(False)
    assert cached == plain
    # 400 // 16 = 25 full blocks are shared: each request hits all of them.
    assert stats_on.num_prefix_hit_tokens >= 50 * 400 // 16 * 16
    assert stats_on.num_prefill_tokens < stats_off.num_prefill_tokens / 10


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(
    prompt_ids, prompts, default_pipe
):
    long_prompt = (prompt_ids[-1] * 7)[:3000]
    short = prompts[:8]
    config = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    expected_short = [default_pipe([p], gen_config=config)[0].token_ids for p in short]
    pipe = pipeline(
        None, backend_config=PytorchEngineConfig(session_len=4096, max_prefill_token_num=512)
    )
    try:
        runner = pipe.service.engine.runner
        trace = []
        original = runner.step

        def traced(plan):
            trace.append(list(zip([s.seq_id for s in plan.seqs], plan.num_scheduled, strict=True)))
            return original(plan)

        runner.step = traced
        streams = [pipe.service.submit(pipe.service.prepare(p, config)) for p in short]
        while pipe.service.engine.stats().num_decode_tokens < 8:  # the short ones are decoding
            time.sleep(0.01)
        long_out = pipe(
            [long_prompt], gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True)
        )[0]
        outs = [[t for out in stream for t in out.token_ids] for stream in streams]
    finally:
        pipe.close()
    assert outs == expected_short
    long_steps = [step for step in trace if any(n > 1 for _, n in step)]
    assert len(long_steps) >= 3000 // 512  # the long prompt came in chunks ...
    assert all(sum(n for _, n in step if n > 1) <= 512 for step in long_steps)  # ... within budget
    for stream in streams:  # ... and no short sequence ever skipped a step until it finished
        steps = [
            i for i, step in enumerate(trace) if any(sid == stream.seq.seq_id for sid, _ in step)
        ]
        assert steps == list(range(steps[0], steps[0] + len(steps)))
    assert long_out.generate_token_len == 4


def _two_turns(pipe, questions):
    """Turn 1 of every session, then turn 2 of every session; returns the turn-2 token ids."""
    import asyncio

    from lmdeploy.application.sessions import SessionManager

    sessions = SessionManager(pipe.service)

    async def turn(session_id, text):
        ids = []
        async for out in sessions.chat(session_id, text, GEN):
            ids += out.token_ids
        return ids

    async def main():
        for i, q in enumerate(questions):
            await turn(i, q)
        return [await turn(i, "And then?") for i in range(len(questions))]

    return asyncio.run(main())


def test_20_sessions_over_a_cache_for_5_give_the_turns_they_would_without_eviction():
    questions = [f"Tell me about the number {i}." for i in range(20)]
    roomy = pipeline(None, backend_config=PytorchEngineConfig(block_size=16, session_len=1024))
    try:
        expected = _two_turns(roomy, questions)
        assert roomy.service.engine.stats().num_session_evictions == 0
    finally:
        roomy.close()
    # A turn-2 history is about 60 tokens (4 blocks): 20 blocks hold about 5 sessions.
    tight = pipeline(
        None, backend_config=PytorchEngineConfig(block_size=16, num_gpu_blocks=20, session_len=1024)
    )
    try:
        got = _two_turns(tight, questions)
        stats = tight.service.engine.stats()
    finally:
        tight.close()
    assert got == expected
    assert stats.num_session_evictions >= 10
