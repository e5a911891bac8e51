"""POST /v1/chat/completions and /v1/completions, streamed (SSE) or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from ...application.configs import GenerationConfig
from ...application.generation import GenOut, RequestStream
from ...application.ports import Tokenizer
from ...application.tools import ToolCallStream, ToolParser, prepare_chat
from ..tool_parsers import get_tool_parser
from . import openai_format as fmt
from .errors import error_body, error_response
from .logit_bias import LogitBias
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    new_id,
)
from .services import ServerServices

router = APIRouter()


def services() -> ServerServices:  # replaced by create_app through dependency_overrides
    raise RuntimeError("the API router was mounted without services")


def gen_config_of(
    body: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None,
    session_len: int,
    tokenizer: Tokenizer | None = None,
) -> GenerationConfig:
    """OpenAI semantics: sampling by default; temperature 0 (or top_k 1) is greedy."""
    bias = LogitBias(body.logit_bias, tokenizer.vocab_size) if body.logit_bias else None
    return GenerationConfig(
        n=body.n,
        do_sample=True,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        max_new_tokens=max_tokens or session_len,
        stop_words=body.stop_words,
        random_seed=body.seed,
        repetition_penalty=body.repetition_penalty,
        ignore_eos=body.ignore_eos,
        skip_special_tokens=body.skip_special_tokens,
        min_new_tokens=body.min_tokens if body.min_new_tokens is None else body.min_new_tokens,
        spaces_between_special_tokens=body.spaces_between_special_tokens,
        logprobs=logprobs,
        logits_processors=[bias] if bias else None,
        response_format=body.response_format,
    )


def _unknown_model(svc: ServerServices, model: str | None) -> JSONResponse | None:
    if model is not None and model not in (svc.model_name, *svc.generation.adapter_names):
        return error_response(
            404,
            f"The model `{model}` does not exist.",  # 0.6.5's words; /v1/models lists ours
            "model",
            "model_not_found",
        )
    return None


def _adapter_of(svc: ServerServices, model: str | None) -> str | None:
    """The LoRA adapter a request's `model` names (None: the base model)."""
    return model if model in svc.generation.adapter_names else None


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, GenOut]]:
    """Interleave several request streams, tagging each output with its index."""
    if len(streams) == 1:  # the common case: no pump task and queue hop per output
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            streams[0].cancel()
        return
    queue: asyncio.Queue[tuple[int, GenOut | None]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((index, out))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, out = await queue.get()
            if out is None:
                remaining -= 1
            else:
                yield index, out
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.cancel()


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, svc: ServerServices = Depends(services)
) -> Any:
    if (bad := _unknown_model(svc, body.model)) is not None:
        return bad
    generation = svc.generation
    top = body.top_logprobs or 0
    config = gen_config_of(
        body,
        body.max_completion_tokens or body.max_tokens,
        top if body.logprobs else None,
        generation.session_len,
        generation.tokenizer,
    )
    messages = (
        body.messages
        if isinstance(body.messages, str)
        else [m.model_dump(exclude_none=True) for m in body.messages]
    )
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice = body.tool_choice
    tool_choice = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
    # Off the event loop: tokenizing a long prompt must not stall other requests and /health.
    request, parser = await asyncio.to_thread(
        prepare_chat,
        generation,
        messages,
        config,
        tools,
        tool_choice,
        get_tool_parser,
        body.parallel_tool_calls,
        _adapter_of(svc, body.model),
    )
    streams = generation.submit_choices(request, asynchronous=True)
    request_id, model = new_id("chatcmpl"), body.model or svc.model_name
    tokenizer = generation.tokenizer

    def choice_logprobs(out: GenOut) -> dict | None:
        return (
            fmt.chat_logprobs(tokenizer, out.token_ids, out.logprobs or [], top)
            if body.logprobs
            else None
        )

    if body.stream:
        events = _chat_events(body, streams, parser, request_id, model, choice_logprobs)
        return StreamingResponse(events, media_type="text/event-stream")

    results: dict[int, list[GenOut]] = {i: [] for i in range(len(streams))}
    async for index, out in _merge(streams):
        results[index].append(out)
    joined = {i: _join(outs) for i, outs in results.items()}
    if (failed := _engine_failure(joined.values())) is not None:
        return failed
    choices = [_chat_choice(i, out, parser, choice_logprobs) for i, out in joined.items()]
    return fmt.envelope(
        "chat.completion", request_id, model, choices, usage=_sum_usage(joined.values(), body.n)
    )


def _join(outs: list[GenOut]) -> GenOut:
    """One choice's stream of outputs as one."""
    last = outs[-1]
    return GenOut(
        "".join(o.text for o in outs),
        [t for o in outs for t in o.token_ids],
        last.input_token_len,
        last.generate_token_len,
        last.finish_reason,
        [lp for o in outs for lp in (o.logprobs or [])],
        last.error,
    )


def _engine_failure(outs) -> JSONResponse | None:
    """A choice the engine failed to compute fails the whole reply (500, nothing partial)."""
    for out in outs:
        if out.finish_reason == "error":
            return error_response(500, out.error or "the engine failed", code="engine_error")
    return None


def _error_event(out: GenOut) -> str | None:
    """A streamed choice the engine failed ends the stream with OpenAI's error event."""
    if out.finish_reason != "error":
        return None
    return fmt.sse(error_body(500, out.error or "the engine failed", code="engine_error"))


def _chat_choice(
    index: int,
    out: GenOut,
    parser: ToolParser | None,
    choice_logprobs: Callable[[GenOut], dict | None],
) -> dict:
    message, finish = {"role": "assistant", "content": out.text}, out.finish_reason
    if parser is not None:
        parsed = parser.parse(out.text, final=True)
        if parsed.tool_calls:
            message["content"] = parsed.content.strip() or None  # OpenAI: null, not ""
            message["tool_calls"] = [call.to_openai() for call in parsed.tool_calls]
            finish = _tool_finish(finish, True)
    return {
        "index": index,
        "message": message,
        "logprobs": choice_logprobs(out),
        "finish_reason": finish,
    }


def _tool_finish(finish: str | None, called: bool) -> str | None:
    """OpenAI reports a reply that called tools as 'tool_calls' (unless it ran out of room)."""
    return "tool_calls" if called and finish == "stop" else finish


class _ChoiceState:
    """Per choice of a streamed chat reply: its last output, its tool calls so far."""

    def __init__(self, parser: ToolParser | None) -> None:
        self.last, self.num_calls = None, 0
        self.calls = ToolCallStream(parser) if parser is not None else None

    def delta(self, out: GenOut) -> dict[str, Any]:
        calls = self.calls
        content, new_calls = calls.feed(out.text) if calls else (out.text, [])
        if calls and out.finish_reason is not None:
            more, more_calls = calls.finish()
            content, new_calls = content + more, new_calls + more_calls
        # With tools, a delta without text carries content null, as OpenAI's tool-call deltas do.
        text: str | None = None if calls and not content else content
        delta: dict[str, Any] = {"role": "assistant", "content": text}
        if new_calls:
            delta["tool_calls"] = [
                {"index": self.num_calls + i, **call.to_openai()}
                for i, call in enumerate(new_calls)
            ]
            self.num_calls += len(new_calls)
        self.last = out
        return delta


async def _chat_events(
    body: ChatCompletionRequest,
    streams: list[RequestStream],
    parser: ToolParser | None,
    request_id: str,
    model: str,
    choice_logprobs: Callable[[GenOut], dict | None],
) -> AsyncIterator[str]:
    states = [_ChoiceState(parser) for _ in streams]
    async for index, out in _merge(streams):
        state = states[index]
        delta = state.delta(out)
        if delta["content"] or "tool_calls" in delta or (body.logprobs and out.token_ids):
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": choice_logprobs(out),
                "finish_reason": None,
            }
            yield fmt.sse(fmt.envelope("chat.completion.chunk", request_id, model, [choice]))
        if out.finish_reason is not None:  # its own chunk, as OpenAI and 0.6.5 send it
            finish = _tool_finish(out.finish_reason, state.num_calls > 0)
            choice = {
                "index": index,
                "delta": {"role": "assistant", "content": None if state.num_calls else ""},
                "logprobs": None,
                "finish_reason": finish,
            }
            yield fmt.sse(fmt.envelope("chat.completion.chunk", request_id, model, [choice]))
        if (failed := _error_event(out)) is not None:
            yield failed
            break
    lasts = [s.last for s in states if s.last is not None]
    if body.stream_options and body.stream_options.include_usage and lasts:
        usage = _sum_usage(lasts, len(lasts))
        yield fmt.sse(fmt.envelope("chat.completion.chunk", request_id, model, [], usage=usage))
    yield fmt.sse("[DONE]")


@router.post("/v1/completions")
async def completions(body: CompletionRequest, svc: ServerServices = Depends(services)) -> Any:
    if (bad := _unknown_model(svc, body.model)) is not None:
        return bad
    generation = svc.generation
    top = body.logprobs
    config = gen_config_of(body, body.max_tokens, top, generation.session_len, generation.tokenizer)
    prompts: list[Any] = (
        [body.prompt]
        if isinstance(body.prompt, str) or isinstance(body.prompt[0], int)
        else body.prompt
    )
    adapter = _adapter_of(svc, body.model)
    requests = await asyncio.to_thread(
        lambda: [
            generation.prepare(p, config, do_preprocess=False, adapter_name=adapter)
            for p in prompts
        ]
    )
    # Choice index = prompt index * n + choice, as OpenAI numbers them.
    streams = [s for r in requests for s in generation.submit_choices(r, asynchronous=True)]
    request_id, model = new_id("cmpl"), body.model or svc.model_name
    tokenizer = generation.tokenizer
    echoes = [
        (p if isinstance(p, str) else tokenizer.decode(p)) if body.echo else ""
        for p in prompts
        for _ in range(body.n)
    ]

    def choice(index: int, text: str, out: GenOut, offset: int) -> dict:
        lp = (
            fmt.completion_logprobs(tokenizer, out.token_ids, out.logprobs or [], top or 0, offset)
            if top is not None
            else None
        )
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": out.finish_reason}

    if body.stream:

        async def events() -> AsyncIterator[str]:
            totals: dict[int, GenOut] = {}
            for index, echo in enumerate(echoes):
                if echo:
                    yield fmt.sse(
                        fmt.envelope(
                            "text_completion",
                            request_id,
                            model,
                            [
                                {
                                    "index": index,
                                    "text": echo,
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        )
                    )
            async for index, out in _merge(streams):
                totals[index] = out
                if out.text or (top is not None and out.token_ids):
                    piece = {**choice(index, out.text, out, 0), "finish_reason": None}
                    yield fmt.sse(fmt.envelope("text_completion", request_id, model, [piece]))
                if out.finish_reason is not None:  # its own chunk, as OpenAI and 0.6.5 send it
                    end = {
                        "index": index,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": out.finish_reason,
                    }
                    yield fmt.sse(fmt.envelope("text_completion", request_id, model, [end]))
                if (failed := _error_event(out)) is not None:
                    yield failed
                    break
            if body.stream_options and body.stream_options.include_usage:
                yield fmt.sse(
                    fmt.envelope(
                        "text_completion",
                        request_id,
                        model,
                        [],
                        usage=_sum_usage(totals.values(), body.n),
                    )
                )
            yield fmt.sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    results: dict[int, list[GenOut]] = {i: [] for i in range(len(streams))}
    async for index, out in _merge(streams):
        results[index].append(out)
    choices, lasts = [], []
    if (failed := _engine_failure(_join(outs) for outs in results.values())) is not None:
        return failed
    for index, outs in results.items():
        joined = _join(outs)
        lasts.append(joined)
        choices.append(choice(index, echoes[index] + joined.text, joined, len(echoes[index])))
    return fmt.envelope(
        "text_completion", request_id, model, choices, usage=_sum_usage(lasts, body.n)
    )


def _sum_usage(outs, n: int) -> dict[str, int]:
    """Every choice's generated tokens; each prompt's tokens once (its n choices share it)."""
    outs = list(outs)
    return fmt.usage(
        sum(o.input_token_len for o in outs) // max(1, n), sum(o.generate_token_len for o in outs)
    )
