"""Documented import path `lmdeploy.tokenizer`: re-exports only, under LMDeploy 0.6.5's names."""

from .adapters.tokenizers.lmdeploy_tokenizer import HuggingFaceTokenizer, Tokenizer  # noqa: F401
from .application.detokenizer import DetokenizeState  # noqa: F401
