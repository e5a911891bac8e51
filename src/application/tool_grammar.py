"""The grammar that forces tool calls: a parser's call format around each tool's JSON schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .ports import GrammarSpec, ToolCallGrammar

# Type names that tool definitions in the wild (the documentation's among them) use for JSON
# schema types.
TYPE_ALIASES = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "bool": "boolean",
    "dict": "object",
    "list": "array",
}


@dataclass(frozen=True)
class ToolCallFormat:
    """How a tool parser reads calls: `prefix`, then calls `begin {"name": ..., KEY: {...}} end`
    joined by `separator` (KEY is `arguments_key`); with `arguments_key` None, calls
    `begin {...} end` that name the function in `begin` where it says `{name}`."""

    begin: str
    end: str
    separator: str = "\n"
    prefix: str = ""
    arguments_key: str | None = "arguments"


def normalize_schema(schema: Any) -> Any:
    """`schema` with aliased type names ('int', 'str', ...) replaced by JSON schema's."""
    if isinstance(schema, list):
        return [normalize_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: normalize_schema(value) for key, value in schema.items()}
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = TYPE_ALIASES.get(kind, kind)
    elif isinstance(kind, list):
        out["type"] = [TYPE_ALIASES.get(k, k) if isinstance(k, str) else k for k in kind]
    return out


def parameters_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's arguments schema: its `parameters` (normalized), or any object."""
    parameters = tool.get("function", {}).get("parameters")
    return normalize_schema(parameters) if parameters else {"type": "object"}


def tool_call_spec(
    call_format: ToolCallFormat, tools: list[dict[str, Any]], parallel: bool = False
) -> GrammarSpec:
    """A call of one of `tools` (several with `parallel`), written in `call_format`."""
    functions = tuple(
        (tool["function"]["name"], json.dumps(parameters_schema(tool))) for tool in tools
    )
    return GrammarSpec(
        "tool_calls",
        tool_calls=ToolCallGrammar(
            prefix=call_format.prefix,
            begin=call_format.begin,
            end=call_format.end,
            separator=call_format.separator,
            arguments_key=call_format.arguments_key,
            functions=functions,
            parallel=parallel,
        ),
    )
