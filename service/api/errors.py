"""API errors: one base class, mapped to HTTP in one handler; bodies use FastAPI's 422 shape so clients parse
one format ({"detail": [{"loc": [...], "msg": ..., "type": ...}]} for field errors, {"detail": "..."} else)."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"detail": self.message}

    def headers(self) -> dict[str, str] | None:
        return None


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unauthorized(ApiError):
    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class TooLarge(ApiError):
    status_code = 413


class TooMany(ApiError):
    """Over a tenant quota: `retry_after` (seconds, sent as Retry-After) when waiting helps; None when the tenant
    must free something first (the message says what)."""

    status_code = 429

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class Invalid(ApiError):
    """A request field is invalid: `field` names it, the message says how to fix it."""

    status_code = 422

    def __init__(self, field: str, message: str, location: str = "body"):
        super().__init__(message)
        self.field, self.location = field, location

    def body(self) -> dict:
        return {"detail": [{"loc": [self.location, self.field], "msg": self.message, "type": "value_error"}]}


def _plain(value, depth: int = 0):
    """A validation error's detail as JSON can hold it: non-finite floats as their names (JSON has no NaN), long
    or deep inputs cut (the error echoes what was sent; it must not echo a megabyte back or fail to render)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, bytes)) and len(value) > 200:
        return f"{value[:200]!s}..."
    if depth > 8:
        return "..."
    if isinstance(value, dict):
        return {str(k)[:200]: _plain(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value[:50]]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)[:200]


def install(app: FastAPI) -> None:
    from fastapi.encoders import jsonable_encoder
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from sqlalchemy.exc import DataError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..queue import QueueError

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _plain(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's body parser gives a bare "error parsing the body" for JSON nested past Python's recursion
            # limit (a nesting bomb); say what was wrong, in the field-error shape.
            message = "the JSON body is nested too deeply to read; send the object the schema describes (GET /docs)"
            return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "json_invalid"}]}, 422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(QueueError)
    async def _queue_error(_request: Request, exc: QueueError) -> JSONResponse:
        # The API's queue handle gives up after `ready_timeout` (Redis down or hung): answer now, never hang.
        logging.getLogger("nograd.api").warning("queue unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the batch queue (Redis) is not answering; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, _exc: DataError) -> JSONResponse:
        # The database refused a value the schema allows (e.g. a NUL character in a text field on PostgreSQL).
        return JSONResponse(
            {"detail": "a text field contains characters the store cannot hold (e.g. NUL); remove them"},
            status_code=422,
        )
