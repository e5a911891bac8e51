"""A ChatBackend that keeps its conversations on a running api_server (/v1/chat/interactive)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from ...application.ports import ChatSettings
from ...application.web_chat import TOP_K
from ...domain.errors import ChatTurnFailed
from ..http.api_client import APIClient


class RemoteChatBackend:
    def __init__(self, client: APIClient) -> None:
        self._client = client

    def stream_turn(self, session_id: int, prompt: str, settings: ChatSettings) -> Iterator[str]:
        items = self._client.chat_interactive_v1(
            prompt,
            session_id=session_id,
            interactive_mode=True,
            stream=True,
            request_output_len=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=TOP_K,
        )
        try:
            for item in items:
                # The server's answer to a turn that no longer fits the session.
                if item["finish_reason"] == "length" and item["tokens"] == 0 and not item["text"]:
                    raise ChatTurnFailed(
                        "the conversation has reached the session length; press Reset to "
                        "start a new one"
                    )
                yield item["text"]
        except (RuntimeError, httpx.HTTPError) as exc:  # an error status; no answer at all
            raise ChatTurnFailed(str(exc)) from exc

    def end_session(self, session_id: int) -> None:
        self._client.end_session(session_id)
