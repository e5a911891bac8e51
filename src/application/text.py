"""Checks on text from callers before it reaches a tokenizer."""

from __future__ import annotations

from ..domain.errors import InvalidArgument


def check_text(name: str, text: str) -> None:
    """A lone surrogate (JSON's "\\ud800" without its pair) is not Unicode text: tokenizers
    and UTF-8 encoders fail on it deep inside. Refuse it here, naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            name,
            f"holds a lone UTF-16 surrogate ({text[exc.start]!r} at offset {exc.start}); "
            "send valid Unicode (a surrogate pair, or the character itself)",
        ) from None
