"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...domain.errors import InvalidArgument, LMDeployError


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "internal_error"
    if status == 401:
        kind = "authentication_error"
    return JSONResponse(
        status_code=status,
        content={
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_"),
            }
        },
    )


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "body"}


def _field_path(loc: tuple) -> list[str]:
    """A validation location without pydantic's union-member tags ('str', 'list[...]', 'Model')."""
    return [
        str(p)
        for p in loc
        if isinstance(p, int) or not (p in _TYPE_TAGS or "[" in p or p[:1].isupper())
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{}]
        # The deepest location names the field best (a union reports one error per member).
        first = max(errors, key=lambda e: len(_field_path(e.get("loc", ()))))
        param = ".".join(_field_path(first.get("loc", ()))) or None
        return error_response(
            400, f"{param or 'body'}: {first.get('msg', 'invalid request')}", param, "invalid_value"
        )

    @app.exception_handler(InvalidArgument)
    async def _invalid(_: Request, exc: InvalidArgument) -> JSONResponse:
        return error_response(400, str(exc), exc.argument, "invalid_value")

    @app.exception_handler(LMDeployError)
    async def _domain(_: Request, exc: LMDeployError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))
