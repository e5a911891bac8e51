"""pipeline() on the embedded model: the documented call shapes, options and bad input."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import weakref

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig, pipeline
from lmdeploy.adapters.loaders.model_source import ModelNotFound
from lmdeploy.domain.errors import InvalidArgument

SHORT = GenerationConfig(max_new_tokens=16)


def test_single_prompt_returns_one_response_and_a_list_returns_a_list(default_pipe):
    one = default_pipe("Hello", gen_config=SHORT)
    many = default_pipe(["Hello", "Bye"], gen_config=SHORT)
    assert one.text and isinstance(many, list) and [r.index for r in many] == [0, 1]
    assert one.text == many[0].text  # batching does not change greedy output


def test_list_of_message_lists(default_pipe):
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Shanghai is"}]]
    out = default_pipe(prompts, gen_config=SHORT)
    assert len(out) == 2 and all(r.text for r in out)


def test_stream_infer_concatenates_to_the_batch_text(default_pipe):
    full = default_pipe("Tell me a fact about cats.", gen_config=SHORT)
    pieces = [
        r for r in default_pipe.stream_infer(["Tell me a fact about cats."], gen_config=SHORT)
    ]
    assert "".join(p.text for p in pieces) == full.text
    assert pieces[-1].finish_reason == full.finish_reason


def test_stop_words_and_stop_token_ids(default_pipe):
    base = default_pipe(
        "Count from one to ten in words.", gen_config=GenerationConfig(max_new_tokens=40)
    )
    word = base.text.split()[2]
    cut = default_pipe(
        "Count from one to ten in words.",
        gen_config=GenerationConfig(max_new_tokens=40, stop_words=[word]),
    )
    assert cut.finish_reason == "stop" and word not in cut.text and base.text.startswith(cut.text)
    stop_id = base.token_ids[3]
    by_id = default_pipe(
        "Count from one to ten in words.",
        gen_config=GenerationConfig(max_new_tokens=40, stop_token_ids=[stop_id]),
    )
    assert by_id.token_ids == base.token_ids[: base.token_ids.index(stop_id)]


def test_sampling_with_a_seed_is_reproducible_and_differs_across_seeds(default_pipe):
    def run(seed):
        config = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_p=0.95,
            top_k=40,
            random_seed=seed,
            max_new_tokens=24,
        )
        return default_pipe("Write a short poem.", gen_config=config).token_ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_eos_stops_generation_with_reason_stop(default_pipe):
    out = default_pipe("Say just 'ok'.", gen_config=GenerationConfig(max_new_tokens=200))
    assert out.finish_reason == "stop" and out.generate_token_len < 200


def test_prompt_longer_than_session_len_ends_with_length(default_pipe):
    out = default_pipe("word " * 3000, gen_config=SHORT)
    assert (
        out.finish_reason == "length" and out.generate_token_len == 0 and out.input_token_len > 2048
    )


def test_a_session_len_far_beyond_the_kv_cache_costs_no_memory(default_pipe):
    """session_len=2**40: the rotary table and the block tables are sized by the cache (no
    sequence outgrows it), so the engine starts and answers as one with a sane session_len."""
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False)
    config = PytorchEngineConfig(session_len=1 << 40, cache_max_entry_count=0.05)
    with pipeline("SmolLM2-135M-Instruct", backend_config=config) as pipe:
        huge = pipe("The capital of France is", gen_config=greedy)
    assert huge.token_ids == default_pipe("The capital of France is", gen_config=greedy).token_ids


def test_bad_inputs_raise_clear_errors(default_pipe):
    with pytest.raises(InvalidArgument, match="prompts"):
        default_pipe([])
    with pytest.raises(InvalidArgument, match="top_p"):
        default_pipe("hi", gen_config=GenerationConfig(top_p=1.5))
    with pytest.raises(ModelNotFound, match="/nonexistent/model"):
        pipeline("/nonexistent/model")


def test_a_closed_pipeline_lets_go_of_its_weights_and_kv_cache_while_still_referenced():
    """The caller keeps the closed pipeline (a variable, a traceback): its model and KV cache
    are freed anyway, so a pipeline built next in the process sizes its cache from the whole
    device; what reports on the run stays readable."""
    pipe = pipeline("SmolLM2-135M-Instruct", backend_config=PytorchEngineConfig(session_len=512))
    assert pipe("Hello", gen_config=GenerationConfig(max_new_tokens=4)).generate_token_len == 4
    runner = pipe.service.engine.runner
    weight = weakref.ref(next(runner.model.parameters()))
    cache = weakref.ref(runner.kv_caches[0][0])
    counters = runner.ahead_counters
    pipe.close()
    gc.collect()
    assert weight() is None, "the closed pipeline still holds its weights"
    assert cache() is None, "the closed pipeline still holds its KV cache"
    assert runner.ahead_counters is counters
    with pytest.raises(RuntimeError, match="closed"):
        pipe("Hello")


def test_a_bad_admission_headroom_switch_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("LMDEPLOY_ADMISSION_HEADROOM", "lots")
    with pytest.raises(InvalidArgument, match="LMDEPLOY_ADMISSION_HEADROOM"):
        pipeline("SmolLM2-135M-Instruct", backend_config=PytorchEngineConfig(session_len=512))


def test_turbomind_config_falls_back_to_pytorch_with_a_log_line(caplog):
    with caplog.at_level("WARNING", logger="lmdeploy"):
        pipe = pipeline(
            None, backend_config=TurbomindEngineConfig(session_len=256, cache_max_entry_count=0.05)
        )
    try:
        assert pipe("Hi", gen_config=GenerationConfig(max_new_tokens=4)).generate_token_len == 4
    finally:
        pipe.close()


CHAT = [sys.executable, "-m", "lmdeploy.infrastructure.entrypoint", "chat"]
CHAT_PROMPT = "double enter to end input >>> "  # LMDeploy 0.6.5's


def test_chat_cli_keeps_the_conversation_and_exits_on_exit():
    # Double Enter submits: "What is" and "my name?" are one prompt of two lines.
    script = "My name is Alice.\n\nWhat is\nmy name?\n\nexit\nnever read\n\n"
    result = subprocess.run(
        [*CHAT, "--max-new-tokens", "24", "--session-len", "1024", "--log-level", "INFO"],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second = (int(n) for n in re.findall(r"request \d+: input_tokens=(\d+)", result.stderr))
    replies = result.stdout.split(CHAT_PROMPT)[1:]
    assert len(replies) == 3 and replies[-1] == "", "exit must end the chat before the next line"
    assert all(reply.strip() for reply in replies[:2])
    # The second turn carries the first question and answer: the conversation is kept.
    assert second > first + 5


def test_chat_cli_honours_exit_typed_while_a_reply_streams():
    """`exit` typed during the reply waits in the input and quits once the reply is done,
    without a second Enter and without the input being closed."""
    chat = subprocess.Popen(
        [*CHAT, "--max-new-tokens", "32", "--session-len", "1024"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        chat.stdin.write("Tell me a story.\n\n")
        chat.stdin.flush()
        chat.stdin.write("exit\n")  # typed ahead, while the model loads and replies
        chat.stdin.flush()
        chat.wait(timeout=300)
        out, err = chat.stdout.read(), chat.stderr.read()
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    replies = out.split(CHAT_PROMPT)[1:]
    assert len(replies) == 2 and replies[0].strip() and replies[1] == ""


def test_chat_cli_warns_as_0_6_5_when_the_session_is_full_and_end_starts_over():
    long = "Tell me everything about Shanghai, its history, food and people. " * 12
    result = subprocess.run(
        [*CHAT, "--max-new-tokens", "8", "--session-len", "96"],
        input=f"{long}\n\nend\nHi\n\nexit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    full, after_end, reply, _ = result.stdout.split(CHAT_PROMPT)[1:]
    assert full.strip() == "WARNING: exceed session max length. Please end the session."
    assert after_end.strip() == "" and reply.strip()


def test_chat_cli_reports_bad_arguments_with_nonzero_exit():
    result = subprocess.run(
        [sys.executable, "-m", "lmdeploy.infrastructure.entrypoint", "chat", "--top-p", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "top_p" in result.stderr


def test_chat_turn_two_prefills_only_new_tokens_and_matches_a_fresh_run(default_pipe):
    engine = default_pipe.service.engine
    gen = GenerationConfig(max_new_tokens=12)
    session = default_pipe.chat("Hi, my name is Bob.", gen_config=gen)
    first_input = session.response.input_token_len
    before = engine.stats().num_prefill_tokens
    session = default_pipe.chat("What is my name?", session=session, gen_config=gen)
    prefilled = engine.stats().num_prefill_tokens - before
    history = [
        {"role": "user", "content": "Hi, my name is Bob."},
        {"role": "assistant", "content": session.history[0][1]},
        {"role": "user", "content": "What is my name?"},
    ]
    fresh = default_pipe(history, gen_config=gen)
    assert session.response.text == fresh.text
    assert session.response.input_token_len == fresh.input_token_len
    assert prefilled <= fresh.input_token_len - first_input  # turn 1's tokens were not recomputed
    session.close()
    deltas = list(default_pipe.chat("Hello", gen_config=gen, stream_response=True))
    assert "".join(d.text for d in deltas)


def test_a_chat_turn_past_session_len_finishes_with_length(default_pipe):
    session = default_pipe.chat("word " * 1500, gen_config=GenerationConfig(max_new_tokens=4))
    session = default_pipe.chat(
        "word " * 1500, session=session, gen_config=GenerationConfig(max_new_tokens=4)
    )
    assert session.response.finish_reason == "length" and session.response.generate_token_len == 0
    session.close()


def test_bad_words_are_never_generated(default_pipe):
    prompt = "Name three colors."
    base = default_pipe(prompt, gen_config=GenerationConfig(max_new_tokens=30))
    word = next(w for w in base.text.split() if w.isalpha() and len(w) > 2)  # e.g. "Red"
    banned = default_pipe(prompt, gen_config=GenerationConfig(max_new_tokens=30, bad_words=[word]))
    assert word not in banned.text.split() and banned.text != base.text
    with pytest.raises(InvalidArgument, match="bad_words"):
        default_pipe(
            prompt, gen_config=GenerationConfig(bad_words=["antidisestablishmentarianism"])
        )


def test_cjk_and_emoji_stream_without_replacement_characters(default_pipe):
    # A repeated pattern as a raw completion: the model continues it with CJK and emoji, whose
    # UTF-8 bytes span several byte-level tokens.
    prompt = "你好，世界！😀 你好，世界！😀 你好，世界！😀 你好，世界！"
    gen = GenerationConfig(max_new_tokens=40)
    deltas = list(default_pipe.stream_infer([prompt], gen_config=gen, do_preprocess=False))
    text = "".join(d.text for d in deltas)
    assert all("\ufffd" not in d.text for d in deltas)
    assert any(ord(c) > 0x2E80 for c in text), "the model was meant to emit CJK or emoji"
    assert "😀" in text
    assert text == default_pipe(prompt, gen_config=gen, do_preprocess=False).text


def test_ignore_eos_yields_exactly_max_new_tokens_without_stop_tokens(default_pipe):
    """As 0.6.5: the template's stop words and eos are banned while ignore_eos is set."""
    short = default_pipe("Hi", gen_config=GenerationConfig(max_new_tokens=48))
    assert short.finish_reason == "stop" and short.generate_token_len < 48
    out = default_pipe("Hi", gen_config=GenerationConfig(max_new_tokens=48, ignore_eos=True))
    stops = set(default_pipe.service.tokenizer.eos_token_ids)
    stops |= {default_pipe.service.tokenizer.encode("<|im_end|>", False)[0]}
    assert out.finish_reason == "length"
    assert out.generate_token_len == len(out.token_ids) == 48
    assert not stops & set(out.token_ids)


def test_batch_responses_carry_session_ids_0_to_n_minus_1(default_pipe):
    """As 0.6.5: a batch's streams are sessions 0..n-1, so stream deltas can be grouped."""
    prompts = ["Hi", "Shanghai is", "Count to three."]
    assert [r.session_id for r in default_pipe(prompts, gen_config=SHORT)] == [0, 1, 2]
    texts: dict[int, str] = {}
    for delta in default_pipe.stream_infer(prompts, gen_config=SHORT):
        assert delta.session_id == delta.index
        texts[delta.session_id] = texts.get(delta.session_id, "") + delta.text
    assert sorted(texts) == [0, 1, 2]
