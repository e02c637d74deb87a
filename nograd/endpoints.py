"""The one client factory: the `ModelClient` a run scores on, for the CLI and the service alike.

A run without `endpoint` scores on "this side's" model: the CLI builds an engine in-process (`local_client`), the
service sends batches through its queue to workers (it passes its own `local`). A run with `endpoint` scores on
the remote endpoint of that kind (`nograd.clients.kinds`), with the local copy of the served weights that kind
needs for soft prompts (vLLM's prompt_embeds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nograd.clients.endpoint import EndpointConfig, RemoteLimits
from nograd.clients.guard import check_url
from nograd.clients.kinds import ENDPOINT_KINDS, remote_client
from nograd.clients.local import LocalClient
from nograd.clients.protocol import ModelClient
from nograd.engine.factory import build_engine, shared_engine

from .config import ResolvedConfig
from .methods import METHODS


def local_client(
    config: ResolvedConfig, *, dtype: str | None = None, device: str | None = None, memory_cap_mb: float | None = None
) -> LocalClient:
    """The run's model in this process (dtype, device, memory cap: overrides of the config's)."""
    return LocalClient(
        build_engine(
            config.model,
            dtype=dtype or config.dtype,
            device=device or config.device,
            memory_cap_mb=memory_cap_mb or config.memory_cap_mb,
        )
    )


async def open_client(
    config: ResolvedConfig,
    *,
    local: Callable[[], Awaitable[ModelClient]],
    api_key: str | None = None,
    allow: tuple[str, ...] | None = None,
    limits: RemoteLimits | None = None,
    **options: Any,
) -> ModelClient:
    """The client `config` scores on: `await local()` without an endpoint, else the remote endpoint's client.

    Args:
        api_key: the remote endpoint's key (the caller looks up `endpoint.api_key_secret`).
        allow: the operator's allowlist, checked now and on every connection; None: no check (the CLI, on the
            user's own machine).
        limits: the operator's caps on response size and requests in flight (None: `RemoteLimits()`, the CLI's).
        options: passed to the remote client (`transport` in tests).
    """
    if config.endpoint is None:
        return await local()
    endpoint = EndpointConfig(**config.endpoint)
    if allow is not None:  # again at run time: the name may resolve elsewhere than at submit time
        await asyncio.to_thread(check_url, endpoint.base_url, allow)
    embedder = None
    if METHODS[config.method].needs_embeddings and ENDPOINT_KINDS[endpoint.kind].embeds_locally:
        embedder = await asyncio.to_thread(shared_engine, endpoint.embedder_model)
    return remote_client(endpoint, api_key, embedder=embedder, allow=allow, limits=limits, **options)
