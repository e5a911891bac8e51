"""Llama 3.1 / 3.2 formats: JSON calls `{"name": ..., "parameters": {...}}` at the start of the
reply or after `<|python_tag|>` (several joined by `;`), and `<function=name>{...}</function>`."""

from __future__ import annotations

import json
import re

from ...application.tool_grammar import ToolCallFormat
from ...application.tools import ParsedOutput, ToolCall
from ._common import call_from_json, first_marker, loads

PYTHON_TAG = "<|python_tag|>"
FUNCTION_TAG = re.compile(r"<function=([^>]+)>(.*?)</function>", re.DOTALL)


def _json_calls(body: str) -> list[ToolCall] | None:
    """The calls in `{...}; {...}`, or None unless every object is a call."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
        if pos == len(body):
            return calls or None
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        call = call_from_json(obj)
        if call is None:
            return None
        calls.append(call)


class Llama3ToolParser:
    markers = (PYTHON_TAG, "<function=")
    skip_special_tokens = False
    # A forced call is written as the llama3_1 template asks for calls (0.6.5's prompt).
    call_format = ToolCallFormat(
        begin="<function={name}>", end="</function>", separator="", arguments_key=None
    )

    def tool_start(self, text: str) -> int | None:
        start = first_marker(text, self.markers)
        stripped = text.lstrip()
        if start is None and stripped.startswith("{"):
            return len(text) - len(stripped)
        return start

    def parse(self, text: str, final: bool = True) -> ParsedOutput:
        calls: list[ToolCall] = []

        def take(match: re.Match) -> str:
            arguments = loads(match.group(2))
            call = call_from_json({"name": match.group(1), "arguments": arguments})
            if call is None:
                return match.group(0)
            calls.append(call)
            return ""

        content = FUNCTION_TAG.sub(take, text)
        if not final:
            return ParsedOutput(content, calls)
        tag = content.find(PYTHON_TAG)
        stripped = content.lstrip()
        if tag >= 0:
            head, body = content[:tag], content[tag + len(PYTHON_TAG) :]
        elif stripped.startswith("{"):
            head, body = "", stripped
        else:
            return ParsedOutput(content, calls)
        found = _json_calls(body)
        if found is None:
            return ParsedOutput(content, calls)
        return ParsedOutput(head, calls + found)
