"""Tool-call parsers, one module per model family's format, found by name.

A chat template names its format in `tool_parser`; `get_tool_parser` returns that parser."""

from __future__ import annotations

from ...application.tools import ToolParser
from .hermes import HermesToolParser
from .internlm2 import InternLM2ToolParser
from .llama3 import Llama3ToolParser

TOOL_PARSERS: dict[str, type] = {
    "hermes": HermesToolParser,
    "qwen": HermesToolParser,
    "internlm2": InternLM2ToolParser,
    "llama3": Llama3ToolParser,
}


def get_tool_parser(name: str) -> ToolParser:
    parser = TOOL_PARSERS.get(name)
    if parser is None:
        raise ValueError(f"unknown tool parser {name!r}; choose one of {sorted(TOOL_PARSERS)}")
    return parser()


__all__ = ["TOOL_PARSERS", "get_tool_parser"]
