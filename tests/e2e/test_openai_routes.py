"""Every route through the official `openai` client (sync and async), streamed and not."""

from __future__ import annotations

import asyncio

import pytest

from lmdeploy import GenerationConfig

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": " provide three suggestions about time management"},
]


def test_models_lists_the_served_model(openai_client):
    assert [m.id for m in openai_client.models.list().data] == [MODEL]


def test_greedy_chat_equals_the_pipeline(openai_client, default_pipe):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=24
    )
    expected = default_pipe(MESSAGES, gen_config=GenerationConfig(max_new_tokens=24))
    choice = response.choices[0]
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == expected.input_token_len
    assert response.usage.completion_tokens == expected.generate_token_len
    assert response.object == "chat.completion" and response.id and response.created


def test_streamed_chat_adds_up_to_the_unstreamed_one_and_reports_usage(openai_client):
    kwargs = dict(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=20)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        openai_client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices


def test_stream_shape_as_0_6_5_role_in_every_chunk_and_a_separate_finish_chunk(openai_client):
    """Every chat chunk names the role; the last choice chunk is empty and carries the finish
    reason (OpenAI's shape); completions end the same way."""
    kwargs = dict(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=12, stream=True)
    chunks = [c for c in openai_client.chat.completions.create(**kwargs) if c.choices]
    assert all(c.choices[0].delta.role == "assistant" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert (
        chunks[-1].choices[0].finish_reason == "length" and not chunks[-1].choices[0].delta.content
    )
    pieces = list(
        openai_client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
        )
    )
    assert [c.choices[0].finish_reason for c in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert pieces[-1].choices[0].finish_reason == "length" and pieces[-1].choices[0].text == ""


def test_completions_with_a_string_and_a_list_of_prompts(openai_client):
    one = openai_client.completions.create(
        model=MODEL, prompt="two steps to build a house:", max_tokens=8, temperature=0
    )
    assert one.choices[0].text and one.usage.completion_tokens == 8
    many = openai_client.completions.create(
        model=MODEL, prompt=["Paris is", "Rome is"], max_tokens=6, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert (
        many.choices[0].text
        == openai_client.completions.create(
            model=MODEL, prompt="Paris is", max_tokens=6, temperature=0
        )
        .choices[0]
        .text
    )


def test_streamed_completion(openai_client):
    chunks = list(
        openai_client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True
        )
    )
    whole = openai_client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_stop_sequences_and_logprobs(openai_client):
    base = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=30, logprobs=True, top_logprobs=3
    )
    content = base.choices[0].logprobs.content
    assert len(content) == base.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert content[0].logprob == pytest.approx(
        content[0].top_logprobs[0].logprob
    )  # greedy picks the top token
    word = base.choices[0].message.content.split()[3]
    cut = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=30, stop=[word]
    )
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].message.content


def test_async_client(server):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(api_key=server.api_key, base_url=f"{server.url}/v1")
        cards = await client.models.list()
        response = await client.chat.completions.create(
            model=cards.data[0].id, messages=MESSAGES, temperature=0.8, top_p=0.8, max_tokens=16
        )
        stream = await client.completions.create(
            model=MODEL, prompt="Hi", max_tokens=4, stream=True
        )
        pieces = [c.choices[0].text async for c in stream]
        return response, pieces

    response, pieces = asyncio.run(main())
    assert response.choices[0].message.content and len(pieces) >= 1
