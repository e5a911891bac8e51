"""Bearer-key check shared by the api_server and the proxy."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence

from fastapi import FastAPI, Request

from .errors import error_response


def install_api_key_check(
    app: FastAPI, api_keys: Sequence[str], open_paths: Collection[str] = ("/health",)
) -> None:
    """Every route but `open_paths` answers 401 unless `Authorization: Bearer <key>` names
    one of `api_keys`; no keys, no check."""
    if not api_keys:
        return

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if request.url.path not in open_paths:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not any(
                secrets.compare_digest(token, k) for k in api_keys
            ):
                return error_response(
                    401,
                    "invalid or missing API key; send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
        return await call_next(request)
