"""Templates in the `USER: ... ASSISTANT: ...` style: Vicuna, WizardLM, LLaVA v1, Mini-Gemini,
CogVLM, UltraChat, SOLAR, Baichuan2, Yi-VL, Molmo."""

from __future__ import annotations

from . import prompts
from .base import MODELS, FamilyTemplate, TrimmedOpener


@MODELS.register_module(name="cogvlm")
class CogVLM(FamilyTemplate):
    defaults = dict(
        user="Question: ",
        eoh=" ",
        assistant="Answer:",
        eoa="</s>",
        separator="\n",
        stop_words=["</s>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "cogvlm" if "cogvlm" in path and "cogvlm2" not in path else None


@MODELS.register_module(name="cogvlm2")
class CogVLM2(CogVLM):
    defaults = {**CogVLM.defaults, "eoa": "<|end_of_text|>", "stop_words": ["<|end_of_text|>"]}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "cogvlm2" if "cogvlm2" in model_path.lower() else None


VICUNA = dict(
    meta_instruction=prompts.VICUNA,
    eosys=" ",
    user="USER: ",
    eoh=" ",
    assistant="ASSISTANT: ",
    eoa="</s>",
    stop_words=["</s>"],
)


@MODELS.register_module(name=["vicuna", "wizardlm"])
class Vicuna(FamilyTemplate):
    defaults = VICUNA

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "vicuna" in path and "llava" not in path:
            return "vicuna"
        return "wizardlm" if "wizardlm" in path else None


@MODELS.register_module(name="llava-v1")
class Llavav1(TrimmedOpener):
    defaults = {**VICUNA, "meta_instruction": prompts.LLAVA_V1}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        v1 = "llava" in path and "v1" in path and "v1.6-34b" not in path and "mistral" not in path
        return "llava-v1" if v1 or "llava-1.5" in path else None


@MODELS.register_module(name="mini-gemini-vicuna")
class MiniGemini(TrimmedOpener):
    defaults = VICUNA

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        sizes = ("mgm-7b", "mgm-13b", "mgm-34b", "mini-gemini-7b", "mini-gemini-13b")
        return "mini-gemini-vicuna" if any(s in path for s in sizes) else None


@MODELS.register_module(name="baichuan2")
class Baichuan2(FamilyTemplate):
    defaults = dict(user="<reserved_106>", assistant="<reserved_107>")

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "baichuan2" if "baichuan2" in path and "chat" in path else None


@MODELS.register_module(name="solar")
class SOLAR(FamilyTemplate):
    defaults = dict(
        system="### System:\n",
        eosys="\n\n",
        user="### User:\n",
        eoh="\n\n",
        assistant="### Assistant:\n",
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "solar" if "solar" in model_path.lower() else None


@MODELS.register_module(name=["ultracm", "ultralm"])
class UltraChat(FamilyTemplate):
    defaults = dict(
        system="User: ",
        meta_instruction=prompts.ULTRACHAT,
        eosys="</s>\n",
        user="User: ",
        eoh="</s>\n",
        assistant="Assistant: ",
        eoa="</s>",
        separator="\n",
        stop_words=["</s>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "ultracm" in path:
            return "ultracm"
        return "ultralm" if "ultralm" in path else None


@MODELS.register_module(name="yi-vl")
class YiVL(FamilyTemplate):
    defaults = dict(
        meta_instruction=prompts.YI_VL,
        user="### Human: ",
        eoh="\n",
        assistant="### Assistant:",
        eoa="\n",
        stop_words=["###"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "yi-vl" if "yi-vl" in model_path.lower() else None


@MODELS.register_module(name="molmo")
class Molmo(FamilyTemplate):
    defaults = dict(
        user=" User: ", assistant=" Assistant:", separator=" ", stop_words=["<|endoftext|>"]
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "molmo" if "molmo" in model_path.lower() else None
