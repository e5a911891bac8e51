"""InternLM2 / 2.5 format: `<|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|>`.

The markers are special tokens, so the reply must be decoded with them kept."""

from __future__ import annotations

from ...application.tool_grammar import ToolCallFormat
from ._common import BlockParser


class InternLM2ToolParser(BlockParser):
    begin = "<|action_start|><|plugin|>"
    end = "<|action_end|>"
    skip_special_tokens = False
    # `<|action_end|>` is the template's stop word: a forced reply is one call, ended by it.
    call_format = ToolCallFormat(
        begin="<|action_start|><|plugin|>\n", end="", arguments_key="parameters"
    )
