"""Incremental detokenization: text deltas as tokens arrive, never a broken UTF-8 character."""

from __future__ import annotations

from .ports import Tokenizer


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
        # Only meaningful when special tokens are kept; the port's default keeps fakes simple.
        self._spaces = spaces_between_special_tokens and not skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, token_ids: list[int]) -> str:
        if self._spaces:
            return self.tokenizer.decode(token_ids, False, spaces_between_special_tokens=True)
        return self.tokenizer.decode(token_ids, self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text it completes ('' while a character is incomplete)."""
        self.token_ids.append(token_id)
        window = self.token_ids[self._prefix_offset :]
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        text = self._decode(window)
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        return text[len(prefix) :]
