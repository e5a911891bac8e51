"""Run the web UI: over the engine in this process (a model path) or an api_server (a URL)."""

from __future__ import annotations

import random
import re
from typing import Any

from ..adapters.http.api_client import APIClient
from ..adapters.webui.gradio_app import build_demo, launch, require_gradio
from ..adapters.webui.remote import RemoteChatBackend
from ..application.configs import ChatTemplateConfig, PytorchEngineConfig, TurbomindEngineConfig
from ..application.sessions import SessionManager
from ..application.web_chat import LocalChatBackend, WebChatService
from .factory import build_container
from .logging import setup_logging

# 0.6.5 also takes a bare "host:port" for an api_server.
_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$")
REMOTE_CONCURRENCY = 32  # the api_server queues what its engine cannot batch


def server_url(model_path_or_server: str | None) -> str | None:
    """The api_server URL that `model_path_or_server` names, or None for a model."""
    value = model_path_or_server or ""
    if value.startswith(("http://", "https://")):
        return value
    return f"http://{value}" if _HOST_PORT.match(value) else None


def remote_service(url: str, api_key: str | None = None) -> WebChatService:
    client = APIClient(url, api_key=api_key)
    models = client.available_models
    # Another UI or terminal client of the same server counts session ids from 1 too.
    return WebChatService(RemoteChatBackend(client), models[0], random.randrange(1 << 20, 1 << 30))


def run_gradio(
    model_path_or_server: str | None,
    server_name: str = "0.0.0.0",
    server_port: int = 6006,
    backend: str | None = None,
    backend_config: PytorchEngineConfig | TurbomindEngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    model_name: str | None = None,
    share: bool = False,
    max_log_len: int | None = None,
    log_level: str = "WARNING",
    **_: Any,
) -> None:
    setup_logging(log_level)
    require_gradio()  # before minutes of model loading
    url = server_url(model_path_or_server)
    if url is not None:
        launch(build_demo(remote_service(url)), server_name, server_port, share, REMOTE_CONCURRENCY)
        return
    container = build_container(
        model_path_or_server, backend_config, chat_template_config, backend, model_name, max_log_len
    )
    container.init_resources()
    try:
        generation = container.generation()
        service = WebChatService(
            LocalChatBackend(SessionManager(generation)), container.model_name()
        )
        # As many conversations generate at once as the engine batches.
        concurrency = container.scheduler().config.max_batch_size
        launch(build_demo(service), server_name, server_port, share, concurrency)
    finally:
        container.shutdown_resources()
