"""The web UI's service over a real api_server: what `lmdeploy serve gradio URL` runs."""

import pytest

from lmdeploy.application.ports import ChatSettings
from lmdeploy.domain.errors import ChatTurnFailed
from lmdeploy.infrastructure.webui import remote_service


def test_replies_stream_from_the_server_and_reset_ends_the_session(server):
    chat = remote_service(server.url, api_key=server.api_key)
    assert chat.model_name == "SmolLM2-135M-Instruct"
    sid = chat.open_session()
    replies = list(chat.reply(sid, "Tell me a story about a cat.", ChatSettings(max_new_tokens=16)))
    assert replies and replies[-1]
    assert all(b.startswith(a) for a, b in zip(replies, replies[1:], strict=False))
    assert server.wait_idle(timeout=2)["num_free_blocks"] < server.stats()["num_blocks"], (
        "the server did not keep the session's KV cache"
    )
    chat.reset(sid)
    stats = server.wait_idle()
    assert stats["num_free_blocks"] == stats["num_blocks"], "reset did not end the session"


def test_a_turn_past_the_session_length_asks_for_a_reset(server):
    chat = remote_service(server.url, api_key=server.api_key)
    with pytest.raises(ChatTurnFailed):
        list(chat.reply(chat.open_session(), "hello " * 3000, ChatSettings()))
