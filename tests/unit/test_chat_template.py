import pytest

from lmdeploy import ChatTemplateConfig
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.domain.errors import InvalidArgument


def test_chatml_renders_roles_and_opens_the_assistant_turn():
    template = builtin_template(ChatTemplateConfig(model_name="chatml"))
    prompt = template.messages2prompt(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert (
        prompt
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_fields_override_the_named_template():
    template = builtin_template(
        ChatTemplateConfig(model_name="chatml", user="U: ", eoh="\n", assistant="A: ")
    )
    assert template.messages2prompt("hello") == "U: hello\nA: "


def test_openai_content_parts_are_joined():
    template = builtin_template(ChatTemplateConfig(model_name="base"))
    msg = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert template.messages2prompt(msg) == "ab"


def test_unknown_template_and_role_are_clear_errors():
    with pytest.raises(InvalidArgument, match="chat template"):
        builtin_template(ChatTemplateConfig(model_name="nope"))
    with pytest.raises(InvalidArgument, match="role"):
        builtin_template(ChatTemplateConfig(model_name="chatml")).messages2prompt(
            [{"role": "x", "content": ""}]
        )
