"""Bearer-key check shared by the api_server and the proxy."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response


class _ApiKeyCheck:
    """A plain ASGI middleware: it looks at the request's headers once and then hands the
    app the original `send`. (Starlette's `@app.middleware("http")` would relay every chunk of
    a streamed response through a memory stream: per token, on the server's event loop.)"""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str], open_paths: Collection[str]) -> None:
        self.app = app
        self.api_keys = tuple(api_keys)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "invalid or missing API key; send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and any(
            secrets.compare_digest(token, key) for key in self.api_keys
        )


def install_api_key_check(
    app: FastAPI, api_keys: Sequence[str], open_paths: Collection[str] = ("/health",)
) -> None:
    """Every route but `open_paths` answers 401 unless `Authorization: Bearer <key>` names
    one of `api_keys`; no keys, no check."""
    if api_keys:
        app.add_middleware(_ApiKeyCheck, api_keys=api_keys, open_paths=open_paths)
