"""response_format and forced tool calls through the real server, driven by the openai client."""

import json
import re

import httpx
import jsonschema
import pytest

from lmdeploy.application.tool_grammar import normalize_schema

from .test_tools import FUNCTIONS, MODEL, TOOLS

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "[A-Za-z ]{1,16}"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 10},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "skills"],
}
SCHEMAS = {t["function"]["name"]: normalize_schema(t["function"]["parameters"]) for t in TOOLS}


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


@pytest.mark.parametrize("stream", [False, True])
def test_chat_json_schema_output_validates(openai_client, stream):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Make a self-introduction please."}],
        response_format=json_format(PERSON),
        temperature=0.8,
        top_p=0.8,
        seed=3,
        max_tokens=128,
    )
    if stream:
        chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = openai_client.chat.completions.create(**kwargs).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_completions_follow_a_regex(openai_client):
    pattern = "call me [A-Za-z]{1,10}"
    response = openai_client.completions.create(
        model=MODEL,
        prompt=["My name is", "Hello there,"],
        max_tokens=32,
        temperature=0,
        extra_body={"response_format": {"type": "regex_schema", "regex_schema": pattern}},
    )
    for choice in response.choices:
        assert choice.finish_reason == "stop" and re.fullmatch(pattern, choice.text)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "yaml"},
        {"type": "regex_schema", "regex_schema": "call me ([A-Z"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}},
        "json",
    ],
)
def test_an_invalid_response_format_is_a_400_naming_it(server, route, response_format):
    body = {"model": MODEL, "max_tokens": 8, "response_format": response_format}
    if route == "/v1/completions":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    response = httpx.post(f"{server.url}{route}", headers=server.headers, json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert server.wait_idle()["num_running"] == 0


def check_calls(calls: list[tuple[str, str]], names: set[str]) -> None:
    assert calls, "a forced tool_choice must call a tool"
    for name, arguments in calls:
        assert name in names
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def ask(openai_client, messages, tool_choice, stream: bool) -> tuple[list, str, object]:
    """(the calls as (name, arguments), the finish reason, the assistant message to send back)."""
    kwargs = dict(
        model=MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice=tool_choice,
        temperature=0.8,
        top_p=0.8,
        seed=5,
        max_tokens=96,
    )
    if not stream:
        choice = openai_client.chat.completions.create(**kwargs).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return calls, choice.finish_reason, choice.message
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    calls = [(d.function.name, d.function.arguments) for d in deltas]
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": d.id, "type": "function", "function": {"name": n, "arguments": a}}
            for d, (n, a) in zip(deltas, calls, strict=True)
        ],
    }
    return calls, chunks[-1].choices[0].finish_reason, message


@pytest.mark.parametrize("stream", [False, True])
def test_the_documented_multi_round_example_with_required_tool_calls(openai_client, stream):
    messages = [{"role": "user", "content": "Compute (3+5)*2"}]
    for _ in range(2):  # add, then mul with the result
        calls, finish, message = ask(openai_client, messages, "required", stream)
        assert finish == "tool_calls"
        check_calls(calls, set(FUNCTIONS))
        messages.append(message)
        name, arguments = calls[0]
        call_id = message.tool_calls[0].id if not stream else message["tool_calls"][0]["id"]
        result = FUNCTIONS[name](**json.loads(arguments))
        messages.append({"role": "tool", "content": str(result), "tool_call_id": call_id})


@pytest.mark.parametrize("name, stream", [("add", False), ("mul", True)])
def test_a_named_tool_choice_calls_that_tool(openai_client, name, stream):
    messages = [{"role": "user", "content": "What is 12 and 7?"}]
    named = {"type": "function", "function": {"name": name}}
    calls, finish, _ = ask(openai_client, messages, named, stream)
    assert finish == "tool_calls"
    check_calls(calls, {name})
