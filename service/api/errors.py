"""API errors: one base class, mapped to HTTP in one handler; bodies use FastAPI's 422 shape so clients parse
one format ({"detail": [{"loc": [...], "msg": ..., "type": ...}]} for field errors, {"detail": "..."} else)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"detail": self.message}


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unauthorized(ApiError):
    status_code = 401


class TooLarge(ApiError):
    status_code = 413


class Invalid(ApiError):
    """A request field is invalid: `field` names it, the message says how to fix it."""

    status_code = 422

    def __init__(self, field: str, message: str, location: str = "body"):
        super().__init__(message)
        self.field, self.location = field, location

    def body(self) -> dict:
        return {"detail": [{"loc": [self.location, self.field], "msg": self.message, "type": "value_error"}]}


def install(app: FastAPI) -> None:
    from sqlalchemy.exc import DataError

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, _exc: DataError) -> JSONResponse:
        # The database refused a value the schema allows (e.g. a NUL character in a text field on PostgreSQL).
        return JSONResponse(
            {"detail": "a text field contains characters the store cannot hold (e.g. NUL); remove them"},
            status_code=422,
        )
