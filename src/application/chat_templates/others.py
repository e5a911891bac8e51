"""Other built-in templates: base (no template), Falcon, Mistral, Gemma, the DeepSeek
family, InternVL-Chat 1.1, and Phi-3 with the InternVL models built on it."""

from __future__ import annotations

from . import prompts
from .base import MODELS, BaseModel, FamilyTemplate, TrimmedOpener


@MODELS.register_module(name=["base", "llama"])
class Base(BaseModel):
    """No template: a prompt as it is; messages' texts joined."""


@MODELS.register_module(name="falcon")
class Falcon(BaseModel):
    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "falcon" if "falcon" in model_path.lower() else None


@MODELS.register_module(name=["mistral", "mixtral"])
class MistralChat(FamilyTemplate):
    """`[INST] ... [/INST]` turns; a system message is written as it is before them."""

    defaults = dict(user="[INST] ", eoh=" [/INST]", eoa="</s>")

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        if "instruct" not in path and "llava" not in path:
            return None
        if "mistral" in path:
            return "mistral"
        return "mixtral" if "mixtral" in path else None


@MODELS.register_module(name="gemma")
class Gemma(FamilyTemplate):
    """`<start_of_turn>user|model`; a system message is written as it is before them."""

    defaults = dict(
        user="<start_of_turn>user\n",
        eoh="<end_of_turn>\n",
        assistant="<start_of_turn>model\n",
        eoa="<end_of_turn>\n",
        stop_words=["<end_of_turn>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "gemma" if "gemma" in model_path.lower() else None


DEEPSEEK = dict(user="User: ", eoh="\n\n", assistant="Assistant: ", eoa="<｜end▁of▁sentence｜>")


@MODELS.register_module(name="deepseek")
class Deepseek(TrimmedOpener):
    defaults = DEEPSEEK

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        found = "deepseek" in path and "chat" in path and "vl" not in path
        return "deepseek" if found else None


@MODELS.register_module(name="internvl-zh")
class InternVLZH(TrimmedOpener):
    defaults = dict(user="<human>: ", eoh=" ", assistant="<bot>: ", eoa="</s>")

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "internvl-zh" if "internvl-chat" in path and "v1-1" in path else None


@MODELS.register_module(name="deepseek-vl")
class DeepseekVL(TrimmedOpener):
    defaults = dict(DEEPSEEK, meta_instruction=prompts.DEEPSEEK_VL, eosys="\n\n")

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        return "deepseek-vl" if "deepseek-vl" in path and "chat" in path else None


@MODELS.register_module(name="deepseek-coder")
class DeepSeek(FamilyTemplate):
    defaults = dict(
        meta_instruction=prompts.DEEPSEEK_CODER,
        user="### Instruction:\n",
        eoh="\n",
        assistant="### Response:\n",
        eoa="\n<|EOT|>",
        separator="\n",
        stop_words=["<|EOT|>"],
    )

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "deepseek-coder" if "deepseek-coder" in model_path.lower() else None


@MODELS.register_module(name="phi-3")
class Phi3Instruct(FamilyTemplate):
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
        return "phi-3" if "phi-3" in path and "instruct" in path else None


@MODELS.register_module(name="internvl2-phi3")
class InternVL2Phi3(Phi3Instruct):
    defaults = {**Phi3Instruct.defaults, "meta_instruction": prompts.INTERNVL2}

    @classmethod
    def match(cls, model_path: str) -> str | None:
        return "internvl2-phi3" if "internvl2-4b" in model_path.lower() else None


@MODELS.register_module(name="internvl-phi3")
class InternVLPhi3(Phi3Instruct):
    defaults = {
        **Phi3Instruct.defaults,
        "meta_instruction": prompts.INTERNVL_PHI3,
        "eosys": "<|end|>",
        "eoh": "<|end|>",
        "eoa": "<|end|>",
    }

    @classmethod
    def match(cls, model_path: str) -> str | None:
        path = model_path.lower()
        found = all(c in path for c in ("mini-internvl-chat", "4b", "v1-5"))
        return "internvl-phi3" if found else None
