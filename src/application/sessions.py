"""Interactive sessions: the server keeps a conversation, and its KV cache, between requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..domain.errors import InvalidArgument, PromptTooLong
from ..domain.sequence import Sequence
from .configs import GenerationConfig
from .generation import GenerationService, GenOut
from .multimodal import is_image_tuple, to_messages


def _too_long(exc: PromptTooLong) -> GenOut:
    return GenOut(
        text="",
        token_ids=[],
        input_token_len=exc.num_tokens,
        generate_token_len=0,
        finish_reason="length",
        error=str(exc),
    )


class SessionBusy(InvalidArgument):
    def __init__(self, session_id: int) -> None:
        super().__init__(
            "session_id",
            f"session {session_id} is still generating; wait for it to finish or cancel it first",
        )


@dataclass
class LiveSession:
    session_id: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    seq: Sequence | None = None
    busy: bool = False

    @property
    def history_tokens(self) -> int:
        return self.seq.num_tokens if self.seq is not None else 0


class SessionManager:
    def __init__(self, service: GenerationService) -> None:
        self.service = service
        self._sessions: dict[int, LiveSession] = {}

    def get(self, session_id: int) -> LiveSession | None:
        return self._sessions.get(session_id)

    def end(self, session_id: int) -> None:
        live = self._sessions.pop(session_id, None)
        if live is not None and live.seq is not None:
            if live.busy:
                self.service.engine.abort(live.seq)
            self.service.engine.release(live.seq)

    def cancel(self, session_id: int) -> None:
        live = self._sessions.get(session_id)
        if live is not None and live.busy and live.seq is not None:
            self.service.engine.abort(live.seq)

    def _begin(
        self,
        session_id: int,
        prompt: str | list[dict[str, Any]] | tuple[str, Any],
        gen_config: GenerationConfig,
        adapter_name: str | None = None,
    ):
        live = self._sessions.setdefault(session_id, LiveSession(session_id))
        if live.busy:
            raise SessionBusy(session_id)
        if live.seq is not None and live.seq.adapter_name != adapter_name:
            # The session's cached K/V were computed under its first turn's adapter.
            raise InvalidArgument(
                "adapter_name",
                f"session {session_id} runs with adapter {live.seq.adapter_name!r}; keep it "
                "for every turn, or start a new session",
            )
        if is_image_tuple(prompt):
            turn = to_messages(prompt)
        elif isinstance(prompt, str):
            turn = [{"role": "user", "content": prompt}]
        else:
            turn = list(prompt)
        request = self.service.prepare(live.messages + turn, gen_config, adapter_name=adapter_name)
        if live.seq is None:
            live.seq = self.service.new_sequence(request, keep_cache=True)
        live.busy = True
        return live, turn, request

    @staticmethod
    def _end(live: LiveSession, turn: list[dict[str, Any]], reply: list[str]) -> None:
        live.messages += turn + [{"role": "assistant", "content": "".join(reply)}]

    async def chat(
        self,
        session_id: int,
        prompt: str | list[dict[str, Any]] | tuple[str, Any],
        gen_config: GenerationConfig,
    ) -> AsyncIterator[GenOut]:
        """One turn of session `session_id`; its history and cache stay for the next turn.
        A turn that would pass session_len ends at once with finish_reason 'length'."""
        try:
            live, turn, request = self._begin(session_id, prompt, gen_config)
        except PromptTooLong as exc:
            yield _too_long(exc)
            return
        try:
            reply = []
            async for out in self.service.submit(request, asynchronous=True, resume=live.seq):
                reply.append(out.text)
                yield out
            self._end(live, turn, reply)
        finally:
            live.busy = False

    def chat_sync(
        self,
        session_id: int,
        prompt: str | list[dict[str, Any]] | tuple[str, Any],
        gen_config: GenerationConfig,
        adapter_name: str | None = None,
    ) -> Iterator[GenOut]:
        """`chat` for synchronous callers (the pipeline, the CLI)."""
        try:
            live, turn, request = self._begin(session_id, prompt, gen_config, adapter_name)
        except PromptTooLong as exc:
            yield _too_long(exc)
            return
        try:
            reply = []
            for out in self.service.submit(request, resume=live.seq):
                reply.append(out.text)
                yield out
            self._end(live, turn, reply)
        finally:
            live.busy = False
