"""Each built-in template renders the same conversation to the string its family expects."""

import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.model import MODELS, builtin_template

CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
CHATML = (
    "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
    "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
KNOWLEDGE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
EXPECTED = {
    "base": "SU1A1U2",
    "chatml": CHATML,
    "smollm2": CHATML,
    "qwen": CHATML,
    "qwen2d5": CHATML,
    "internlm2": CHATML,
    "llama2": "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    "llama3": LLAMA3,
    "llama3_1": LLAMA3.replace(
        "system<|end_header_id|>\n\n", "system<|end_header_id|>\n\n" + KNOWLEDGE
    ),
    "mistral": "<s>[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    "gemma": (
        "<bos><start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n"
    ),
    "phi-3": (
        "<|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n"
        "<|user|>\nU2<|end|>\n<|assistant|>\n"
    ),
    "deepseek": (
        "<｜begin▁of▁sentence｜>S\n\nUser: U1\n\nAssistant: A1<｜end▁of▁sentence｜>"
        "User: U2\n\nAssistant:"
    ),
    "vicuna": "<s>S USER: U1 ASSISTANT: A1</s>USER: U2 ASSISTANT: ",
    "llava-v1": "<s>S USER: U1 ASSISTANT: A1</s>USER: U2 ASSISTANT: ",
}
DEFAULT_SYSTEMS = {
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "qwen": "You are a helpful assistant.",
    "qwen2d5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "internlm2": "You are an AI assistant whose name is InternLM (书生·浦语).\n- InternLM",
    "vicuna": "A chat between a curious user and an artificial intelligence assistant.",
    "llava-v1": "A chat between a curious human and an artificial intelligence assistant.",
}


def render(name, messages=CONVERSATION, **fields):
    return builtin_template(ChatTemplateConfig(model_name=name, **fields)).messages2prompt(messages)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_family_renders_the_conversation_exactly(name):
    assert render(name) == EXPECTED[name]


def test_the_required_families_are_registered():
    assert set(EXPECTED) | {"llama3_2", "mixtral"} <= set(MODELS.module_dict)


@pytest.mark.parametrize("name", sorted(DEFAULT_SYSTEMS))
def test_the_default_system_prompt_appears_only_without_a_system_message(name):
    assert DEFAULT_SYSTEMS[name] in render(name, CONVERSATION[1:])
    assert DEFAULT_SYSTEMS[name] not in render(name)


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "deepseek"])
def test_no_system_drops_the_system_block(name):
    assert render(name, CONVERSATION[1:]) == render(name).replace(
        {
            "chatml": "<|im_start|>system\nS<|im_end|>\n",
            "mistral": "S\n\n",
            "deepseek": "S\n\n",
        }.get(name, "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"),
        "",
    )


def test_a_string_prompt_is_one_user_turn():
    assert render("chatml", "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_final_assistant_message_is_a_prefix_to_continue():
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "Sure,"}]
    assert render("chatml", messages).endswith("<|im_start|>assistant\nSure,")


def test_meta_instruction_override_and_removal():
    assert "<|im_start|>system\nBe terse.<|im_end|>" in render(
        "smollm2", CONVERSATION[1:], meta_instruction="Be terse."
    )
    template = builtin_template(ChatTemplateConfig(model_name="smollm2"))
    template.meta_instruction = None  # the documented `pipe.chat_template.meta_instruction = None`
    assert template.messages2prompt("hi").startswith("<|im_start|>user\n")


def test_stop_words():
    assert builtin_template(ChatTemplateConfig("chatml")).stop_words == ["<|im_end|>"]
    assert "<|eom_id|>" in builtin_template(ChatTemplateConfig("llama3_1")).stop_words
    assert builtin_template(ChatTemplateConfig("llama3", stop_words=["x"])).stop_words == ["x"]
