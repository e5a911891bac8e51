"""The api_server's OpenAPI document, made to say what the server does.

FastAPI documents a 422 with its own body for invalid requests; this server answers 400 with
OpenAI's error body (errors.py). The document also names the 401 (when API keys are set), the
404 of an unknown model, the 500 of an engine failure, and the streamed media types, so that
a client (or a fuzzer) generated from it expects what it gets.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
ERROR_RESPONSE_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}
# Routes that choose a model (404 for another) and run the engine (500 when it fails), with
# the media type of their streamed replies.
GENERATION_ROUTES = {
    "/v1/chat/completions": "text/event-stream",
    "/v1/completions": "text/event-stream",
    "/v1/chat/interactive": "application/x-ndjson",
}
OPENAI_ROUTES = {"/v1/chat/completions", "/v1/completions"}
# A server-sent event's `data` is one JSON chunk, an `{"error": ...}` object, or `[DONE]`;
# an ndjson reply is its lines of JSON.
STREAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "text/event-stream": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    },
    "application/x-ndjson": {"type": "string"},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _document_operation(path: str, op: dict[str, Any], authenticated: bool) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    if "requestBody" in op:
        responses["400"] = _error("Invalid request: the error names the field (`param`)")
    if authenticated:
        responses["401"] = _error("Missing or wrong API key")
    if path in OPENAI_ROUTES:
        responses["404"] = _error("The model named in the request is not served here")
    if path in GENERATION_ROUTES:
        responses["500"] = _error("The engine failed while computing the request; retry it")
        ok = responses.setdefault("200", {"description": "Successful Response"})
        media = GENERATION_ROUTES[path]
        ok.setdefault("content", {})[media] = {"schema": STREAM_SCHEMAS[media]}
        ok["description"] = f"The reply; with `stream: true`, {media} chunks"


def install_openapi(app: FastAPI, unauthenticated: set[str] | None = None) -> None:
    """`unauthenticated`: the paths open without a key (None: no keys are set)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["ErrorResponse"] = ERROR_RESPONSE_SCHEMA
            for path, operations in schema.get("paths", {}).items():
                authenticated = unauthenticated is not None and path not in unauthenticated
                for op in operations.values():
                    _document_operation(path, op, authenticated)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
