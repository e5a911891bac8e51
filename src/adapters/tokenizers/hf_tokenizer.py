"""The Tokenizer port over a transformers tokenizer (HF directory or GGUF metadata)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..loaders.model_source import ModelSource


def _cache_root() -> Path:
    base = os.environ.get("LMDEPLOY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmdeploy"
    )
    return Path(base)


def _gguf_tokenizer(path: Path) -> Any:
    """Converting a GGUF vocabulary takes seconds, so the result is kept beside other caches."""
    from transformers import AutoTokenizer

    stat = path.stat()
    cached = _cache_root() / "tokenizers" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        tok.save_pretrained(str(tmp))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home only costs the next start-up its seconds
    return tok


class HFTokenizer:
    def __init__(self, tokenizer: Any, extra_eos_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self._eos = frozenset(eos | set(extra_eos_ids))
        self._vocab_size = len(tokenizer)
        self._added_ids = frozenset(getattr(tokenizer, "added_tokens_decoder", {}) or ())
        # A streamed token costs two decodes of a short window (detokenizer.py): the Rust
        # tokenizer does one in ~2.5 us where transformers' wrapper around it takes ~6.6 us
        # (CPU host). The wrapper adds only its clean-up of spaces, so it is skipped where that
        # is off.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        cleans_up = getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._rust_decode = backend.decode if backend is not None and not cleans_up else None

    @classmethod
    def from_source(cls, source: ModelSource, extra_eos_ids: Sequence[int] = ()) -> HFTokenizer:
        from transformers import AutoTokenizer

        if source.path is not None and source.path.suffix == ".gguf":
            tok = _gguf_tokenizer(source.path)
        else:
            tok = AutoTokenizer.from_pretrained(str(source.path))
        return cls(tok, extra_eos_ids)

    @property
    def hf_tokenizer(self) -> Any:
        """The transformers tokenizer itself (a grammar backend compiles against its vocabulary)."""
        return self._tok

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(
        self,
        token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> str:
        """`spaces_between_special_tokens` (with special tokens kept): decode the runs between
        added tokens separately and join runs and added tokens with one space, as slow
        tokenizers do; fast tokenizers ignore the flag, so it is done here."""
        ids = [t for t in token_ids if 0 <= t < self._vocab_size]
        if skip_special_tokens or not spaces_between_special_tokens:
            if self._rust_decode is not None:
                return self._rust_decode(ids, skip_special_tokens=skip_special_tokens)
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        parts: list[str] = []
        run: list[int] = []
        for t in ids + [None]:
            if t is None or t in self._added_ids:
                if run:
                    parts.append(self._tok.decode(run))
                    run = []
                if t is not None:
                    parts.append(self._tok.decode([t]))
            else:
                run.append(t)
        return " ".join(parts)

    def convert_ids_to_tokens(self, token_ids: Sequence[int]) -> list[str]:
        return list(self._tok.convert_ids_to_tokens(list(token_ids)))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        return self._tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
