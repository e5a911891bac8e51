"""The generation options beyond sampling, on the embedded model against transformers: n > 1
choices, logits processors, output_logits / output_last_hidden_state, logprobs, get_ppl and
spaces_between_special_tokens."""

from __future__ import annotations

import pytest
import torch

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.application.detokenizer import IncrementalDetokenizer
from lmdeploy.domain.errors import InvalidArgument

from ..conftest import LONG_TEXT


@pytest.fixture(scope="module")
def chunked_pipe():
    """Prefill in chunks of 128 tokens, so long prompts take several steps."""
    pipe = pipeline(
        "SmolLM2-135M-Instruct",
        backend_config=PytorchEngineConfig(
            session_len=2048, block_size=16, max_prefill_token_num=128
        ),
    )
    yield pipe
    pipe.close()


def _reference(hf_model, ids: list[int]):
    with torch.no_grad():
        out = hf_model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0], out.hidden_states[-1][0]


# -- get_ppl ------------------------------------------------------------------------------------
def _hf_loss(hf_model, ids: list[int]) -> float:
    with torch.no_grad():
        t = torch.tensor([ids])
        return float(hf_model(t, labels=t).loss)


def test_get_ppl_equals_transformers_loss_short_long_and_batched(
    chunked_pipe, hf_model, hf_tokenizer
):
    ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    short, long = ids[:20], ids[:700]  # 700 tokens: six prefill chunks of 128
    assert chunked_pipe.get_ppl(short) == [pytest.approx(_hf_loss(hf_model, short), abs=1e-4)]
    expected_long = _hf_loss(hf_model, long)
    assert chunked_pipe.get_ppl(long)[0] == pytest.approx(expected_long, abs=1e-4)
    batch = [ids[5:40], long, ids[100 : 101 + 2]]
    expected = [_hf_loss(hf_model, x) for x in batch]
    assert chunked_pipe.get_ppl(batch) == pytest.approx(expected, abs=1e-4)
    stats = chunked_pipe.service.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


@pytest.mark.parametrize(
    "bad", [[], [[]], [5], ["a", "b"], [1.5, 2], [[1, 2], [3]], [[1, 2], 3], [1, 10**9]]
)
def test_get_ppl_rejects_bad_input_naming_input_ids(default_pipe, bad):
    with pytest.raises(InvalidArgument) as info:
        default_pipe.get_ppl(bad)
    assert info.value.argument == "input_ids"


# -- output_logits / output_last_hidden_state / logprobs -----------------------------------------
def test_output_logits_and_hidden_states_match_transformers(chunked_pipe, hf_model, prompt_ids):
    prompt = prompt_ids[5]  # 129 tokens: a chunk of 128, then the rest
    P = len(prompt)
    configs = [
        GenerationConfig(
            max_new_tokens=6, ignore_eos=True, output_logits=a, output_last_hidden_state=b
        )
        for a, b in (("all", "generation"), ("generation", "all"))
    ]
    first, second = chunked_pipe([prompt, prompt], gen_config=configs)
    assert first.token_ids == second.token_ids and len(first.token_ids) == 6
    logits, hidden = _reference(hf_model, prompt + first.token_ids[:-1])
    assert first.logits.shape == (P + 5, logits.shape[1]) and first.logits.device.type == "cpu"
    assert second.logits.shape == (6, logits.shape[1])
    assert first.last_hidden_state.shape == (6, hidden.shape[1])
    assert second.last_hidden_state.shape == (P + 5, hidden.shape[1])
    # Measured: max |diff| 1.1e-4 for the logits, 9e-5 for the hidden states.
    torch.testing.assert_close(first.logits, logits, atol=3e-4, rtol=0)
    torch.testing.assert_close(second.logits, logits[P - 1 :], atol=3e-4, rtol=0)
    torch.testing.assert_close(second.last_hidden_state, hidden, atol=2e-4, rtol=0)
    torch.testing.assert_close(first.last_hidden_state, hidden[P - 1 :], atol=2e-4, rtol=0)
    # Greedy: each generation row's argmax is the token it produced.
    assert second.logits.argmax(-1).tolist() == first.token_ids


def test_stream_deltas_carry_their_rows(default_pipe):
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True, output_logits="generation")
    deltas = list(default_pipe.stream_infer(["Hello there"], gen_config=config))
    rows = [d.logits for d in deltas if d.logits is not None]
    assert sum(len(r) for r in rows) == sum(len(d.token_ids) for d in deltas) == 5
    whole = default_pipe("Hello there", gen_config=config)
    torch.testing.assert_close(torch.cat(rows), whole.logits)


def test_logprobs_are_log_softmax_of_the_reference_logits(default_pipe, hf_model, prompt_ids):
    prompt = prompt_ids[2]
    out = default_pipe(
        prompt, gen_config=GenerationConfig(max_new_tokens=5, ignore_eos=True, logprobs=3)
    )
    logits, _ = _reference(hf_model, prompt + out.token_ids[:-1])
    expected = logits[len(prompt) - 1 :].log_softmax(-1)
    assert len(out.logprobs) == 5
    for row, (token, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        top = expected[row].topk(3)
        assert set(entry) == {token} | set(top.indices.tolist())
        for token_id, value in entry.items():
            assert value == pytest.approx(float(expected[row, token_id]), abs=3e-4)


# -- n > 1 --------------------------------------------------------------------------------------
def test_n_choices_compute_the_prompt_once_and_greedy_choices_agree(default_pipe, prompt_ids):
    prompt = prompt_ids[6]  # 257 tokens, blocks of 64: 4 full blocks shared, 1 token each
    engine = default_pipe.service.engine
    before = engine.stats()
    outs = default_pipe([prompt], gen_config=GenerationConfig(n=4, max_new_tokens=6))
    after = engine.stats()
    assert [o.index for o in outs] == [0, 0, 0, 0]
    assert after.num_prefill_tokens - before.num_prefill_tokens == 257 + 3 * 1
    assert all(o.token_ids == outs[0].token_ids for o in outs)
    assert (
        outs[0].token_ids
        == default_pipe(prompt, gen_config=GenerationConfig(max_new_tokens=6)).token_ids
    )
    # Other tests may leave a chat session's blocks in the shared pipeline: count this one's.
    assert after.num_free_blocks == before.num_free_blocks


def test_seeded_choices_differ_and_reproduce_prompt_major(default_pipe):
    config = GenerationConfig(
        n=3, do_sample=True, temperature=1.0, top_k=0, random_seed=5, max_new_tokens=12
    )
    first = default_pipe(["Write a poem.", "Name a color."], gen_config=config)
    again = default_pipe(["Write a poem.", "Name a color."], gen_config=config)
    assert [o.index for o in first] == [0, 0, 0, 1, 1, 1]
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in first[:3]}) == 3
    single = default_pipe(
        "Write a poem.",
        gen_config=GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, random_seed=5, max_new_tokens=12
        ),
    )
    assert single.token_ids == first[0].token_ids  # choice 0 keeps the seed


def test_stream_infer_with_n_tags_each_choice_with_its_prompt(default_pipe):
    deltas = list(
        default_pipe.stream_infer(
            ["Hi", "Bye"], gen_config=GenerationConfig(n=2, max_new_tokens=4, ignore_eos=True)
        )
    )
    finished = sorted(d.index for d in deltas if d.finish_reason is not None)
    assert finished == [0, 0, 1, 1]


# -- logits processors --------------------------------------------------------------------------
def test_a_banning_processor_is_obeyed_and_a_failing_one_aborts_only_its_request(default_pipe):
    base = default_pipe("Count from one to five.", gen_config=GenerationConfig(max_new_tokens=8))
    banned = base.token_ids[1]
    seen: list[torch.Tensor] = []

    def ban(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen.append(input_ids.clone())
        scores = scores.clone()
        scores[banned] = -float("inf")
        return scores

    def broken(input_ids, scores):
        raise RuntimeError("broken processor")

    def wrong_shape(input_ids, scores):
        return scores[:10]

    configs = [
        GenerationConfig(max_new_tokens=8, logits_processors=[ban]),
        GenerationConfig(max_new_tokens=8, logits_processors=[broken]),
        GenerationConfig(max_new_tokens=8, logits_processors=[wrong_shape]),
        GenerationConfig(max_new_tokens=8),
    ]
    outs = default_pipe(["Count from one to five."] * 4, gen_config=configs)
    assert banned not in outs[0].token_ids and outs[0].token_ids[0] == base.token_ids[0]
    assert seen[0].dtype == torch.long and seen[0].tolist()[-1] != banned
    assert seen[1].tolist()[-1] == outs[0].token_ids[0]  # prompt + generated so far
    assert outs[1].finish_reason == "abort" and outs[1].token_ids == []
    assert outs[2].finish_reason == "abort" and outs[2].token_ids == []
    assert outs[3].token_ids == base.token_ids  # the engine kept going for the others


# -- spaces_between_special_tokens -------------------------------------------------------------
def test_spaces_between_special_tokens_when_special_tokens_are_kept(default_pipe):
    tok = default_pipe.service.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><|im_end|>ok", add_special_tokens=False)
    assert tok.decode(ids, False) == "<|im_start|>user\nhi<|im_end|><|im_end|>ok"
    spaced = tok.decode(ids, False, spaces_between_special_tokens=True)
    assert spaced == "<|im_start|> user\nhi <|im_end|> <|im_end|> ok"
    assert tok.decode(ids, True, spaces_between_special_tokens=True) == tok.decode(ids, True)
    detok = IncrementalDetokenizer(
        tok, skip_special_tokens=False, spaces_between_special_tokens=True
    )
    assert "".join(detok.push(t) for t in ids) == spaced
