"""Documented import path `lmdeploy.messages`: re-exports only."""

from .application.configs import (  # noqa: F401
    ChatTemplateConfig,
    GenerationConfig,
    PytorchEngineConfig,
    Response,
    TurbomindEngineConfig,
)
