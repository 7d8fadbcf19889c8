"""OpenAI-style errors: every refusal is `{"error": {"message", "type", "param", "code"}}`.

Handlers turn our `APIError`, FastAPI/pydantic validation errors and anything unexpected into
that shape, so a client always learns what was wrong and the server keeps serving."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.status, self.message, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


_BRANCHES = {"str", "int", "float", "bool", "none"}


def _loc(loc) -> str | None:
    """'messages.0.content.0' from pydantic's loc, without union branch labels like 'str'."""
    keep = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _BRANCHES or "[" in p))]
    return ".".join(keep) or None


def validation_error(e: ValidationError | RequestValidationError) -> APIError:
    """The first problem pydantic found, as '<field>: <what is wrong>' (OpenAI answers 400)."""
    # A value that matches no branch of a union fails once per branch; the deepest error is the
    # one that says what is wrong (e.g. the bad part inside a content list, not "not a string").
    err = max(e.errors(), key=lambda x: len(x.get("loc", ())))
    param = _loc(err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return APIError(400, f"unknown field '{param}'; remove it (see the OpenAI chat completions "
                             f"reference for the supported fields)", "unknown_field", param)
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {err.get('msg')}", "invalid_json")
    msg = err.get("msg", "invalid value")
    got = err.get("input")
    shown = repr(got)[:80] if got is not None and not isinstance(got, (dict, list)) else None
    return APIError(400, f"{param}: {msg}" + (f" (got {shown})" if shown else ""), "invalid_value", param)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        return validation_error(e).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            return APIError(404, f"no route {request.method} {request.url.path}; the API lives under "
                                 f"/v1 (chat/completions, models)", "not_found").response()
        if e.status_code == 405:
            return APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                            "method_not_allowed").response()
        return APIError(e.status_code, str(e.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):
        log.exception("unexpected error while serving a request")
        return APIError(500, f"internal error: {type(e).__name__}: {e}", "internal_error").response()
