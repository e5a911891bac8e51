"""Turning OpenAI-style messages into a prompt string.

The model's own (HF jinja) template is the default; `ChatTemplateConfig(model_name=...)` names
one of the built-in templates below instead, with any field overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from ..domain.errors import InvalidArgument
from .configs import ChatTemplateConfig


class ChatTemplate(Protocol):
    stop_words: list[str]

    def messages2prompt(
        self, messages: str | list[dict[str, Any]], sequence_start: bool = True
    ) -> str: ...


@dataclass(frozen=True)
class BuiltinTemplate:
    system: str = ""
    meta_instruction: str = ""
    eosys: str = ""
    user: str = ""
    eoh: str = ""
    assistant: str = ""
    eoa: str = ""
    tool: str = ""
    eotool: str = ""
    separator: str = ""
    stop_words: tuple[str, ...] = ()

    def messages2prompt(
        self, messages: str | list[dict[str, Any]], sequence_start: bool = True
    ) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        parts = []
        if self.meta_instruction and sequence_start and messages[0]["role"] != "system":
            parts.append(f"{self.system}{self.meta_instruction}{self.eosys}")
        wraps = {
            "system": (self.system, self.eosys),
            "user": (self.user, self.eoh),
            "assistant": (self.assistant, self.eoa + self.separator),
            "tool": (self.tool, self.eotool),
        }
        for message in messages:
            role = message["role"]
            if role not in wraps:
                raise InvalidArgument(
                    "messages", f"unknown role {role!r}; use system, user, assistant or tool"
                )
            begin, end = wraps[role]
            parts.append(f"{begin}{text_of(message.get('content'))}{end}")
        parts.append(self.assistant)
        return "".join(parts)


def text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "chatml": BuiltinTemplate(
        system="<|im_start|>system\n",
        eosys="<|im_end|>\n",
        user="<|im_start|>user\n",
        eoh="<|im_end|>\n",
        assistant="<|im_start|>assistant\n",
        eoa="<|im_end|>",
        separator="\n",
        tool="<|im_start|>tool\n",
        eotool="<|im_end|>\n",
        stop_words=("<|im_end|>",),
    ),
    "llama3": BuiltinTemplate(
        system="<|start_header_id|>system<|end_header_id|>\n\n",
        eosys="<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n",
        eoh="<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        eoa="<|eot_id|>",
        stop_words=("<|eot_id|>", "<|end_of_text|>"),
    ),
    "internlm2": BuiltinTemplate(
        system="<|im_start|>system\n",
        eosys="<|im_end|>\n",
        user="<|im_start|>user\n",
        eoh="<|im_end|>\n",
        assistant="<|im_start|>assistant\n",
        eoa="<|im_end|>",
        separator="\n",
        meta_instruction="You are an AI assistant whose name is InternLM (书生·浦语).",
        stop_words=("<|im_end|>", "<|action_end|>"),
    ),
    "vicuna": BuiltinTemplate(
        meta_instruction="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        eosys=" ",
        user="USER: ",
        eoh=" ",
        assistant="ASSISTANT: ",
        eoa="</s>",
    ),
    "base": BuiltinTemplate(),
}


def builtin_template(config: ChatTemplateConfig) -> BuiltinTemplate:
    base = BUILTIN_TEMPLATES.get(config.model_name)
    if base is None:
        raise InvalidArgument(
            "chat_template",
            f"unknown chat template {config.model_name!r}; choose one of {sorted(BUILTIN_TEMPLATES)}",
        )
    overrides = {
        f.name: getattr(config, f.name)
        for f in fields(BuiltinTemplate)
        if f.name != "stop_words" and getattr(config, f.name, None) is not None
    }
    if config.stop_words is not None:
        overrides["stop_words"] = tuple(config.stop_words)
    return replace(base, **overrides)


@dataclass
class ModelChatTemplate:
    """The model's own jinja template, rendered by its tokenizer."""

    tokenizer: Any
    stop_words: tuple[str, ...] = ()

    def messages2prompt(
        self, messages: str | list[dict[str, Any]], sequence_start: bool = True
    ) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
