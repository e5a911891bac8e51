"""Steps of api_server.feature, against a real server process."""

import asyncio
import json

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.e2e.server import api_server

scenarios("api_server.feature")

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
]


@pytest.fixture(scope="module")
def running_server():
    with api_server("--session-len", "2048") as server:
        yield server


@given("an api_server on the default model", target_fixture="server")
def given_server(running_server):
    return running_server


@when(parsers.parse('I GET "{path}"'), target_fixture="response")
def get(server, path):
    return httpx.get(f"{server.url}{path}", timeout=60)


@when(parsers.parse('I POST to "{path}" the body'), target_fixture="response")
def post(server, path, docstring):
    return httpx.post(f"{server.url}{path}", json=json.loads(docstring), timeout=300)


@then(parsers.parse("the status is {status:d}"))
def status_is(response, status):
    assert response.status_code == status, response.text


@then(parsers.parse('the model list contains "{name}"'))
def model_listed(response, name):
    assert name in [m["id"] for m in response.json()["data"]]


@then("the answer has an assistant message and usage")
def chat_answer(response):
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


@then("the answer has completion text")
def completion_answer(response):
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]


@then("the interactive answer reports no history on its first round")
def interactive_answer(response):
    body = response.json()
    # As 0.6.5: history_tokens counts the tokens before this turn.
    assert body["text"] and body["history_tokens"] == 0 and body["tokens"] > 0


@when(
    parsers.parse('I ask with the openai client for "{question}"'), target_fixture="openai_response"
)
def ask_openai(server, question):
    from openai import OpenAI

    client = OpenAI(api_key="YOUR_API_KEY", base_url=f"{server.url}/v1")
    model_name = client.models.list().data[0].id
    return client.chat.completions.create(
        model=model_name,
        messages=MESSAGES + [{"role": "user", "content": question}],
        temperature=0.8,
        top_p=0.8,
        max_tokens=32,
    )


@when(
    parsers.parse('I ask with the async openai client for "{question}"'),
    target_fixture="openai_response",
)
def ask_async_openai(server, question):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(api_key="YOUR_API_KEY", base_url=f"{server.url}/v1")
        model_cards = await client.models.list()
        return await client.chat.completions.create(
            model=model_cards.data[0].id,
            messages=MESSAGES + [{"role": "user", "content": question}],
            temperature=0.8,
            top_p=0.8,
            max_tokens=32,
        )

    return asyncio.run(main())


@then("the openai response has text")
def openai_text(openai_response):
    assert openai_response.choices[0].message.content
