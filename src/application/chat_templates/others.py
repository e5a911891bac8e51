"""Other built-in families: base, Vicuna, LLaVA v1, Mistral, Gemma, Phi-3, DeepSeek.

They have no tool format of their own: a request with tools gets the Hermes format
(`<tool_call>` blocks) from BaseChatTemplate.
"""

from __future__ import annotations

from .base import MODELS, BaseChatTemplate, FamilyTemplate


@MODELS.register_module(name="base")
class Base(BaseChatTemplate):
    """No wrapping at all: the messages' texts, concatenated."""


VICUNA_META = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@MODELS.register_module(name="vicuna")
class Vicuna(FamilyTemplate):
    defaults = dict(
        bos="<s>",
        meta_instruction=VICUNA_META,
        eosys=" ",
        user="USER: ",
        eoh=" ",
        assistant="ASSISTANT: ",
        eoa="</s>",
        stop_words=["</s>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "vicuna" if "vicuna" in model_path.lower() else None


@MODELS.register_module(name="llava-v1")
class LlavaV1(Vicuna):
    defaults = {
        **Vicuna.defaults,
        "meta_instruction": "A chat between a curious human and an artificial intelligence "
        "assistant. The assistant gives helpful, detailed, and polite answers to the human's "
        "questions.",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "llava-v1" if "llava" in path and "v1" in path and "mistral" not in path else None


@MODELS.register_module(name=["mistral", "mixtral"])
class Mistral(FamilyTemplate):
    """`[INST] ... [/INST]` turns; a system prompt opens the first user turn."""

    merge_system = True
    defaults = dict(
        bos="<s>",
        eosys="\n\n",
        user="[INST] ",
        eoh=" [/INST]",
        eoa="</s>",
        stop_words=["</s>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        found = ("mistral" in path or "mixtral" in path) and "instruct" in path
        return "mistral" if found else None


@MODELS.register_module(name="gemma")
class Gemma(FamilyTemplate):
    """`<start_of_turn>user|model`; a system prompt opens the first user turn."""

    merge_system = True
    strip_content = True
    defaults = dict(
        bos="<bos>",
        eosys="\n\n",
        user="<start_of_turn>user\n",
        eoh="<end_of_turn>\n",
        assistant="<start_of_turn>model\n",
        eoa="<end_of_turn>\n",
        stop_words=["<end_of_turn>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "gemma" if "gemma" in path and "-it" in path else None


@MODELS.register_module(name="phi-3")
class Phi3(FamilyTemplate):
    defaults = dict(
        system="<|system|>\n",
        meta_instruction=None,
        eosys="<|end|>\n",
        user="<|user|>\n",
        eoh="<|end|>\n",
        assistant="<|assistant|>\n",
        eoa="<|end|>\n",
        stop_words=["<|end|>", "<|endoftext|>", "<|assistant|>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "phi-3" if "phi-3" in path or "phi3" in path else None


@MODELS.register_module(name="deepseek")
class DeepSeek(FamilyTemplate):
    """DeepSeek LLM chat: `User: ...\\n\\nAssistant: ...<｜end▁of▁sentence｜>`."""

    defaults = dict(
        bos="<｜begin▁of▁sentence｜>",
        meta_instruction=None,
        eosys="\n\n",
        user="User: ",
        eoh="\n\n",
        assistant="Assistant: ",
        eoa="<｜end▁of▁sentence｜>",
        stop_words=["<｜end▁of▁sentence｜>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "deepseek" if "deepseek" in path and "chat" in path and "vl" not in path else None

    def generation_prompt(self) -> str:
        return "Assistant:"
