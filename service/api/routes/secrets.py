"""Tenant secrets: remote API keys a job names in `endpoint.api_key_secret`. Write-only: values never come back."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from nograd.service.secrets import NAME

from ..deps import CurrentTenant, StoreDep
from ..errors import Invalid, NotFound

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


class SecretCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, description="letters, digits, _ . - (e.g. openai)")
    value: SecretStr = Field(description="the API key; stored encrypted, never returned")


class SecretPublic(BaseModel):
    name: str
    created_at: float


class SecretsPublic(BaseModel):
    data: list[SecretPublic]
    count: int


def _box(request: Request):
    return request.app.state.secret_box


@router.post("", status_code=201, response_model=SecretPublic)
async def put_secret(body: SecretCreate, request: Request, tenant: CurrentTenant, store: StoreDep) -> dict:
    """Store (or replace) a secret under a name."""
    if not NAME.match(body.name):
        raise Invalid("name", "use 1-100 letters, digits, '_', '.' or '-'")
    value = body.value.get_secret_value()
    if not value or len(value) > 4096:
        raise Invalid("value", "must be 1-4096 characters")
    token = _box(request).seal(value)
    return await asyncio.to_thread(store.put_secret, tenant, body.name, token)


@router.get("", response_model=SecretsPublic)
def list_secrets(tenant: CurrentTenant, store: StoreDep) -> dict:
    """This tenant's secret names (never their values)."""
    rows = store.list_secrets(tenant)
    return {"data": rows, "count": len(rows)}


@router.delete("/{name}", status_code=204)
def delete_secret(name: str, tenant: CurrentTenant, store: StoreDep) -> Response:
    if not store.delete_secret(tenant, name):
        raise NotFound(f"secret {name!r} not found")
    return Response(status_code=204)
