"""Documented import path `lmdeploy.model`: re-exports only."""

from .application.chat_templates import (  # noqa: F401
    BUILTIN_TEMPLATES,
    MODELS,
    BaseChatTemplate,
    ModelChatTemplate,
    best_match_model,
    builtin_template,
)
from .application.configs import ChatTemplateConfig  # noqa: F401
