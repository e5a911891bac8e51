"""The Llama family as LMDeploy 0.6.5 renders it: Llama 2 and CodeLlama (`[INST]`), Llama 3
(header ids, BOS text written), Llama 3.1/3.2 (a knowledge date with the default system
prompt, tools in the `<function=name>{...}</function>` format, results in `ipython` turns)."""

from __future__ import annotations

import json
from typing import Any

from . import prompts
from .base import MODELS, TOOL_ROLES, FamilyTemplate, call_function, function_of, text_of


@MODELS.register_module(name="llama2")
class Llama2(FamilyTemplate):
    """The first user turn follows the system block inside one `[INST]`; later ones open
    with the separator `<s>[INST] ` after the previous reply's `</s>`."""

    defaults = dict(
        system="[INST] <<SYS>>\n",
        meta_instruction=prompts.LLAMA2,
        eosys="\n<</SYS>>\n\n",
        assistant=" [/INST] ",
        eoa="</s>",
        separator="<s>[INST] ",
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "llama2" if "llama-2" in path or "llama2" in path else None


CODELLAMA_CAPABILITIES = ("completion", "infilling", "chat", "python")


@MODELS.register_module(name="codellama")
class CodeLlama(Llama2):
    """Chat as Llama 2 (an empty default system block); `infilling` turns
    `prefix<FILL>suffix` into CodeLlama's `<PRE> <SUF> <MID>` prompt; `completion` and
    `python` use the prompt as it is."""

    defaults = {**Llama2.defaults, "meta_instruction": ""}

    def __init__(self, suffix_first: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # AssertionError, as 0.6.5 raises it
        assert self.capability in CODELLAMA_CAPABILITIES, (
            f"{self.capability} is not supported. "
            f"The supported capabilities are: {list(CODELLAMA_CAPABILITIES)}"
        )
        self.suffix_first = suffix_first
        if self.capability == "infilling" and self.stop_words is None:
            self.stop_words = ["<EOT>"]

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "codellama" if "codellama" in model_path.lower() else None

    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        if self.capability == "infilling":
            prefix, suffix = prompt.split("<FILL>")
            if self.suffix_first:
                return f"<PRE> <SUF>{suffix} <MID> {prefix}"
            return f"<PRE> {prefix} <SUF>{suffix} <MID>"
        if self.capability == "chat":
            return super().get_prompt(prompt, sequence_start)
        return prompt


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


@MODELS.register_module(name="llama3")
class Llama3(FamilyTemplate):
    defaults = dict(
        system=_header("system"),
        meta_instruction=None,
        eosys="<|eot_id|>",
        user=_header("user"),
        eoh="<|eot_id|>",
        assistant=_header("assistant"),
        eoa="<|eot_id|>",
        stop_words=["<|eot_id|>", "<|end_of_text|>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "internvl2" in path:  # InternVL2-Llama3-76B has a template of its own
            return None
        return "llama3" if "llama-3-" in path or "llama3-" in path else None

    def prefix(self, sequence_start: bool) -> str:
        # 0.6.5 writes the BOS text for this family (the tokenizer's BOS comes on top)
        return "<|begin_of_text|>" if sequence_start else ""


@MODELS.register_module(name=["llama3_1", "llama3_2"])
class Llama3_1(Llama3):  # noqa: N801 - 0.6.5's name
    """The default system prompt comes with the knowledge date; tools are described in the
    system turn (before the default system prompt, or before a system message's text, which
    then goes without the knowledge date), and a reply holding a call ends with `<|eom_id|>`.
    A plain string prompt (`get_prompt`) is rendered as Llama 3 renders it, as in 0.6.5."""

    tool_parser = "llama3"
    defaults = {
        **Llama3.defaults,
        "meta_instruction": "You are a helpful assistant.",
        "tool": _header("ipython"),
        "eotool": "<|eot_id|>",
        "stop_words": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    }
    knowledge = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        versions = ("llama-3.1-", "llama3.1-", "llama-3.2-", "llama3.2-")
        return "llama3_1" if any(v in path for v in versions) else None

    def system_block(self, text: str | None, tools: list[dict] | None = None) -> str:
        described = self.tools_text(tools) if tools is not None else ""
        return f"{self.system}{described}{text or ''}{self.eosys}"

    def render(self, messages: list[dict], sequence_start: bool, tools: list[dict] | None) -> str:
        head = ""
        opens = messages[0]["role"] if messages else "system"
        if sequence_start and opens != "system" and self.meta_instruction is not None:
            described = self.tools_text(tools) if tools is not None else ""
            head = f"{self.system}{self.knowledge}{described}{self.meta_instruction}{self.eosys}"
        body = "".join(self.render_llama_message(m, tools) for m in messages)
        prompt = head + body
        if messages and messages[-1]["role"] == "assistant":
            # the reply's prefix; 0.6.5 cuts as many characters as `<|eot_id|>` has
            return prompt[: -len(self.eoa + self.separator)]
        return prompt + self.opener()

    def render_llama_message(self, message: dict[str, Any], tools: list[dict] | None) -> str:
        role, text = message["role"], text_of(message.get("content"))
        if role == "system":
            return self.system_block(text, tools)
        if role in TOOL_ROLES:
            return f"{self.tool}{text}{self.eotool}"
        if role == "user":
            return f"{self.user}{text}{self.eoh}"
        text += "".join(self.function_call(c) for c in message.get("tool_calls") or [])
        if "<|python_tag|>" in text or "</function>" in text:
            return f"{self.assistant}{text}<|eom_id|>"
        return f"{self.assistant}{text}{self.eoa}{self.separator}"

    def function_call(self, tool_call: dict[str, Any]) -> str:
        """An OpenAI tool call back in the format the model was asked to call in."""
        name, arguments = call_function(tool_call)
        return f"<function={name}>{json.dumps(arguments, ensure_ascii=False)}</function>"

    def tools_text(self, tools: list[dict]) -> str:
        listed = ""
        for tool in map(function_of, tools):
            described = json.dumps(tool, ensure_ascii=False)
            listed += (
                f"Use the function '{tool['name']}' to: {tool.get('description')}\n{described}\n"
            )
        return f"{prompts.LLAMA3_1_TOOLS}{listed}{prompts.LLAMA3_1_EOTOOLS}"
