"""Import path kept for the rest of the application: the templates live in `chat_templates`."""

from .chat_templates import (  # noqa: F401
    BUILTIN_TEMPLATES,
    MODELS,
    BaseChatTemplate,
    ChatTemplate,
    ModelChatTemplate,
    best_match_model,
    builtin_template,
    text_of,
)
