"""Building OpenAI response objects and server-sent-event chunks from generation outputs."""

from __future__ import annotations

import json
import time
from typing import Any

from ...application.ports import Tokenizer


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(
    kind: str, request_id: str, model: str, choices: list[dict], **extra: Any
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(
    tokenizer: Tokenizer, token_ids: list[int], logprobs: list[dict[int, float]], top: int
) -> dict:
    content = []
    for token_id, entry in zip(token_ids, logprobs, strict=False):
        text = _token_text(tokenizer, token_id)
        alternatives = sorted(entry.items(), key=lambda kv: -kv[1])[:top] if top else []
        content.append(
            {
                "token": text,
                "logprob": entry.get(token_id, max(entry.values())),
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {
                        "token": (t := _token_text(tokenizer, i)),
                        "logprob": lp,
                        "bytes": list(t.encode()),
                    }
                    for i, lp in alternatives
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    tokenizer: Tokenizer,
    token_ids: list[int],
    logprobs: list[dict[int, float]],
    top: int,
    offset: int,
) -> dict:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token_id, entry in zip(token_ids, logprobs, strict=False):
        text = _token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(entry.get(token_id))
        alternatives = sorted(entry.items(), key=lambda kv: -kv[1])[:top]
        tops.append({_token_text(tokenizer, i): lp for i, lp in alternatives})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
