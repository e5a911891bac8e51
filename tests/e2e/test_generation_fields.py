"""n choices and the other OpenAI / vLLM sampling fields, through the official `openai` client."""

from __future__ import annotations

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Give me one word for a happy mood."}]


def test_chat_n_returns_n_choices_and_counts_every_choice(openai_client):
    greedy = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=3, temperature=0, max_tokens=8
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1  # greedy choices agree
    sampled = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=3, temperature=1.0, seed=3, max_tokens=12
    )
    again = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=3, temperature=1.0, seed=3, max_tokens=12
    )
    texts = [c.message.content for c in sampled.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    one = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8
    )
    assert greedy.usage.prompt_tokens == one.usage.prompt_tokens
    assert greedy.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_streamed_chat_n_tags_chunks_with_their_choice(openai_client):
    kwargs = dict(model=MODEL, messages=MESSAGES, n=3, temperature=1.0, seed=9, max_tokens=10)
    whole = openai_client.chat.completions.create(**kwargs)
    chunks = list(
        openai_client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    texts = {0: "", 1: "", 2: ""}
    finished = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
    assert sorted(finished) == [0, 1, 2]
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n_numbers_choices_prompt_major(openai_client):
    out = openai_client.completions.create(
        model=MODEL, prompt=["Paris is", "Rome is"], n=2, max_tokens=5, temperature=0
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text != out.choices[2].text
    assert out.choices[2].text == out.choices[3].text
    assert out.usage.completion_tokens == 4 * 5
    single = openai_client.completions.create(
        model=MODEL, prompt=["Paris is", "Rome is"], max_tokens=5, temperature=0
    )
    assert out.usage.prompt_tokens == single.usage.prompt_tokens
    streamed = openai_client.completions.create(
        model=MODEL, prompt="Paris is", n=2, max_tokens=5, temperature=0, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts[0] == texts[1] == out.choices[0].text


def test_logit_bias_and_min_tokens(openai_client, default_pipe):
    from lmdeploy import GenerationConfig

    prompt = "The capital of France is"
    base = default_pipe(prompt, GenerationConfig(max_new_tokens=4), do_preprocess=False)
    banned = base.token_ids[0]
    expected = default_pipe(
        prompt, GenerationConfig(max_new_tokens=4, bad_token_ids=[banned]), do_preprocess=False
    )
    biased = openai_client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logit_bias={str(banned): -100}
    )
    assert biased.choices[0].text == expected.text != base.text
    short = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say ok."}], temperature=0, max_tokens=40
    )
    assert short.choices[0].finish_reason == "stop"
    longer = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say ok."}],
        temperature=0,
        max_tokens=40,
        extra_body={"min_tokens": short.usage.completion_tokens + 5},
    )
    assert longer.usage.completion_tokens >= short.usage.completion_tokens + 5


@pytest.mark.parametrize(
    "field, value",
    [
        ("n", 0),
        ("n", 1000),
        ("min_tokens", -1),
        ("logit_bias", {"5": 500}),
        ("logit_bias", {"abc": 1}),
        ("logit_bias", {"99999999": 1}),
        ("seed", "x"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server, field, value):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, field: value}
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers=server.headers, timeout=60
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] is not None and error["param"].startswith(field), error
