"""Documented import path `lmdeploy.model`: re-exports only."""

from .application.chat_template import BUILTIN_TEMPLATES, builtin_template  # noqa: F401
from .application.configs import ChatTemplateConfig  # noqa: F401
