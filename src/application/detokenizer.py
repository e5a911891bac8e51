"""Incremental detokenization: text deltas as tokens arrive, never a broken UTF-8 character."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .ports import Tokenizer

Decode = Callable[[Sequence[int]], str]


def text_delta(
    decode: Decode, token_ids: Sequence[int], prefix_offset: int, read_offset: int
) -> tuple[str, int, int]:
    """The text that `token_ids[read_offset:]` adds, and the offsets for the next call.

    Decoding the short window from `prefix_offset` (instead of the new ids alone) keeps the
    spaces and merges a tokenizer applies between neighbours; the delta stays '' while the
    window ends inside a UTF-8 character (a trailing U+FFFD)."""
    prefix = decode(token_ids[prefix_offset:read_offset])
    text = decode(token_ids[prefix_offset:])
    if len(text) <= len(prefix) or text.endswith("\ufffd"):
        return "", prefix_offset, read_offset
    return text[len(prefix) :], read_offset, len(token_ids)


def decoder(
    tokenizer: Tokenizer, skip_special_tokens: bool, spaces_between_special_tokens: bool
) -> Decode:
    # Spaces between special tokens only mean something when special tokens are kept; the
    # port's default keeps fakes simple.
    if spaces_between_special_tokens and not skip_special_tokens:
        return lambda ids: tokenizer.decode(ids, False, spaces_between_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens)


class IncrementalDetokenizer:
    """Decodes a short window of recent tokens per step instead of the whole output."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode = decoder(tokenizer, skip_special_tokens, spaces_between_special_tokens)
        self.token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text it completes ('' while a character is incomplete)."""
        return self.push_many((token_id,))

    def push_many(self, token_ids: Sequence[int]) -> str:
        """Adds tokens; returns the text they complete, from two decodes whatever their count
        (a reader that takes a run of tokens at once pays for one window, not one a token)."""
        self.token_ids.extend(token_ids)
        ids, prefix, read = self.token_ids, self._prefix_offset, self._read_offset
        text, self._prefix_offset, self._read_offset = text_delta(self._decode, ids, prefix, read)
        if text or len(token_ids) == 1:
            return text
        # The run may end inside a character: emit what the tokens before that one complete,
        # or a reply cut there would lose the whole run's text, not just the broken character.
        for end in range(len(ids) - 1, read, -1):
            text, self._prefix_offset, self._read_offset = text_delta(
                self._decode, ids[:end], prefix, read
            )
            if text:
                break
        return text


@dataclass
class DetokenizeState:
    """LMDeploy 0.6.5's state between calls of `detokenize_incrementally`.

    `ids_offset`: how many of the ids were decoded already (the prompt's length on the first
    call, to start after it); `prev_tokens`: None before the first call, then the token strings
    seen; `prefix_offset` / `read_offset`: the decode window, counted in token ids."""

    ids_offset: int = 0
    prev_tokens: list[str] | None = None
    prefix_offset: int = 0
    read_offset: int = 0

    def as_tuple(self) -> tuple[int, list[str] | None, int, int]:
        return (self.ids_offset, self.prev_tokens, self.prefix_offset, self.read_offset)


def detokenize_incrementally(
    tokenizer: Tokenizer,
    all_input_ids: Sequence[int],
    state: DetokenizeState,
    skip_special_tokens: bool = True,
    spaces_between_special_tokens: bool = False,
) -> tuple[str, DetokenizeState]:
    """The text that the ids after `state.ids_offset` add, and the state for the next call.

    Any number of new ids may come per call (none too), as with 0.6.5's engine outputs."""
    ids = list(all_input_ids)
    ids_offset, prev_tokens, prefix_offset, read_offset = state.as_tuple()
    if prev_tokens is None:
        # First call: the ids before the offset (a prompt) are context, not output.
        prev_tokens = tokenizer.convert_ids_to_tokens(ids[:ids_offset])
        read_offset = ids_offset
    tokens = prev_tokens + tokenizer.convert_ids_to_tokens(ids[ids_offset:])
    decode = decoder(tokenizer, skip_special_tokens, spaces_between_special_tokens)
    text, prefix_offset, read_offset = text_delta(decode, ids, prefix_offset, read_offset)
    return text, DetokenizeState(len(ids), tokens, prefix_offset, read_offset)
