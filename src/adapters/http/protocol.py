"""Request and response bodies of the OpenAI-compatible routes (pydantic)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Strict, field_validator

from ...application.configs import MAX_WORD_LEN, MAX_WORDS
from ...domain.sampling_params import MAX_INT32, MAX_SEED


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


MAX_N = 64  # choices per prompt; each is a sequence in the batch
# Caps on list fields: each item costs work on the event loop or per generated token.
MAX_MESSAGES = 4096
MAX_TOOLS = 128  # as OpenAI
MAX_LOGIT_BIAS = 300  # as OpenAI
MAX_PROMPTS = 256
MAX_PROMPT_IDS = 1 << 20
MAX_SESSION_ID = MAX_INT32

# Strict where the OpenAPI document says integer or boolean: `"n": 1.0`, `"seed": false` and
# `"stream": "yes"` are 400s, as the document says. Floats still take JSON integers.
Bool = Annotated[bool, Strict()]
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_INT32)]
TokenId = Annotated[int, Strict(), Field(ge=0, le=MAX_INT32)]
Word = Annotated[str, Field(min_length=1, max_length=MAX_WORD_LEN)]
Stop = Word | Annotated[list[Word], Field(max_length=MAX_WORDS)] | None
BiasKey = Annotated[int, Field(ge=0, le=MAX_INT32)]  # JSON object keys are strings: parsed


class StreamOptions(BaseModel):
    include_usage: Bool = False


class SamplingFields(BaseModel):
    """Fields shared by every generation route, validated where they enter."""

    model: str | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: Count = 40
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: Annotated[int, Strict(), Field(ge=1, le=MAX_N)] = 1
    max_tokens: Annotated[int, Strict(), Field(ge=1, le=MAX_INT32)] | None = None
    stop: Stop = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    seed: Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)] | None = None
    repetition_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: Bool = False
    skip_special_tokens: Bool = True
    min_new_tokens: Count | None = None
    min_tokens: Count | None = None  # vLLM's name for min_new_tokens
    spaces_between_special_tokens: Bool = True
    logit_bias: Annotated[dict[BiasKey, float], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    user: str | None = None
    session_id: Annotated[int, Strict(), Field(ge=-1, le=MAX_SESSION_ID)] | str | None = -1
    # Checked by the application (400 naming response_format), not by pydantic.
    response_format: dict[str, Any] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, v):
        if v and not all(-100 <= b <= 100 for b in v.values()):
            raise ValueError("biases must be in [-100, 100]")
        return v

    @property
    def stop_words(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "ipython"]
    content: str | list[dict[str, Any]] | dict[str, Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(..., min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: ChosenFunction


class ChatCompletionRequest(SamplingFields):
    messages: str | Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)] = Field(
        ..., min_length=1
    )
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Every format here allows several calls; a forced call (tool_choice 'required' or named)
    # is one call unless this is true.
    parallel_tool_calls: Bool | None = None
    max_completion_tokens: Annotated[int, Strict(), Field(ge=1, le=MAX_INT32)] | None = None
    logprobs: Bool = False
    top_logprobs: Annotated[int, Strict(), Field(ge=0, le=20)] | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, str) and not v:
            raise ValueError("messages must not be empty")
        return v


class CompletionRequest(SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
        | Annotated[list[TokenId], Field(max_length=MAX_PROMPT_IDS)]
    ) = Field(..., min_length=1)
    max_tokens: Annotated[int, Strict(), Field(ge=1, le=MAX_INT32)] | None = 16
    echo: Bool = False
    logprobs: Annotated[int, Strict(), Field(ge=0, le=20)] | None = None
    suffix: str | None = None


class InteractiveRequest(BaseModel):
    prompt: str | Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)] = ""
    session_id: Annotated[int, Strict(), Field(ge=-1, le=MAX_SESSION_ID)] = -1
    interactive_mode: Bool = False
    stream: Bool = False
    stop: Stop = None
    request_output_len: Annotated[int, Strict(), Field(ge=1, le=MAX_INT32)] | None = None
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    top_k: Count = 40
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: Bool = False
    skip_special_tokens: Bool = True
    cancel: Bool = False
    seed: Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)] | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "lmdeploy"
    root: str | None = None
    parent: str | None = None
    permission: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
