"""The GLM family: ChatGLM2 (numbered rounds), ChatGLM3 and GLM-4 (`[gMASK]` written before
the conversation, as 0.6.5 does), CodeGeeX4."""

from __future__ import annotations

from typing import Any

from . import prompts
from .base import MODELS, BaseModel, FamilyTemplate, check_roles, text_of


@MODELS.register_module(name="chatglm")
class ChatGLM2(BaseModel):
    """`[Round n]\\n\\n问：...\\n\\n答：`; system messages are not rendered."""

    def __init__(
        self,
        user: str = "问：",
        eoh: str = "\n\n",
        assistant: str = "答：",
        eoa: str = "\n\n",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.user, self.eoh, self.assistant, self.eoa = user, eoh, assistant, eoa
        self.count = 0

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "chatglm" if "chatglm2" in model_path.lower() else None

    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        # 0.6.5 numbers every call of the instance; here a session's rounds are numbered
        self.count = 1 if sequence_start else self.count + 1
        return self.round(self.count, prompt)

    def round(self, number: int, text: str) -> str:
        return f"[Round {number}]\n\n{self.user}{text}{self.eoh}{self.assistant}"

    def list_prompt(
        self, messages: list[dict[str, Any]], sequence_start: bool, tools: list[dict] | None
    ) -> str:
        check_roles(messages, ("system", "user", "assistant"))
        prompt, number = "", 0
        for message in messages:
            if message["role"] == "user":
                number += 1
                prompt += self.round(number, text_of(message.get("content")))
            elif message["role"] == "assistant":
                prompt += text_of(message.get("content"))
        return prompt


@MODELS.register_module(name="chatglm3")
class ChatGLM3(FamilyTemplate):
    defaults = dict(
        system="<|system|>\n ",
        meta_instruction=None,
        user="<|user|>\n ",
        assistant="<|assistant|>\n ",
        stop_words=["<eos>"],
    )
    start = "[gMASK]sop"

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "chatglm3" if "chatglm3" in model_path.lower() else None

    def prefix(self, sequence_start: bool) -> str:
        # 0.6.5 writes it before every list of messages, a continued session's too
        return self.start


@MODELS.register_module(name="glm4")
class Glm4Chat(ChatGLM3):
    defaults = {
        **ChatGLM3.defaults,
        "system": "<|system|>\n",
        "user": "<|user|>\n",
        "assistant": "<|assistant|>\n",
        "stop_words": ["<|user|>", "<|endoftext|>", "<|observation|>"],
    }
    start = "[gMASK]<sop>"

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "glm4" if "glm-4" in model_path.lower() else None


@MODELS.register_module(name="codegeex4")
class CodeGeeX4Chat(FamilyTemplate):
    defaults = dict(
        system="<|system|>\n",
        meta_instruction=prompts.CODEGEEX4,
        user="<|user|>\n",
        assistant="<|assistant|>\n",
        stop_words=["<|endoftext|>", "<|user|>", "<|observation|>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "codegeex4" if "codegeex4" in model_path.lower() else None
