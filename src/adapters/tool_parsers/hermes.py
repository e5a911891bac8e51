"""Hermes / Qwen2.5 format: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`."""

from __future__ import annotations

from ...application.tool_grammar import ToolCallFormat
from ._common import BlockParser


class HermesToolParser(BlockParser):
    begin = "<tool_call>"
    end = "</tool_call>"
    call_format = ToolCallFormat(begin="<tool_call>\n", end="\n</tool_call>")
