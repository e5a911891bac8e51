"""The outside world as the application sees it: small Protocols that adapters satisfy."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Protocol

from ..domain.scheduler import StepPlan


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know of a loaded model."""

    name: str
    max_position_embeddings: int
    vocab_size: int
    eos_token_ids: frozenset[int]


@dataclass(frozen=True)
class CacheGeometry:
    num_blocks: int
    block_size: int
    num_cpu_blocks: int = 0  # the host pool that preemption swaps to (0: recompute only)


@dataclass
class StepOutput:
    """One sampled token per planned sequence, plus optional per-token extras.

    `extras[i]`, for a sequence that asked for them, maps 'logits' / 'last_hidden_state' to
    `(start, rows)`: host tensor rows of positions start, start+1, ... computed this step, and
    'prompt_loss' to `(start, sum, count)` of next-token cross-entropy over this step's prompt
    positions. `errors[i]` set: that sequence's own options failed (a logits processor
    raised); its token is void and the engine aborts it alone.
    """

    token_ids: list[int]
    logprobs: list[dict[int, float] | None] | None = None
    extras: list[dict[str, Any] | None] | None = None
    errors: list[str | None] | None = None


class ModelRunner(Protocol):
    """Runs one forward pass over the paged KV cache and samples the next tokens."""

    @property
    def cache(self) -> CacheGeometry: ...

    def step(self, plan: StepPlan) -> StepOutput: ...


# Joins host-tensor rows of several steps into one [num_rows, dim] tensor; the container wires
# the torch implementation (the application never imports torch).
JoinRows = Callable[[list[Any]], Any]


class Tokenizer(Protocol):
    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(
        self,
        token_ids: Seq[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> str: ...

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str: ...

    def convert_ids_to_tokens(self, token_ids: Seq[int]) -> list[str]: ...
