"""A request's token sequence as the scheduler and the engine see it."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"  # preempted, its K/V in host memory until device blocks free up
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"  # the engine failed while computing it (not the request's own fault)


_seq_ids = itertools.count()


@dataclass(eq=False)
class ImageSpan:
    """An image's place in a prompt: `num_tokens` positions from `offset` whose input
    embeddings are the image's (`embeddings`, rows [num_tokens, hidden] that the vision encoder
    fills in before the sequence reaches the engine; opaque to the domain). `digest` hashes the
    image's pixels: it joins the prefix-cache key of every block the span touches, so equal
    text with another image never shares K/V. `grid` is a family's own layout of the
    image's tokens (Qwen2-VL's (t, h, w) for M-RoPE positions), None where positions are 1-D."""

    offset: int
    num_tokens: int
    digest: int
    embeddings: object = None
    grid: tuple[int, ...] | None = None

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens

    def same_image(self, other: ImageSpan) -> bool:
        return (self.offset, self.num_tokens, self.digest) == (
            other.offset,
            other.num_tokens,
            other.digest,
        )


@dataclass(eq=False)
class Sequence:
    """Prompt plus generated tokens, with the KV blocks that hold them.

    `num_cached_tokens` counts the leading tokens whose K/V already sit in the cache; the
    next step computes `token_ids[num_cached_tokens:]`.
    """

    prompt_token_ids: list[int]
    sampling: SamplingParams
    max_len: int
    eos_token_ids: frozenset[int] = frozenset()
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    token_ids: list[int] = field(init=False)
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    adapter_name: str | None = None  # the LoRA adapter it runs with (None: the base model)
    keep_cache: bool = False  # an interactive session: park the KV blocks when it finishes
    block_hashes: list[int] = field(
        default_factory=list
    )  # prefix-chain hashes of computed full blocks
    # A sibling choice (n > 1) waits for this sequence to compute the shared prompt, then
    # references its full prompt blocks instead of computing them again.
    fork_parent: Sequence | None = field(default=None, repr=False)
    images: tuple[ImageSpan, ...] = ()  # in prompt order, not overlapping

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    # The two below are read several times a sequence a step by the scheduler: plain len()
    # rather than through the properties above (a 512-row step reads them ~10k times).
    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def num_new_tokens(self) -> int:
        """Tokens the next forward pass must compute for this sequence."""
        return len(self.token_ids) - self.num_cached_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_key(self, index: int, block_size: int) -> tuple:
        """What identifies full block `index` for the prefix cache: its tokens, and the digest
        and place of each image that overlaps it."""
        start, end = index * block_size, (index + 1) * block_size
        tokens = tuple(self.token_ids[start:end])
        images = tuple(
            (span.digest, span.offset - start)
            for span in self.images
            if span.offset < end and span.end > start
        )
        return (tokens, images) if images else tokens

    def ends_by_length_within(self, num_tokens: int) -> bool:
        """Whether appending `num_tokens` more tokens reaches max_new_tokens or max_len,
        whatever the tokens are."""
        return (
            self.num_output_tokens + num_tokens >= self.sampling.max_new_tokens
            or self.num_tokens + num_tokens >= self.max_len
        )

    def append_token(self, token_id: int) -> None:
        """Record a sampled token and finish the sequence if it hits a stop condition."""
        assert self.status is SequenceStatus.RUNNING, self.status
        self.num_cached_tokens = self.num_tokens
        self.token_ids.append(token_id)
        sampling = self.sampling
        past_min = self.num_output_tokens > sampling.min_new_tokens
        if past_min and token_id in sampling.stop_token_ids:
            self.finish(FinishReason.STOP)
        elif past_min and not sampling.ignore_eos and token_id in self.eos_token_ids:
            self.finish(FinishReason.STOP)
        elif self.ends_by_length_within(0):
            self.finish(FinishReason.LENGTH)

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason

    def continue_with(
        self,
        token_ids: list[int],
        sampling: SamplingParams,
        images: tuple[ImageSpan, ...] = (),
    ) -> None:
        """Start a new turn over `token_ids` (with `images`), reusing the cached K/V of the
        common prefix; the prefix ends where the turns' tokens or images first differ."""
        common = 0
        for old, new in zip(self.token_ids, token_ids, strict=False):
            if old != new:
                break
            common += 1
        for old_span, new_span in zip(self.images, images, strict=False):
            if not old_span.same_image(new_span):
                common = min(common, old_span.offset, new_span.offset)
                break
        else:
            longer = self.images[len(images) :] or images[len(self.images) :]
            if longer:
                common = min(common, longer[0].offset)
        self.images = tuple(images)
        # At least one token must be computed to produce the next logits.
        self.num_cached_tokens = min(self.num_cached_tokens, common, len(token_ids) - 1)
        self.prompt_token_ids = list(token_ids)
        self.token_ids = list(token_ids)
        self.sampling = sampling
        self.status = SequenceStatus.WAITING
        self.finish_reason = None

    def reset_for_recompute(self) -> None:
        """Forget the cache after preemption: the next admission recomputes every token."""
        self.status = SequenceStatus.WAITING
        self.block_table = []
        self.block_hashes = []
        self.num_cached_tokens = 0
