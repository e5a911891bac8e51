"""Steps of tool_calling.feature: the documentation's add/mul example, with a call forced."""

import json

import jsonschema
from pytest_bdd import given, parsers, scenarios, then, when

from lmdeploy.application.tool_grammar import normalize_schema

scenarios("tool_calling.feature")


def add(a: int, b: int):
    return a + b


def mul(a: int, b: int):
    return a * b


def tool(name: str, description: str) -> dict:
    number = {"type": "int", "description": "A number"}  # 'int', as the documentation writes it
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
    tool("add", "Compute the sum of two numbers"),
    tool("mul", "Calculate the product of two numbers"),
]
FUNCTIONS = {"add": add, "mul": mul}
SAMPLING = dict(temperature=0.8, top_p=0.8, seed=3, max_tokens=96)


def follows_its_schema(name: str, arguments: str) -> None:
    [schema] = [t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name]
    jsonschema.validate(json.loads(arguments), normalize_schema(schema))


@given("an api_server on the default model", target_fixture="client")
def a_client(feature_server):
    from openai import OpenAI

    return OpenAI(api_key="YOUR_API_KEY", base_url=f"{feature_server.url}/v1")


@given("the documented add and mul tools", target_fixture="conversation")
def the_tools():
    return {"messages": []}


def create(client, messages, tool_choice, **kwargs):
    model_name = client.models.list().data[0].id
    return client.chat.completions.create(
        model=model_name,
        messages=messages,
        tools=TOOLS,
        tool_choice=tool_choice,
        **SAMPLING,
        **kwargs,
    )


@when(parsers.parse('I send "{prompt}" with tool_choice "{choice}"'), target_fixture="response")
def send(client, conversation, prompt, choice):
    conversation["messages"] = [{"role": "user", "content": prompt}]
    return create(client, conversation["messages"], choice)


@then("the reply calls a tool with arguments that follow its schema")
def calls_a_tool(response):
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name in FUNCTIONS
        follows_its_schema(call.function.name, call.function.arguments)


@when(
    parsers.parse('I run the call and send its result back with tool_choice "{choice}"'),
    target_fixture="response",
)
def send_result(client, conversation, response, choice):
    call = response.choices[0].message.tool_calls[0]
    result = FUNCTIONS[call.function.name](**json.loads(call.function.arguments))
    messages = conversation["messages"]
    messages.append(response.choices[0].message)
    messages.append({"role": "tool", "content": f"3+5={result}", "tool_call_id": call.id})
    return create(client, messages, choice)


@when(
    parsers.parse('I stream "{prompt}" with the function "{name}" chosen'), target_fixture="chunks"
)
def stream_named(client, prompt, name):
    named = {"type": "function", "function": {"name": name}}
    messages = [{"role": "user", "content": prompt}]
    return list(create(client, messages, named, stream=True))


@then(parsers.parse('the streamed reply calls "{name}" with arguments that follow its schema'))
def streamed_call(chunks, name):
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert deltas and chunks[-1].choices[0].finish_reason == "tool_calls"
    for delta in deltas:
        assert delta.function.name == name
        follows_its_schema(name, delta.function.arguments)
