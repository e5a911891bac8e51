"""Tool-call parsers on recorded outputs of each family: whole, several, streamed, malformed."""

import json

import pytest

from lmdeploy.adapters.tool_parsers import get_tool_parser
from lmdeploy.application.tool_grammar import tool_call_spec
from lmdeploy.application.tools import (
    REQUIRED_INSTRUCTION,
    ToolCallStream,
    render_prompt,
    tools_for_prompt,
)
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.model import ChatTemplateConfig, builtin_template

ADD = {"a": 3, "b": 5}
MUL = {"a": 8, "b": 2}
# (parser, model output, expected content, expected calls)
RECORDED = {
    "qwen2.5 single": (
        "hermes",
        '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}\n</tool_call>',
        "",
        [("add", ADD)],
    ),
    "qwen2.5 several with text": (
        "hermes",
        "Let me compute.\n<tool_call>\n"
        '{"name": "add", "arguments": {"a": 3, "b": 5}}\n</tool_call>\n<tool_call>\n'
        '{"name": "mul", "arguments": {"a": 8, "b": 2}}\n</tool_call>',
        "Let me compute.",
        [("add", ADD), ("mul", MUL)],
    ),
    "hermes unclosed at the end": (
        "hermes",
        '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}',
        "",
        [("add", ADD)],
    ),
    "internlm2 single": (
        "internlm2",
        "I need to add the numbers.<|action_start|><|plugin|>\n"
        '{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|>',
        "I need to add the numbers.",
        [("add", ADD)],
    ),
    "internlm2 stopped at <|action_end|>": (
        "internlm2",
        '<|action_start|><|plugin|>\n{"name": "mul", "parameters": {"a": 8, "b": 2}}',
        "",
        [("mul", MUL)],
    ),
    "llama3.1 bare json": (
        "llama3",
        '{"name": "add", "parameters": {"a": 3, "b": 5}}',
        "",
        [("add", ADD)],
    ),
    "llama3.1 python_tag, several": (
        "llama3",
        '<|python_tag|>{"name": "add", "parameters": {"a": 3, "b": 5}}; '
        '{"name": "mul", "parameters": {"a": 8, "b": 2}}',
        "",
        [("add", ADD), ("mul", MUL)],
    ),
    "llama3.1 function tag": (
        "llama3",
        'Sure. <function=add>{"a": 3, "b": 5}</function>',
        "Sure. ",
        [("add", ADD)],
    ),
}
MALFORMED = {
    "hermes": [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        "Just text, <tool_call",
    ],
    "internlm2": [
        "<|action_start|><|plugin|>\n{broken",
        "<|action_start|><|interpreter|>\nprint(1)",
    ],
    "llama3": ['{"answer": 42}', '<|python_tag|>brave_search.call(query="x")', "{", "plain"],
}


def calls_of(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_parses_recorded_outputs(case):
    name, text, content, expected = RECORDED[case]
    parsed = get_tool_parser(name).parse(text)
    assert parsed.content.strip() == content.strip()
    assert calls_of(parsed.tool_calls) == expected
    assert len({c.id for c in parsed.tool_calls}) == len(expected)


def stream(name, text, size):
    splitter = ToolCallStream(get_tool_parser(name))
    content, calls = [], []
    for i in range(0, len(text), size):
        part, new = splitter.feed(text[i : i + size])
        content.append(part)
        calls += new
    part, new = splitter.finish()
    return "".join(content) + part, calls + new


@pytest.mark.parametrize("case", sorted(RECORDED))
@pytest.mark.parametrize("size", [1, 3, 7])
def test_streamed_in_small_deltas_gives_the_same_result(case, size):
    name, text, content, expected = RECORDED[case]
    streamed_content, calls = stream(name, text, size)
    assert streamed_content.strip() == content.strip()
    assert calls_of(calls) == expected


def test_streaming_sends_each_call_once_it_closes_and_holds_back_partial_markers():
    splitter = ToolCallStream(get_tool_parser("hermes"))
    assert splitter.feed("Hello <tool") == ("Hello ", [])
    assert splitter.feed('_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}') == ("", [])
    content, calls = splitter.feed("\n</tool_call>")
    assert content == "" and calls_of(calls) == [("add", ADD)]
    assert splitter.finish() == ("", []) and splitter.called


def test_plain_text_streams_through_untouched():
    text = "The answer is 4. I used no tool at all."
    for name in ("hermes", "internlm2", "llama3"):
        assert stream(name, text, 2) == (text, [])


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_calls_stay_plain_content(name):
    for text in MALFORMED[name]:
        parsed = get_tool_parser(name).parse(text)
        assert parsed.tool_calls == [] and parsed.content == text
        for size in (1, 4):
            assert stream(name, text, size) == (text, [])


@pytest.mark.parametrize(
    "name, calls",
    [
        ("hermes", [("add", ADD), ("mul", MUL)]),
        ("llama3", [("add", ADD), ("mul", MUL)]),
        ("internlm2", [("add", ADD)]),  # one call, ended by the template's stop word
    ],
)
def test_a_forced_call_is_written_as_the_parser_reads_it(name, calls):
    parser = get_tool_parser(name)
    tools = [{"type": "function", "function": {"name": n}} for n in ("add", "mul")]
    grammar = tool_call_spec(parser.call_format, tools, parallel=len(calls) > 1).tool_calls
    written = []
    for function, arguments in calls:
        head, tail = grammar.call_parts(function)
        written.append(head + json.dumps(arguments) + tail)
    parsed = parser.parse(grammar.prefix + grammar.separator.join(written))
    assert calls_of(parsed.tool_calls) == calls
    assert parsed.content.strip() == ""


def test_llama3_1_forced_calls_take_the_format_its_prompt_asks_for():
    """0.6.5's llama3_1 prompt asks for `<function=NAME>{...}</function>`; a forced call must
    not switch to JSON after <|python_tag|>."""
    template = builtin_template(ChatTemplateConfig("llama3_1"))
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    prompt = render_prompt(template, [{"role": "user", "content": "3+5?"}], tools, "auto")
    grammar = tool_call_spec(get_tool_parser(template.tool_parser).call_format, tools).tool_calls
    head, tail = grammar.call_parts("add")
    assert (grammar.prefix, head, tail) == ("", "<function=add>", "</function>")
    assert "<function=example_function_name>" in prompt


def test_unknown_parser_name():
    with pytest.raises(ValueError, match="choose one of"):
        get_tool_parser("nope")


TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}},
]
MESSAGES = [{"role": "user", "content": "Compute (3+5)*2"}]


def test_tool_choice():
    assert tools_for_prompt(TOOLS, "auto") == (TOOLS, None)
    assert tools_for_prompt(TOOLS, None) == (TOOLS, None)
    assert tools_for_prompt(TOOLS, "none") == (None, None)
    assert tools_for_prompt(TOOLS, "required") == (TOOLS, REQUIRED_INSTRUCTION)
    shown, instruction = tools_for_prompt(TOOLS, {"type": "function", "function": {"name": "mul"}})
    assert shown == TOOLS[1:] and "mul" in instruction
    with pytest.raises(InvalidArgument, match="not among the tools"):
        tools_for_prompt(TOOLS, {"type": "function", "function": {"name": "div"}})


def test_render_prompt_puts_tools_and_the_instruction_in_the_prompt():
    template = builtin_template(ChatTemplateConfig("smollm2"))
    prompt = render_prompt(template, MESSAGES, TOOLS, "required")
    for tool in TOOLS:  # each function as 0.6.5's server passes it, wrapped as Qwen2.5 reads it
        function = {"description": None, **tool["function"]}
        assert f'{{"type": "function", "function": {json.dumps(function)}}}' in prompt
    assert prompt.endswith(
        f"Compute (3+5)*2\n\n{REQUIRED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert MESSAGES[0]["content"] == "Compute (3+5)*2"  # the caller's messages are not changed
    assert "<tools>" not in render_prompt(template, MESSAGES, TOOLS, "none")
