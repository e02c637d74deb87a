"""Browser-facing hardening: which requests reach the app when auth is off, the security headers every response
carries, the self-hosted API docs, and the operator key that guards `/metrics`.

`SecurityMiddleware` is plain ASGI (not `BaseHTTPMiddleware`, which buffers and breaks streaming): it decides from
the request line and headers alone, so a refused request is answered before any of its body is read.
"""

from __future__ import annotations

import hmac
import html
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..secrets import operator_key
from ..settings import Settings
from .deps import bearer_token
from .errors import Unauthorized

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# The dashboard and the docs load only their own files: scripts and styles from /static (no inline script or
# style element anywhere; style attributes set from script are CSSOM and allowed), API calls to this origin.
# Swagger UI's stylesheet draws its icons as data: SVGs. The prompt download is a blob: link (not a fetch).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityMiddleware:
    """Adds `SECURITY_HEADERS` to every HTTP response and, with auth off, serves only local, same-origin requests.

    With auth off the API has no credential a page must present, so any page the user's browser opens could use
    it: a DNS-rebinding page reaches it under its own host name (refused: only loopback `Host` headers are
    served), and a cross-origin form or fetch can send state-changing requests, multipart uploads included
    (refused: an `Origin` must be this `Host`, and `Sec-Fetch-Site` same-origin or none). With auth on, requests
    carry a bearer key that browsers never attach by themselves, so neither check is needed: a foreign page
    cannot act as the user, and the public host name is the operator's to choose.
    """

    def __init__(self, app: ASGIApp, *, auth: bool):
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name.decode() not in headers:  # a route may set its own (stricter) policy
                        headers.raw.append((name, value))
            await send(message)

        refusal = None if self.auth else local_request_problem(scope)
        if refusal is not None:
            status, detail = refusal
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def local_request_problem(scope: Scope) -> tuple[int, str] | None:
    """Why a request may not be served while auth is off, as (status, message), or None when it may."""
    headers = Headers(scope=scope)
    host = headers.get("host", "")
    name, port = _host_port(host, scope.get("scheme", "http"))
    if name is None:
        return 400, "missing or malformed Host header"
    if name not in LOOPBACK_HOSTS:
        return 421, (
            f"this server runs with auth off and answers only to localhost, 127.0.0.1 or [::1], not Host {host!r} "
            "(a page under another name may be a DNS-rebinding attack); open it as http://127.0.0.1:PORT, or turn "
            "auth on (NOGRAD_AUTH=true) to serve other host names"
        )
    if scope["method"] not in STATE_CHANGING:
        return None
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return 403, (
            f"cross-origin {scope['method']} refused (Sec-Fetch-Site: {fetch_site}): with auth off only pages of "
            "this server may change state; turn auth on to use the API from other origins"
        )
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        try:
            origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            origin_port = None
        if (parts.hostname, origin_port) != (name.strip("[]"), port) or parts.scheme not in DEFAULT_PORTS:
            return 403, (
                f"cross-origin {scope['method']} refused (Origin {origin!r} is not this server, {host!r}): with auth "
                "off only pages of this server may change state; turn auth on to use the API from other origins"
            )
    return None


def _host_port(host: str, scheme: str) -> tuple[str | None, int | None]:
    """A Host header as (lower-case name, port), the default port filled in; (None, None) when malformed."""
    host = host.strip().lower()
    if not host:
        return None, None
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port or DEFAULT_PORTS.get(scheme, 80)
    except ValueError:
        return None, None
    if parts.hostname is None or parts.path or parts.username is not None:
        return None, None
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return name, port


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - API docs</title>
  <link rel="icon" type="image/png" href="/static/vendor/swagger-favicon-32x32.png">
  <link rel="stylesheet" href="/static/vendor/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
  <script src="/static/vendor/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


def install(app: FastAPI, settings: Settings) -> None:
    """The middleware, `/docs` from the vendored Swagger UI (FastAPI's own page loads it from a CDN and runs an
    inline script the policy forbids; create the app with `docs_url=None, redoc_url=None`), and the operator key
    (`app.state.operator_key`, created on first start when the settings name none)."""
    app.add_middleware(SecurityMiddleware, auth=settings.auth)
    app.state.operator_key = operator_key(settings)
    page = DOCS_HTML.format(title=html.escape(app.title), openapi_url=html.escape(app.openapi_url or ""))

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI for this API, served from /static/vendor (no third-party origin sees the page)."""
        return HTMLResponse(page)


def require_operator(request: Request) -> None:
    """Dependency: the request carries the operator key as a bearer token (raises `Unauthorized` otherwise)."""
    token = bearer_token(request.headers.get("authorization", "")) or ""
    if not hmac.compare_digest(token.encode(), request.app.state.operator_key.encode()):
        raise Unauthorized(
            "this route needs the operator key: send 'Authorization: Bearer <key>' with NOGRAD_OPERATOR_KEY or "
            "the key in DATA_DIR/operator.key (tenant API keys are not accepted)"
        )
