"""The api_server FastAPI app: OpenAI routes, the interactive route, health, stats, metrics
and docs."""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from ...domain.errors import PromptTooLong
from . import metrics, routes_encode, routes_interactive, routes_openai
from .auth import install_api_key_check
from .errors import error_response, install_error_handlers
from .openapi import install_openapi
from .protocol import ModelCard, ModelList
from .services import ServerServices

UNAUTHENTICATED = {"/health"}


def create_app(svc: ServerServices) -> FastAPI:
    app = FastAPI(title="lmdeploy api_server", version="0.1.0", docs_url="/docs")
    app.dependency_overrides[routes_openai.services] = lambda: svc
    install_error_handlers(app)

    @app.exception_handler(PromptTooLong)
    async def _too_long(_: Request, exc: PromptTooLong):
        return error_response(400, str(exc), "messages", "context_length_exceeded")

    install_api_key_check(app, svc.api_keys, UNAUTHENTICATED)

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/health")
    async def health():
        failure = svc.failure()
        if failure is not None:  # load balancers and the proxy take this node out
            return JSONResponse({"status": "unhealthy", "error": failure}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        # As 0.6.5: the base model, then each LoRA adapter as a model of its own.
        names = (svc.model_name, *svc.generation.adapter_names)
        return ModelList(data=[ModelCard(id=name, root=svc.model_name) for name in names])

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        """Engine counters: KV blocks free and total, running and waiting sequences. Read off
        the event loop: an engine in its own process answers through a pipe round trip."""
        return dataclasses.asdict(await asyncio.to_thread(svc.stats))

    app.state.metrics = metrics.registry_for(svc.stats, svc.ttft)  # per app: no global registry
    app.include_router(metrics.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_interactive.router)
    app.include_router(routes_encode.router)
    install_openapi(app, UNAUTHENTICATED if svc.api_keys else None)
    return app
