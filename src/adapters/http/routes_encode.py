"""POST /v1/encode: a prompt's token ids, as 0.6.5's route gives them."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...application.text import check_text
from .protocol import MAX_PROMPTS, Bool
from .routes_openai import services
from .services import ServerServices

router = APIRouter()


class EncodeRequest(BaseModel):
    input: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
    do_preprocess: Bool = False  # apply the chat template first
    add_bos: Bool = True  # the start of a conversation: the tokenizer's special tokens


class EncodeResponse(BaseModel):
    input_ids: list[int] | list[list[int]]
    length: int | list[int]


@router.post("/v1/encode")
async def encode(body: EncodeRequest, svc: ServerServices = Depends(services)) -> EncodeResponse:
    generation = svc.generation

    def ids(prompt: str) -> list[int]:
        check_text("input", prompt)  # a lone surrogate: 400 naming the field
        if body.do_preprocess:
            return generation.tokenize(prompt, do_preprocess=True)
        return generation.tokenizer.encode(prompt, add_special_tokens=body.add_bos)

    # Off the event loop: a long input must not stall other requests and /health.
    if isinstance(body.input, str):
        one = await asyncio.to_thread(ids, body.input)
        return EncodeResponse(input_ids=one, length=len(one))
    many = await asyncio.to_thread(lambda: [ids(p) for p in body.input])
    return EncodeResponse(input_ids=many, length=[len(m) for m in many])
