"""The ChatML family (`<|im_start|>role ... <|im_end|>`): chatml, SmolLM2, Qwen, Qwen2.5, InternLM2.

Tools follow Qwen2.5's official template (the Hermes format): the function signatures go into
the system prompt, calls come back as `<tool_call>{json}</tool_call>` and results as
`<tool_response>` blocks inside one user turn.
"""

from __future__ import annotations

import json
from typing import Any

from .base import MODELS, TOOL_ROLES, FamilyTemplate, call_function


@MODELS.register_module(name="chatml")
class ChatML(FamilyTemplate):
    defaults = dict(
        system="<|im_start|>system\n",
        meta_instruction=None,
        eosys="<|im_end|>\n",
        user="<|im_start|>user\n",
        eoh="<|im_end|>\n",
        assistant="<|im_start|>assistant\n",
        eoa="<|im_end|>",
        separator="\n",
        stop_words=["<|im_end|>"],
    )

    def render_message(self, message: dict[str, Any], index: int, messages: list[dict]) -> str:
        role, text = message["role"], self._text(message)
        if role == "assistant" and message.get("tool_calls"):
            calls = "".join(self.render_tool_call(c) for c in message["tool_calls"])
            body = ("\n" + text if text else "") + calls
            return f"{self.assistant.rstrip()}{body}{self.eoa}{self.separator}"
        if role in TOOL_ROLES:
            first = index == 0 or messages[index - 1]["role"] not in TOOL_ROLES
            last = index == len(messages) - 1 or messages[index + 1]["role"] not in TOOL_ROLES
            begin = self.user.rstrip() if first else ""
            end = self.eoh if last else ""
            return f"{begin}\n<tool_response>\n{text}\n</tool_response>{end}"
        return super().render_message(message, index, messages)


@MODELS.register_module(name="smollm2")
class SmolLM2(ChatML):
    """SmolLM2-Instruct, the embedded default model: ChatML with its own default system prompt."""

    defaults = {
        **ChatML.defaults,
        "meta_instruction": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "smollm2" if "smollm" in model_path.lower() else None


@MODELS.register_module(name="qwen")
class Qwen(ChatML):
    """Qwen, Qwen1.5 and Qwen2 chat models."""

    defaults = {**ChatML.defaults, "meta_instruction": "You are a helpful assistant."}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "qwen" if "qwen" in path and "vl" not in path else None


@MODELS.register_module(name="qwen2d5")
class Qwen2d5(ChatML):
    defaults = {
        **ChatML.defaults,
        "meta_instruction": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "qwen2d5" if ("qwen2.5" in path or "qwen2_5" in path) and "vl" not in path else None


INTERNLM_META = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by "
    "the user such as English and 中文."
)


@MODELS.register_module(name="internlm2")
class InternLM2(ChatML):
    """InternLM2 / 2.5 chat: tools as a `system name=<|plugin|>` turn, calls as
    `<|action_start|><|plugin|>\\n{json}<|action_end|>`, results from the `environment`."""

    tool_parser = "internlm2"
    defaults = {
        **ChatML.defaults,
        "meta_instruction": INTERNLM_META,
        "stop_words": ["<|im_end|>", "<|action_end|>"],
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "internlm2" if "internlm2" in path and ("chat" in path or "math" in path) else None

    def render_head(self, system: str | None, tools: list[dict] | None, messages: list) -> str:
        head = super().render_head(system, None, messages)
        if not tools:
            return head
        functions = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
        return f"{head}{self.system.rstrip()} name=<|plugin|>\n{functions}{self.eosys}"

    def render_message(self, message: dict[str, Any], index: int, messages: list[dict]) -> str:
        role, text = message["role"], self._text(message)
        if role in TOOL_ROLES:
            return f"<|im_start|>environment name=<|plugin|>\n{text}{self.eosys}"
        if role == "assistant" and message.get("tool_calls"):
            calls = "".join(self.render_tool_call(c) for c in message["tool_calls"])
            return f"{self.assistant}{text}{calls}{self.eoa}{self.separator}"
        return super().render_message(message, index, messages)

    def render_tool_call(self, tool_call: dict[str, Any]) -> str:
        name, arguments = call_function(tool_call)
        payload = json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)
        return f"<|action_start|><|plugin|>\n{payload}<|action_end|>"
