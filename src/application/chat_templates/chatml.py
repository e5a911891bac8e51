"""The ChatML family (`<|im_start|>role ... <|im_end|>`): Qwen (and MiniCPM3, MiniCPM-V 2.6),
Qwen2.5, Yi, DBRX, the `<|im_end|>`-without-newline variant of LLaVA 1.6 34B and
InternVL-Chat 1.2, and our own `chatml` and `smollm2`."""

from __future__ import annotations

import json
from typing import Any

from . import prompts
from .base import MODELS, FamilyTemplate, call_function, hermes_tools, text_of

CHATML = dict(
    system="<|im_start|>system\n",
    eosys="<|im_end|>\n",
    user="<|im_start|>user\n",
    eoh="<|im_end|>\n",
    assistant="<|im_start|>assistant\n",
    eoa="<|im_end|>",
    separator="\n",
)


@MODELS.register_module(name=["qwen", "minicpm3", "minicpmv-2d6"])
class Qwen7BChat(FamilyTemplate):
    defaults = dict(
        CHATML, meta_instruction="You are a helpful assistant.", stop_words=["<|im_end|>"]
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "qwen" in path and "qwen2.5" not in path:
            return "qwen"
        if "minicpm-v-2_6" in path:
            return "minicpmv-2d6"
        return "minicpm3" if "minicpm3-" in path else None


def _content(content: Any) -> str:
    """0.6.5's Qwen2.5 template writes content with str(): a dict result as Python's repr."""
    return text_of(content) if content is None or isinstance(content, (str, list)) else str(content)


@MODELS.register_module(name="qwen2d5")
class Qwen2d5Chat(Qwen7BChat):
    """Qwen2.5's tool format (Hermes); every assistant message closes its turn, so a trailing
    one is followed by a new assistant turn; with `meta_instruction` None a leading system
    message is dropped, as in 0.6.5."""

    defaults = {
        **Qwen7BChat.defaults,
        "meta_instruction": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "qwen2d5" if "qwen2.5" in path or "qwen2_5" in path else None

    def render(self, messages: list[dict], sequence_start: bool, tools: list[dict] | None) -> str:
        starts_with_system = bool(messages) and messages[0]["role"] == "system"
        system = _content(messages[0]["content"]) if starts_with_system else None
        head = ""
        if tools:
            text = system if system is not None else str(self.meta_instruction)
            head = f"{self.system}{text}{hermes_tools(tools)}{self.eosys}"
        elif sequence_start and self.meta_instruction is not None:
            text = system if system is not None else self.meta_instruction
            head = f"{self.system}{text}{self.eosys}"
        body = "".join(self.render_qwen_message(i, messages) for i in range(len(messages)))
        return head + body + self.opener()

    def render_qwen_message(self, index: int, messages: list[dict[str, Any]]) -> str:
        message = messages[index]
        role, content = message["role"], message.get("content")
        if role == "system":
            return "" if index == 0 else f"{self.system}{_content(content)}{self.eosys}"
        if role == "user":
            return f"{self.user}{_content(content)}{self.eosys}"
        if role == "assistant":
            if message.get("tool_calls") is None:
                return f"{self.assistant}{_content(content)}{self.eosys}"
            text = "<|im_start|>assistant"
            if content is not None:
                text += f"\n{_content(content)}"
            for call in message["tool_calls"]:
                name, arguments = call_function(call)
                payload = json.dumps(arguments, ensure_ascii=False)
                text += f'\n<tool_call>\n{{"name": "{name}", "arguments": {payload}}}\n</tool_call>'
            return text + self.eosys
        return self.render_tool_result(_content(content), index, messages)


@MODELS.register_module(name="yi")
class Yi(FamilyTemplate):
    defaults = dict(CHATML, meta_instruction=None, stop_words=["<|im_end|>", "<|endoftext|>"])

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "yi" if "yi" in path and "vl" not in path else None


@MODELS.register_module(name="dbrx")
class DbrxInstruct(FamilyTemplate):
    defaults = dict(CHATML, meta_instruction=prompts.DBRX)

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "dbrx" if "dbrx" in model_path.lower() else None


@MODELS.register_module(name=["llava-chatml", "internvl-zh-hermes2"])
class ChatmlDirect(FamilyTemplate):
    """ChatML with no newline after `<|im_end|>`."""

    defaults = dict(
        CHATML,
        meta_instruction="Answer the questions.",
        eosys="<|im_end|>",
        eoh="<|im_end|>",
        separator="",
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "llava" in path and "v1.6-34b" in path:
            return "llava-chatml"
        if "internvl-chat" in path and "v1-2" in path:
            return "internvl-zh-hermes2"
        return None


@MODELS.register_module(name="chatml")
class ChatML(FamilyTemplate):
    """Plain ChatML without a default system prompt (not in 0.6.5)."""

    defaults = dict(CHATML, meta_instruction=None, stop_words=["<|im_end|>"])


@MODELS.register_module(name="smollm2")
class SmolLM2(ChatML):
    """SmolLM2-Instruct, the embedded default model (not in 0.6.5): ChatML with its own
    default system prompt."""

    defaults = {
        **ChatML.defaults,
        "meta_instruction": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "smollm2" if "smollm" in model_path.lower() else None
