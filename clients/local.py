"""The in-process endpoint: the evaluation engine behind the `ModelClient` protocol."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from .types import EvalRequest, EvalResult, ModelInfo, PromptSpec


class LocalClient:
    """Runs the engine in a worker thread so the event loop stays responsive; one evaluation at a time.

    Args:
        engine: a `service.engine.Engine` (or anything with `evaluate`, `describe`, `materialize`).
    """

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()  # the engine's model hooks allow one forward at a time; any event loop

    @classmethod
    def from_model(cls, model: str = "smollm2-135m", *, dtype: str = "bf16", device: str = "auto",
                   memory_cap_mb: float = 1024.0, **engine_options) -> "LocalClient":
        from service.engine import Engine, load_model

        handle = load_model(model, dtype=dtype, device=device)
        return cls(Engine(handle, memory_cap_mb=memory_cap_mb, **engine_options))

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        return await asyncio.to_thread(self._evaluate, request)

    def _evaluate(self, request: EvalRequest) -> EvalResult:
        with self._lock:
            return self.engine.evaluate(request)

    async def describe(self) -> ModelInfo:
        return self.engine.describe()

    def materialize(self, spec: PromptSpec, z: np.ndarray | None, base: np.ndarray | None) -> np.ndarray:
        """The prompt tensor a candidate stands for: (n, H) for cat/add, (L, n, H) for deep."""
        return self.engine.materialize(spec, z, base)
