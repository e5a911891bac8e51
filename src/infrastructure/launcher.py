"""`lmdeploy.serve(...)`: start the api_server in a subprocess and return an APIClient to it."""

from __future__ import annotations

import atexit
import subprocess
import sys
import time
from dataclasses import fields
from typing import Any

import httpx

from ..adapters.http.api_client import APIClient
from ..application.configs import ChatTemplateConfig, PytorchEngineConfig, TurbomindEngineConfig


def _engine_flags(config: PytorchEngineConfig | TurbomindEngineConfig | None) -> list[str]:
    if config is None:
        return []
    flags = []
    for f in fields(config):
        value = getattr(config, f.name)
        name = "cache_block_seq_len" if f.name == "block_size" else f.name
        if value == f.default or value is None or isinstance(value, dict):
            continue
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else ([] if value is False else [flag, str(value)])
    return flags


def serve(
    model_path: str | None = None,
    model_name: str | None = None,
    backend: str = "turbomind",
    backend_config: TurbomindEngineConfig | PytorchEngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    server_name: str = "0.0.0.0",
    server_port: int = 23333,
    log_level: str = "ERROR",
    api_keys: list[str] | str | None = None,
    ssl: bool = False,
    startup_timeout: float = 300.0,
    **kwargs: Any,
) -> APIClient:
    """Run `lmdeploy serve api_server` in a subprocess; return an APIClient once it answers."""
    command = [sys.executable, "-m", "lmdeploy.infrastructure.entrypoint", "serve", "api_server"]
    command += [model_path] if model_path else []
    command += [
        "--server-name",
        server_name,
        "--server-port",
        str(server_port),
        "--log-level",
        log_level,
    ]
    command += [
        "--backend",
        "pytorch" if isinstance(backend_config, PytorchEngineConfig) else backend,
    ]
    command += ["--model-name", model_name] if model_name else []
    command += ["--chat-template", chat_template_config.model_name] if chat_template_config else []
    keys = [api_keys] if isinstance(api_keys, str) else list(api_keys or [])
    command += ["--api-keys", *keys] if keys else []
    command += ["--ssl"] if ssl else []
    command += _engine_flags(backend_config)
    process = subprocess.Popen(command)
    atexit.register(process.terminate)
    host = "127.0.0.1" if server_name == "0.0.0.0" else server_name
    url = f"{'https' if ssl else 'http'}://{host}:{server_port}"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the api_server exited with code {process.returncode} during start-up"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2, verify=False).status_code == 200:
                client = APIClient(url, api_key=keys[0] if keys else None)
                client.process = process
                return client
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"the api_server did not answer on {url} within {startup_timeout:.0f} s")


def client(
    api_server_url: str = "http://0.0.0.0:23333", api_key: str | None = None, **kwargs: Any
) -> APIClient:
    return APIClient(api_server_url, api_key=api_key, **kwargs)
