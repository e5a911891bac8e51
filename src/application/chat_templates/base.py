"""Field-based chat templates: the `MODELS` registry, `BaseModel`, `BaseChatTemplate`.

The rendering reproduces LMDeploy 0.6.5's `lmdeploy/model.py` byte for byte (users' prompts
and stored prompt caches depend on the exact text): each message is wrapped in its role's
begin/end strings (the `ChatTemplateConfig` fields), the default system prompt
(`meta_instruction`) opens a session without a system message, a trailing assistant message
is a prefix the reply continues, and otherwise the assistant turn is opened. BOS is left to
the tokenizer except where 0.6.5 writes it (Llama 3's `<|begin_of_text|>`, GLM's `[gMASK]`).

Templates without a tool format of their own in 0.6.5 (which ignores `tools` there and fails
on tool messages) get the Hermes format: signatures in the system prompt, calls as
`<tool_call>` blocks, results as `<tool_response>` blocks in a user turn.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from ...domain.errors import InvalidArgument

logger = logging.getLogger(__name__)

Messages = str | list[dict[str, Any]]
TOOL_ROLES = ("tool", "ipython")

HERMES_TOOLS = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_EOTOOLS = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


class ChatTemplate(Protocol):
    stop_words: list[str] | None
    tool_parser: str | None

    def messages2prompt(
        self,
        messages: Messages,
        sequence_start: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str: ...


def text_of(content: Any) -> str:
    """Message content as text: a string, the text parts of an OpenAI content list, or JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return json.dumps(content, ensure_ascii=False)


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The function of an OpenAI tool (`{"type": "function", "function": {...}}`), or the
    tool itself when it is already a bare function, as 0.6.5's templates take them."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    return tool


def call_function(tool_call: dict[str, Any]) -> tuple[str, Any]:
    """(name, arguments as an object) of a tool call; OpenAI's JSON-text arguments are decoded
    (0.6.5 would write them as a quoted string, which no model produces)."""
    function = tool_call.get("function", tool_call)
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # rendered back as the string the client sent
    return function.get("name", ""), arguments


def hermes_tool_call(tool_call: dict[str, Any]) -> str:
    name, arguments = call_function(tool_call)
    payload = json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": "{name}", "arguments": {payload}}}\n</tool_call>'


def hermes_tools(tools: list[dict[str, Any]]) -> str:
    listed = "".join(
        f'\n{{"type": "function", "function": {json.dumps(function_of(t), ensure_ascii=False)}}}'
        for t in tools
    )
    return f"{HERMES_TOOLS}{listed}{HERMES_EOTOOLS}"


class Registry:
    """Named template classes, in registration order; `register_module` is the documented
    decorator."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module_dict: dict[str, type] = {}

    def register_module(
        self, name: str | list[str] | None = None, force: bool = False, module: type | None = None
    ) -> Any:
        def register(cls: type) -> type:
            for key in [name] if isinstance(name, str) else list(name or [cls.__name__]):
                if key in self.module_dict and not force:
                    raise KeyError(
                        f"{key!r} is already registered in {self.name}; "
                        "pass force=True to replace it or choose another name"
                    )
                self.module_dict[key] = cls
            return cls

        return register(module) if module is not None else register

    def get(self, name: str) -> type | None:
        return self.module_dict.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.module_dict

    def __len__(self) -> int:
        return len(self.module_dict)


MODELS = Registry("chat templates")


class BaseModel:
    """No template: a prompt is used as it is (`base`, `llama`, `falcon`)."""

    tool_parser: str | None = "hermes"

    def __init__(
        self, capability: str = "chat", stop_words: list[str] | None = None, **kwargs: Any
    ) -> None:
        self.capability = capability
        self.stop_words = stop_words

    @classmethod
    def match(cls, model_path: str) -> str | None:
        """The template name for a model path, or None; see `best_match_model`."""
        return None

    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        return prompt

    def messages2prompt(
        self,
        messages: Messages,
        sequence_start: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """A string is one user turn (`get_prompt`); a message list goes to `list_prompt`."""
        if isinstance(messages, str):
            return self.get_prompt(messages, sequence_start)
        return self.list_prompt(messages, sequence_start, tools)

    def list_prompt(
        self, messages: list[dict[str, Any]], sequence_start: bool, tools: list[dict] | None
    ) -> str:
        """The prompt of a message list; what a template overrides."""
        # 0.6.5 returns None here; the texts joined is what a prompt without template means
        return "".join(text_of(m.get("content")) for m in messages)


class BaseChatTemplate(BaseModel):
    """{system}{meta_instruction}{eosys}{user}{content}{eoh}{assistant}{content}{eoa}{separator}...

    `meta_instruction` None (not "") means no default system prompt."""

    def __init__(
        self,
        system: str = "",
        meta_instruction: str | None = "",
        eosys: str = "",
        user: str = "",
        eoh: str = "",
        assistant: str = "",
        eoa: str = "",
        separator: str = "",
        tool: str = "",
        eotool: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.system, self.meta_instruction, self.eosys = system, meta_instruction, eosys
        self.user, self.eoh, self.assistant, self.eoa = user, eoh, assistant, eoa
        self.separator, self.tool, self.eotool = separator, tool, eotool

    # -- what a subclass varies -------------------------------------------------------------
    def opener(self) -> str:
        """What opens the reply's turn at the end of a prompt."""
        return self.assistant

    def prefix(self, sequence_start: bool) -> str:
        """Text 0.6.5 writes before the whole prompt (Llama 3's BOS, GLM's `[gMASK]`)."""
        return ""

    # -- rendering --------------------------------------------------------------------------
    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        if self.capability == "completion":
            return (self.prefix(sequence_start) if sequence_start else "") + prompt
        turn = f"{self.user}{prompt}{self.eoh}{self.opener()}"
        if not sequence_start:
            return f"{self.separator}{turn}"
        head = self.system_block(self.meta_instruction) if self.meta_instruction is not None else ""
        return f"{self.prefix(sequence_start)}{head}{turn}"

    def list_prompt(
        self, messages: list[dict[str, Any]], sequence_start: bool, tools: list[dict] | None
    ) -> str:
        check_roles(messages, self.roles())
        prompt = self.prefix(sequence_start) + self.render(messages, sequence_start, tools or None)
        logger.info("chat template %s prompt: %r", type(self).__name__, prompt)
        return prompt

    def roles(self) -> tuple[str, ...]:
        return ("system", "user", "assistant", *TOOL_ROLES)

    def render(
        self, messages: list[dict[str, Any]], sequence_start: bool, tools: list[dict] | None
    ) -> str:
        prompt = self.head(messages, sequence_start, tools) + self.body(messages, tools)
        return self.finish(prompt, messages)

    def head(self, messages: list[dict], sequence_start: bool, tools: list[dict] | None) -> str:
        """The default system prompt (with the tools), unless a system message opens."""
        if messages and messages[0]["role"] == "system":
            return ""
        if sequence_start and messages and self.meta_instruction is not None:
            return self.system_block(self.meta_instruction, tools)
        return self.system_block(None, tools) if tools else ""

    def body(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
        return "".join(
            self.render_message(m, i, messages, tools if i == 0 and m["role"] == "system" else None)
            for i, m in enumerate(messages)
        )

    def finish(self, prompt: str, messages: list[dict[str, Any]]) -> str:
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            return self.strip_turn_end(prompt)
        return prompt + self.opener()

    def strip_turn_end(self, prompt: str) -> str:
        """A trailing assistant message is the reply's prefix: its turn stays open.

        0.6.5 cuts len(eoa + separator) characters, which empties the prompt when both are
        empty; only the end that is there is cut here."""
        end = self.eoa + self.separator
        return prompt[: -len(end)] if end and prompt.endswith(end) else prompt

    def system_block(self, text: str | None, tools: list[dict] | None = None) -> str:
        body = (text or "") + (hermes_tools(tools) if tools else "")
        return f"{self.system}{body if text is not None else body.lstrip()}{self.eosys}"

    def render_message(
        self,
        message: dict[str, Any],
        index: int,
        messages: list[dict[str, Any]],
        tools: list[dict] | None = None,
    ) -> str:
        role, text = message["role"], text_of(message.get("content"))
        if role == "user":
            return f"{self.user}{text}{self.eoh}"
        if role == "system":
            return self.system_block(text, tools)
        if role == "assistant":
            if message.get("tool_calls"):
                text = "\n".join([text] * bool(text) + self.tool_calls_text(message))
            return f"{self.assistant}{text}{self.eoa}{self.separator}"
        return self.render_tool_result(text, index, messages)

    def tool_calls_text(self, message: dict[str, Any]) -> list[str]:
        return [hermes_tool_call(c) for c in message["tool_calls"]]

    def render_tool_result(self, text: str, index: int, messages: list[dict[str, Any]]) -> str:
        if self.tool:
            return f"{self.tool}{text}{self.eotool}"
        # a run of results shares one user turn, as Qwen2.5 reads them
        first = index == 0 or messages[index - 1]["role"] not in TOOL_ROLES
        last = index == len(messages) - 1 or messages[index + 1]["role"] not in TOOL_ROLES
        begin = self.user if first else "\n"
        return f"{begin}<tool_response>\n{text}\n</tool_response>{self.eoh if last else ''}"


def check_roles(messages: list[dict[str, Any]], roles: tuple[str, ...]) -> None:
    for message in messages:
        if message.get("role") not in roles:
            raise InvalidArgument(
                "messages",
                f"unknown role {message.get('role')!r}; use one of {', '.join(roles)}",
            )


class FamilyTemplate(BaseChatTemplate):
    """A built-in template: its `defaults` fill every field the caller leaves out."""

    defaults: dict[str, Any] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**self.defaults, **kwargs})


class TrimmedOpener(FamilyTemplate):
    """0.6.5 cuts the last character of these templates' prompts: the space after the
    assistant's name, so the reply starts with its own space token."""

    def opener(self) -> str:
        return self.assistant[:-1]

    def messages2prompt(
        self,
        messages: Messages,
        sequence_start: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        prompt = super().messages2prompt(messages, sequence_start, tools, **kwargs)
        # 0.6.5 cuts a string prompt twice: its last two characters (`: `) go
        twice = isinstance(messages, str) and self.capability != "completion"
        return prompt[:-1] if twice else prompt
