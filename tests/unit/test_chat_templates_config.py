"""ChatTemplateConfig overrides and JSON files, the MODELS registry, matching, the CLI."""

import json

import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.adapters.cli import main as cli
from lmdeploy.adapters.cli.options import chat_template_from
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.model import MODELS, BaseChatTemplate, best_match_model, builtin_template

DOC_JSON = {
    "model_name": "your awesome chat template name",
    "system": "<|im_start|>system\n",
    "meta_instruction": "You are a robot developed by LMDeploy.",
    "eosys": "<|im_end|>\n",
    "user": "<|im_start|>user\n",
    "eoh": "<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n",
    "eoa": "<|im_end|>",
    "separator": "\n",
    "capability": "chat",
    "stop_words": ["<|im_end|>"],
}
ROBOT = (
    "<|im_start|>system\nYou are a robot developed by LMDeploy.<|im_end|>\n"
    "<|im_start|>user\nwho are you?<|im_end|>\n<|im_start|>assistant\n"
)


def test_a_json_file_with_a_new_name_defines_a_template(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(DOC_JSON))
    config = ChatTemplateConfig.from_json(str(path))
    template = builtin_template(config)
    assert template.messages2prompt("who are you?") == ROBOT
    assert template.stop_words == ["<|im_end|>"]


def test_a_json_file_naming_a_builtin_overrides_its_fields(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"model_name": "internlm2", "meta_instruction": "Be brief."}))
    template = builtin_template(ChatTemplateConfig.from_json(str(path)))
    assert template.messages2prompt("hi").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "<|action_end|>" in template.stop_words


def test_from_json_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChatTemplateConfig.from_json(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="unknown chat template fields"):
        ChatTemplateConfig.from_json('{"model_name": "x", "bogus": 1}')
    assert ChatTemplateConfig.from_json('{"model_name": "chatml"}').model_name == "chatml"


def test_the_documented_python_registration():
    @MODELS.register_module(name="customized_model_test")
    class CustomizedModel(BaseChatTemplate):
        def __init__(
            self,
            system="<|im_start|>system\n",
            meta_instruction="You are a robot developed by LMDeploy.",
            user="<|im_start|>user\n",
            assistant="<|im_start|>assistant\n",
            eosys="<|im_end|>\n",
            eoh="<|im_end|>\n",
            eoa="<|im_end|>",
            separator="\n",
            stop_words=["<|im_end|>", "<|action_end|>"],  # noqa: B006 - the docs' example
        ):
            super().__init__(
                system=system,
                meta_instruction=meta_instruction,
                eosys=eosys,
                user=user,
                eoh=eoh,
                assistant=assistant,
                eoa=eoa,
                separator=separator,
                stop_words=stop_words,
            )

    try:
        template = builtin_template(ChatTemplateConfig("customized_model_test"))
        assert template.messages2prompt([{"role": "user", "content": "who are you?"}]) == ROBOT
        with pytest.raises(KeyError, match="already registered"):
            MODELS.register_module(name="customized_model_test", module=CustomizedModel)
    finally:
        MODELS.module_dict.pop("customized_model_test")


def test_an_unknown_name_without_fields_is_a_clear_error():
    with pytest.raises(InvalidArgument, match="lmdeploy list"):
        builtin_template(ChatTemplateConfig(model_name="nope"))


@pytest.mark.parametrize(
    "path, name",
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2d5"),
        ("Qwen/Qwen2-7B-Instruct", "qwen"),
        ("/models/internlm2_5-7b-chat", "internlm2"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3_1"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama3_1"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama2"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("google/gemma-2-9b-it", "gemma"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi-3"),
        ("deepseek-ai/deepseek-llm-7b-chat", "deepseek"),
        ("lmsys/vicuna-7b-v1.5", "vicuna"),
        ("liuhaotian/llava-v1.5-7b", "llava-v1"),
        ("SmolLM2-135M-Instruct", "smollm2"),
        ("local_model_folder", "base"),
    ],
)
def test_best_match_model(path, name):
    assert best_match_model(path) == name


def test_lmdeploy_list_prints_the_names(capsys):
    assert cli.run(None, ["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {"chatml", "internlm2", "llama3_1", "qwen2d5", "smollm2", "llava-v1"} <= set(lines)


def test_chat_template_option_takes_a_name_or_a_json_file(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["chat", "--chat-template", "llama3"])
    assert chat_template_from(args) == ChatTemplateConfig(model_name="llama3")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(DOC_JSON))
    args = parser.parse_args(["chat", "--chat-template", str(path)])
    assert chat_template_from(args).meta_instruction == DOC_JSON["meta_instruction"]
    assert chat_template_from(parser.parse_args(["chat"])) is None
