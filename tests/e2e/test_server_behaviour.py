"""Concurrency, disconnects, interactive sessions, auth and validation against a real server."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from lmdeploy import GenerationConfig
from lmdeploy.serve.openai.api_client import APIClient

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = [
    "What is a cat?",
    "Name a color.",
    "Count to five.",
    "What is 2+2?",
    "Say hello.",
    "What is rain?",
    "Name a fruit.",
    "Define AI.",
]


def test_64_concurrent_streams_complete_with_greedy_text_and_free_every_block(server, default_pipe):
    from openai import AsyncOpenAI

    expected = [
        r.text
        for r in default_pipe(
            [[{"role": "user", "content": q}] for q in QUESTIONS],
            gen_config=GenerationConfig(max_new_tokens=16),
        )
    ]

    async def one(client, question):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=16,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        client = AsyncOpenAI(
            api_key=server.api_key, base_url=f"{server.url}/v1", max_retries=0, timeout=600
        )
        return await asyncio.gather(*(one(client, QUESTIONS[i % 8]) for i in range(64)))

    texts = asyncio.run(main())
    assert texts == [expected[i % 8] for i in range(64)]
    stats = server.wait_idle()
    assert stats["num_free_blocks"] == stats["num_blocks"]


def test_a_client_dropping_its_stream_leaves_nothing_behind(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers, timeout=60
    ) as response:
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: ")
            if chunks == 5:
                break
    assert chunks == 5
    stats = server.wait_idle()
    assert stats["num_running"] == 0 and stats["num_free_blocks"] == stats["num_blocks"]


def test_interactive_session_keeps_history_and_ends_on_request(server):
    client = APIClient(server.url, api_key=server.api_key)
    first = next(
        client.chat_interactive_v1(
            "Hello! How are you?", session_id=11, interactive_mode=True, request_output_len=8
        )
    )
    second = next(
        client.chat_interactive_v1(
            "And what is your name?", session_id=11, interactive_mode=True, request_output_len=8
        )
    )
    # history_tokens: the tokens before this turn (0.6.5): the first turn's prompt and reply
    assert first["history_tokens"] == 0
    assert second["history_tokens"] >= first["input_tokens"] + first["tokens"]
    assert (
        second["input_tokens"] > first["input_tokens"] + first["tokens"]
    )  # the history was prepended
    streamed = list(
        client.chat_interactive_v1(
            "Bye.", session_id=11, interactive_mode=True, stream=True, request_output_len=6
        )
    )
    assert streamed[-1]["finish_reason"] in ("stop", "length")
    assert (
        server.stats()["num_free_blocks"] < server.stats()["num_blocks"]
    )  # the session holds its cache
    client.end_session(11)
    stats = server.wait_idle()
    assert stats["num_free_blocks"] == stats["num_blocks"]


def test_a_busy_session_rejects_a_second_request(server):
    body = {
        "prompt": "Tell a long story.",
        "session_id": 21,
        "interactive_mode": True,
        "stream": True,
        "request_output_len": 300,
        "ignore_eos": True,
    }
    started = threading.Event()

    def long_turn():
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/interactive",
            json=body,
            headers=server.headers,
            timeout=120,
        ) as response:
            for _ in response.iter_lines():
                started.set()

    thread = threading.Thread(target=long_turn)
    thread.start()
    assert started.wait(60)
    clash = httpx.post(
        f"{server.url}/v1/chat/interactive",
        headers=server.headers,
        timeout=30,
        json={"prompt": "hi", "session_id": 21, "interactive_mode": True},
    )
    httpx.post(
        f"{server.url}/v1/chat/interactive",
        headers=server.headers,
        timeout=30,
        json={"session_id": 21, "cancel": True},
    )
    thread.join(60)
    assert clash.status_code == 400
    assert clash.json()["error"]["param"] == "session_id"
    httpx.post(
        f"{server.url}/v1/chat/interactive",
        headers=server.headers,
        timeout=30,
        json={"prompt": "", "session_id": 21, "interactive_mode": False},
    )
    assert server.wait_idle()["num_running"] == 0


@pytest.mark.parametrize("path", ["/v1/models", "/stats", "/docs"])
def test_missing_or_wrong_api_key_is_401(server, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{server.url}{path}", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 3}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, body, param):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, **body},
        headers=server.headers,
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_unknown_model_is_404_and_oversize_prompt_is_400(server):
    unknown = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=server.headers,
        timeout=30,
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    huge = httpx.post(
        f"{server.url}/v1/completions",
        headers=server.headers,
        timeout=30,
        json={"model": MODEL, "prompt": "word " * 3000},
    )
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    malformed = httpx.post(
        f"{server.url}/v1/completions",
        headers={**server.headers, "Content-Type": "application/json"},
        content=b"{not json",
        timeout=30,
    )
    assert malformed.status_code == 400


def test_api_client(server):
    client = APIClient(server.url, api_key=server.api_key)
    assert client.available_models == [MODEL]
    [reply] = client.chat_completions_v1(
        MODEL, [{"role": "user", "content": "Say this is a test!"}], max_tokens=8
    )
    assert reply["choices"][0]["message"]["content"]
    # Sampled replies may end early on EOS ('stop'): ignore_eos makes the length the limit.
    chunks = list(
        client.chat_completions_v1(MODEL, "hi", max_tokens=5, stream=True, ignore_eos=True)
    )
    assert chunks and chunks[-1]["choices"][0]["finish_reason"] == "length"
    [completion] = client.completions_v1(MODEL, "hi", max_tokens=4, ignore_eos=True)
    assert completion["usage"]["completion_tokens"] == 4


def test_api_client_encode_model_list_and_error_bodies_as_0_6_5(server):
    from lmdeploy.serve.openai.api_client import get_model_list

    client = APIClient(server.url, api_key=server.api_key)
    assert get_model_list(client.models_v1_url, client.headers) == [MODEL]
    ids, length = client.encode("Hello world")
    assert length == len(ids) > 0
    many, lengths = client.encode(["Hi", "Hello world"], do_preprocess=True)
    assert lengths == [len(m) for m in many] and lengths[0] > len(client.encode("Hi")[0])
    # An error is yielded, not raised: OpenAI's body plus 0.6.5's top-level fields.
    [error] = client.chat_completions_v1(MODEL, "hi", top_p=0.0, max_tokens=4)
    assert error["object"] == "error" and error["code"] == 400
    assert error["message"] == "The top_p `0.0` must be in (0, 1]."
    assert error["error"]["param"] == "top_p" and error["error"]["code"] == "invalid_value"
    [unknown] = client.completions_v1("gpt-4", "hi", stream=True)
    assert unknown["code"] == 404 and unknown["message"] == "The model `gpt-4` does not exist."
