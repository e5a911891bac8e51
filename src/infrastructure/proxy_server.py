"""Run the proxy: wire its container, build the app, serve."""

from __future__ import annotations

from ..adapters.http.proxy_app import create_proxy_app
from .container import ProxyContainer
from .logging import setup_logging
from .server import ssl_options


def run_proxy(
    server_name: str = "0.0.0.0",
    server_port: int = 8000,
    strategy: str = "min_expected_latency",
    api_keys: list[str] | str | None = None,
    ssl: bool = False,
    node_api_key: str | None = None,
    health_interval: float = 1.0,
    log_level: str = "WARNING",
) -> None:
    import uvicorn

    setup_logging(log_level)
    ssl_kwargs = ssl_options(ssl)
    container = ProxyContainer()
    container.config.from_dict(
        {
            "strategy": strategy,
            "api_keys": [api_keys] if isinstance(api_keys, str) else list(api_keys or ()),
            "node_api_key": node_api_key,
            "health_interval": health_interval,
        }
    )
    app = create_proxy_app(container.services())
    scheme = "https" if ssl else "http"
    print(
        f"lmdeploy proxy ({strategy}): serving on {scheme}://{server_name}:{server_port}",
        flush=True,
    )
    uvicorn.run(app, host=server_name, port=server_port, log_level=log_level.lower(), **ssl_kwargs)
