"""Tools in the prompt as LMDeploy 0.6.5 writes them (InternLM2, Llama 3.1, Qwen2.5), the
Hermes format for the other templates, and the 0.6.5 names of the template classes."""

import json

import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.application.tools import functions_for_template
from lmdeploy.model import MODELS

TEMPERATURE = {
    "name": "get_current_temperature",
    "description": "Get current temperature at a location.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The location."}},
        "required": ["location"],
    },
}
QUESTION = {"role": "user", "content": "What's the temperature in San Francisco now?"}
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
HERMES = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_current_temperature", "description": '
    '"Get current temperature at a location.", "parameters": {"type": "object", "properties": '
    '{"location": {"type": "string", "description": "The location."}}, "required": '
    '["location"]}}}\n</tools>\n\nFor each function call, return a json object with function '
    "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def qwen2d5():
    return MODELS.get("qwen2d5")()


def test_qwen2d5_without_tools():
    expected = (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat's the "
        "temperature in San Francisco now?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen2d5().messages2prompt([QUESTION]) == expected
    assert qwen2d5().messages2prompt([QUESTION], tools=[]) == expected


def test_qwen2d5_tools_and_results():
    head = f"<|im_start|>system\n{QWEN_SYSTEM}{HERMES}<|im_end|>\n"
    question = "<|im_start|>user\nWhat's the temperature in San Francisco now?<|im_end|>\n"
    assert qwen2d5().messages2prompt([QUESTION], tools=[TEMPERATURE]) == (
        head + question + "<|im_start|>assistant\n"
    )
    results = [
        {"role": "tool", "content": {"temperature": 26.1, "unit": "celsius"}},
        {"role": "tool", "content": {"temperature": 25.9, "unit": "celsius"}},
    ]
    # dict results are written with str(), as 0.6.5 does
    assert qwen2d5().messages2prompt([QUESTION, *results], tools=[TEMPERATURE]) == (
        head
        + question
        + "<|im_start|>user\n<tool_response>\n{'temperature': 26.1, 'unit': 'celsius'}\n"
        "</tool_response>\n<tool_response>\n{'temperature': 25.9, 'unit': 'celsius'}\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen2d5_tool_calls_and_a_system_message():
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 5}'}}
    messages = [
        {"role": "system", "content": "S"},
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    assert qwen2d5().messages2prompt(messages, tools=[TEMPERATURE]) == (
        f"<|im_start|>system\nS{HERMES}<|im_end|>\n"
        "<|im_start|>user\nWhat's the temperature in San Francisco now?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}\n'
        "</tool_call><|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_1_tools_in_the_function_tag_format():
    tools = [
        {
            "name": "spotify_trending_songs",
            "description": "Get top trending songs on Spotify",
            "parameters": {"n": {"param_type": "int", "required": True}},
        }
    ]
    messages = [{"role": "user", "content": "Top 5 songs?"}]
    prompt = MODELS.get("llama3_1")().messages2prompt(messages, tools=tools)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "# Tool Instructions\n- Always execute python code in messages that you share.\n"
        "- When looking for real time information use relevant functions if available else "
        "fallback to brave_search\n\n\n\nYou have access to the following functions:\n\n"
        "Use the function 'spotify_trending_songs' to: Get top trending songs on Spotify\n"
        '{"name": "spotify_trending_songs", "description": "Get top trending songs on Spotify", '
        '"parameters": {"n": {"param_type": "int", "required": true}}}\n'
        "\n\nIf a you choose to call a function ONLY reply in the following format:\n"
        "<{start_tag}={function_name}>{parameters}{end_tag}\nwhere\n\n"
        "start_tag => `<function`\nparameters => a JSON dict with the function argument name as "
        "key and function argument value as value.\nend_tag => `</function>`\n\n"
        'Here is an example,\n<function=example_function_name>{"example_name": '
        '"example_value"}</function>\n\nReminder:\n- Function calls MUST follow the specified '
        "format\n- Required parameters MUST be specified\n- Only call one function at a time\n"
        '- Put the entire function call reply on one line"\n- Always add your sources when '
        "using search results to answer the user query\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTop 5 songs?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_1_calls_end_with_eom_and_results_are_ipython_turns():
    call = {"function": {"name": "add", "arguments": '{"a": 3}'}}
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3"},
    ]
    prompt = MODELS.get("llama3_1")().messages2prompt(messages)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n<function=add>{"a": 3}</function>'
        "<|eom_id|><|start_header_id|>ipython<|end_header_id|>\n\n3<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_internlm2_plugin_and_interpreter_roles():
    model = MODELS.get("internlm2")()
    tools = [{"type": "function", "function": TEMPERATURE}]
    messages = [
        {"role": "system", "name": "interpreter", "content": "You have python."},
        {"role": "user", "content": "draw a line"},
        {"role": "assistant", "content": "<|action_start|><|interpreter|>\ncode<|action_end|>\n"},
        {"role": "environment", "name": "interpreter", "content": "[image]"},
    ]
    assert model.messages2prompt(messages, tools=tools) == (
        "<|im_start|>system name=<|interpreter|>\nYou have python.<|im_end|>\n"
        f"<|im_start|>system name=<|plugin|>\n{json.dumps(tools)}<|im_end|>\n"
        "<|im_start|>user\ndraw a line<|im_end|>\n"
        "<|im_start|>assistant\n<|action_start|><|interpreter|>\ncode<|action_end|>\n"
        "<|im_end|>\n<|im_start|>environment name=<|interpreter|>\n[image]<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_internlm2_tools_come_after_the_default_system_prompt_and_calls_are_actions():
    call = {"function": {"name": "add", "arguments": '{"a": 3}'}}
    messages = [
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3"},
    ]
    prompt = MODELS.get("internlm2")().messages2prompt(messages, tools=[TEMPERATURE])
    assert prompt.startswith("<|im_start|>system\nYou are an AI assistant whose name is InternLM")
    assert prompt.endswith(
        f"<|im_end|>\n<|im_start|>system name=<|plugin|>\n{json.dumps([TEMPERATURE])}<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<|action_start|><|plugin|>\n"
        '{"name": "add", "arguments": {"a": 3}}<|action_end|><|im_end|>\n'
        "<|im_start|>environment\n3<|im_end|>\n<|im_start|>assistant\n"
    )


def test_templates_without_a_tool_format_in_0_6_5_get_hermes():
    prompt = MODELS.get("chatml")().messages2prompt([QUESTION], tools=[TEMPERATURE])
    assert prompt.startswith(f"<|im_start|>system\n{HERMES.lstrip()}<|im_end|>\n")


def test_openai_tools_reach_templates_as_0_6_5s_server_passes_them():
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    assert functions_for_template(tools) == [{"description": None, "name": "add", "parameters": {}}]
    assert functions_for_template(None) is None


def test_the_template_classes_under_their_0_6_5_names():
    from lmdeploy.model import (
        BaseChatTemplate,
        BaseModel,
        ChatGLM3,
        InternLM2Chat7B,
        Llama2,
        Llama3,
        Llama3_1,
        Qwen2d5Chat,
        Qwen7BChat,
        Vicuna,
    )

    for name, cls in [
        ("llama3", Llama3),
        ("llama3_1", Llama3_1),
        ("llama2", Llama2),
        ("internlm2", InternLM2Chat7B),
        ("qwen", Qwen7BChat),
        ("qwen2d5", Qwen2d5Chat),
        ("vicuna", Vicuna),
        ("chatglm3", ChatGLM3),
    ]:
        assert MODELS.get(name) is cls
        assert issubclass(cls, BaseChatTemplate) and issubclass(cls, BaseModel)
    assert Llama3(model_name="llama", capability="chat").messages2prompt(
        [{"role": "user", "content": "Are you ok?"}]
    ) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAre you ok?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("name", ["llama2", "yi", "qwen", "vicuna"])
def test_chat_template_config_gives_the_template_object(name):
    template = ChatTemplateConfig(name, meta_instruction="[fake meta_instruction]").chat_template
    assert isinstance(template, MODELS.get(name))
    assert "[fake meta_instruction]" in template.get_prompt("")


def test_chat_template_config_with_an_unregistered_name_is_a_plain_template():
    template = ChatTemplateConfig("mine", user="U: ", eoh="\n", assistant="A: ").chat_template
    assert template.messages2prompt("hi") == "U: hi\nA: "
    assert ChatTemplateConfig("base").chat_template.get_prompt("") == ""
