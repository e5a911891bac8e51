"""`pipeline()`'s object: batch, streaming and async inference over the generation service."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

from ..domain.errors import InvalidArgument, PromptTooLong
from .configs import GenerationConfig, Response
from .generation import GenerationService, GenOut, PreparedRequest, Prompt, RequestStream
from .multimodal import is_image_tuple
from .output_rows import ROW_OUTPUTS
from .scoring import prompt_losses, token_batches
from .sessions import SessionManager

logger = logging.getLogger(__name__)

Prompts = Prompt | list[Prompt]
_chat_ids = itertools.count(1)


class ChatSession:
    """A conversation held by the engine: `history` is [(prompt, reply), ...]."""

    def __init__(self, session_id: int, pipe: Pipeline) -> None:
        self.session_id = session_id
        self._pipe = pipe
        self.history: list[tuple[Any, str]] = []
        self.response: Response | None = None

    def _stream(self, prompt: Any, outputs: Iterator[GenOut]) -> Iterator[Response]:
        collector = _Collector(
            Response(text="", generate_token_len=0, input_token_len=0, session_id=self.session_id),
            self._pipe.service,
        )
        self.response = collector.response
        for out in outputs:
            collector.add(out)
            yield _delta_response(out, 0, self.session_id)
        collector.finish()
        self.history.append((prompt, self.response.text))

    def close(self) -> None:
        """End the conversation and free its KV cache."""
        self._pipe._sessions.end(self.session_id)

    def __repr__(self) -> str:
        return f"ChatSession(id={self.session_id}, turns={len(self.history)}, response={self.response!r})"


def _normalize(prompts: Prompts) -> tuple[list[Prompt], bool]:
    """A list of prompts, and whether the caller passed a single one."""
    if isinstance(prompts, str) or is_image_tuple(prompts):
        return [prompts], True
    if isinstance(prompts, list) and prompts and all(isinstance(m, dict) for m in prompts):
        return [prompts], True
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts], True
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise InvalidArgument("prompts", "the prompt list is empty; pass at least one prompt")
        return list(prompts), False
    raise InvalidArgument("prompts", f"expected a str or a list, got {type(prompts).__name__}")


def _configs(
    gen_config: GenerationConfig | list[GenerationConfig] | None, n: int
) -> list[GenerationConfig]:
    if isinstance(gen_config, list):
        if len(gen_config) != n:
            raise InvalidArgument("gen_config", f"got {len(gen_config)} configs for {n} prompts")
        return gen_config
    return [gen_config or GenerationConfig()] * n


class Pipeline:
    def __init__(
        self, service: GenerationService, model_name: str, on_close: Callable[[], None]
    ) -> None:
        self.service = service
        self.model_name = model_name
        self._sessions = SessionManager(service)
        self._on_close = on_close
        self._closed = False

    # -- batch ------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Prompts,
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        adapter_name: str | None = None,
        use_tqdm: bool = False,
        **kwargs: Any,
    ) -> Response | list[Response]:
        return self.batch_infer(
            prompts, gen_config, do_preprocess, adapter_name, use_tqdm, **kwargs
        )

    def batch_infer(
        self,
        prompts: Prompts,
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        adapter_name: str | None = None,
        use_tqdm: bool = False,
        **kwargs: Any,
    ) -> Response | list[Response]:
        self._check_open(adapter_name)
        items, single = _normalize(prompts)
        configs = _configs(gen_config, len(items))
        # Every prompt is prepared before any is submitted, so one bad prompt submits nothing.
        requests = [
            self._prepare(p, c, do_preprocess, adapter_name)
            for p, c in zip(items, configs, strict=True)
        ]
        # Every stream is read as its tokens come (not one stream after another), so the
        # detokenising overlaps the generation instead of piling up behind the first stream.
        collectors: dict[int, _Collector] = {}
        responses: dict[int, Response] = {}
        outputs = self._outputs(requests, configs, hold=BATCH_READ_TOKENS)
        with _progress(use_tqdm, total=sum(c.n for c in configs)) as progress, closing(outputs):
            for index, session_id, out, finished in outputs:
                if isinstance(out, Response):  # ended at once (e.g. an over-long prompt)
                    responses[session_id] = out
                else:
                    if session_id not in collectors:
                        collectors[session_id] = self._collector(index, session_id)
                    if out is not None:
                        collectors[session_id].add(out)
                    if finished:
                        responses[session_id] = collectors.pop(session_id).finish()
                if finished:
                    progress.update(1)
        # As 0.6.5: the batch's streams are sessions 0..n-1, so their outputs can be grouped.
        ordered = [responses[session_id] for session_id in sorted(responses)]
        return ordered[0] if single and len(ordered) == 1 else ordered

    def _outputs(
        self,
        requests: list[PreparedRequest | Response],
        configs: list[GenerationConfig],
        hold: int = 1,
    ) -> Iterator[tuple[int, int, GenOut | Response | None, bool]]:
        """Submits every request (n streams each, sessions 0.. in order) on one shared queue
        and yields (prompt index, session id, output, finished) as the engine produces them:
        a request that ended at once as its Response, finished. A stream's tokens are read
        once `hold` of them wait (fewer, larger reads when no one watches the deltas), at its
        end, and at once when it has stop words (found on the host, they stop the request).
        Leaving the loop early (the caller stopped reading, or raised) cancels the streams
        still generating."""
        shared: queue.SimpleQueue = queue.SimpleQueue()
        live: dict[int, tuple[int, int, RequestStream]] = {}  # id(stream) -> index, session, stream
        submitted = [
            (i, s)
            for i, (r, c) in enumerate(zip(requests, configs, strict=True))
            for s in self._submit(r, c.n, shared=shared)
        ]
        for session_id, (i, stream) in enumerate(submitted):
            if isinstance(stream, Response):
                stream.index, stream.session_id = i, session_id
                yield i, session_id, stream, True
            else:
                live[id(stream)] = (i, session_id, stream)
        pending: dict[int, list] = {}
        try:
            while live:
                batch = [shared.get()]
                while not shared.empty():
                    batch.append(shared.get_nowait())
                for stream, event in batch:
                    if id(stream) in live:  # else late events of a stream already finished
                        pending.setdefault(id(stream), []).append(event)
                for key, events in list(pending.items()):
                    index, session_id, stream = live[key]
                    ready = len(events) >= hold or events[-1].finished
                    if not (ready or stream.request.stop_words):
                        continue
                    out = stream.consume(pending.pop(key))
                    if stream.finished:
                        del live[key]
                    if out is not None or stream.finished:
                        yield index, session_id, out, stream.finished
        finally:
            for _, _, stream in live.values():
                stream.cancel()

    def _submit(
        self,
        request: PreparedRequest | Response,
        n: int,
        asynchronous: bool = False,
        shared: queue.SimpleQueue | None = None,
    ) -> list[RequestStream | Response]:
        """One stream per choice; a request that ended at once answers n times."""
        if isinstance(request, Response):
            return [dataclasses.replace(request) for _ in range(n)]
        return self.service.submit_choices(request, asynchronous, shared)

    def _prepare(
        self,
        prompt: Prompt,
        config: GenerationConfig,
        do_preprocess: bool,
        adapter_name: str | None = None,
    ):
        try:
            return self.service.prepare(prompt, config, do_preprocess, adapter_name=adapter_name)
        except PromptTooLong as exc:
            # As documented for the pipeline: an over-long prompt ends at once with 'length'.
            logger.error("%s", exc)
            return Response(
                text="",
                generate_token_len=0,
                input_token_len=exc.num_tokens,
                finish_reason="length",
            )

    def _collector(self, index: int, session_id: int) -> _Collector:
        response = Response(
            text="", generate_token_len=0, input_token_len=0, index=index, session_id=session_id
        )
        return _Collector(response, self.service)

    # -- streaming --------------------------------------------------------------------------
    def stream_infer(
        self,
        prompts: Prompts,
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        adapter_name: str | None = None,
        **kwargs: Any,
    ) -> Iterator[Response]:
        """Yields a Response per text delta, tagged with its prompt's `index`."""
        self._check_open(adapter_name)
        items, _ = _normalize(prompts)
        configs = _configs(gen_config, len(items))
        requests = [
            self._prepare(p, c, do_preprocess, adapter_name)
            for p, c in zip(items, configs, strict=True)
        ]
        # Closed with this generator: a caller that stops reading cancels what still runs.
        with closing(self._outputs(requests, configs)) as outputs:
            for index, session_id, out, _ in outputs:
                if isinstance(out, Response):  # ended at once (e.g. an over-long prompt)
                    yield out
                elif out is not None:
                    yield _delta_response(out, index, session_id)

    # -- async ------------------------------------------------------------------------------
    async def async_batch_infer(
        self,
        prompts: Prompts,
        gen_config: GenerationConfig | None = None,
        do_preprocess: bool = True,
        **kwargs: Any,
    ) -> Response | list[Response]:
        self._check_open(None)
        items, single = _normalize(prompts)
        configs = _configs(gen_config, len(items))
        requests = [self._prepare(p, c, do_preprocess) for p, c in zip(items, configs, strict=True)]
        flat = [
            (i, stream)
            for i, (r, c) in enumerate(zip(requests, configs, strict=True))
            for stream in self._submit(r, c.n, asynchronous=True)
        ]
        results = await asyncio.gather(
            *(self._async_one(s, i, sid) for sid, (i, s) in enumerate(flat))
        )
        return results[0] if single and len(results) == 1 else list(results)

    async def _async_one(
        self, stream: RequestStream | Response, index: int, session_id: int
    ) -> Response:
        if isinstance(stream, Response):
            stream.index, stream.session_id = index, session_id
            return stream
        collector = self._collector(index, session_id)
        async for out in stream:
            collector.add(out)
        return collector.finish()

    # -- multi-turn chat ---------------------------------------------------------------------
    def chat(
        self,
        prompt: str | list[dict[str, Any]] | tuple[str, Any],
        session: ChatSession | None = None,
        gen_config: GenerationConfig | None = None,
        stream_response: bool = False,
        adapter_name: str | None = None,
        **kwargs: Any,
    ) -> ChatSession | Iterator[Response]:
        """One turn of a conversation whose history (and its KV cache) the engine keeps, so the
        next turn prefills only its new tokens. Returns the session (its `response` holds this
        turn), or with `stream_response` an iterator of deltas that fills the session in."""
        self._check_open(adapter_name)
        if gen_config is not None and gen_config.n != 1:
            raise InvalidArgument("n", "a chat session holds one reply per turn; use n=1")
        session = session or ChatSession(next(_chat_ids), self)
        outputs = self._sessions.chat_sync(
            session.session_id, prompt, gen_config or GenerationConfig(), adapter_name
        )
        if stream_response:
            return session._stream(prompt, outputs)
        for _ in session._stream(prompt, outputs):
            pass
        return session

    # -- scoring ----------------------------------------------------------------------------
    def get_ppl(self, input_ids: list[int] | list[list[int]]) -> list[float]:
        """The mean next-token cross-entropy of each sequence (the loss, not its exp), one float
        per sequence. Long inputs are scored chunk by chunk (max_prefill_token_num tokens a
        step), so memory stays bounded; each must fit session_len."""
        self._check_open(None)
        return prompt_losses(self.service, token_batches(input_ids, self.service.vocab_size))

    # -- lifetime ---------------------------------------------------------------------------
    def _check_open(self, adapter_name: str | None) -> None:
        if self._closed:
            raise RuntimeError("this pipeline is closed; create a new one with lmdeploy.pipeline()")
        self.service.check_adapter(adapter_name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# batch_infer reads a stream once this many of its tokens wait: each read detokenises and
# builds an output, so reading every token costs several times the work of reading in runs.
BATCH_READ_TOKENS = 32


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _progress(enabled: bool, total: int) -> Any:
    """A progress bar over the batch's streams on stderr (0.6.5's `use_tqdm`), or nothing."""
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm  # imported only when a bar is asked for

    return tqdm(total=total, desc="Processing", unit="request")


class _Collector:
    """Builds one Response from a stream's outputs; the row outputs are joined once at the end
    (joining per step would copy the growing tensor every token)."""

    def __init__(self, response: Response, service: GenerationService) -> None:
        self.response = response
        self._join = service.join_rows
        self._rows: dict[str, list[Any]] = {name: [] for name in ROW_OUTPUTS}

    def add(self, out: GenOut) -> None:
        _accumulate(self.response, out)
        for name in ROW_OUTPUTS:
            if getattr(out, name) is not None:
                self._rows[name].append(getattr(out, name))

    def finish(self) -> Response:
        for name, chunks in self._rows.items():
            if chunks:
                setattr(self.response, name, self._join(chunks))
        return self.response


def _accumulate(response: Response, out: GenOut) -> None:
    response.text += out.text
    response.token_ids.extend(out.token_ids)
    response.generate_token_len = out.generate_token_len
    response.input_token_len = out.input_token_len
    response.finish_reason = out.finish_reason or response.finish_reason
    if out.logprobs is not None:
        response.logprobs = (response.logprobs or []) + out.logprobs
    if out.error:
        logger.error("request %d failed: %s", response.index, out.error)


def _delta_response(out: GenOut, index: int, session_id: int) -> Response:
    return Response(
        text=out.text,
        generate_token_len=out.generate_token_len,
        input_token_len=out.input_token_len,
        finish_reason=out.finish_reason,
        token_ids=out.token_ids,
        logprobs=out.logprobs,
        logits=out.logits,
        last_hidden_state=out.last_hidden_state,
        index=index,
        session_id=session_id,
    )
