"""Turning OpenAI-style messages (and tools) into a prompt string.

Built-in templates live in the `MODELS` registry (`lmdeploy list` prints their names): the
50 of LMDeploy 0.6.5, rendering as 0.6.5 does, and our `chatml` and `smollm2`.
`best_match_model` picks one from a model path with 0.6.5's rules, `builtin_template` builds
one from a `ChatTemplateConfig` (overriding fields, or defining a new template from them), and
`ModelChatTemplate` renders the model's own jinja template when no built-in applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...domain.errors import InvalidArgument
from ..configs import ChatTemplateConfig
from . import chatml, glm, internlm, llama, others, vicuna  # noqa: F401 - registers them
from .base import MODELS, BaseChatTemplate, BaseModel, ChatTemplate, Messages, Registry, text_of

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
    "BaseModel",
    "ChatTemplate",
    "ModelChatTemplate",
    "Registry",
    "best_match_model",
    "builtin_template",
    "template_of",
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


def template_of(config: ChatTemplateConfig) -> BaseModel:
    """`ChatTemplateConfig.chat_template`: as `builtin_template`, but a name not registered
    gives a `BaseChatTemplate` of the fields given (none: no wrapping at all), as in 0.6.5."""
    if config.model_name in MODELS:
        return builtin_template(config)
    logger.warning(
        "chat template %r is not registered; a BaseChatTemplate is made of its fields",
        config.model_name,
    )
    fields = {name: getattr(config, name) for name in TEMPLATE_FIELDS}
    return BaseChatTemplate(**{k: v for k, v in fields.items() if v is not None})


# 0.6.5 tries its templates in the order it registers them; the first match wins (the order
# matters: `qwen` takes `qwen2_5` paths before `qwen2d5` does, `yi` any path holding "yi").
MATCH_ORDER = (
    "base", "cogvlm", "cogvlm2", "vicuna", "llava-v1", "mini-gemini-vicuna", "internlm",
    "internlm2", "internvl-internlm2", "internvl2-internlm2", "internvl2_5",
    "internlm-xcomposer2", "baichuan2", "puyu", "llama2", "llama3", "llama3_1", "qwen",
    "qwen2d5", "codellama", "falcon", "chatglm", "solar", "ultracm", "yi", "mistral", "gemma",
    "deepseek", "internvl-zh", "deepseek-vl", "deepseek-coder", "yi-vl", "dbrx",
    "llava-chatml", "phi-3", "internvl2-phi3", "chatglm3", "glm4", "codegeex4",
    "internvl-phi3", "molmo",
)  # fmt: skip


def best_match_model(query: str) -> str:
    """The built-in template name that fits a model path or hub id; 'base' when none does.

    0.6.5's templates are tried in its order, then ours and users' in registration order."""
    names = [n for n in MATCH_ORDER if n in MODELS] + [
        n for n in MODELS.module_dict if n not in MATCH_ORDER
    ]
    seen: set[type] = set()
    for cls in (MODELS.module_dict[n] for n in names):
        if cls in seen:
            continue
        seen.add(cls)
        name = cls.match(query) if hasattr(cls, "match") else None
        if name:
            return name
    logger.warning("no chat template matches %s; using 'base'", query)
    return "base"


@dataclass
class ModelChatTemplate:
    """The model's own jinja template, rendered by its tokenizer (tools passed through)."""

    tokenizer: Any
    stop_words: list[str] | None = None
    tool_parser: str | None = "hermes"
    bos_in_text = True  # jinja templates write the BOS token themselves

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
