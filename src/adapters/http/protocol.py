"""Request and response bodies of the OpenAI-compatible routes (pydantic)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


MAX_N = 64  # choices per prompt; each is a sequence in the batch


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by every generation route, validated where they enter."""

    model: str | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    repetition_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    min_new_tokens: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)  # vLLM's name for min_new_tokens
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    user: str | None = None
    session_id: int | str | None = -1
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
    messages: str | list[ChatMessage] = Field(..., min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Every format here allows several calls; a forced call (tool_choice 'required' or named)
    # is one call unless this is true.
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, str) and not v:
            raise ValueError("messages must not be empty")
        return v


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] = Field(..., min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None


class InteractiveRequest(BaseModel):
    prompt: str | list[ChatMessage] = ""
    session_id: int = -1
    interactive_mode: bool = False
    stream: bool = False
    stop: str | list[str] | None = None
    request_output_len: int | None = Field(None, ge=1)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    cancel: bool = False
    seed: int | None = None


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
