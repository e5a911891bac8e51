"""Greedy token ids of our engine equal transformers' on the same GGUF weights (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

# Different budgets make the batched prompts finish at different steps.
MAX_NEW_TOKENS = [12, 20, 8, 16, 24, 10, 14, 18]


@pytest.fixture(scope="module")
def reference(hf_model, prompt_ids):
    outputs = []
    with torch.no_grad():
        for ids, n in zip(prompt_ids, MAX_NEW_TOKENS, strict=True):
            generated = hf_model.generate(
                torch.tensor([ids]),
                max_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            outputs.append(generated[0, len(ids) :].tolist())
    return outputs


@pytest.mark.parametrize(
    "engine_config",
    [
        PytorchEngineConfig(block_size=16, session_len=1024),
        PytorchEngineConfig(block_size=64, session_len=1024),
        PytorchEngineConfig(block_size=64, session_len=1024, max_batch_size=2),
        PytorchEngineConfig(
            block_size=16, session_len=1024, max_prefill_token_num=48, enable_prefix_caching=True
        ),
    ],
    ids=["block16", "block64", "max_batch_size2", "chunked_prefill_prefix_cache"],
)
def test_greedy_ids_match_transformers(engine_config, prompt_ids, reference):
    pipe = pipeline("SmolLM2-135M-Instruct", backend_config=engine_config)
    try:
        configs = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in MAX_NEW_TOKENS]
        responses = pipe(prompt_ids, gen_config=configs)
        engine = pipe.service.engine
        stats = engine.stats()
    finally:
        pipe.close()
    for i, (response, expected) in enumerate(zip(responses, reference, strict=True)):
        assert response.token_ids == expected, f"prompt {i} ({len(prompt_ids[i])} tokens) diverged"
        assert response.finish_reason == "length"
    assert stats.num_free_blocks == stats.num_blocks, "KV blocks leaked"


def test_prefill_logits_match_transformers(default_pipe, hf_model, prompt_ids):
    """A stronger check than argmax: the last-position logits agree closely."""
    from lmdeploy.domain.sampling_params import SamplingParams
    from lmdeploy.domain.scheduler import StepPlan
    from lmdeploy.domain.sequence import Sequence, SequenceStatus

    runner = default_pipe.service.engine.runner
    ids = prompt_ids[6]
    seq = Sequence(ids, SamplingParams(temperature=0), max_len=2048)
    seq.status = SequenceStatus.RUNNING
    seq.block_table = list(
        range(runner.cache.num_blocks - 5, runner.cache.num_blocks)
    )  # unused tail blocks
    input_ids, positions, meta = runner._prepare(StepPlan([seq]))
    with torch.inference_mode():
        hidden = runner.model(
            input_ids,
            runner.rope.cos[positions],
            runner.rope.sin[positions],
            runner.kv_caches,
            meta,
        )
        ours = runner.model.compute_logits(hidden[-1:])
        theirs = hf_model(torch.tensor([ids])).logits[0, -1:]
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-3)
