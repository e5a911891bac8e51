"""Error bodies: OpenAI's `{"error": {"message", "type", "param", "code"}}` (its client reads
it) and beside it LMDeploy 0.6.5's top-level `object: "error"`, `message`, `type`, `param` and
`code` (the HTTP status), so code written for either reads the error it expects."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...domain.errors import InvalidArgument, LMDeployError


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    kind = "invalid_request_error" if status < 500 else "internal_error"
    if status == 401:
        kind = "authentication_error"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_"),
        },
        "object": "error",
        "message": message,
        "type": kind,
        "param": param,
        "code": status,
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status, headers=headers, content=error_body(status, message, param, code)
    )


# 0.6.5's own checks of a request, with its messages: (the field's type, whether a value fails
# its check, the message). Other failures keep pydantic's message, prefixed by the field.
_CHECKS_0_6_5 = {
    "n": (int, lambda v: v <= 0, "The n `{}` must be a positive int."),
    "top_p": (float, lambda v: not 0 < v <= 1, "The top_p `{}` must be in (0, 1]."),
    "top_k": (int, lambda v: v < 0, "The top_k `{}` cannot be a negative integer."),
    "temperature": (float, lambda v: not 0 <= v <= 2, "The temperature `{}` must be in [0, 2]"),
}


def _validation_message(param: str | None, error: dict) -> str:
    check = _CHECKS_0_6_5.get(param or "")
    value = error.get("input")
    if check is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        kind, fails, message = check
        if fails(value):
            return message.format(kind(value))
    return f"{param or 'body'}: {error.get('msg', 'invalid request')}"


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "body"}


def _field_path(loc: tuple) -> list[str]:
    """A validation location without pydantic's union-member tags ('str', 'list[...]', 'Model')."""
    return [
        str(p)
        for p in loc
        if isinstance(p, int) or not (p in _TYPE_TAGS or "[" in p or p[:1].isupper())
    ]


def _not_json(error: dict) -> JSONResponse:
    """FastAPI reports a body it could not parse at loc ('body', <character offset>)."""
    where = next((f" at character {p}" for p in error.get("loc", ()) if isinstance(p, int)), "")
    reason = (error.get("ctx") or {}).get("error", "JSON decode error")
    return error_response(
        400,
        f"the request body is not valid JSON ({reason}{where}); send a JSON object",
        code="invalid_json",
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{}]
        if errors[0].get("type") == "json_invalid":
            return _not_json(errors[0])
        # The deepest location names the field best (a union reports one error per member).
        first = max(errors, key=lambda e: len(_field_path(e.get("loc", ()))))
        param = ".".join(_field_path(first.get("loc", ()))) or None
        return error_response(400, _validation_message(param, first), param, "invalid_value")

    @app.exception_handler(InvalidArgument)
    async def _invalid(_: Request, exc: InvalidArgument) -> JSONResponse:
        return error_response(400, str(exc), exc.argument, "invalid_value")

    @app.exception_handler(LMDeployError)
    async def _domain(_: Request, exc: LMDeployError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own headers, e.g. `Allow` on a 405, which HTTP requires there.
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)
