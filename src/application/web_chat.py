"""The web UI's use cases: open a conversation, stream the reply to a message, reset."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from ..domain.errors import ChatTurnFailed, InvalidArgument
from .configs import GenerationConfig
from .ports import ChatBackend, ChatSettings
from .sessions import SessionManager

TOP_K = 40  # what LMDeploy 0.6.5's web UI samples with; it has no slider


def gen_config_of(settings: ChatSettings) -> GenerationConfig:
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=TOP_K,
    )


class LocalChatBackend:
    """The engine in this process, through the same session manager the api_server uses."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    def stream_turn(self, session_id: int, prompt: str, settings: ChatSettings) -> Iterator[str]:
        for out in self._sessions.chat_sync(session_id, prompt, gen_config_of(settings)):
            if out.error:
                raise ChatTurnFailed(f"{out.error}; press Reset to start a new conversation")
            yield out.text

    def end_session(self, session_id: int) -> None:
        self._sessions.end(session_id)


class WebChatService:
    """One conversation per browser tab, each with its own session id."""

    def __init__(self, backend: ChatBackend, model_name: str, first_session_id: int = 1) -> None:
        self.model_name = model_name
        self._backend = backend
        self._ids = itertools.count(first_session_id)
        self._lock = threading.Lock()

    def open_session(self) -> int:
        with self._lock:
            return next(self._ids)

    def reply(self, session_id: int, message: str, settings: ChatSettings) -> Iterator[str]:
        """The reply so far, after each piece the backend streams."""
        if not message.strip():
            raise InvalidArgument("message", "the message is empty; type something first")
        text = ""
        for piece in self._backend.stream_turn(session_id, message, settings):
            text += piece
            yield text

    def reset(self, session_id: int) -> None:
        """End the conversation: the next message starts a new one."""
        self._backend.end_session(session_id)
