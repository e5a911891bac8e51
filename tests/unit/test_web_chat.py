"""The web UI's service over the real session manager and engine loop, with fakes of the ports."""

import itertools
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from lmdeploy.adapters.cli import main as cli
from lmdeploy.adapters.webui.gradio_app import GradioMissing, require_gradio
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.application.configs import ChatTemplateConfig
from lmdeploy.application.engine import EngineLoop
from lmdeploy.application.generation import GenerationService
from lmdeploy.application.ports import ChatSettings
from lmdeploy.application.sessions import SessionManager
from lmdeploy.application.web_chat import LocalChatBackend, WebChatService
from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.errors import ChatTurnFailed, InvalidArgument
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.infrastructure.webui import server_url

from .fakes import CharTokenizer, CountingRunner


@pytest.fixture
def chat():
    scheduler = Scheduler(SchedulerConfig(4, 64, 64), BlockAllocator(32, 4))
    engine = EngineLoop(CountingRunner(num_blocks=32, block_size=4), scheduler)
    engine.start()
    service = GenerationService(
        engine, CharTokenizer(), builtin_template(ChatTemplateConfig("base")), session_len=64
    )
    sessions = SessionManager(service)
    yield SimpleNamespace(
        service=WebChatService(LocalChatBackend(sessions), "fake"),
        sessions=sessions,
        engine=engine,
    )
    engine.stop()


def test_reply_yields_the_growing_text_up_to_max_new_tokens(chat):
    sid = chat.service.open_session()
    replies = list(chat.service.reply(sid, "abc", ChatSettings(max_new_tokens=4)))
    assert replies[-1] == "defg"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(replies))


def test_the_session_keeps_the_conversation_until_reset(chat):
    sid = chat.service.open_session()
    list(chat.service.reply(sid, "abc", ChatSettings(max_new_tokens=2)))
    list(chat.service.reply(sid, "xy", ChatSettings(max_new_tokens=2)))
    assert [m["role"] for m in chat.sessions.get(sid).messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    chat.service.reset(sid)
    assert chat.sessions.get(sid) is None
    assert _blocks_come_back(chat.engine), "reset kept the session's KV blocks"


def _blocks_come_back(engine: EngineLoop, timeout: float = 5.0) -> bool:
    """The engine thread frees a released session's blocks on its next pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.num_free_blocks == stats.num_blocks:
            return True
        time.sleep(0.01)
    return False


def test_a_turn_past_the_session_length_asks_for_a_reset(chat):
    sid = chat.service.open_session()
    with pytest.raises(ChatTurnFailed, match="Reset"):
        list(chat.service.reply(sid, "a" * 80, ChatSettings()))


def test_an_empty_message_is_refused(chat):
    with pytest.raises(InvalidArgument, match="empty"):
        list(chat.service.reply(chat.service.open_session(), "  ", ChatSettings()))


def test_each_tab_gets_its_own_session_id(chat):
    ids = []
    threads = [
        threading.Thread(target=lambda: ids.extend(chat.service.open_session() for _ in range(50)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200


@pytest.mark.parametrize(
    "value, url",
    [
        ("http://10.0.0.1:23333", "http://10.0.0.1:23333"),
        ("https://llm.example.com", "https://llm.example.com"),
        ("0.0.0.0:23333", "http://0.0.0.0:23333"),
        ("./models/my-llama", None),
        ("internlm/internlm2_5-7b-chat", None),
        (None, None),
    ],
)
def test_a_url_names_an_api_server_and_anything_else_a_model(value, url):
    assert server_url(value) == url


def test_gradio_flags_reach_the_runner():
    calls = []
    factories = SimpleNamespace(run_gradio=lambda *a, **kw: calls.append((a, kw)))
    argv = ["serve", "gradio", "http://h:1", "--server_name", "127.0.0.1", "--server-port", "7"]
    assert cli.run(factories, argv + ["--session-len", "1024", "--tp", "1", "--share"]) == 0
    (model,), kwargs = calls[0]
    assert model == "http://h:1" and kwargs["server_name"] == "127.0.0.1"
    assert kwargs["server_port"] == 7 and kwargs["share"] is True
    assert kwargs["backend_config"].session_len == 1024


def test_a_missing_gradio_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(GradioMissing, match=r"pip install 'lmdeploy\[serve\]'"):
        require_gradio()
