"""Generation as a use case: a prompt in, a stream of text deltas out.

`GenerationService.submit` turns a prompt (text, messages or token ids) into a `Sequence`,
hands it to the engine loop and returns a `RequestStream`; the stream detokenizes, applies
stop words and can be read synchronously (pipeline, CLI) or asynchronously (HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..domain.errors import InvalidArgument, PromptTooLong, UnknownAdapter
from ..domain.sampling_params import SamplingParams
from ..domain.sequence import FinishReason, Sequence
from .chat_template import ChatTemplate
from .configs import GenerationConfig
from .detokenizer import IncrementalDetokenizer
from .engine import Engine, TokenEvent
from .multimodal import expand, has_images, image_spans, is_image_tuple, split_images, to_messages
from .output_rows import OutputRows
from .ports import GrammarBackend, GrammarSpec, JoinRows, Tokenizer
from .prompt_log import log_prompt
from .response_format import constrain, parse_response_format, recompile
from .stream_delivery import LoopMailbox
from .text import check_text
from .vision import PendingImage, VisionService

logger = logging.getLogger(__name__)

# Text, messages (GPT-4V-style content parts may carry images), token ids, or (text, images).
Prompt = str | list[dict[str, Any]] | list[int] | tuple[str, Any]


@dataclass
class GenOut:
    """What one read of a stream returns: the new text and tokens since the last read."""

    text: str
    token_ids: list[int]
    input_token_len: int
    generate_token_len: int
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    error: str | None = None
    logits: Any = None  # rows that arrived with this output (see GenerationConfig)
    last_hidden_state: Any = None
    prompt_loss: tuple[float, int] | None = None  # (sum, count), on the final output


@dataclass
class PreparedRequest:
    input_ids: list[int]
    sampling: SamplingParams
    stop_words: list[str] = field(default_factory=list)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    images: tuple[PendingImage, ...] = ()  # their embeddings are filled before the engine runs
    adapter_name: str | None = None  # the LoRA adapter to run with (None: the base model)


class RequestStream:
    """One request's outputs. The engine thread pushes events; the reader turns them into text."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        seq: Sequence,
        request: PreparedRequest,
        join_rows: JoinRows | None = None,
    ) -> None:
        self._engine = engine
        self.seq = seq
        self.request = request
        self._detok = IncrementalDetokenizer(
            tokenizer, request.skip_special_tokens, request.spaces_between_special_tokens
        )
        self._rows = OutputRows(join_rows)
        self._text = ""
        self._emitted = 0
        self._checked = 0  # text up to here was searched for stop words
        self._num_tokens = 0
        self._stop_ids = set(request.sampling.stop_token_ids) | (
            set() if request.sampling.ignore_eos else set(seq.eos_token_ids)
        )
        self._hold = max((len(w) for w in request.stop_words), default=1) - 1
        self._sync_queue: queue.SimpleQueue[TokenEvent] | None = None
        self._shared_queue: queue.SimpleQueue[tuple[RequestStream, TokenEvent]] | None = None
        self._async_queue: asyncio.Queue[TokenEvent] | None = None
        self._mailbox: LoopMailbox | None = None
        self.finished = False

    # -- wiring -----------------------------------------------------------------------------
    def bind_sync(self) -> None:
        self._sync_queue = queue.SimpleQueue()

    def bind_shared(self, shared: queue.SimpleQueue[tuple[RequestStream, TokenEvent]]) -> None:
        """Events go to a queue shared by many streams, tagged with this stream; one reader
        thread serves them all through `consume` (a thread a stream would fight the engine
        thread for the GIL)."""
        self._shared_queue = shared

    def bind_async(self) -> None:
        self._mailbox = LoopMailbox.of(asyncio.get_running_loop())
        self._async_queue = asyncio.Queue()

    def sink(self, event: TokenEvent) -> None:
        """Called on the engine thread."""
        if self._async_queue is not None:
            self._mailbox.post(self._async_queue, event)
        elif self._shared_queue is not None:
            self._shared_queue.put((self, event))
        else:
            self._sync_queue.put(event)

    def cancel(self) -> None:
        if not self.finished:
            self._engine.abort(self.seq)

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[GenOut]:
        while not self.finished:
            out = self._consume([self._sync_queue.get()] + self._drain_sync())
            if out is not None:
                yield out

    async def __aiter__(self) -> AsyncIterator[GenOut]:
        try:
            while not self.finished:
                events = [await self._async_queue.get()]
                while not self._async_queue.empty():
                    events.append(self._async_queue.get_nowait())
                out = self._consume(events)
                if out is not None:
                    yield out
        finally:
            self.cancel()

    def _drain_sync(self) -> list[TokenEvent]:
        events = []
        while not self._sync_queue.empty():
            events.append(self._sync_queue.get_nowait())
        return events

    def consume(self, events: list[TokenEvent]) -> GenOut | None:
        """The output of these events (in order), for a reader of a shared queue; None when
        they add nothing to read yet."""
        return self._consume(events)

    def _consume(self, events: list[TokenEvent]) -> GenOut | None:
        stop_words = self.request.stop_words
        new_ids: list[int] = []
        logprobs: list[dict[int, float]] = []
        finish: str | None = None
        error = None
        for event in events:
            if self.finished:
                break
            is_stop_token = (
                event.finished
                and event.token_id in self._stop_ids
                and self.seq.finish_reason is FinishReason.STOP
            )
            if event.extras:
                self._rows.add(event.extras, drop_last=is_stop_token)
            if event.token_id is not None and not is_stop_token:
                new_ids.append(event.token_id)
                if event.logprobs is not None:
                    logprobs.append(event.logprobs)
                if stop_words:  # the reply may end at any of these tokens: text token by token
                    self._text += self._detok.push(event.token_id)
                    if self._hit_stop_word():
                        finish = FinishReason.STOP.value
            if event.finished and finish is None:
                finish = (self.seq.finish_reason or FinishReason.ABORT).value
                error = event.error
            if finish is not None:
                self.finished = True
        if new_ids and not stop_words:
            self._text += self._detok.push_many(new_ids)
        self._num_tokens += len(new_ids)
        if not self.finished and not new_ids:
            return None
        end = len(self._text) if self.finished else max(self._emitted, len(self._text) - self._hold)
        delta, self._emitted = self._text[self._emitted : end], end
        sampling = self.request.sampling
        rows = self._rows
        return GenOut(
            text=delta,
            token_ids=new_ids,
            input_token_len=self.seq.num_prompt_tokens,
            generate_token_len=self._num_tokens,
            finish_reason=finish,
            logprobs=logprobs if sampling.logprobs is not None else None,
            error=error,
            logits=rows.take("logits") if sampling.output_logits else None,
            last_hidden_state=rows.take("last_hidden_state")
            if sampling.output_last_hidden_state
            else None,
            prompt_loss=(rows.loss_sum, rows.loss_count)
            if sampling.prompt_loss and self.finished
            else None,
        )

    def _hit_stop_word(self) -> bool:
        """Only text new since the last check (plus a word's length of overlap) is searched,
        so the checks over a reply cost its length times the number of stop words."""
        checked, self._checked = self._checked, len(self._text)
        for word in self.request.stop_words:
            at = self._text.find(word, max(0, checked - len(word) + 1))
            if at >= 0:
                self._text = self._text[:at]
                self._engine.abort(self.seq)
                return True
        return False


def _fail(seq: Sequence, stream: RequestStream, error: str) -> None:
    """End a request that never reached the engine (its images failed to encode)."""
    seq.finish(FinishReason.ERROR)
    stream.sink(TokenEvent(seq, None, finished=True, error=error))


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate,
        session_len: int,
        join_rows: JoinRows | None = None,
        grammar: GrammarBackend | None = None,
        max_log_len: int | None = None,
        vocab_size: int | None = None,
        vision: VisionService | None = None,
        adapter_names: tuple[str, ...] = (),
    ) -> None:
        """`vocab_size`: rows of the model's embedding (default: the tokenizer's); an id
        outside it would fail the forward pass of every request sharing the step. `vision`:
        a vision-language model's image side (None: the model reads text only)."""
        self.vocab_size = vocab_size or tokenizer.vocab_size
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.session_len = session_len
        self.join_rows = join_rows
        self.grammar = grammar
        self.max_log_len = max_log_len
        self.vision = vision
        self.adapter_names = tuple(adapter_names)

    def check_adapter(self, name: str | None) -> None:
        """None (the base model) or one of the adapters the engine was started with."""
        if name is not None and name not in self.adapter_names:
            raise UnknownAdapter(name, self.adapter_names)

    def prepare(
        self,
        prompt: Prompt,
        gen_config: GenerationConfig | None = None,
        do_preprocess: bool = True,
        grammar: GrammarSpec | None = None,
        adapter_name: str | None = None,
    ) -> PreparedRequest:
        """`grammar` (a tool-call format) takes the place of `gen_config.response_format`."""
        self.check_adapter(adapter_name)
        gen_config = gen_config or GenerationConfig()
        spec = grammar or parse_response_format(gen_config.response_format)
        images: tuple[PendingImage, ...] = ()
        if has_images(prompt):
            input_ids, images = self._tokenize_with_images(prompt, do_preprocess)
        else:
            input_ids = self.tokenize(prompt, do_preprocess)
        if not input_ids:
            raise InvalidArgument("prompt", "the prompt is empty; pass some text or messages")
        if len(input_ids) >= self.session_len:
            raise PromptTooLong(len(input_ids), self.session_len)
        stop_words = list(gen_config.stop_words or []) + list(self.chat_template.stop_words or [])
        single, multi = self._split_stop_words(stop_words)
        if gen_config.ignore_eos:  # eos joins the stop tokens that ignore_eos bans
            single, multi = single + sorted(self.tokenizer.eos_token_ids), []
        sampling = gen_config.to_sampling_params(
            stop_token_ids=single, bad_token_ids=self._bad_word_ids(gen_config.bad_words or [])
        )
        for name in ("stop_token_ids", "bad_token_ids"):
            self._check_ids(name, getattr(sampling, name))
        log_prompt(logger, prompt, input_ids, self.max_log_len)
        return PreparedRequest(
            input_ids=input_ids,
            sampling=constrain(sampling, spec, self.grammar, self.tokenizer.eos_token_ids),
            stop_words=[w for w in multi if w in (gen_config.stop_words or [])],
            skip_special_tokens=gen_config.skip_special_tokens,
            spaces_between_special_tokens=gen_config.spaces_between_special_tokens,
            n=gen_config.n,
            images=images,
            adapter_name=adapter_name,
        )

    def tokenize(self, prompt: Prompt, do_preprocess: bool = True) -> list[int]:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt:
            self._check_ids("prompt", prompt)
            return list(prompt)
        if isinstance(prompt, str) and not do_preprocess:
            return self._encode("prompt", prompt, add_special_tokens=True)
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)
        ):
            if isinstance(prompt, list) and not prompt:
                return []
            return self.encode_chat(self.chat_template.messages2prompt(prompt))
        raise InvalidArgument(
            "prompts",
            f"expected a str, a list of message dicts or a list of token ids, got {type(prompt).__name__}",
        )

    def _tokenize_with_images(
        self, prompt: Prompt, do_preprocess: bool
    ) -> tuple[list[int], tuple[PendingImage, ...]]:
        """The prompt's ids with each image's tokens in place, and the images to encode."""
        messages = to_messages(prompt) if is_image_tuple(prompt) else prompt
        text_messages, refs = split_images(
            messages, self.vision.image_separator if self.vision is not None else "\n"
        )
        if self.vision is None:
            raise InvalidArgument(
                refs[0].where,
                "this model reads text only and cannot take images; send the request to a "
                "vision-language model (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, InternVL) or "
                "drop the image",
            )
        prepared = self.vision.prepare(refs, self.session_len)
        if is_image_tuple(prompt) and not do_preprocess:
            text = expand(text_messages[0]["content"], prepared)
            input_ids = self._encode("prompt", text, add_special_tokens=True)
        else:
            text = self.chat_template.messages2prompt(text_messages)
            input_ids = self.encode_chat(expand(text, prepared))
        spans = image_spans(input_ids, prepared, self.vision.image_token_id)
        return input_ids, tuple(
            PendingImage(span, image) for span, image in zip(spans, prepared, strict=True)
        )

    def encode_chat(self, text: str) -> list[int]:
        """The ids of a prompt a chat template rendered. Built-in templates leave BOS to the
        tokenizer (as 0.6.5); a model's own jinja template writes it (`bos_in_text`). Where
        both do (0.6.5's Llama 3 writes `<|begin_of_text|>`), one BOS is kept."""
        check_text("messages", text)  # a lone surrogate in a message or a tool: 400 naming it
        if getattr(self.chat_template, "bos_in_text", False):
            return self.tokenizer.encode(text, add_special_tokens=False)
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        bos = self.tokenizer.encode("", add_special_tokens=True)
        doubled = bool(bos) and ids[: 2 * len(bos)] == bos * 2
        return ids[len(bos) :] if doubled else ids

    def _check_ids(self, name: str, token_ids: Iterable[int]) -> None:
        """Token ids from the caller must index the model's embedding and logits."""
        for t in token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise InvalidArgument(
                    name, f"token id {t!r} is outside the vocabulary [0, {self.vocab_size})"
                )

    def _encode(self, name: str, text: str, add_special_tokens: bool = False) -> list[int]:
        check_text(name, text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def _bad_word_ids(self, words: list[str]) -> list[int]:
        """Each bad word, bare and after a space, as the single token the model would emit."""
        banned = []
        for word in words:
            forms = [self._encode("bad_words", w) for w in (word, " " + word.lstrip())]
            singles = [ids[0] for ids in forms if len(ids) == 1]
            if not singles:
                raise InvalidArgument(
                    "bad_words",
                    f"{word!r} is several tokens; only words that are one token can be banned "
                    "(pass its token ids as bad_token_ids to ban pieces)",
                )
            banned += singles
        return banned

    def _split_stop_words(self, words: list[str]) -> tuple[list[int], list[str]]:
        """Stop words that are one token become stop token ids; the rest are matched in text."""
        single, multi = [], []
        for word in words:
            ids = self._encode("stop", word)
            if len(ids) == 1:
                single.append(ids[0])
            else:
                multi.append(word)
        return single, multi

    def new_sequence(
        self, request: PreparedRequest, keep_cache: bool = False, choice: int = 0
    ) -> Sequence:
        sampling = request.sampling.for_choice(choice)
        if choice:  # the first choice keeps the constraint compiled when the request was checked
            sampling = recompile(sampling, self.grammar)
        return Sequence(
            prompt_token_ids=request.input_ids,
            sampling=sampling,
            max_len=self.session_len,
            eos_token_ids=self.tokenizer.eos_token_ids,
            keep_cache=keep_cache,
            images=tuple(p.span for p in request.images),
            adapter_name=request.adapter_name,
        )

    def submit(
        self, request: PreparedRequest, asynchronous: bool = False, resume: Sequence | None = None
    ) -> RequestStream:
        """Start generating; `resume` runs the request as the next turn of a session's sequence."""
        return self._start(resume or self.new_sequence(request), request, asynchronous, resume)

    def submit_choices(
        self,
        request: PreparedRequest,
        asynchronous: bool = False,
        shared: queue.SimpleQueue | None = None,
    ) -> list[RequestStream]:
        """The request's n choices, one stream each. Choices after the first wait for it to
        compute the prompt and reference its KV blocks (unless every prompt position's output
        is wanted, which needs each choice to compute them)."""
        parent = self.new_sequence(request)
        streams = [self._start(parent, request, asynchronous, shared=shared)]
        for i in range(1, request.n):
            seq = self.new_sequence(request, choice=i)
            if not request.sampling.needs_prompt_outputs:
                seq.fork_parent = parent
            streams.append(self._start(seq, request, asynchronous, shared=shared))
        return streams

    def _start(
        self,
        seq: Sequence,
        request: PreparedRequest,
        asynchronous: bool,
        resume: Sequence | None = None,
        shared: queue.SimpleQueue | None = None,
    ) -> RequestStream:
        stream = RequestStream(self.engine, self.tokenizer, seq, request, self.join_rows)
        if asynchronous:
            stream.bind_async()
        elif shared is not None:
            stream.bind_shared(shared)
        else:
            stream.bind_sync()

        def hand_over() -> None:
            if resume is None:
                self.engine.submit(seq, stream.sink)
            else:
                spans = tuple(p.span for p in request.images)
                self.engine.resume(seq, request.input_ids, request.sampling, stream.sink, spans)

        if request.images and self.vision is not None:
            self.vision.encode_then(list(request.images), hand_over, partial(_fail, seq, stream))
        else:
            hand_over()
        logger.info(
            "request %d: input_tokens=%d max_new_tokens=%d",
            seq.seq_id,
            seq.num_prompt_tokens,
            request.sampling.max_new_tokens,
        )
        return stream
