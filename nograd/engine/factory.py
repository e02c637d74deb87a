"""The one place engines are built: by model name, for the CLI, the service's workers and the vLLM embedder."""

from __future__ import annotations

import functools

from nograd.clients.protocol import Evaluator

from . import DEFAULT_MEMORY_CAP_MB
from .fake import parse_fake


def build_engine(
    model: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    memory_cap_mb: float = DEFAULT_MEMORY_CAP_MB,
    memory_budget_mb: float | None = None,
    projection_cache_mb: float = 512.0,
) -> Evaluator:
    """The engine for a model name: `fake[:latency]` (tests, benchmarks) or any model `load_model` accepts.
    memory_budget_mb: what one batch may allocate beyond the model (a worker's budget; None: unchecked);
    projection_cache_mb: bytes of projection matrices kept between batches."""
    fake = parse_fake(model)
    if fake is not None:
        return fake
    from .engine import Engine  # torch and transformers load only for a real model
    from .models import load_model

    return Engine(
        load_model(model, dtype=dtype, device=device),
        memory_cap_mb=memory_cap_mb,
        memory_budget_mb=memory_budget_mb,
        projection_cache_mb=projection_cache_mb,
    )


@functools.lru_cache(maxsize=4)
def shared_engine(model: str, *, dtype: str = "fp32", device: str = "cpu") -> Evaluator:
    """One engine per (model, dtype, device) in this process, for a helper many jobs share: the local copy of a
    vLLM-served model that builds prompt_embeds (embedding lookups only, no forward pass)."""
    return build_engine(model, dtype=dtype, device=device)


@functools.lru_cache(maxsize=4)
def shared_handle(model: str, *, dtype: str = "fp32", device: str = "cpu"):
    """One loaded model per (model, dtype, device) in this process, used directly (no engine hooks): RLPrompt's
    frozen policy LM, which only runs plain forward passes."""
    from .models import load_model

    return load_model(model, dtype=dtype, device=device)
