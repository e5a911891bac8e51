"""POST /v1/chat/interactive: a session whose history and KV cache stay on the server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from ...application.configs import GenerationConfig
from .protocol import InteractiveRequest
from .routes_openai import services
from .services import ServerServices

router = APIRouter()


def _body(text: str, out, history: int, finish: str | None) -> dict[str, Any]:
    return {
        "text": text,
        "tokens": out.generate_token_len if out else 0,
        "input_tokens": out.input_token_len if out else 0,
        "history_tokens": history,
        "finish_reason": finish,
    }


@router.post("/v1/chat/interactive")
async def chat_interactive(
    body: InteractiveRequest, svc: ServerServices = Depends(services)
) -> Any:
    sessions = svc.sessions
    if body.cancel:
        sessions.cancel(body.session_id)
        return _body("", None, 0, "abort")
    prompt = (
        body.prompt
        if isinstance(body.prompt, str)
        else [m.model_dump(exclude_none=True) for m in body.prompt]
    )
    if not body.interactive_mode:
        sessions.end(body.session_id)  # interactive_mode=false ends the session, as documented
        if not prompt:
            return _body("", None, 0, "stop")
    config = GenerationConfig(
        do_sample=True,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        max_new_tokens=body.request_output_len or svc.generation.session_len,
        stop_words=[body.stop] if isinstance(body.stop, str) else body.stop,
        repetition_penalty=body.repetition_penalty,
        ignore_eos=body.ignore_eos,
        skip_special_tokens=body.skip_special_tokens,
        random_seed=body.seed,
    )
    session_id = body.session_id if body.interactive_mode else -1 - id(body)  # a throwaway session
    live = sessions.get(session_id)
    history = live.history_tokens if live else 0  # the tokens before this turn, as 0.6.5
    turn = sessions.chat(session_id, prompt, config)
    first = await anext(turn)  # errors (busy session, oversize prompt) surface here, as HTTP 400

    async def outputs() -> AsyncIterator:
        yield first
        async for out in turn:
            yield out
        if not body.interactive_mode:
            sessions.end(session_id)

    if body.stream:

        async def lines() -> AsyncIterator[str]:
            async for out in outputs():
                yield (
                    json.dumps(_body(out.text, out, history, out.finish_reason), ensure_ascii=False)
                    + "\n"
                )

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    text, last = [], None
    async for out in outputs():
        text.append(out.text)
        last = out
    return _body("".join(text), last, history, last.finish_reason)
