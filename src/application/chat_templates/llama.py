"""The Llama family: Llama 2 (`[INST]`), Llama 3 and Llama 3.1/3.2 (header ids), as Meta's
official templates render them (the BOS token included, since prompts are encoded as is).

Llama 3.1 tools follow Meta's JSON tool calling: the function definitions go into the first
user turn, a call is `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`),
and results come back in `ipython` turns.
"""

from __future__ import annotations

import json
from typing import Any

from .base import MODELS, TOOL_ROLES, FamilyTemplate, call_function


@MODELS.register_module(name="llama2")
class Llama2(FamilyTemplate):
    merge_system = True
    defaults = dict(
        bos="<s>",
        system="<<SYS>>\n",
        meta_instruction=None,
        eosys="\n<</SYS>>\n\n",
        user="[INST] ",
        eoh=" [/INST]",
        assistant=" ",
        eoa=" </s>",
        separator="<s>",
        stop_words=["</s>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "llama2" if ("llama-2" in path or "llama2" in path) and "chat" in path else None

    def generation_prompt(self) -> str:
        return ""


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


@MODELS.register_module(name="llama3")
class Llama3(FamilyTemplate):
    strip_content = True
    defaults = dict(
        bos="<|begin_of_text|>",
        system=_header("system"),
        meta_instruction=None,
        eosys="<|eot_id|>",
        user=_header("user"),
        eoh="<|eot_id|>",
        assistant=_header("assistant"),
        eoa="<|eot_id|>",
        tool=_header("ipython"),
        eotool="<|eot_id|>",
        stop_words=["<|eot_id|>", "<|end_of_text|>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "llama3" if "llama-3" in path or "llama3" in path else None


LLAMA31_TOOLS = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.Do not use variables.\n\n"
)


@MODELS.register_module(name=["llama3_1", "llama3_2"])
class Llama3_1(Llama3):  # noqa: N801 - the documented name
    tool_parser = "llama3"
    knowledge = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    defaults = {**Llama3.defaults, "stop_words": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower().replace("-", "")
        return "llama3_1" if "llama3.1" in path or "llama3.2" in path else None

    def render_head(self, system: str | None, tools: list[dict] | None, messages: list) -> str:
        environment = "Environment: ipython\n" if tools else ""
        head = f"{self.system}{environment}{self.knowledge}{system or ''}{self.eosys}"
        if tools:
            listed = "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in tools)
            if messages:
                messages[0]["content"] = LLAMA31_TOOLS + listed + self._text(messages[0])
            else:
                head += f"{self.user}{LLAMA31_TOOLS}{listed}{self.eoh}"
        return head

    def render_message(self, message: dict[str, Any], index: int, messages: list[dict]) -> str:
        if message["role"] in TOOL_ROLES:
            # Meta's template writes every result as JSON, strings quoted
            result = json.dumps(message.get("content"), ensure_ascii=False)
            return f"{self.tool}{result}{self.eotool}"
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = "; ".join(self.render_tool_call(c) for c in message["tool_calls"])
            return f"{self.assistant}{calls}{self.eoa}"
        return super().render_message(message, index, messages)

    def render_tool_call(self, tool_call: dict[str, Any]) -> str:
        name, arguments = call_function(tool_call)
        return f'{{"name": "{name}", "parameters": {json.dumps(arguments, ensure_ascii=False)}}}'
