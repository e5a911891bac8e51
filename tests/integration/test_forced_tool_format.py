"""A forced tool call on the real engine takes the format the template asked for: with the
llama3_1 template (0.6.5's prompt asks for `<function=NAME>{...}</function>`), the default
model's reply is such a call, and the Llama 3 parser reads it back."""

import json

import pytest

from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.tool_parsers import get_tool_parser
from lmdeploy.application.tools import prepare_chat

NUMBERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": text, "parameters": NUMBERS}}
    for name, text in (("add", "Compute the sum"), ("mul", "Compute the product"))
]


@pytest.fixture(scope="module")
def llama3_1_pipe():
    pipe = pipeline(
        "SmolLM2-135M-Instruct",
        backend_config=PytorchEngineConfig(session_len=2048),
        chat_template_config=ChatTemplateConfig("llama3_1"),
    )
    yield pipe
    pipe.close()


@pytest.mark.parametrize(
    "tool_choice, names",
    [("required", {"add", "mul"}), ({"type": "function", "function": {"name": "mul"}}, {"mul"})],
)
def test_a_forced_call_is_written_in_the_prompts_function_format(llama3_1_pipe, tool_choice, names):
    messages = [{"role": "user", "content": "What is 3 times 5?"}]
    request, parser = prepare_chat(
        llama3_1_pipe.service,
        messages,
        GenerationConfig(max_new_tokens=48),
        TOOLS,
        tool_choice,
        get_tool_parser,
    )
    text = "".join(out.text for out in llama3_1_pipe.service.submit(request))
    assert text.startswith("<function=") and text.endswith("</function>"), text
    parsed = parser.parse(text)
    [call] = parsed.tool_calls
    assert call.name in names
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
