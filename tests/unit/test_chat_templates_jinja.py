"""Built-in templates against the families' official jinja templates, rendered by transformers,
where LMDeploy 0.6.5 renders as the official template does (ChatML, Llama 3, Qwen2.5 tools)."""

import copy
import json

import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.model import builtin_template

from . import jinja_fixtures as jinja

render_jinja_template = pytest.importorskip(
    "transformers.utils.chat_template_utils"
).render_jinja_template

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Compute the sum of two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "int"}, "b": {"type": "int"}},
                "required": ["a", "b"],
            },
        },
    },
    {"type": "function", "function": {"name": "mul", "description": "Multiply"}},
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "add", "arguments": {"a": 3, "b": 5}},
}
TOOL_ROUND = [
    {"role": "user", "content": "Compute (3+5)*2"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "8", "tool_call_id": "call_1"},
]
SPECIALS = {"bos_token": "", "eos_token": ""}
CASES = {
    "smollm2": (jinja.SMOLLM2, {}),
    "qwen2d5": (jinja.QWEN2_5, {}),
    "llama3": (jinja.LLAMA3, {"bos_token": "<|begin_of_text|>"}),
}


def official(name, messages, tools=None):
    template, specials = CASES[name]
    rendered, _ = render_jinja_template(
        conversations=[copy.deepcopy(messages)],
        tools=tools,
        chat_template=template,
        add_generation_prompt=True,
        **{**SPECIALS, **specials},
    )
    return rendered[0]


def ours(name, messages, tools=None):
    return builtin_template(ChatTemplateConfig(model_name=name)).messages2prompt(
        copy.deepcopy(messages), tools=tools
    )


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("with_system", [True, False])
def test_matches_the_official_template(name, with_system):
    messages = CONVERSATION if with_system else CONVERSATION[1:]
    assert ours(name, messages) == official(name, messages)


def test_the_default_model_template_is_the_one_in_its_gguf():
    model_source = pytest.importorskip("lmdeploy.adapters.loaders.model_source")
    try:
        path = model_source.embedded_model_file()
    except model_source.ModelNotFound:
        pytest.skip("the embedded model is not installed")
    from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

    assert _gguf_tokenizer(path).chat_template == jinja.SMOLLM2


def test_qwen2_5_tools_calls_and_results_match_the_official_template():
    messages = [{"role": "system", "content": "S"}, *TOOL_ROUND]
    for conversation in (messages, messages[1:]):
        assert ours("qwen2d5", conversation, TOOLS) == official("qwen2d5", conversation, TOOLS)
    two_results = [*TOOL_ROUND, {"role": "tool", "content": "16", "tool_call_id": "call_2"}]
    assert ours("qwen2d5", two_results, TOOLS) == official("qwen2d5", two_results, TOOLS)


def test_openai_string_arguments_render_like_objects():
    as_text = copy.deepcopy(TOOL_ROUND)
    as_text[1]["tool_calls"][0]["function"]["arguments"] = json.dumps({"a": 3, "b": 5})
    for name in ("qwen2d5", "llama3_1", "internlm2", "smollm2"):
        assert ours(name, as_text, TOOLS) == ours(name, TOOL_ROUND, TOOLS)


def test_smollm2_uses_the_hermes_format_with_its_default_system():
    prompt = ours("smollm2", TOOL_ROUND, TOOLS)
    expected = official("qwen2d5", TOOL_ROUND, TOOLS).replace(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    )
    assert prompt == expected
