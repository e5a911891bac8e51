"""A stand-in Tokenizer for weights that come without one (dummy weights of a shipped shape
where the embedded vocabulary is not installed): prompts must be token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...domain.errors import InvalidArgument


class IdTokenizer:
    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> None:
        self._vocab_size = vocab_size
        self._eos = frozenset(eos_token_ids)
        self.has_chat_template = False

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise InvalidArgument(
            "prompt", "this model has no tokenizer; pass prompts as lists of token ids"
        )

    def decode(
        self,
        token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> str:
        return "".join(f"<{t}>" for t in token_ids)

    def convert_ids_to_tokens(self, token_ids: Sequence[int]) -> list[str]:
        return [f"<{t}>" for t in token_ids]

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        raise InvalidArgument(
            "prompt", "this model has no tokenizer or chat template; pass token ids"
        )
