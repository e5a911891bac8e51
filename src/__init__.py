"""lmdeploy: compress, deploy and serve large language models."""

from .application.configs import (
    ChatTemplateConfig,
    GenerationConfig,
    PytorchEngineConfig,
    Response,
    TurbomindEngineConfig,
    VisionConfig,
)
from .infrastructure.factory import pipeline
from .infrastructure.launcher import client, serve
from .tokenizer import Tokenizer

__version__ = "0.1.0"
version_info = (0, 1, 0)

__all__ = [
    "ChatTemplateConfig",
    "GenerationConfig",
    "PytorchEngineConfig",
    "Response",
    "Tokenizer",
    "TurbomindEngineConfig",
    "VisionConfig",
    "client",
    "pipeline",
    "serve",
    "__version__",
    "version_info",
]
