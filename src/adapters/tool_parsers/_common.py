"""What the tool-call formats share: JSON call objects and `<begin>{json}<end>` blocks."""

from __future__ import annotations

import json
from typing import Any

from ...application.tools import ParsedOutput, ToolCall


def loads(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def call_from_json(obj: Any) -> ToolCall | None:
    """A call from `{"name": ..., "arguments"|"parameters": {...}}`, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        decoded = loads(arguments)
        arguments = decoded if isinstance(decoded, dict) else arguments
    if not isinstance(arguments, dict):
        return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


def first_marker(text: str, markers: tuple[str, ...]) -> int | None:
    found = [at for at in (text.find(m) for m in markers) if at >= 0]
    return min(found) if found else None


class BlockParser:
    """Calls written as `{begin}{json}{end}`, any number of them, among plain text.

    A block the end never closed counts only at the end of the reply (the end marker is
    often a stop word, so it never reaches the text)."""

    begin = ""
    end = ""
    skip_special_tokens = True

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.begin,)

    def tool_start(self, text: str) -> int | None:
        return first_marker(text, self.markers)

    def parse(self, text: str, final: bool = True) -> ParsedOutput:
        calls: list[ToolCall] = []
        content: list[str] = []
        pos = 0
        while (start := text.find(self.begin, pos)) >= 0:
            body_at = start + len(self.begin)
            stop = text.find(self.end, body_at)
            if stop < 0 and not final:
                break
            block_end = len(text) if stop < 0 else stop + len(self.end)
            call = call_from_json(loads(text[body_at : block_end if stop < 0 else stop]))
            if call is None:
                content.append(text[pos:block_end])
            else:
                content.append(text[pos:start])
                calls.append(call)
            pos = block_end
        content.append(text[pos:])
        return ParsedOutput("".join(content), calls)
