"""The InternLM family: InternLM (v1), InternLM2/2.5 with its plugin protocol, the InternVL
models built on InternLM2, InternLM-XComposer2, and the internal `puyu`."""

from __future__ import annotations

import json
from typing import Any

from . import prompts
from .base import MODELS, TOOL_ROLES, FamilyTemplate, call_function, text_of


@MODELS.register_module(name="internlm")
class InternLMChat7B(FamilyTemplate):
    defaults = dict(
        system="<|System|>:",
        meta_instruction=prompts.INTERNLM,
        eosys="\n",
        user="<|User|>:",
        eoh="\n",
        assistant="<|Bot|>:",
        eoa="<eoa>",
        separator="\n",
        stop_words=["<eoa>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        excluded = "internlm2" in path or "8k" in path
        return "internlm" if not excluded and "internlm" in path and "chat" in path else None


@MODELS.register_module(name="internlm2")
class InternLM2Chat7B(InternLMChat7B):
    """ChatML plus InternLM2's roles: `environment` (and `tool`) results, and a message
    `name`d `plugin` or `interpreter` marked as `<|im_start|>role name=<|plugin|>`. Tools
    go as a JSON list in a plugin system turn; calls as
    `<|action_start|><|plugin|>\\n{"name": ..., "arguments": ...}<|action_end|>`."""

    tool_parser = "internlm2"
    defaults = {
        **InternLMChat7B.defaults,
        "system": "<|im_start|>system\n",
        "eosys": "<|im_end|>\n",
        "user": "<|im_start|>user\n",
        "eoh": "<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n",
        "eoa": "<|im_end|>",
        "separator": "\n",
        "stop_words": ["<|im_end|>", "<|action_end|>"],
    }

    def __init__(
        self,
        environment: str = "<|im_start|>environment\n",
        eoenv: str = "<|im_end|>\n",
        plugin: str = "<|plugin|>",
        interpreter: str = "<|interpreter|>",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.environment, self.eoenv = environment, eoenv
        self.plugin, self.interpreter = plugin, interpreter

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "internlm2" if "internlm2" in path and ("chat" in path or "math" in path) else None

    def roles(self) -> tuple[str, ...]:
        return (*super().roles(), "environment")

    def render(self, messages: list[dict], sequence_start: bool, tools: list[dict] | None) -> str:
        head = self.head(messages, sequence_start, None)
        if tools:
            plugin = {
                "role": "system",
                "name": "plugin",
                "content": json.dumps(tools, ensure_ascii=False),
            }
            at = 1 if messages and messages[0]["role"] == "system" else 0
            messages = [*messages[:at], plugin, *messages[at:]]
        return self.finish(head + self.body(messages, None), messages)

    def render_message(
        self,
        message: dict[str, Any],
        index: int,
        messages: list[dict[str, Any]],
        tools: list[dict] | None = None,
    ) -> str:
        role, text = message["role"], text_of(message.get("content"))
        text += "".join(self.action(c) for c in message.get("tool_calls") or [])
        environment = role == "environment" or role in TOOL_ROLES
        begin = self.environment if environment else getattr(self, role)
        end = self.eoenv if environment else {"system": self.eosys, "user": self.eoh}.get(role)
        end = self.eoa + self.separator if end is None else end
        names = {"plugin": self.plugin, "interpreter": self.interpreter}
        if message.get("name") in names:
            begin = f"{begin.strip()} name={names[message['name']]}\n"
        return f"{begin}{text}{end}"

    def action(self, tool_call: dict[str, Any]) -> str:
        name, arguments = call_function(tool_call)
        payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        return f"<|action_start|><|plugin|>\n{payload}<|action_end|>"


@MODELS.register_module(name="internvl-internlm2")
class InternVLInternLM2Chat(InternLM2Chat7B):
    defaults = {**InternLM2Chat7B.defaults, "meta_instruction": prompts.INTERNVL_INTERNLM2}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "internvl" in path and "v1-5" in path:
            # Mini-InternVL-Chat-4B-V1-5 is Phi-3 based: `internvl-phi3`
            return None if "mini" in path and "4b" in path else "internvl-internlm2"
        return "internvl-internlm2" if "chemvlm" in path else None


@MODELS.register_module(name="internvl2-internlm2")
class InternVL2InternLM2(InternLM2Chat7B):
    """No newline after a system or user `<|im_end|>`, nor between turns."""

    defaults = {
        **InternLM2Chat7B.defaults,
        "meta_instruction": prompts.INTERNVL2,
        "eosys": "<|im_end|>",
        "eoh": "<|im_end|>",
        "separator": "",
        "stop_words": ["<|im_start|>", "<|im_end|>"],
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "internvl2.5" in path or "internvl2_5" in path:
            return None
        internvl2 = "internvl2" in path and "internvl2-4b" not in path
        return "internvl2-internlm2" if internvl2 or "mono-internvl" in path else None


@MODELS.register_module(name="internvl2_5")
class InternVL2_5(InternLM2Chat7B):  # noqa: N801 - 0.6.5's name
    defaults = {**InternLM2Chat7B.defaults, "meta_instruction": prompts.INTERNVL2_5}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "internvl2_5" if "internvl2.5" in path or "internvl2_5" in path else None


@MODELS.register_module(name=["internlm-xcomposer2", "internlm-xcomposer2d5"])
class InternLMXComposer2Chat7B(InternLMChat7B):
    defaults = dict(
        system="[UNUSED_TOKEN_146]system\n",
        meta_instruction=prompts.INTERNLM_XCOMPOSER2,
        eosys="[UNUSED_TOKEN_145]\n",
        user="[UNUSED_TOKEN_146]user\n",
        eoh="[UNUSED_TOKEN_145]\n",
        assistant="[UNUSED_TOKEN_146]assistant\n",
        eoa="[UNUSED_TOKEN_145]\n",
        separator="\n",
        stop_words=["[UNUSED_TOKEN_145]"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "internlm" in path and "xcomposer2" in path:
            return "internlm-xcomposer2d5" if "2d5" in path else "internlm-xcomposer2"
        return None


@MODELS.register_module(name="puyu")
class Puyu(FamilyTemplate):
    """Shanghai AI Laboratory's internal models: no wrapping, no stop words."""

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "puyu" if "puyu" in model_path.lower() else None
