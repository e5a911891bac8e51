"""What the engine needs to know to pick each next token and to stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .errors import InvalidArgument

OUTPUT_MODES = (None, "all", "generation")

# What the engine can hold: seeds seed a 64-bit generator (torch.Generator and Philox take
# at most an unsigned 64-bit seed; we keep to the signed range OpenAI's seed uses); counts and
# ids travel as int32 on the device.
MAX_SEED = (1 << 63) - 1
MAX_INT32 = (1 << 31) - 1


def check_int(name: str, value: object, low: int, high: int) -> None:
    """`value` is an int (not a bool) in [low, high], else InvalidArgument naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be in [{low}, {high}], got {value}")


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
    # Opaque to the domain: fn(input_ids, scores) -> scores, applied by the runner in order.
    logits_processors: tuple[Callable, ...] = field(default=(), compare=False)
    output_logits: str | None = None  # 'all' | 'generation'
    output_last_hidden_state: str | None = None  # 'all' | 'generation'
    prompt_loss: bool = False  # report the prompt's summed next-token cross-entropy (get_ppl)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 0, MAX_INT32)
        check_int("top_k", self.top_k, 0, MAX_INT32)  # 0 disables it
        check_int("min_new_tokens", self.min_new_tokens, 0, MAX_INT32)
        if self.random_seed is not None:
            check_int("random_seed", self.random_seed, 0, MAX_SEED)
        if self.logprobs is not None:
            check_int("logprobs", self.logprobs, 0, 20)
        for name in ("stop_token_ids", "bad_token_ids"):
            for token_id in getattr(self, name):
                check_int(name, token_id, 0, MAX_INT32)
        if self.temperature < 0:
            raise InvalidArgument("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgument("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise InvalidArgument("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise InvalidArgument(
                "repetition_penalty", f"must be > 0, got {self.repetition_penalty}"
            )
        for name in ("output_logits", "output_last_hidden_state"):
            if getattr(self, name) not in OUTPUT_MODES:
                raise InvalidArgument(
                    name, f"must be None, 'all' or 'generation', got {getattr(self, name)!r}"
                )
        for i, fn in enumerate(self.logits_processors):
            if not callable(fn):
                raise InvalidArgument(
                    "logits_processors", f"item {i} is a {type(fn).__name__}, not a callable"
                )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def needs_prompt_outputs(self) -> bool:
        """Rows of every prompt position are wanted: no prompt token may be skipped through a
        cached prefix or a shared fork."""
        return "all" in (self.output_logits, self.output_last_hidden_state) or self.prompt_loss

    @property
    def needs_hidden_rows(self) -> bool:
        return bool(self.output_logits or self.output_last_hidden_state or self.prompt_loss)

    def for_choice(self, index: int) -> SamplingParams:
        """The params of choice `index` of n: choice 0 keeps the seed (so n=1 and the first of
        n agree); the others get a seed derived from (seed, index), so choices differ and the
        whole result still reproduces. Tuple-of-int hashes do not depend on PYTHONHASHSEED."""
        if index == 0 or self.random_seed is None:
            return self
        return replace(self, random_seed=hash((self.random_seed, index)) % (1 << 31))
