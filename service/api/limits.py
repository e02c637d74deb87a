"""Request limits enforced before any work: the body size of every route (while the body streams in, chunked
bodies included) and, with auth on, the API key of any request that carries a body, checked before a byte of it
is read or spooled. A pure ASGI middleware: it sees the request before routing, dependencies and form parsing."""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import INVALID_KEY, MISSING_KEY, TENANT_STATE, bearer_token

UPLOAD_PATHS = ("/v1/datasets",)
#: Room for the multipart framing and form fields around an uploaded file.
FORM_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit: FastAPI passes HTTPExceptions through body parsing
    (any other error there would become a 400)."""

    def __init__(self, limit: int, setting: str):
        super().__init__(
            413,
            f"request body larger than {limit / 2**20:g} MB; send less or ask the operator to raise {setting}",
            # The rest of the body is never read: the server hangs up after the response.
            headers={"Connection": "close"},
        )


class RequestLimits:
    """Args:
    app: the ASGI app.
    max_body: bytes any request body may have (`NOGRAD_MAX_BODY_MB`).
    max_upload: bytes a dataset upload may have (`NOGRAD_MAX_UPLOAD_MB`, plus the form's framing).
    authenticate: `key -> tenant or None` (a blocking store lookup, run in a thread), or None with auth off.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int, authenticate=None):
        self.app, self.max_body, self.max_upload, self.authenticate = app, max_body, max_upload, authenticate

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] in ("POST", "PUT") and scope["path"].rstrip("/") in UPLOAD_PATHS:
            return self.max_upload + FORM_OVERHEAD, "NOGRAD_MAX_UPLOAD_MB"
        return self.max_body, "NOGRAD_MAX_BODY_MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        limit, setting = self._limit(scope)
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        has_body = (length not in ("", "0")) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length.isdigit() and int(length) > limit:
            return await _reply(send, 413, BodyTooLarge(limit, setting).detail)
        if has_body and self.authenticate is not None and scope["path"].startswith("/v1/"):
            # Who sends a body must be known before it is read: an anonymous 600 MB body costs one header check.
            token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            tenant = None if token is None else await asyncio.to_thread(self.authenticate, token)
            if tenant is None:
                message = MISSING_KEY if token is None else INVALID_KEY
                return await _reply(send, 401, message, {"www-authenticate": "Bearer"})
            scope.setdefault("state", {})[TENANT_STATE] = tenant  # the route's dependency does not look it up again

        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, limited if has_body else receive, send)


async def _reply(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    # The client may still be sending: the server closes the connection after this response.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
