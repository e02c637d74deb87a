"""What every HTTP request leaves behind: a request id, one access log line and the HTTP metrics.

A pure ASGI middleware, outermost, so it sees every response, refusals of the outer checks included (a 401 of
`limits.RequestLimits`, a 403 of `security`):

- **Request id**: the client's `X-Request-ID` when it is 1-128 characters of `[A-Za-z0-9._-]`, else a new one;
  bound (`nograd.service.logs`) for everything the request logs, and sent back in the response's `X-Request-ID`.
- **Access line** (logger `nograd.access`): the peer's address, method, path (never the query string), status
  and milliseconds, with the route template; health probes and `/metrics` at DEBUG, so probes do not flood the log.
- **Metrics**: `nograd_http_requests_total{method,route,status}` and `nograd_http_request_seconds{method,route}`.
  `route` is the matched route's template (`/v1/jobs/{job_id}`), `unmatched` for a path no route knows, and
  `method` one of the HTTP methods or `other`, so the label sets stay bounded whatever clients send. A request is
  counted when its response ends; an event stream therefore when the stream ends, and its latency is the time to
  the stream's headers (the stream's lifetime is not latency).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import logs

log = logging.getLogger("nograd.access")

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Paths polled by probes and scrapers: their access lines are DEBUG.
QUIET_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: its valid `X-Request-ID`, else a new random one (32 hex digits)."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            given = value.decode("latin-1")
            if VALID_REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class RouteTemplates:
    """The route template a path would be routed to, for requests refused before routing (a 401 of
    `RequestLimits`, a 403 of `security`): the templates of the app's OpenAPI schema, then the paths of its
    top-level routes outside it (the dashboard, `/docs`, the `/static` mount), first match wins. Built once, off the
    event loop while the app starts (`RequestTelemetry` on the lifespan scope): building the schema takes ~0.2 s,
    which on the loop would stall every request of the moment."""

    def __init__(self, api):
        self.api = api
        self._table: list[tuple[re.Pattern, str]] | None = None

    def build(self) -> None:
        if self._table is None:
            self._table = self._build()

    def _build(self) -> list[tuple[re.Pattern, str]]:
        table = [(compile_path(path)[0], path) for path in self.api.openapi().get("paths", {})]
        for route in self.api.routes:
            path = getattr(route, "path", None)
            if isinstance(route, Mount) and path:
                table.append((compile_path(path + "/{path:path}")[0], path))
            elif isinstance(path, str) and path.startswith("/"):
                table.append((compile_path(path)[0], path))
        return table

    def match(self, path: str) -> str:
        if self._table is None:
            self._table = self._build()
        return next((template for pattern, template in self._table if pattern.match(path)), UNMATCHED)


#: Statuses of requests refused before any work (no key, a forbidden Host/Origin, too large, over a quota): a flood
#: of them is what an attacker sends, so their access lines are rate-limited (`RefusalLines`); metrics count them all.
REFUSALS = frozenset({401, 403, 413, 429})


class RefusalLines:
    """At most `per_second` access lines of refused requests each second; the ones left out are counted and said
    in one line when the next second's first refusal is logged, so a flood of refusals cannot flood the log (or
    spend the event loop's time writing it)."""

    def __init__(self, per_second: int = 20, clock=time.monotonic):
        self.per_second, self.clock = per_second, clock
        self.second, self.logged, self.dropped = -1, 0, 0

    def admit(self) -> bool:
        second = int(self.clock())
        if second != self.second:
            if self.dropped:
                log.warning("%d more refused requests in the previous second were not logged", self.dropped)
            self.second, self.logged, self.dropped = second, 0, 0
        if self.logged < self.per_second:
            self.logged += 1
            return True
        self.dropped += 1
        return False


class RequestTelemetry:
    """Args:
    app: the ASGI app.
    metrics: the app's `Metrics` (its `on_request` records one request).
    api: the FastAPI app, whose routes name the template of a request refused before routing.
    """

    def __init__(self, app: ASGIApp, *, metrics, api):
        self.app, self.metrics, self.templates = app, metrics, RouteTemplates(api)
        self.refusals = RefusalLines()

    def route(self, scope: Scope) -> str:
        """The template of the route `scope` went to (or would have gone to, had it been routed)."""
        template = getattr(scope.get("route"), "path", None)
        return template or self.templates.match(scope["path"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await asyncio.to_thread(self.templates.build)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope["headers"])
        started = time.perf_counter()
        status, headers_at, stream = 500, None, False

        async def tagged(message: Message) -> None:
            nonlocal status, headers_at, stream
            if message["type"] == "http.response.start":
                status, headers_at = message["status"], time.perf_counter()
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                stream = headers.get("content-type", "").startswith("text/event-stream")
            await send(message)

        with logs.bound(request_id=rid):
            try:
                await self.app(scope, receive, tagged)
            finally:  # an exception after the response started keeps its status; before it, a 500
                ended = time.perf_counter()
                seconds = (headers_at if stream and headers_at is not None else ended) - started
                try:
                    self._record(scope, status, seconds, ended - started)
                except Exception:  # bookkeeping never fails a request that was answered
                    log.exception("recording the request failed")

    def _record(self, scope: Scope, status: int, seconds: float, total: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = self.route(scope)
        self.metrics.on_request(method, route, status, seconds)
        level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
        if not log.isEnabledFor(level) or (status in REFUSALS and not self.refusals.admit()):
            return
        path = CONTROL.sub("?", scope["path"])  # no line breaks or escapes from a client into a text log
        client = (scope.get("client") or ("-",))[0]  # the peer: behind a proxy, the proxy
        log.log(
            level,
            "%s %s %s %d %.1f ms",
            client,
            method,
            path,
            status,
            total * 1000,
            extra={
                "client": client,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(total * 1000, 3),
            },
        )
