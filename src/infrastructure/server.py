"""Run the api_server: wire a container, build the app, register with a proxy, serve."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from ..adapters.http.app import create_app
from ..adapters.http.services import ServerServices
from ..application.configs import ChatTemplateConfig, PytorchEngineConfig, TurbomindEngineConfig
from ..application.sessions import SessionManager
from . import engine_process
from .factory import build_container
from .logging import setup_logging

logger = logging.getLogger("lmdeploy.server")


def build_services(container, api_keys: list[str] | None) -> ServerServices:
    generation = container.generation()
    return ServerServices(
        generation=generation,
        sessions=SessionManager(generation),
        stats=generation.engine.stats,
        model_name=container.model_name(),
        api_keys=tuple(api_keys or ()),
        ttft=generation.engine.ttft.snapshot,
        failure=lambda: generation.engine.failure,
    )


def _proxy(
    proxy_url: str | None,
    action: str,
    node_url: str,
    model_name: str,
    api_keys: list[str] | None,
) -> None:
    """Join (or leave) a proxy. The server's own first key authenticates it there; its model
    is announced because the proxy may ask before this server listens."""
    if not proxy_url:
        return
    import httpx

    base = proxy_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_keys[0]}"} if api_keys else {}
    try:
        if action == "add":
            body = {"url": node_url, "status": {"models": [model_name]}}
            response = httpx.post(f"{base}/nodes/add", json=body, headers=headers, timeout=10)
        else:
            response = httpx.post(
                f"{base}/nodes/remove", params={"node_url": node_url}, headers=headers, timeout=10
            )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("could not %s this server at the proxy %s: %s", action, proxy_url, exc)


def _leave_on_shutdown(app, leave) -> None:
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            yield state
        leave()

    app.router.lifespan_context = lifespan


def ssl_options(ssl: bool) -> dict[str, str]:
    """uvicorn's TLS arguments, from SSL_KEYFILE and SSL_CERTFILE as 0.6.5 reads them."""
    if not ssl:
        return {}
    keyfile, certfile = os.environ.get("SSL_KEYFILE"), os.environ.get("SSL_CERTFILE")
    if not keyfile or not certfile:
        raise ValueError("--ssl needs the environment variables SSL_KEYFILE and SSL_CERTFILE")
    return {"ssl_keyfile": keyfile, "ssl_certfile": certfile}


def run_api_server(
    model_path: str | None,
    backend: str | None = None,
    backend_config: PytorchEngineConfig | TurbomindEngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    server_name: str = "0.0.0.0",
    server_port: int = 23333,
    api_keys: list[str] | str | None = None,
    ssl: bool = False,
    model_name: str | None = None,
    log_level: str = "ERROR",
    proxy_url: str | None = None,
    max_log_len: int | None = None,
    **_: Any,
) -> None:
    import uvicorn

    setup_logging(log_level)
    ssl_kwargs = ssl_options(ssl)
    if isinstance(api_keys, str):
        api_keys = [api_keys]
    container_args = dict(
        model_path=model_path,
        backend_config=backend_config,
        chat_template_config=chat_template_config,
        backend=backend,
        model_name=model_name,
        max_log_len=max_log_len,
    )
    container = build_container(**container_args)
    if engine_process.wanted(container):
        engine_process.attach(
            container, engine_process.EngineProcessArgs(container_args, log_level)
        )
    container.init_resources()
    app = create_app(build_services(container, api_keys))
    node_url = f"{'https' if ssl else 'http'}://{server_name}:{server_port}"
    _proxy(proxy_url, "add", node_url, container.model_name(), api_keys)

    # Leave the proxy and stop the engine (its process, when it has one) from the app's
    # shutdown: uvicorn re-raises SIGTERM once it has stopped, which ends the process before
    # a `finally` after uvicorn.run would run.
    def leave() -> None:
        _proxy(proxy_url, "remove", node_url, container.model_name(), api_keys)
        container.shutdown_resources()

    _leave_on_shutdown(app, leave)
    print(f"lmdeploy api_server: serving {container.model_name()} on {node_url}", flush=True)
    try:
        uvicorn.run(
            app, host=server_name, port=server_port, log_level=log_level.lower(), **ssl_kwargs
        )
    finally:
        container.shutdown_resources()
