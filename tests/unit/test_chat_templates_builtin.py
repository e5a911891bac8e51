"""Every built-in template renders what LMDeploy 0.6.5 renders (plain chats, system prompts,
default system prompts, multi-turn, string prompts), stops where it stops, and matches model
paths as it does. The expected prompts are 0.6.5's own output (lmdeploy065_prompts.py)."""

import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.adapters.cli import main as cli
from lmdeploy.model import MODELS, best_match_model, builtin_template

from .lmdeploy065_prompts import CONVERSATIONS, MATCHES, PROMPTS, STOP_WORDS, STRING_PROMPTS

TEMPLATES_065 = set(STOP_WORDS)


def template(name, **fields):
    return builtin_template(ChatTemplateConfig(model_name=name, **fields))


def test_the_50_templates_of_0_6_5_and_ours_are_registered():
    assert len(TEMPLATES_065) == 50
    assert set(MODELS.module_dict) == TEMPLATES_065 | {"chatml", "smollm2"}


@pytest.mark.parametrize("name, conversation", sorted(PROMPTS))
def test_messages_render_as_0_6_5_renders_them(name, conversation):
    assert (
        template(name).messages2prompt(CONVERSATIONS[conversation]) == PROMPTS[name, conversation]
    )


@pytest.mark.parametrize("name", sorted(STRING_PROMPTS))
def test_a_string_prompt_renders_as_0_6_5_renders_it(name):
    assert template(name).messages2prompt("hello") == STRING_PROMPTS[name]


@pytest.mark.parametrize("name", sorted(STOP_WORDS))
def test_stop_words_are_0_6_5s(name):
    assert template(name).stop_words == STOP_WORDS[name]


@pytest.mark.parametrize("path", sorted(MATCHES))
def test_best_match_model_follows_0_6_5s_rules(path):
    assert best_match_model(path) == MATCHES[path]


@pytest.mark.parametrize(
    "path, name",
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
        ("codellama/CodeLlama-34b-Instruct-hf", "codellama"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama3_1"),
        ("local_model_folder", "base"),
    ],
)
def test_best_match_model_named_cases(path, name):
    assert best_match_model(path) == name


def test_no_bos_text_opens_a_prompt():
    # 0.6.5 leaves BOS to the tokenizer (only Llama 3 writes <|begin_of_text|>)
    for name in ("llama2", "mistral", "vicuna", "gemma", "deepseek", "llava-v1"):
        prompt = template(name).messages2prompt([{"role": "user", "content": "hi"}])
        assert not prompt.startswith(("<s>", "<bos>", "<｜begin▁of▁sentence｜>")), name


def test_default_system_prompts():
    user = [{"role": "user", "content": "hi"}]
    assert (
        template("llama2")
        .messages2prompt(user)
        .startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.")
    )
    for name in ("llama3_1", "llama3_2"):
        assert template(name).messages2prompt(user) == (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "You are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    # the InternLM system prompt ends with a newline, before <|im_end|>
    assert "English and 中文.\n<|im_end|>\n<|im_start|>user\nhi" in template(
        "internlm2"
    ).messages2prompt(user)


def test_qwen2d5_closes_a_trailing_assistant_message_and_opens_a_new_turn():
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert (
        template("qwen2d5")
        .messages2prompt(messages)
        .endswith("<|im_start|>assistant\nA<|im_end|>\n<|im_start|>assistant\n")
    )
    # other templates continue it (0.6.5's "prefix of response")
    assert template("qwen").messages2prompt(messages).endswith("<|im_start|>assistant\nA")


def test_a_trailing_assistant_message_is_kept_where_0_6_5_would_empty_the_prompt():
    # 0.6.5 cuts len(eoa + separator) == 0 characters with [:-0], returning ''
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert template("solar").messages2prompt(messages) == (
        "### System:\n\n\n### User:\nU\n\n### Assistant:\nA"
    )


def test_base_joins_message_texts_where_0_6_5_returns_none():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert template("base").messages2prompt(messages) == "ab"
    assert template("base").messages2prompt("as is") == "as is"


def test_capabilities():
    assert template("internlm2", capability="completion").get_prompt("hi") == "hi"
    assert template("llama3", capability="completion").get_prompt("hi") == "<|begin_of_text|>hi"
    infill = MODELS.get("codellama")(capability="infilling")
    assert infill.get_prompt("def f():\n    <FILL>\n    return x") == (
        "<PRE> def f():\n     <SUF>\n    return x <MID>"
    )
    assert infill.stop_words == ["<EOT>"]
    first = MODELS.get("codellama")(capability="infilling", suffix_first=True)
    assert first.get_prompt("a<FILL>b") == "<PRE> <SUF>b <MID> a"
    with pytest.raises(AssertionError):
        MODELS.get("codellama")(capability="java")


def test_get_prompt_continues_a_session_without_the_system_prompt():
    vicuna = MODELS.get("vicuna")()
    assert vicuna.get_prompt("hi", sequence_start=False) == "USER: hi ASSISTANT: "
    assert vicuna.get_prompt("hi").startswith("A chat between a curious user")
    chatglm = MODELS.get("chatglm")()
    assert chatglm.get_prompt("a") == "[Round 1]\n\n问：a\n\n答："
    assert chatglm.get_prompt("b", sequence_start=False) == "[Round 2]\n\n问：b\n\n答："


def test_lmdeploy_list_prints_the_names(capsys):
    assert cli.run(None, ["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "The supported chat template names are:"
    assert lines[1:] == sorted(TEMPLATES_065 | {"chatml", "smollm2"})


def test_meta_instruction_override_and_removal():
    assert template("smollm2", meta_instruction="Be terse.").messages2prompt("hi") == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    smollm2 = template("smollm2")
    smollm2.meta_instruction = None  # the documented `pipe.chat_template.meta_instruction = None`
    assert (
        smollm2.messages2prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
