"""The INFO line each request logs: its prompt and token ids, cut to `max_log_len`."""

from __future__ import annotations

import logging
from typing import Any


def log_prompt(
    logger: logging.Logger, prompt: Any, input_ids: list[int], max_log_len: int | None
) -> None:
    """`max_log_len` (the documented pipeline / --max-log-len option) bounds both the prompt's
    characters and its token ids; None logs them whole."""
    if not logger.isEnabledFor(logging.INFO):
        return
    text = prompt if isinstance(prompt, str) else repr(prompt)
    ids = input_ids
    if max_log_len is not None:
        text, ids = text[:max_log_len], ids[:max_log_len]
    logger.info("prompt=%r, prompt_token_ids=%s, input_tokens=%d", text, ids, len(input_ids))
