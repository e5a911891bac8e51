"""POST /v1/encode: a prompt's token ids, as 0.6.5's route gives them."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from .routes_openai import services
from .services import ServerServices

router = APIRouter()


class EncodeRequest(BaseModel):
    input: str | list[str]
    do_preprocess: bool = False  # apply the chat template first
    add_bos: bool = True  # the start of a conversation: the tokenizer's special tokens


class EncodeResponse(BaseModel):
    input_ids: list[int] | list[list[int]]
    length: int | list[int]


@router.post("/v1/encode")
async def encode(body: EncodeRequest, svc: ServerServices = Depends(services)) -> EncodeResponse:
    generation = svc.generation

    def ids(prompt: str) -> list[int]:
        if body.do_preprocess:
            return generation.tokenize(prompt, do_preprocess=True)
        return generation.tokenizer.encode(prompt, add_special_tokens=body.add_bos)

    if isinstance(body.input, str):
        one = ids(body.input)
        return EncodeResponse(input_ids=one, length=len(one))
    many = [ids(p) for p in body.input]
    return EncodeResponse(input_ids=many, length=[len(m) for m in many])
