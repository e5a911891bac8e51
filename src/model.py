"""Documented import path `lmdeploy.model`: re-exports only, under LMDeploy 0.6.5's names."""

from .application.chat_templates import (  # noqa: F401
    BUILTIN_TEMPLATES,
    MODELS,
    BaseChatTemplate,
    BaseModel,
    ModelChatTemplate,
    best_match_model,
    builtin_template,
)
from .application.chat_templates.chatml import (  # noqa: F401
    ChatML,
    ChatmlDirect,
    DbrxInstruct,
    Qwen2d5Chat,
    Qwen7BChat,
    SmolLM2,
    Yi,
)
from .application.chat_templates.glm import ChatGLM2, ChatGLM3, CodeGeeX4Chat, Glm4Chat  # noqa: F401
from .application.chat_templates.internlm import (  # noqa: F401
    InternLM2Chat7B,
    InternLMChat7B,
    InternLMXComposer2Chat7B,
    InternVL2_5,
    InternVL2InternLM2,
    InternVLInternLM2Chat,
    Puyu,
)
from .application.chat_templates.llama import CodeLlama, Llama2, Llama3, Llama3_1  # noqa: F401
from .application.chat_templates.others import (  # noqa: F401
    DeepSeek,
    Deepseek,
    DeepseekVL,
    Falcon,
    Gemma,
    InternVL2Phi3,
    InternVLPhi3,
    InternVLZH,
    MistralChat,
    Phi3Instruct,
)
from .application.chat_templates.vicuna import (  # noqa: F401
    SOLAR,
    Baichuan2,
    CogVLM,
    CogVLM2,
    Llavav1,
    MiniGemini,
    Molmo,
    UltraChat,
    Vicuna,
    YiVL,
)
from .application.configs import ChatTemplateConfig  # noqa: F401
