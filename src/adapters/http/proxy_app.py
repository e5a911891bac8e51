"""The proxy's FastAPI app: node management, the OpenAI routes forwarded to nodes, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from ...application.proxy import (
    Forwarded,
    Forwarder,
    HealthMonitor,
    NodeTable,
    NoHealthyNode,
    UnknownModel,
    UpstreamError,
)
from .auth import install_api_key_check
from .errors import error_response, install_error_handlers
from .protocol import ModelCard, ModelList


@dataclass
class ProxyServices:
    table: NodeTable
    forwarder: Forwarder
    monitor: HealthMonitor
    api_keys: tuple[str, ...] = ()
    close: Callable[[], Awaitable[None]] | None = None  # releases the pooled client
    tasks: list[asyncio.Task] = field(default_factory=list)


class NodeStatusIn(BaseModel):
    models: list[str] | None = None
    speed: float | None = None


class NodeIn(BaseModel):
    url: str
    status: NodeStatusIn | None = None


def create_proxy_app(svc: ProxyServices) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc.tasks.append(asyncio.create_task(svc.monitor.run()))
        yield
        for task in svc.tasks:
            task.cancel()
        if svc.close is not None:
            await svc.close()

    app = FastAPI(title="lmdeploy proxy", version="0.1.0", docs_url="/docs", lifespan=lifespan)
    install_error_handlers(app)
    install_api_key_check(app, svc.api_keys)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=m, root=m) for m in svc.table.model_names()])

    @app.get("/nodes/status")
    async def nodes_status() -> dict[str, dict]:
        """Every registered node: its models, requests in flight, recent latencies (s),
        speed, and whether it answers health probes."""
        return {url: status.as_dict() for url, status in svc.table.items()}

    @app.post("/nodes/add")
    async def nodes_add(node: NodeIn) -> Response:
        """Add an api_server. Its models come from its /v1/models, or from `status.models`
        while it does not answer yet (it joins when its /health answers)."""
        if not node.url.startswith(("http://", "https://")):
            return error_response(
                400, f"url must start with http:// or https://, got {node.url!r}", "url"
            )
        url = node.url.rstrip("/")
        given = node.status or NodeStatusIn()
        healthy = await svc.monitor.probe.healthy(url)
        status = svc.table.add(url, given.models or (), given.speed, healthy=healthy)
        if healthy:
            await svc.monitor.refresh_models(url)
        if not status.models and not healthy:
            svc.table.remove(url)
            return error_response(
                400,
                f"the node {url} does not answer and no status.models was given; "
                "start it first or pass its models",
                "url",
            )
        return JSONResponse("Added successfully")

    @app.post("/nodes/remove")
    async def nodes_remove(node_url: str) -> Response:
        if not svc.table.remove(node_url):
            return error_response(
                404, f"no node {node_url} is registered (see /nodes/status)", "node_url"
            )
        return JSONResponse("Deleted successfully")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _forward(svc.forwarder, request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _forward(svc.forwarder, request, "/v1/completions")

    return app


async def _forward(forwarder: Forwarder, request: Request, path: str) -> Response:
    """Pass the body through untouched; read only `model` and `stream` from it."""
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except ValueError:
        return error_response(400, "the body must be a JSON object", code="invalid_json")
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(model, str):
        return error_response(400, "model: a model name is required (GET /v1/models)", "model")
    stream = bool(payload.get("stream"))
    auth = request.headers.get("authorization")
    try:
        fwd = await forwarder.forward(
            model, path, raw, {"Authorization": auth} if auth else {}, stream
        )
    except UnknownModel as exc:
        return error_response(404, str(exc), "model", "model_not_found")
    except NoHealthyNode as exc:
        return error_response(503, str(exc), "model", "no_healthy_node")
    media_type = fwd.headers.get("content-type", "application/json")
    if stream and fwd.status_code == 200 and media_type.startswith("text/event-stream"):
        return StreamingResponse(_events(fwd), media_type=media_type)
    try:
        content = b"".join([chunk async for chunk in fwd.body()])
    except UpstreamError as exc:
        return error_response(
            502, f"the node {fwd.url} broke off its reply: {exc}", code="bad_gateway"
        )
    return Response(content, status_code=fwd.status_code, media_type=media_type)


async def _events(fwd: Forwarded) -> AsyncIterator[bytes]:
    """Forward whole server-sent events as they arrive, so that a node breaking off
    mid-stream leaves no half event: the client then reads an error event and [DONE]."""
    pending = b""
    try:
        async for chunk in fwd.body():
            pending += chunk
            complete, sep, pending = pending.rpartition(b"\n\n")
            if sep:
                yield complete + sep
        if pending:
            yield pending
    except UpstreamError as exc:
        error = {
            "error": {
                "message": f"the node {fwd.url} broke off the stream: {exc}; retry the request",
                "type": "internal_error",
                "param": None,
                "code": "upstream_disconnected",
            }
        }
        yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
