"""Tool calling through the server on the default model (SmolLM2: the Hermes format).

A 135M model calls tools only sometimes, so these tests check the shape of what comes back:
parsed tool calls when it called one, plain content otherwise, and that tools and tool
results reach the prompt."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from lmdeploy.adapters.http.app import create_app
from lmdeploy.adapters.http.services import ServerServices
from lmdeploy.application.generation import GenOut
from lmdeploy.model import ChatTemplateConfig, builtin_template

MODEL = "SmolLM2-135M-Instruct"


def function(name: str, description: str) -> dict:
    number = {"type": "int", "description": "A number"}
    parameters = {
        "type": "object",
        "properties": {"a": number, "b": number},
        "required": ["a", "b"],
    }
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [
    function("add", "Compute the sum of two numbers"),
    function("mul", "Calculate the product of two numbers"),
]
FUNCTIONS = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b}
SAMPLING = dict(temperature=0.8, top_p=0.8, seed=7, max_tokens=24)


def check_reply(choice) -> list:
    """A well-formed assistant reply: tool calls (finish 'tool_calls') or content."""
    calls = choice.message.tool_calls or []
    if calls:
        assert choice.finish_reason == "tool_calls"
        for call in calls:
            assert call.type == "function" and call.id
            assert call.function.name
            assert isinstance(json.loads(call.function.arguments), dict)
    else:
        assert isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
    return calls


def test_the_documented_multi_round_example(openai_client):
    messages = [{"role": "user", "content": "Compute (3+5)*2"}]
    response = openai_client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, **SAMPLING
    )
    calls = check_reply(response.choices[0])
    first = calls[0] if calls else None
    if first is not None and first.function.name in FUNCTIONS:
        try:
            result = FUNCTIONS[first.function.name](**json.loads(first.function.arguments))
        except TypeError:  # the small model may invent arguments
            result = "error: bad arguments"
    else:
        result = 8
    messages.append(response.choices[0].message)
    messages.append(
        {"role": "tool", "content": f"3+5={result}", "tool_call_id": first.id if first else "0"}
    )
    response = openai_client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, **SAMPLING
    )
    check_reply(response.choices[0])


def test_tools_and_tool_results_reach_the_prompt(openai_client):
    base = [{"role": "user", "content": "Compute (3+5)*2"}]
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "add", "arguments": json.dumps({"a": 3, "b": 5})},
    }
    history = [
        *base,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "8", "tool_call_id": "call_0"},
    ]

    def prompt_tokens(messages, **kwargs) -> int:
        response = openai_client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=1, **kwargs
        )
        return response.usage.prompt_tokens

    plain = prompt_tokens(base)
    with_tools = prompt_tokens(base, tools=TOOLS)
    assert with_tools > plain + 50
    assert prompt_tokens(base, tools=TOOLS, tool_choice="none") == plain
    assert prompt_tokens(history, tools=TOOLS) > with_tools + 20
    named = {"type": "function", "function": {"name": "mul"}}
    assert plain < prompt_tokens(base, tools=TOOLS, tool_choice=named) < with_tools
    response = openai_client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, **SAMPLING
    )
    check_reply(response.choices[0])


def test_streaming_with_tools_sends_content_or_tool_call_deltas(openai_client):
    chunks = list(
        openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is 12 times 7? Use a tool."}],
            tools=TOOLS,
            tool_choice="required",
            stream=True,
            **SAMPLING,
        )
    )
    finish = chunks[-1].choices[0].finish_reason
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    if calls:
        assert finish == "tool_calls"
        assert all(
            c["name"] and isinstance(json.loads(c["arguments"]), dict) for c in calls.values()
        )
    else:
        assert finish in ("stop", "length")


def test_a_named_tool_choice_must_be_one_of_the_tools(server):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=server.headers,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "div"}},
        },
        timeout=30,
    )
    assert response.status_code == 400
    assert "not among the tools" in response.text


class ScriptedGeneration:
    """Stands in for the generation service: replies with a fixed text in small deltas."""

    session_len = 4096
    adapter_names: tuple[str, ...] = ()

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.chat_template = builtin_template(ChatTemplateConfig("smollm2"))
        self.tokenizer = self
        self.prompts: list = []

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.prompts.append(text)
        return [1] * len(text)

    def encode_chat(self, text: str) -> list[int]:
        return self.encode(text)

    def prepare(self, prompt, config, adapter_name=None):
        return prompt

    def check_adapter(self, name) -> None:
        assert name is None

    def submit(self, request, asynchronous: bool = True):
        reply = self.reply

        async def stream():
            step = 5
            for i in range(0, len(reply), step):
                last = i + step >= len(reply)
                yield GenOut(reply[i : i + step], [], 10, i // step + 1, "stop" if last else None)

        return stream()

    def submit_choices(self, request, asynchronous: bool = True):
        return [ScriptedStream(self.submit(request))]


class ScriptedStream:
    """A request stream: async iteration plus cancel()."""

    def __init__(self, outputs) -> None:
        self._outputs = outputs

    def __aiter__(self):
        return self._outputs.__aiter__()

    def cancel(self) -> None:
        pass


CALLS = (
    'Let me see.\n<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}\n</tool_call>\n'
    '<tool_call>\n{"name": "mul", "arguments": {"a": 8, "b": 2}}\n</tool_call>'
)


@pytest.fixture
def scripted():
    def client(reply: str) -> tuple[OpenAI, ScriptedGeneration]:
        generation = ScriptedGeneration(reply)
        svc = ServerServices(generation, None, lambda: None, MODEL)
        http = TestClient(create_app(svc))
        return OpenAI(api_key="x", base_url="http://testserver/v1", http_client=http), generation

    return client


def test_a_reply_with_calls_becomes_tool_calls(scripted):
    client, generation = scripted(CALLS)
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Compute (3+5)*2"}], tools=TOOLS
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me see."
    assert [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls
    ] == [
        ("add", {"a": 3, "b": 5}),
        ("mul", {"a": 8, "b": 2}),
    ]
    assert "<tools>" in generation.prompts[0]


def test_streamed_calls_arrive_as_tool_call_deltas(scripted):
    client, _ = scripted(CALLS)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS, stream=True
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert content.strip() == "Let me see."
    assert [(d.index, d.function.name) for d in deltas] == [(0, "add"), (1, "mul")]
    assert len({d.id for d in deltas}) == 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_reply_of_calls_only_has_content_null(scripted):
    client, _ = scripted(CALLS[len("Let me see.\n") :])
    request = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    message = client.chat.completions.create(**request).choices[0].message
    assert message.content is None and len(message.tool_calls) == 2
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert [c.choices[0].delta.content for c in chunks] == [None] * len(chunks)
    assert sum(len(c.choices[0].delta.tool_calls or []) for c in chunks) == 2


def test_without_tools_the_reply_is_content(scripted):
    client, generation = scripted(CALLS)
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert response.choices[0].message.content == CALLS
    assert response.choices[0].finish_reason == "stop" and not generation.prompts
