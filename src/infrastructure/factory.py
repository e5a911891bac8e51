"""`pipeline()`: build a container for a model and hand back the application's Pipeline."""

from __future__ import annotations

from typing import Any

from ..application.configs import (
    ChatTemplateConfig,
    PytorchEngineConfig,
    TurbomindEngineConfig,
    VisionConfig,
)
from ..application.pipeline import Pipeline
from ..domain.errors import InvalidArgument
from .container import Container
from .logging import setup_logging


def build_container(
    model_path: str | None,
    backend_config: PytorchEngineConfig | TurbomindEngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    backend: str | None = None,
    model_name: str | None = None,
    max_log_len: int | None = None,
    vision_config: VisionConfig | None = None,
) -> Container:
    container = Container()
    container.config.from_dict(
        {
            "model_path": model_path,
            "backend": backend,
            "backend_config": backend_config,
            "chat_template_config": chat_template_config,
            "model_name": model_name,
            "max_log_len": max_log_len,
            "vision_config": vision_config,
        }
    )
    return container


def pipeline(
    model_path: str | None = None,
    backend_config: TurbomindEngineConfig | PytorchEngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    log_level: str = "WARNING",
    max_log_len: int | None = None,
    **kwargs: Any,
) -> Pipeline:
    """Load a model (a local HF directory, a .gguf file, a hub id, or the embedded default
    'SmolLM2-135M-Instruct' when None) and return a Pipeline ready for inference."""
    setup_logging(log_level)
    if kwargs.get("backend") is None and isinstance(backend_config, PytorchEngineConfig):
        kwargs["backend"] = "pytorch"
    if max_log_len is not None and max_log_len < 0:
        raise InvalidArgument("max_log_len", f"must be >= 0 or None, got {max_log_len}")
    container = build_container(
        model_path,
        backend_config,
        chat_template_config,
        kwargs.get("backend"),
        None,
        max_log_len,
        kwargs.get("vision_config"),
    )
    container.init_resources()
    return Pipeline(container.generation(), container.model_name(), container.shutdown_resources)
