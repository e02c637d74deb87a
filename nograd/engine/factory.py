"""The one place engines are built: by model name, for the CLI, the service's workers and the vLLM embedder."""

from __future__ import annotations

import functools
import logging

from nograd.clients.protocol import Evaluator

from . import DEFAULT_MEMORY_CAP_MB
from .fake import parse_fake

log = logging.getLogger(__name__)


def build_engine(
    model: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    memory_cap_mb: float | None = DEFAULT_MEMORY_CAP_MB,
    memory_budget_mb: float | None = None,
    projection_cache_mb: float = 512.0,
) -> Evaluator:
    """The engine for a model name: `fake[:latency]` (tests, benchmarks) or any model `load_model` accepts.
    memory_cap_mb: activation memory per forward pass; None: sized from the device once the model is loaded
    (`nograd.engine.memory`), and logged; memory_budget_mb: what one batch may allocate beyond the model (a
    worker's budget; None: unchecked); projection_cache_mb: bytes of projection matrices kept between batches."""
    fake = parse_fake(model)
    if fake is not None:
        return fake
    from .engine import Engine  # torch and transformers load only for a real model
    from .memory import model_bytes, resolve_memory_cap
    from .models import load_model

    handle = load_model(model, dtype=dtype, device=device)
    cap = resolve_memory_cap(
        memory_cap_mb, device=handle.device, weights=model_bytes(handle.model), budget_mb=memory_budget_mb
    )
    log.info("%s on %s: %s", model, handle.device, cap.describe())
    return Engine(
        handle,
        memory_cap_mb=cap.mb,
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
