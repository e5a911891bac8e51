"""Tool calling as a use case: tools into the prompt, the model's reply into tool calls.

The prompt format is the chat template's; reading the calls back is a `ToolParser`'s
(one adapter per format, named by the template's `tool_parser`). `tool_choice` 'required' or
a named function adds an instruction to the last user turn, and a grammar built from the
tools' JSON schemas in the parser's format (`tool_grammar`) makes the reply tool calls whose
arguments follow those schemas.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..domain.errors import InvalidArgument
from .chat_templates import ChatTemplate
from .configs import GenerationConfig
from .generation import GenerationService, PreparedRequest
from .multimodal import has_images
from .tool_grammar import ToolCallFormat, tool_call_spec

REQUIRED_INSTRUCTION = "You must answer by calling one or more of the functions provided."


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


class ToolParser(Protocol):
    markers: tuple[str, ...]  # text that opens a tool call
    skip_special_tokens: bool  # False when the markers are special tokens
    call_format: ToolCallFormat  # how to write calls it reads back, for an enforcing grammar

    def tool_start(self, text: str) -> int | None:
        """Where the first tool call begins in `text`, or None."""
        ...

    def parse(self, text: str, final: bool = True) -> ParsedOutput:
        """Calls found in `text`; before the end (`final=False`) only the complete ones.
        What is not a well-formed call stays in `content`."""
        ...


def tools_for_prompt(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the tools to show the model, an instruction for the last user turn)."""
    if not tools or tool_choice == "none":
        return None, None
    if tool_choice in (None, "auto"):
        return tools, None
    if tool_choice == "required":
        return tools, REQUIRED_INSTRUCTION
    name = (tool_choice.get("function") or {}).get("name")
    chosen = [t for t in tools if t.get("function", {}).get("name") == name]
    if not chosen:
        names = [t.get("function", {}).get("name") for t in tools]
        raise InvalidArgument(
            "tool_choice", f"function {name!r} is not among the tools {names}; name one of them"
        )
    return chosen, f"You must answer by calling the function {name}."


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """A copy of `messages` whose last user turn ends with `instruction`."""
    messages = [dict(m) for m in messages]
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                message["content"] = [*content, {"type": "text", "text": "\n\n" + instruction}]
            else:
                message["content"] = f"{content or ''}\n\n{instruction}"
            return messages
    return [*messages, {"role": "user", "content": instruction}]


def render_prompt(
    template: ChatTemplate,
    messages: str | list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None = None,
) -> str:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    shown, instruction = tools_for_prompt(tools, tool_choice)
    if instruction:
        messages = with_instruction(messages, instruction)
    return template.messages2prompt(messages, tools=functions_for_template(shown))


def functions_for_template(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The tools as 0.6.5's server hands them to a template: each one's function, with its
    fields in the order (and the null description) of 0.6.5's `Function.model_dump()`."""
    if tools is None:
        return None
    functions = [t.get("function", t) for t in tools]
    return [
        {
            "description": f.get("description"),
            "name": f.get("name"),
            "parameters": f.get("parameters"),
        }
        for f in functions
    ]


def prepare_chat(
    generation: GenerationService,
    messages: str | list[dict[str, Any]],
    config: GenerationConfig,
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parser_for: Callable[[str], ToolParser],
    parallel_tool_calls: bool | None = None,
    adapter_name: str | None = None,
) -> tuple[PreparedRequest, ToolParser | None]:
    """The request to submit, and the parser of its reply when the model may call tools.

    A forced call (tool_choice 'required' or named) is one call unless `parallel_tool_calls`
    is true: small models otherwise tend to repeat the call until the length limit."""
    if not tools or tool_choice == "none":
        return generation.prepare(messages, config, adapter_name=adapter_name), None
    if has_images(messages):
        raise InvalidArgument(
            "tools", "images with tools are not supported yet; send one or the other"
        )
    template = generation.chat_template
    parser = parser_for(getattr(template, "tool_parser", None) or "hermes")
    text = render_prompt(template, messages, tools, tool_choice)
    if not parser.skip_special_tokens:
        # The parser reads the markers as the model wrote them, without added spaces.
        config = replace(config, skip_special_tokens=False, spaces_between_special_tokens=False)
    input_ids = generation.encode_chat(text)
    if tool_choice in (None, "auto"):
        return generation.prepare(input_ids, config, adapter_name=adapter_name), parser
    if config.response_format is not None:
        raise InvalidArgument(
            "response_format",
            "a tool_choice that forces a call fixes the reply's format; drop response_format",
        )
    shown, _ = tools_for_prompt(tools, tool_choice)
    spec = tool_call_spec(parser.call_format, shown, parallel=bool(parallel_tool_calls))
    return generation.prepare(input_ids, config, grammar=spec, adapter_name=adapter_name), parser


class ToolCallStream:
    """Splits a stream of text deltas into content deltas and completed tool calls.

    Content is passed on until a tool call may begin (text that could be the start of a
    marker is held back); from there the text is buffered and each call is sent once whole.
    """

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.text = ""
        self._sent = 0  # characters of `text` sent as content
        self._num_calls = 0
        self._in_calls = False

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.text += delta
        content = ""
        if not self._in_calls:
            start = self.parser.tool_start(self.text)
            end = len(self.text) - self._held_back() if start is None else start
            content, self._sent = self.text[self._sent : end], max(self._sent, end)
            if start is None:
                return content, []
            self._in_calls = True
        return content, self._new_calls(self.parser.parse(self.text, final=False))

    def finish(self) -> tuple[str, list[ToolCall]]:
        parsed = self.parser.parse(self.text, final=True)
        sent = self.text[: self._sent]
        rest = parsed.content[len(sent) :] if parsed.content.startswith(sent) else ""
        if not parsed.tool_calls and not self._num_calls:
            rest = self.text[self._sent :]
        elif not rest.strip():
            rest = ""  # only the whitespace between and after the calls: no content
        self._sent = len(self.text)
        return rest, self._new_calls(parsed)

    @property
    def called(self) -> bool:
        return self._num_calls > 0

    def _new_calls(self, parsed: ParsedOutput) -> list[ToolCall]:
        calls = parsed.tool_calls[self._num_calls :]
        self._num_calls += len(calls)
        return calls

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins a marker."""
        for size in range(
            min(len(self.text), max(map(len, self.parser.markers), default=0)), 0, -1
        ):
            tail = self.text[-size:]
            if any(m.startswith(tail) for m in self.parser.markers):
                return size
        return 0
