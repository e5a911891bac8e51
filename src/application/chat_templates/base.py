"""Field-based chat templates: `BaseChatTemplate`, the `MODELS` registry and `text_of`.

A template wraps each message in its role's begin/end strings (the `ChatTemplateConfig`
fields); families whose layout needs more (tools, merged system prompts) override a hook.
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
    stop_words: list[str]
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


def call_function(tool_call: dict[str, Any]) -> tuple[str, Any]:
    """(name, arguments as an object) of an OpenAI tool call; arguments JSON text is decoded."""
    function = tool_call.get("function", tool_call)
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # rendered back as the string the client sent
    return function.get("name", ""), arguments


class Registry:
    """Named template classes; `register_module` is the documented decorator."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module_dict: dict[str, type] = {}

    def register_module(
        self, name: str | list[str] | None = None, force: bool = False, module: type | None = None
    ) -> Any:
        def register(cls: type) -> type:
            for key in [name] if isinstance(name, str) else list(name or [cls.__name__.lower()]):
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


class BaseChatTemplate:
    """{system}{meta_instruction}{eosys}{user}{content}{eoh}{assistant}{content}{eoa}{separator}...

    Tools, when a request carries them, go into the system prompt in the Hermes format and the
    model's calls are read by the parser named `tool_parser`.
    """

    tool_parser: str | None = "hermes"
    merge_system = False  # the system prompt goes inside the first user turn
    strip_content = False

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
        capability: str = "chat",
        stop_words: list[str] | None = None,
        bos: str = "",
        **kwargs: Any,
    ) -> None:
        self.system, self.meta_instruction, self.eosys = system, meta_instruction, eosys
        self.user, self.eoh, self.assistant, self.eoa = user, eoh, assistant, eoa
        self.separator, self.tool, self.eotool = separator, tool, eotool
        self.capability = capability
        self.stop_words = list(stop_words or [])
        self.bos = bos

    @classmethod
    def match(cls, model_path: str) -> str | None:
        """The template name for a model path, or None; see `best_match_model`."""
        return None

    # -- rendering --------------------------------------------------------------------------
    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        if self.capability == "completion":
            return prompt
        return self.messages2prompt([{"role": "user", "content": prompt}], sequence_start)

    def messages2prompt(
        self,
        messages: Messages,
        sequence_start: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        if isinstance(messages, str):
            if self.capability == "completion":
                return messages
            messages = [{"role": "user", "content": messages}]
        messages = [dict(m) for m in messages]
        for message in messages:
            if message.get("role") not in ("system", "user", "assistant", *TOOL_ROLES):
                raise InvalidArgument(
                    "messages",
                    f"unknown role {message.get('role')!r}; use system, user, assistant or tool",
                )
        parts = [self.bos] if sequence_start else [self.separator]
        if sequence_start:
            system = self.meta_instruction or None
            if messages and messages[0]["role"] == "system":
                system, messages = self._text(messages[0]), messages[1:]
            parts.append(self.render_head(system, tools or None, messages))
        for index, message in enumerate(messages):
            parts.append(self.render_message(message, index, messages))
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            end = self.eoa + self.separator
            prompt = "".join(parts)
            prompt = prompt[: -len(end)] if end and prompt.endswith(end) else prompt
        else:
            prompt = "".join(parts) + self.generation_prompt()
        logger.info("chat template %s prompt: %r", type(self).__name__, prompt)
        return prompt

    def generation_prompt(self) -> str:
        return self.assistant

    def _text(self, message: dict[str, Any]) -> str:
        text = text_of(message.get("content"))
        return text.strip() if self.strip_content else text

    def render_head(
        self, system: str | None, tools: list[dict[str, Any]] | None, messages: list[dict]
    ) -> str:
        """What precedes the conversation: the system prompt, with the tools when given.

        `messages` is this call's own copy: a family may move text into its first turn."""
        body = (system or "") + (self.tools_prompt(tools) if tools else "")
        if system is None and not tools:
            return ""
        head = f"{self.system}{body if system else body.lstrip()}{self.eosys}"
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if self.merge_system and first_user is not None:
            first_user["content"] = head + self._text(first_user)
            return ""
        return head

    def tools_prompt(self, tools: list[dict[str, Any]]) -> str:
        listed = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        return f"{HERMES_TOOLS}{listed}{HERMES_EOTOOLS}"

    def render_message(self, message: dict[str, Any], index: int, messages: list[dict]) -> str:
        role, text = message["role"], self._text(message)
        if role == "user":
            return f"{self.user}{text}{self.eoh}"
        if role == "system":
            return f"{self.system}{text}{self.eosys}"
        if role == "assistant":
            calls = "".join(self.render_tool_call(c) for c in message.get("tool_calls") or [])
            return f"{self.assistant}{text}{calls}{self.eoa}{self.separator}"
        if self.tool:
            return f"{self.tool}{text}{self.eotool}"
        return f"{self.user}<tool_response>\n{text}\n</tool_response>{self.eoh}"

    def render_tool_call(self, tool_call: dict[str, Any]) -> str:
        """One call of an assistant turn, in the format the model was asked to answer in."""
        name, arguments = call_function(tool_call)
        payload = json.dumps(arguments, ensure_ascii=False)
        return f'\n<tool_call>\n{{"name": "{name}", "arguments": {payload}}}\n</tool_call>'


class FamilyTemplate(BaseChatTemplate):
    """A built-in family: its `defaults` fill every field the caller leaves out."""

    defaults: dict[str, Any] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**self.defaults, **kwargs})
