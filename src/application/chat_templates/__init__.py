"""Turning OpenAI-style messages (and tools) into a prompt string.

Built-in templates live in the `MODELS` registry (`lmdeploy list` prints their names);
`best_match_model` picks one from a model path, `builtin_template` builds one from a
`ChatTemplateConfig` (overriding fields, or defining a new template from them), and
`ModelChatTemplate` renders the model's own jinja template when no built-in applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...domain.errors import InvalidArgument
from ..configs import ChatTemplateConfig
from . import chatml, llama, others  # noqa: F401 - registers the built-in families
from .base import MODELS, BaseChatTemplate, ChatTemplate, Messages, Registry, text_of

logger = logging.getLogger(__name__)

BUILTIN_TEMPLATES: dict[str, type] = MODELS.module_dict
TEMPLATE_FIELDS = (
    "system",
    "meta_instruction",
    "eosys",
    "user",
    "eoh",
    "assistant",
    "eoa",
    "tool",
    "eotool",
    "separator",
    "capability",
    "stop_words",
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "MODELS",
    "BaseChatTemplate",
    "ChatTemplate",
    "ModelChatTemplate",
    "Registry",
    "best_match_model",
    "builtin_template",
    "text_of",
]


def builtin_template(config: ChatTemplateConfig) -> BaseChatTemplate:
    """The template `config.model_name` names, its non-None fields overriding the defaults;
    a new name with fields given defines a plain `BaseChatTemplate` from them."""
    overrides = {
        name: getattr(config, name)
        for name in TEMPLATE_FIELDS
        if getattr(config, name, None) is not None
    }
    cls = MODELS.get(config.model_name)
    if cls is not None:
        return cls(**overrides)
    if overrides:
        return BaseChatTemplate(**overrides)
    raise InvalidArgument(
        "chat_template",
        f"unknown chat template {config.model_name!r}; choose one of {sorted(MODELS.module_dict)} "
        "(`lmdeploy list`), or give the template's fields (system, user, eoh, assistant, eoa...)",
    )


def best_match_model(query: str) -> str | None:
    """The built-in template name that fits a model path or hub id, or None when none does.

    Later registrations are tried first, so a specific family (qwen2d5) wins over a general
    one (qwen) and a user's template over both."""
    seen: set[type] = set()
    for cls in reversed(MODELS.module_dict.values()):
        if cls in seen:
            continue
        seen.add(cls)
        match = getattr(cls, "match", None)
        name = match(query) if match is not None else None
        if name:
            return name
    return None


@dataclass
class ModelChatTemplate:
    """The model's own jinja template, rendered by its tokenizer (tools passed through)."""

    tokenizer: Any
    stop_words: tuple[str, ...] = ()
    tool_parser: str | None = "hermes"

    def messages2prompt(
        self,
        messages: Messages,
        sequence_start: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        extra = {"tools": tools} if tools else {}
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)
        logger.info("model chat template prompt: %r", prompt)
        return prompt
