"""Dependencies shared by the routes: settings, store, queue, the current tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from nograd.service import logs
from nograd.service.queue import BatchQueue, QueueError
from nograd.service.settings import Settings
from nograd.service.store import Store

from .errors import Unauthorized

LOCAL_TENANT = "local"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_queue(request: Request) -> BatchQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
QueueDep = Annotated[BatchQueue, Depends(get_queue)]


async def live_workers(queue: BatchQueue) -> list[dict] | None:
    """The live workers, or None when the queue does not answer (Redis away: the API's handle gives up after
    `ready_timeout`)."""
    try:
        return await queue.workers()
    except QueueError:
        return None


def model_names(settings: Settings, workers: list[dict] | None) -> set[str]:
    """Models jobs may use: those the operator configured and those live workers serve (None: unknown, the
    configured ones only)."""
    return set(settings.models) | {name for worker in workers or [] for name in worker.get("models", {})}


MISSING_KEY = (
    "missing API key: send 'Authorization: Bearer <key>' (an operator creates keys with "
    "`nograd keys create --tenant NAME`)"
)
INVALID_KEY = "invalid API key"
#: Where `limits.RequestLimits` leaves the tenant it authenticated (ASGI scope state), so the key is looked up once.
TENANT_STATE = "tenant"


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None when there is none."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def current_tenant(request: Request, settings: SettingsDep, store: StoreDep) -> str:
    """The tenant of the request's bearer API key (`local` when auth is off); the request's log lines name it from
    here on."""
    tenant = _tenant_of(request, settings, store)
    logs.annotate(tenant=tenant)
    return tenant


def _tenant_of(request: Request, settings: Settings, store: Store) -> str:
    if not settings.auth:
        return LOCAL_TENANT
    known = getattr(request.state, TENANT_STATE, None)
    if known is not None:
        return known
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise Unauthorized(MISSING_KEY)
    tenant = store.tenant_for_key(token)
    if tenant is None:
        raise Unauthorized(INVALID_KEY)
    return tenant


CurrentTenant = Annotated[str, Depends(current_tenant)]
