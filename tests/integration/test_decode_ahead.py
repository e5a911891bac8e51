"""Decode steps started ahead (decode_ahead.py) change nothing but timing: on the embedded model,
forced on for the CPU, every output equals the one of the same requests without it, across
requests that queue, stop on a sampled token, end by length, sample with seeds or are aborted,
and no KV block is leaked. On CUDA the path is on by default under CUDA graphs (test_cuda_engine)."""

from __future__ import annotations

import queue

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.sequence import Sequence


def _pipe(ahead: bool):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMDEPLOY_DECODE_AHEAD", "1" if ahead else "0")
        return pipeline(
            "SmolLM2-135M-Instruct",
            backend_config=PytorchEngineConfig(session_len=1024, block_size=16, max_batch_size=3),
        )


@pytest.fixture(scope="module")
def pipes():
    ahead, plain = _pipe(True), _pipe(False)
    assert ahead.service.engine.runner.decodes_ahead
    assert not plain.service.engine.runner.decodes_ahead
    yield ahead, plain
    ahead.close()
    plain.close()


def _configs(stop_id: int) -> list[GenerationConfig]:
    return [
        GenerationConfig(max_new_tokens=12, top_k=1, ignore_eos=True),
        GenerationConfig(max_new_tokens=40, top_k=1, ignore_eos=True),
        GenerationConfig(max_new_tokens=30, top_k=40, temperature=0.9, random_seed=7),
        GenerationConfig(max_new_tokens=25, top_p=0.9, top_k=0, temperature=1.1, random_seed=3),
        GenerationConfig(max_new_tokens=40, top_k=1, stop_token_ids=[stop_id]),
        GenerationConfig(
            max_new_tokens=20,
            top_k=50,
            temperature=1.0,
            random_seed=11,
            min_new_tokens=18,
            stop_token_ids=[stop_id],
        ),
        GenerationConfig(max_new_tokens=33, top_k=1, ignore_eos=True),
    ]


def test_outputs_equal_those_without_decoding_ahead(pipes, prompt_ids):
    ahead, plain = pipes
    prompts = [prompt_ids[i] for i in (0, 1, 2, 3, 5, 6, 7)]
    # A token the fifth request's greedy run emits early: it stops on it mid-batch.
    probe = plain(
        [prompts[4]], gen_config=GenerationConfig(max_new_tokens=8, top_k=1, ignore_eos=True)
    )
    stop_id = probe[0].token_ids[5]
    configs = _configs(stop_id)
    want = plain(prompts, gen_config=configs)
    counters = ahead.service.engine.runner.ahead_counters
    before = (counters.started, counters.used)
    got = ahead(prompts, gen_config=configs)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
    assert want[4].finish_reason == "stop" and len(want[4].token_ids) <= 6  # stopped on a token
    assert len(want[5].token_ids) >= 18  # min_new_tokens held off the stop token
    started, used = counters.started - before[0], counters.used - before[1]
    # With three running and four queued, most decode steps were started ahead and taken.
    assert used >= 50 and used >= 0.7 * started, (started, used)
    stats = ahead.service.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_an_abort_while_a_step_runs_ahead_loses_nothing(pipes, prompt_ids):
    ahead, plain = pipes
    engine = ahead.service.engine
    greedy = GenerationConfig(max_new_tokens=60, top_k=1, ignore_eos=True)
    seqs = [Sequence(prompt_ids[i], greedy.to_sampling_params(), 1024) for i in (3, 4)]
    events: queue.SimpleQueue = queue.SimpleQueue()
    for seq in seqs:
        engine.submit(seq, events.put)
    tokens = {seq.seq_id: [] for seq in seqs}
    ended = set()
    while len(ended) < 2:
        event = events.get(timeout=60)
        if event.token_id is not None:
            tokens[event.seq.seq_id].append(event.token_id)
        if event.finished:
            ended.add(event.seq.seq_id)
        if len(tokens[seqs[0].seq_id]) == 5 and seqs[0].seq_id not in ended:
            engine.abort(seqs[0])  # mid-decode: the next step is already started
    assert seqs[0].finish_reason == "abort" and len(tokens[seqs[0].seq_id]) < 60
    want = plain([prompt_ids[4]], gen_config=greedy)[0].token_ids
    assert tokens[seqs[1].seq_id] == want
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
