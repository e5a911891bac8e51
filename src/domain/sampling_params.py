"""What the engine needs to know to pick each next token and to stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidArgument


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    bad_token_ids: tuple[int, ...] = ()
    random_seed: int | None = None
    logprobs: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise InvalidArgument("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidArgument("temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgument("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise InvalidArgument("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise InvalidArgument(
                "repetition_penalty", f"must be > 0, got {self.repetition_penalty}"
            )
        if self.min_new_tokens < 0:
            raise InvalidArgument("min_new_tokens", f"must be >= 0, got {self.min_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidArgument("logprobs", f"must be in [0, 20], got {self.logprobs}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
