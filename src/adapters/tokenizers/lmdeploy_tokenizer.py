"""LMDeploy 0.6.5's public tokenizer API (`lmdeploy.Tokenizer`, `lmdeploy.tokenizer.*`) over
the transformers tokenizer adapter, with the application's incremental detokenizer."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...application.detokenizer import DetokenizeState, detokenize_incrementally
from ..loaders.model_source import ModelSource, resolve
from .hf_tokenizer import HFTokenizer

logger = logging.getLogger("lmdeploy")

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def _source(model_path: str) -> ModelSource:
    """A tokenizer-only directory is enough, as in 0.6.5, and a hub id fetches only the
    tokenizer's files (transformers does); anything else is a local model path (the embedded
    default's alias, a .gguf file, an HF directory)."""
    path = Path(model_path).expanduser()
    if path.is_dir() and any((path / name).exists() for name in _TOKENIZER_FILES):
        return ModelSource("hf", path, path.name)
    hub_id = model_path.count("/") == 1 and not model_path.startswith(("/", ".", "~"))
    if hub_id and not path.exists():
        return ModelSource("hf", Path(model_path), model_path)
    return resolve(model_path)


def _ids(t: Any) -> list[int]:
    return t.tolist() if hasattr(t, "tolist") else list(t)


class _ModelIds:
    """The vocabulary size and special ids, read through `.model` (a transformers tokenizer,
    or the HuggingFaceTokenizer a Tokenizer wraps): both expose the same three."""

    model: Any

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (0.6.5's meaning)."""
        return self.model.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self.model.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.model.eos_token_id


class HuggingFaceTokenizer(_ModelIds):
    """A transformers tokenizer (`.model`) with LMDeploy 0.6.5's methods."""

    max_indexes_num = 5  # a stop word matching more tokens than this keeps only exact ones

    def __init__(self, model_dir: str) -> None:
        source = _source(model_dir)
        self._hf = HFTokenizer.from_source(source)
        self.model = self._hf.hf_tokenizer
        if self.model.eos_token_id is None and source.directory is not None:
            self._eos_from_generation_config(source.directory)
        self._prefix_space_tokens: set[int] | None = None
        self._indexes_cache: deque[tuple[str, list[int]]] = deque(maxlen=10)
        self._token2id: dict[str, int] = {}

    def _eos_from_generation_config(self, directory: Path) -> None:
        config = directory / "generation_config.json"
        if config.exists():
            eos = json.loads(config.read_text()).get("eos_token_id")
            if eos is not None:
                self.model.eos_token_id = eos

    @property
    def vocab_size_with_added(self) -> int:
        return len(self.model.get_vocab())

    @property
    def prefix_space_tokens(self) -> set[int]:
        """Ids whose token starts with a word boundary ('▁' or a leading space byte)."""
        if self._prefix_space_tokens is None:
            vocab = self.model.convert_ids_to_tokens(list(range(self.vocab_size)))
            self._prefix_space_tokens = {
                i
                for i, tok in enumerate(vocab)
                if tok.startswith("▁" if isinstance(tok, str) else b" ")
            }
        return self._prefix_space_tokens

    def _maybe_add_prefix_space(self, ids: list[int], decoded: str) -> str:
        # Decoding from an offset drops the word boundary that begins the first token.
        if ids and not decoded.startswith(" ") and ids[0] in self.prefix_space_tokens:
            return " " + decoded
        return decoded

    def encode(
        self, s: str, add_bos: bool = True, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int]:
        """Token ids of `s`; `add_bos=False` (the middle of a session) drops a leading BOS."""
        encoded = list(self.model.encode(s, add_special_tokens=add_special_tokens, **kwargs))
        if not add_bos and encoded and encoded[0] == self.bos_token_id:
            encoded = encoded[1:]
        return encoded

    def decode(
        self, t: Sequence[int], offset: int | None = None, skip_special_tokens: bool = True
    ) -> str:
        """The text of `t[offset:]`."""
        ids = _ids(t)[offset:]
        text = self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if offset:
            logger.warning(
                "decoding from an offset guesses the leading space; for streaming text use "
                "detokenize_incrementally instead"
            )
            text = self._maybe_add_prefix_space(ids, text)
        return text

    def detokenize_incrementally(
        self,
        all_input_ids: Sequence[int],
        state: DetokenizeState,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> tuple[str, DetokenizeState]:
        """The text the ids after `state.ids_offset` add, and the next state."""
        # As in 0.6.5, fast tokenizers join special tokens without spaces whatever the flag.
        spaces = spaces_between_special_tokens and not self.model.is_fast
        return detokenize_incrementally(
            self._hf, _ids(all_input_ids), state, skip_special_tokens, spaces
        )

    def __call__(self, s: str | Sequence[str]) -> Any:
        return self.model(s, add_special_tokens=False)

    def indexes_containing_token(self, token: str) -> list[int]:
        """The ids whose text may contain `token` (for stop words); exact matches only when
        more than `max_indexes_num` tokens contain it."""
        for seen, indexes in self._indexes_cache:
            if seen == token:
                return indexes
        if not self._token2id:
            tokens = self.model.convert_ids_to_tokens(list(range(self.vocab_size)))
            self._token2id = {tok: i for i, tok in enumerate(tokens) if isinstance(tok, str)}
        needle = "▁" if token == " " else token
        indexes = [i for tok, i in self._token2id.items() if needle in tok]
        if len(indexes) > self.max_indexes_num:
            indexes = [i for i in indexes if self.decode([i]) == needle]
            indexes = indexes[: self.max_indexes_num]
        if not indexes:
            encoded = self.encode(needle, False)
            indexes = encoded if len(encoded) == 1 else []
        self._indexes_cache.append((token, indexes))
        return indexes


class Tokenizer(_ModelIds):
    """Tokenizes prompts and detokenizes ids: LMDeploy 0.6.5's `lmdeploy.Tokenizer`.

    `model_file`: a model path (HF directory, tokenizer directory, .gguf file, the embedded
    default's alias or a hub id), or a `tokenizer.model` file inside an HF directory."""

    def __init__(self, model_file: str) -> None:
        folder = str(Path(model_file).parent) if model_file.endswith(".model") else model_file
        self.model = HuggingFaceTokenizer(folder)

    def encode(
        self, s: str, add_bos: bool = True, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int]:
        """Token ids of `s`; a BOS that both the text and the tokenizer add is kept once."""
        encoded = self.model.encode(s, add_bos, add_special_tokens, **kwargs)
        if self.bos_token_id is not None and encoded[:2] == [self.bos_token_id] * 2:
            logger.warning("the prompt starts with BOS and the tokenizer adds one; kept once")
            encoded = encoded[1:]
        return encoded

    def decode(
        self, t: Sequence[int], offset: int | None = None, skip_special_tokens: bool = True
    ) -> str:
        return self.model.decode(t, offset, skip_special_tokens)

    def detokenize_incrementally(
        self,
        all_input_ids: Sequence[int],
        state: DetokenizeState,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> tuple[str, DetokenizeState]:
        return self.model.detokenize_incrementally(
            all_input_ids, state, skip_special_tokens, spaces_between_special_tokens
        )

    def __call__(self, s: str | Sequence[str]) -> Any:
        return self.model(s)

    def indexes_containing_token(self, token: str) -> list[int]:
        """As `HuggingFaceTokenizer`'s, but [] for a text of several tokens (not a stop token)."""
        encoded = self.encode(token, add_bos=False)
        if len(encoded) > 1:
            logger.warning(
                "%r is %d tokens, so it cannot be a stop word; use a single-token word",
                token,
                len(encoded),
            )
            return []
        return self.model.indexes_containing_token(token)
